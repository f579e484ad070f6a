/**
 * `npm run bench:chain`: size and verification time of Custody's flat, hash-linked call chain against
 * the talk's nested RS256 JWT (bench/nested.ts), for chains of depth 1..10. Definitions and how to
 * read the output: bench/README.md.
 *
 * Progress goes to stderr; the markdown table to stdout; the numbers to bench/out/chain.json.
 * Targets are reported as PASS/MISS and never fail the process (shared machines are noisy).
 */
import { verify } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { fileURLToPath } from "node:url";
import { VerifiedElementCache } from "../sidecar/src/chain/cache.js";
import type { VerifiedLink } from "../sidecar/src/chain/verify.js";
import { markdownTable } from "./output.js";
import {
  buildChains,
  buildMesh,
  hopAt,
  MAX_DEPTH,
  type Mesh,
  must,
  selfCheck,
  uaaUserToken,
  verifyCustody,
  verifyTalk,
} from "./scenario.js";
import { asyncRunner, measure, syncRunner, type TimingOptions } from "./timing.js";

/** One row of bench/out/chain.json. */
export interface ChainBenchRow {
  readonly depth: number;
  readonly custodyBytes: number;
  readonly nestedBytes: number;
  readonly custodyVerifyUs: number;
  readonly nestedVerifyUs: number;
  readonly cryptoVerifyUs: number;
}

/** Table-only extra: verification with the verified-link cache warm (only the head is checked in full). */
interface Row extends ChainBenchRow {
  readonly custodyCachedVerifyUs: number;
}

// Per depth: 4 functions × (0.2 s warm-up + 25 × 20 ms) ≈ 2.8 s; about 30 s in all on 2 cores.
const TIMING: TimingOptions = { warmupMs: 200, batchMs: 20, batches: 25 };
const DEPTH_10_BYTES_TARGET = 4500;
const PER_ELEMENT_TARGET = 1.3;
const OUT_DIR = new URL("./out/", import.meta.url);
const OUT_FILE = fileURLToPath(new URL("chain.json", OUT_DIR));

function progress(message: string): void {
  process.stderr.write(`${message}\n`);
}

const round2 = (value: number) => Math.round(value * 100) / 100;
const bytes = (value: number) => value.toLocaleString("en-US");
const verdict = (ok: boolean) => (ok ? "PASS" : "MISS");

/** Bare node:crypto: one ES256 signature check over this chain's head signing input, key pre-imported. */
function bareCryptoVerify(mesh: Mesh, head: string, signerId: string): () => boolean {
  const dot = head.lastIndexOf(".");
  const data = Buffer.from(head.slice(0, dot), "ascii");
  const signature = Buffer.from(head.slice(dot + 1), "base64url");
  const key = must(mesh.custody.get(signerId), `service ${signerId}`).publicKey;
  return () => verify("sha256", data, { key, dsaEncoding: "ieee-p1363" }, signature);
}

async function measureDepth(mesh: Mesh, depth: number, now: number): Promise<Row> {
  const chains = buildChains(mesh, depth, now);
  const custodyBytes = Buffer.byteLength(chains.custodyHeader, "utf8");
  const nestedBytes = Buffer.byteLength(chains.nestedToken, "utf8");
  progress(
    `depth ${depth}/${MAX_DEPTH}: custody ${bytes(custodyBytes)} B, nested ${bytes(nestedBytes)} B; timing ...`,
  );

  const cache = new VerifiedElementCache<VerifiedLink>();
  await verifyCustody(mesh, chains, now, cache); // fills the cache with every link
  const head = must(chains.custodyElements.at(-1), "head");
  const [crypto, custody, nested, cached] = await measure(
    [
      syncRunner(bareCryptoVerify(mesh, head, hopAt(depth - 1).from)),
      asyncRunner(() => verifyCustody(mesh, chains, now)),
      asyncRunner(() => verifyTalk(mesh, chains, now)),
      asyncRunner(() => verifyCustody(mesh, chains, now, cache)),
    ],
    TIMING,
  );
  const row: Row = {
    depth,
    custodyBytes,
    nestedBytes,
    custodyVerifyUs: round2(must(custody, "custody time")),
    nestedVerifyUs: round2(must(nested, "nested time")),
    cryptoVerifyUs: round2(must(crypto, "crypto time")),
    custodyCachedVerifyUs: round2(must(cached, "cached time")),
  };
  progress(
    `depth ${depth}/${MAX_DEPTH} done: custody ${row.custodyVerifyUs} µs, nested ${row.nestedVerifyUs} µs, ` +
      `crypto ${row.cryptoVerifyUs} µs`,
  );
  return row;
}

const perElementRatio = (row: ChainBenchRow) => row.custodyVerifyUs / row.depth / row.cryptoVerifyUs;

interface TalkCheck {
  readonly tokenBytes: number;
  readonly custodyBytes: number;
  readonly nestedBytes: number;
}

function report(rows: readonly Row[], talk: TalkCheck): string {
  const table = markdownTable(
    [
      "depth",
      "custody B",
      "nested B",
      "nested/custody",
      "custody µs",
      "µs/element",
      "crypto µs",
      "element/crypto",
      `≤ ${PER_ELEMENT_TARGET}×`,
      "nested µs",
      "custody cached µs",
    ],
    rows.map((row) => [
      String(row.depth),
      bytes(row.custodyBytes),
      bytes(row.nestedBytes),
      `${(row.nestedBytes / row.custodyBytes).toFixed(2)}×`,
      row.custodyVerifyUs.toFixed(1),
      (row.custodyVerifyUs / row.depth).toFixed(1),
      row.cryptoVerifyUs.toFixed(1),
      `${perElementRatio(row).toFixed(3)}×`,
      verdict(perElementRatio(row) <= PER_ELEMENT_TARGET),
      row.nestedVerifyUs.toFixed(1),
      row.custodyCachedVerifyUs.toFixed(1),
    ]),
    { labels: false },
  );
  const deepest = must(rows.at(-1), "deepest row");
  const worst = rows.reduce((a, b) => (perElementRatio(b) > perElementRatio(a) ? b : a));
  const missed = rows.filter((row) => perElementRatio(row) > PER_ELEMENT_TARGET).map((row) => row.depth);
  return [
    table,
    "",
    `Target depth-${deepest.depth} chain ≤ ${bytes(DEPTH_10_BYTES_TARGET)} bytes: ${bytes(deepest.custodyBytes)} bytes` +
      ` → ${verdict(deepest.custodyBytes <= DEPTH_10_BYTES_TARGET)}`,
    `Target verification per element ≤ ${PER_ELEMENT_TARGET} × cryptoVerifyUs: depth ${deepest.depth} ` +
      `${perElementRatio(deepest).toFixed(3)}× → ${verdict(perElementRatio(deepest) <= PER_ELEMENT_TARGET)}; ` +
      `every depth → ${verdict(missed.length === 0)} (worst ${perElementRatio(worst).toFixed(3)}× at depth ` +
      `${worst.depth}${missed.length === 0 ? "" : `; over at depth ${missed.join(", ")}`})`,
    `Size nested/custody at depth ${deepest.depth}: ${(deepest.nestedBytes / deepest.custodyBytes).toFixed(2)}×`,
    `Talk check (not in the table): with the slide-71 UAA user token (RS256, ${bytes(talk.tokenBytes)} B) as ` +
      `ini / e0, depth ${deepest.depth} is nested ${bytes(talk.nestedBytes)} B (talk: 55 KB), custody ` +
      `${bytes(talk.custodyBytes)} B`,
  ].join("\n");
}

async function main(): Promise<void> {
  const started = process.hrtime.bigint();
  const cpu = cpus();
  progress(
    `bench:chain: node ${process.version}, OpenSSL ${process.versions.openssl}, ` +
      `${cpu.length} × ${cpu[0]?.model ?? "unknown CPU"}`,
  );
  progress(`generating keys (ES256 and RSA-2048 for ${MAX_DEPTH + 1} services) ...`);
  const mesh = buildMesh();
  // One fixed clock for minting and verifying: links stay valid however long the run takes.
  const now = Math.floor(Date.now() / 1000);
  await selfCheck(mesh, now);
  progress("self-check passed: both verifiers accept honest chains and refuse a forged inner link");

  const rows: Row[] = [];
  for (let depth = 1; depth <= MAX_DEPTH; depth++) rows.push(await measureDepth(mesh, depth, now));

  const withToken = buildChains(mesh, MAX_DEPTH, now, { initialToken: uaaUserToken(mesh, now) });
  const talk: TalkCheck = {
    tokenBytes: Buffer.byteLength(must(withToken.custodyElements[0], "e0"), "utf8"),
    custodyBytes: Buffer.byteLength(withToken.custodyHeader, "utf8"),
    nestedBytes: Buffer.byteLength(withToken.nestedToken, "utf8"),
  };

  const json: ChainBenchRow[] = rows.map((row) => ({
    depth: row.depth,
    custodyBytes: row.custodyBytes,
    nestedBytes: row.nestedBytes,
    custodyVerifyUs: row.custodyVerifyUs,
    nestedVerifyUs: row.nestedVerifyUs,
    cryptoVerifyUs: row.cryptoVerifyUs,
  }));
  mkdirSync(OUT_DIR, { recursive: true });
  writeFileSync(OUT_FILE, `${JSON.stringify(json, null, 2)}\n`);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  progress(`wrote ${OUT_FILE} (${seconds.toFixed(1)} s)`);
  process.stdout.write(`${report(rows, talk)}\n`);
}

await main();
