/**
 * Where the bytes and the microseconds of a depth-10 Custody chain go: the companion of
 * bench/chain.ts for when a target is missed (bench/README.md, "Breakdown").
 * Run: node --import tsx bench/breakdown.ts  (about 10 s; prints markdown, writes nothing).
 *
 * Times each step verifyChain takes per element, through the library's own exported functions, next
 * to the bare node:crypto verify and the full verifyChain, with the same interleaved-batch timing.
 */
import { type KeyObject, randomBytes, verify } from "node:crypto";
import {
  type LinkAlgorithm,
  type ParsedJws,
  parseCompactJws,
  sha256Base64url,
  verifySignature,
} from "../sidecar/src/chain/jws.js";
import { CHAIN_SEPARATOR, DEFAULT_LIMITS } from "../sidecar/src/chain/limits.js";
import { type LinkClaims, readLinkClaims, readLinkHeader } from "../sidecar/src/chain/link.js";
import { parseOperationClaim } from "../sidecar/src/chain/normalize.js";
import { MemoryReplayGuard } from "../sidecar/src/replay/memory.js";
import { markdownTable } from "./output.js";
import { buildChains, buildMesh, MAX_DEPTH, must, noReplayGuard, verifyCustody } from "./scenario.js";
import { asyncRunner, measure, type Runner, syncRunner, type TimingOptions } from "./timing.js";

const TIMING: TimingOptions = { warmupMs: 200, batchMs: 20, batches: 25 };

function sizeReport(elements: readonly string[]): string {
  const header = elements.join(CHAIN_SEPARATOR);
  let headers = 0;
  let payloads = 0;
  let signatures = 0;
  const claimJsonBytes = new Map<string, number>();
  for (const element of elements) {
    const [h = "", p = "", s = ""] = element.split(".");
    headers += h.length;
    payloads += p.length;
    signatures += s.length;
    const payload = JSON.parse(Buffer.from(p, "base64url").toString("utf8")) as Record<string, unknown>;
    for (const [key, value] of Object.entries(payload)) {
      // `"key":value,` as it sits in the JSON text
      const bytes = Buffer.byteLength(`${JSON.stringify(key)}:${JSON.stringify(value)},`, "utf8");
      claimJsonBytes.set(key, (claimJsonBytes.get(key) ?? 0) + bytes);
    }
  }
  const total = Buffer.byteLength(header, "utf8");
  const separators = total - headers - payloads - signatures;
  const pct = (part: number) => `${((part / total) * 100).toFixed(1)}%`;
  const rows: string[][] = [
    ["JWS headers (base64url)", String(headers), pct(headers)],
    ["payloads (base64url)", String(payloads), pct(payloads)],
    ...[...claimJsonBytes].map(([key, bytes]) => [
      `  ↳ claim ${key} (≈ 4/3 × JSON bytes)`,
      String(Math.round((bytes * 4) / 3)),
      pct((bytes * 4) / 3),
    ]),
    ["signatures (64 B ES256, base64url)", String(signatures), pct(signatures)],
    ["'.' and '~' separators", String(separators), pct(separators)],
    ["total", String(total), "100%"],
  ];
  const firstHeader = Buffer.from(must(elements[0], "e0").split(".")[0] ?? "", "base64url").toString("utf8");
  return [
    `### Bytes of the depth-${elements.length} chain (${total} B, ${(total / elements.length).toFixed(0)} B per link)`,
    "",
    markdownTable(["part", "bytes", "share"], rows),
    "",
    `A link header: ${firstHeader}`,
  ].join("\n");
}

interface Prepared {
  readonly text: string;
  readonly jws: ParsedJws;
  readonly alg: LinkAlgorithm;
  readonly key: KeyObject;
  readonly data: Buffer;
  readonly claims: LinkClaims;
}

interface Step {
  readonly name: string;
  /** crypto: the baseline; part: a step verifyChain takes; whole: verifyChain; aside: not in verifyChain here. */
  readonly role: "crypto" | "part" | "whole" | "aside";
  /** How many times verifyChain takes the step per element. */
  readonly times: number;
  readonly runner: Runner;
}

async function main(): Promise<void> {
  process.stderr.write("bench:chain breakdown: generating keys ...\n");
  const mesh = buildMesh();
  const now = Math.floor(Date.now() / 1000);
  const chains = buildChains(mesh, MAX_DEPTH, now);
  const depth = chains.custodyElements.length;

  const prepared: Prepared[] = chains.custodyElements.map((text, index) => {
    const jws = parseCompactJws(text, index);
    const header = readLinkHeader(jws, index, DEFAULT_LIMITS.linkAlgorithms);
    const claims = readLinkClaims(jws, index);
    const key = must(mesh.trust.serviceKey(header.kid), `key ${header.kid}`);
    return {
      text,
      jws,
      alg: header.alg,
      key: key.key,
      data: Buffer.from(jws.signingInput, "ascii"),
      claims,
    };
  });
  const forEach = (step: (element: Prepared, index: number) => boolean): (() => boolean) => {
    return () => {
      let ok = true;
      for (let i = 0; i < prepared.length; i++) ok = step(prepared[i] as Prepared, i) && ok;
      return ok;
    };
  };

  let counter = 0;
  const memoryGuard = new MemoryReplayGuard();
  const jtiPrefix = randomBytes(12).toString("base64url");
  // Each step, and how many times verifyChain pays it per element of a depth-d chain. Per-element
  // steps run over all d elements per iteration, per-chain steps once: either way the measured time
  // divided by d is the cost per element.
  const hashes = (2 * (depth - 1) + 1) / depth; // inner links are hashed twice (cachedLink and verifyLinkSignature), the head once
  const steps: Step[] = [
    {
      name: "bare crypto.verify (ES256, Buffers ready)",
      role: "crypto",
      times: 1,
      runner: syncRunner(
        forEach((e) => verify("sha256", e.data, { key: e.key, dsaEncoding: "ieee-p1363" }, e.jws.signature)),
      ),
    },
    {
      name: "verifySignature (crypto.verify + key checks, Buffer.from)",
      role: "part",
      times: 1,
      runner: syncRunner(forEach((e) => verifySignature(e.alg, e.key, e.jws.signingInput, e.jws.signature))),
    },
    {
      name: "parseCompactJws (base64url ×3 + canonical re-encode, JSON ×2)",
      role: "part",
      times: 1,
      runner: syncRunner(forEach((e, i) => parseCompactJws(e.text, i).signature.length === 64)),
    },
    {
      name: "readLinkHeader + readLinkClaims",
      role: "part",
      times: 1,
      runner: syncRunner(
        forEach((e, i) => {
          readLinkHeader(e.jws, i, DEFAULT_LIMITS.linkAlgorithms);
          return readLinkClaims(e.jws, i).iat > 0;
        }),
      ),
    },
    {
      name: "parseOperationClaim (re-normalizes op)",
      role: "part",
      times: 1,
      runner: syncRunner(forEach((e) => parseOperationClaim(e.claims.op).method.length > 0)),
    },
    {
      name: `sha256Base64url(element) × ${hashes.toFixed(1)} (verifyChain hashes inner links twice)`,
      role: "part",
      times: hashes,
      runner: syncRunner(forEach((e) => sha256Base64url(e.text).length === 43)),
    },
    {
      name: "VerifiedLink as { ...claims, index, text, hash, kid, operation }",
      role: "part",
      times: 1,
      runner: syncRunner(
        forEach(
          (e, i) =>
            ({ ...e.claims, index: i, text: e.text, hash: "", kid: "", operation: e.claims }).index === i,
        ),
      ),
    },
    {
      name: "limits: byteLength + split (per chain)",
      role: "part",
      times: 1,
      runner: syncRunner(
        () =>
          Buffer.byteLength(chains.custodyHeader, "utf8") > 0 &&
          chains.custodyHeader.split(CHAIN_SEPARATOR).length === depth,
      ),
    },
    {
      name: "replay: await the no-op guard (per chain)",
      role: "part",
      times: 1,
      runner: asyncRunner(() => noReplayGuard.claim("x", 0)),
    },
    {
      name: "replay: MemoryReplayGuard.claim, fresh jti (per chain)",
      role: "aside",
      times: 1,
      // A short expiry keeps the store at a steady size however fast this loop runs.
      runner: asyncRunner(() => memoryGuard.claim(`${jtiPrefix}${counter++}`, Date.now() + 50)),
    },
    {
      name: "verifyChain, whole chain",
      role: "whole",
      times: 1,
      runner: asyncRunner(() => verifyCustody(mesh, chains, now)),
    },
  ];
  process.stderr.write(`timing ${steps.length} steps on the depth-${depth} chain (about 10 s) ...\n`);
  const measured = await measure(
    steps.map((step) => step.runner),
    TIMING,
  );
  const costs = steps.map((step, i) => ({
    ...step,
    us: (must(measured[i], step.name) / depth) * step.times,
  }));
  const crypto = must(
    costs.find((step) => step.role === "crypto"),
    "crypto step",
  ).us;
  const whole = must(
    costs.find((step) => step.role === "whole"),
    "whole step",
  ).us;
  const memory = must(
    costs.find((step) => step.role === "aside"),
    "memory guard step",
  ).us;
  const explained = costs.filter((step) => step.role === "part").reduce((sum, step) => sum + step.us, 0);
  const share = (us: number) => `${((us / crypto) * 100).toFixed(1)}%`;
  const rows = costs
    .filter((step) => step.role !== "aside")
    .map((step) => [step.name, step.us.toFixed(2), share(step.us)]);
  rows.push(["steps of verifyChain above, summed", explained.toFixed(2), share(explained)]);
  rows.push([
    "rest: interleaving JS with OpenSSL (caches), GC, checkNeighbours, unshift",
    (whole - explained).toFixed(2),
    share(whole - explained),
  ]);
  process.stdout.write(
    [
      sizeReport(chains.custodyElements),
      "",
      `### Microseconds per element, depth-${depth} chain (per-chain steps divided by ${depth})`,
      "",
      markdownTable(["step", "µs/element", "of bare crypto"], rows),
      "",
      `verifyChain / bare crypto.verify = ${(whole / crypto).toFixed(2)}× (target ≤ 1.3×); ` +
        `overhead over the signature check: ${(whole - crypto).toFixed(2)} µs per element.`,
      `A MemoryReplayGuard instead of the no-op guard would add ${memory.toFixed(2)} µs per element ` +
        `(${(memory * depth).toFixed(2)} µs per chain).`,
      "",
    ].join("\n"),
  );
}

await main();
