/**
 * The demo's scenarios (local/src/demo) played against a kind cluster that e2e/kind/run.sh set up:
 * the operator and the injected sidecars run as images, the apps of examples/shop as pods. The
 * scenarios themselves, the expectations, the customer's tokens, the TLS client, the outcome readers
 * and the report are the demo's own; only the way in is different (clusterMesh, the demo's
 * MeshAccess):
 *
 * - the customer and the workload-key attacks reach a sidecar's inbound port (mutual TLS, SPIFFE
 *   id checked) through `kubectl port-forward service/<name> :15006`;
 * - "cart calls payments directly" runs in cart's app container (`kubectl exec`), through the
 *   sidecar's loopback-only outbound port, as a compromised app would;
 * - cart's key and certificate come from its Secret, the registry from the ConfigMaps, a sidecar's
 *   served registry generation from its /readyz through the API server's pod proxy;
 * - audit mode is a `kubectl patch` of the AccessPolicy, switched back afterwards.
 *
 *   node --import tsx e2e/kind/scenarios.ts idp --out DIR
 *       a throw-away identity provider: DIR/idp.json (private, 0600) and DIR/trusted-issuers.json
 *       (its public key, for the operator's --trusted-issuers)
 *   node --import tsx e2e/kind/scenarios.ts run --ca FILE --idp DIR [--namespace shop]
 *       the scenarios; exit 0 only if every outcome is the expected one
 *
 * kubectl uses $KUBECONFIG (run.sh points it at the kind cluster).
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createPrivateKey, createPublicKey } from "node:crypto";
import { rmSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { loadRegistry, registryFileName } from "../../crds/src/registry.js";
import type { Registry } from "../../crds/src/registry-schema.js";
import { DemoError } from "../../local/src/demo/errors.js";
import { SCENARIOS } from "../../local/src/demo/expectations.js";
import { createDemoIdp, type DemoIdp, trustedIssuersDocument } from "../../local/src/demo/idp.js";
import { type WaitOptions, waitFor } from "../../local/src/demo/mesh-state.js";
import { renderReport } from "../../local/src/demo/report.js";
import {
  CART,
  type InboundService,
  type MeshAccess,
  runScenarios,
  SHOP,
} from "../../local/src/demo/scenarios.js";
import type { LinkSigner } from "../../sidecar/src/chain/mint.js";
import { loadIdentityFiles } from "../../sidecar/src/runtime/identity-files.js";
import { signerFor } from "../../sidecar/src/runtime/own-keys.js";
import { snapshotOf } from "../../sidecar/src/runtime/registry-source.js";

export const INBOUND_PORT = 15006;
export const ADMIN_PORT = 15020;
/** Where shop.yaml mounts the ConfigMap shop-apps in the app containers. */
export const ATTACKER_SCRIPT = "/apps/cart-attacker.mjs";
export const IDP_FILE = "idp.json";
export const TRUSTED_ISSUERS_FILE = "trusted-issuers.json";
/** The kubelet refreshes mounted ConfigMaps within about a minute; the sidecar polls every 5 s. */
const PROPAGATION_TIMEOUT_MS = 180_000;
const KUBECTL_TIMEOUT_MS = 60_000;
const MAX_OUTPUT_BYTES = 16 * 1024 * 1024;

function progress(line: string): void {
  process.stdout.write(`[scenarios] ${line}\n`);
}

// --- kubectl ------------------------------------------------------------------------------------

export function kubectl(args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      "kubectl",
      [...args],
      { encoding: "utf8", timeout: KUBECTL_TIMEOUT_MS, maxBuffer: MAX_OUTPUT_BYTES },
      (error, stdout, stderr) => {
        if (error !== null) {
          const detail = (stderr || error.message).trim().split("\n").slice(-3).join(" / ");
          reject(new Error(`kubectl ${args.slice(0, 4).join(" ")}: ${detail}`));
          return;
        }
        resolve(stdout);
      },
    );
  });
}

async function kubectlJson(args: readonly string[]): Promise<unknown> {
  return JSON.parse(await kubectl([...args, "-o", "json"])) as unknown;
}

function record(value: unknown): Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}

function items(list: unknown): Record<string, unknown>[] {
  const value = record(list).items;
  return Array.isArray(value) ? value.map(record) : [];
}

/** The registry shard texts in a `kubectl get configmaps -o json` list (custody-registry, -1, -2, …). */
export function registryTextsOf(configMaps: unknown): string[] {
  const texts: string[] = [];
  for (const item of items(configMaps)) {
    const name = record(item.metadata).name;
    const match = typeof name === "string" ? /^custody-registry(?:-(\d{1,2}))?$/.exec(name) : null;
    if (match === null) continue;
    const text = record(item.data)[registryFileName(Number(match[1] ?? 0))];
    if (typeof text === "string") texts.push(text);
  }
  return texts;
}

/** The registry the operator published in `namespace`; undefined while there is none (or mid-update). */
async function clusterRegistry(namespace: string): Promise<Registry | undefined> {
  try {
    const texts = registryTextsOf(await kubectlJson(["-n", namespace, "get", "configmaps"]));
    return texts.length === 0 ? undefined : loadRegistry(texts);
  } catch {
    return undefined;
  }
}

/** The running, not terminating, pod of a Deployment of shop.yaml. */
async function podOf(namespace: string, name: string): Promise<string> {
  const list = await kubectlJson(["-n", namespace, "get", "pods", "-l", `app.kubernetes.io/name=${name}`]);
  const running = items(list).filter(
    (pod) => record(pod.status).phase === "Running" && record(pod.metadata).deletionTimestamp === undefined,
  );
  const podName = record(running[0]?.metadata).name;
  if (running.length !== 1 || typeof podName !== "string") {
    throw new DemoError("demo_not_ready", `expected one running pod of ${name}, found ${running.length}`);
  }
  return podName;
}

/** The registry generation a pod's sidecar serves (its /readyz), or why it does not answer. */
async function servedGeneration(namespace: string, pod: string): Promise<number | string> {
  try {
    const text = await kubectl([
      "get",
      "--raw",
      `/api/v1/namespaces/${namespace}/pods/${pod}:${ADMIN_PORT}/proxy/readyz`,
    ]);
    const generation = record(JSON.parse(text)).generation;
    return typeof generation === "number" ? generation : `${pod}: /readyz names no generation`;
  } catch (error) {
    return `${pod}'s sidecar is not ready (${error instanceof Error ? error.message : String(error)})`;
  }
}

/**
 * `probe` for waitFor: a failure (a pod not there yet, kubectl refused) is one more reason to wait,
 * and what it waits for is printed whenever that changes (a wait can take minutes).
 */
function reporting<T>(probe: () => Promise<T | string>): () => Promise<T | string> {
  let last = "";
  return async () => {
    const answer = await probe().catch((error: unknown) =>
      error instanceof Error ? error.message : String(error),
    );
    if (typeof answer === "string" && answer !== last) progress(`waiting: ${answer}`);
    last = typeof answer === "string" ? answer : "";
    return answer;
  };
}

/** Until every sidecar of the three services serves at least the published generation. */
async function waitForSidecars(namespace: string, wait: WaitOptions): Promise<number> {
  return waitFor(
    "the sidecars did not load the published registry",
    "demo_not_ready",
    reporting(async () => {
      const registry = await clusterRegistry(namespace);
      if (registry === undefined) return `no registry in namespace ${namespace} yet`;
      for (const name of ["shop", "cart", "payments"]) {
        const served = await servedGeneration(namespace, await podOf(namespace, name));
        if (typeof served === "string") return served;
        if (served < registry.generation) {
          return `${name}'s sidecar serves generation ${served}, not ${registry.generation}`;
        }
      }
      return registry.generation;
    }),
    wait,
  );
}

/**
 * The identity state Secret of `namespace/name` (in the operator's namespace, custody-system, as
 * run.sh installs it) as identity files, in a private directory: the demo acts as cart from
 * outside the cluster, which only someone who may read the operator's Secrets can.
 */
async function identityFilesOf(namespace: string, name: string, directory: string): Promise<string> {
  const secret = record(
    await kubectlJson(["-n", "custody-system", "get", "secret", `custody-identity.${namespace}.${name}`]),
  );
  const data = record(secret.data);
  const target = join(directory, name);
  await mkdir(target, { recursive: true, mode: 0o700 });
  for (const file of ["tls.crt", "tls.key", "ca.crt"]) {
    const value = data[file];
    if (typeof value !== "string") throw new DemoError("demo_not_ready", `Secret ${name} has no ${file}`);
    await writeFile(join(target, file), Buffer.from(value, "base64"), { mode: 0o600 });
  }
  return target;
}

export interface Forward {
  readonly port: number;
  close(): void;
}

/** The local port in kubectl port-forward's "Forwarding from 127.0.0.1:PORT -> REMOTE" line. */
export function forwardedPort(output: string): number | undefined {
  const match = /Forwarding from 127\.0\.0\.1:(\d{1,5}) ->/.exec(output);
  return match?.[1] === undefined ? undefined : Number(match[1]);
}

/** `kubectl port-forward <target> :<remote>` on a free loopback port, until close(). */
function portForward(namespace: string, target: string, remote: number): Promise<Forward> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(
      "kubectl",
      ["-n", namespace, "port-forward", "--address", "127.0.0.1", target, `:${remote}`],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let output = "";
    let settled = false;
    const fail = (why: string) => {
      if (settled) return;
      settled = true;
      child.kill();
      reject(new DemoError("demo_not_ready", `port-forward to ${target}: ${why}`));
    };
    const timer = setTimeout(() => fail(`no forwarding port after 30 s (${output.trim()})`), 30_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString("utf8");
      const port = forwardedPort(output);
      if (port === undefined || settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ port, close: () => child.kill() });
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", (chunk: Buffer) => {
      output += chunk.toString("utf8");
    });
    child.once("error", (error) => fail(error.message));
    child.once("exit", (code) => {
      clearTimeout(timer);
      fail(`kubectl exited (${code}): ${output.trim()}`);
    });
  });
}

/** The attacker script in cart's app container: its last line of output, as JSON. */
async function inCartApp(namespace: string, args: readonly string[]): Promise<Record<string, unknown>> {
  const output = await kubectl([
    "-n",
    namespace,
    "exec",
    "deploy/cart",
    "-c",
    "app",
    "--",
    "node",
    ATTACKER_SCRIPT,
    ...args,
  ]);
  const last = output.trim().split("\n").at(-1) ?? "";
  try {
    return record(JSON.parse(last));
  } catch {
    throw new DemoError("demo_bad_reply", `cart-attacker printed no JSON: ${last.slice(0, 200)}`);
  }
}

// --- the identity provider ----------------------------------------------------------------------

async function writeIdp(directory: string): Promise<void> {
  await mkdir(directory, { recursive: true, mode: 0o700 });
  const idp = createDemoIdp();
  const privateKeyPem = idp.privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  const path = join(directory, IDP_FILE);
  await writeFile(path, `${JSON.stringify({ issuer: idp.issuer, kid: idp.kid, privateKeyPem })}\n`, {
    mode: 0o600,
  });
  await chmod(path, 0o600);
  await writeFile(
    join(directory, TRUSTED_ISSUERS_FILE),
    `${JSON.stringify(trustedIssuersDocument(idp), null, 2)}\n`,
  );
  progress(`identity provider ${idp.issuer}, key ${idp.kid}: ${directory}`);
}

export async function readIdp(directory: string): Promise<DemoIdp> {
  const saved = record(JSON.parse(await readFile(join(directory, IDP_FILE), "utf8")));
  const { issuer, kid, privateKeyPem } = saved;
  if (typeof issuer !== "string" || typeof kid !== "string" || typeof privateKeyPem !== "string") {
    throw new DemoError("demo_bad_reply", `${join(directory, IDP_FILE)} is not what \`idp\` writes`);
  }
  const privateKey = createPrivateKey(privateKeyPem);
  return { issuer, kid, privateKey, publicKey: createPublicKey(privateKey) };
}

// --- the scenarios ------------------------------------------------------------------------------

/** cart's key and certificate, as an attacker holding them would use them. */
interface CartIdentity {
  readonly cert: string;
  readonly key: string;
  readonly signer: LinkSigner;
}

/** Patches payments' AccessPolicy mode. */
async function patchPaymentsPolicy(namespace: string, mode: "audit" | "enforce"): Promise<void> {
  await kubectl([
    "-n",
    namespace,
    "patch",
    "accesspolicy",
    "payments",
    "--type",
    "merge",
    "-p",
    JSON.stringify({ spec: { mode } }),
  ]);
}

/** Until the registry and every sidecar carry payments' policy with `mode`. */
async function awaitPaymentsPolicy(
  namespace: string,
  mode: "audit" | "enforce",
  wait: WaitOptions,
): Promise<void> {
  const generation = await waitFor(
    `AccessPolicy ${namespace}/payments was not published with mode ${mode}`,
    "demo_policy_not_applied",
    reporting(async () => {
      const registry = await clusterRegistry(namespace);
      const published = registry?.policies.find(
        (entry) => entry.namespace === namespace && entry.name === "payments",
      );
      if (published === undefined) return "payments' policy is not in the registry";
      return published.mode === mode
        ? (registry?.generation ?? 0)
        : `payments' policy is still ${published.mode} in the registry`;
    }),
    wait,
  );
  const served = await waitForSidecars(namespace, wait);
  progress(
    `payments' policy is in ${mode} mode (registry generation ${generation}, sidecars serve ${served})`,
  );
}

/** MeshAccess (local/src/demo/scenarios.ts) through port-forwards and kubectl. */
function clusterMesh(options: {
  readonly namespace: string;
  readonly ca: string;
  readonly trustDomain: string;
  readonly shop: Forward;
  readonly payments: Forward;
  readonly cart: CartIdentity;
  readonly wait: WaitOptions;
}): MeshAccess {
  const { namespace, cart } = options;
  return {
    ca: options.ca,
    trustDomain: options.trustDomain,
    inboundPort: (service: InboundService) => (service === SHOP ? options.shop : options.payments).port,
    cartCredentials: async () => ({ cert: cart.cert, key: cart.key }),
    cartSigner: async () => cart.signer,
    attackerBody: async () => {
      const body = await inCartApp(namespace, ["seal"]);
      if (typeof body.sealedCard !== "object") {
        throw new DemoError("demo_bad_reply", `cart-attacker seal: ${JSON.stringify(body).slice(0, 300)}`);
      }
      return JSON.stringify(body);
    },
    cartCallsPaymentsDirectly: async () => {
      const answer = await inCartApp(namespace, []);
      if (typeof answer.status !== "number") {
        throw new DemoError("demo_bad_reply", `cart-attacker: ${JSON.stringify(answer).slice(0, 300)}`);
      }
      return { status: answer.status, body: JSON.stringify(answer.json ?? null) };
    },
    setPaymentsMode: (mode) => patchPaymentsPolicy(namespace, mode),
    awaitPaymentsMode: (mode) => awaitPaymentsPolicy(namespace, mode, options.wait),
    registry: () => clusterRegistry(namespace),
  };
}

async function runInCluster(options: { caPath: string; idpDirectory: string; namespace: string }) {
  const { namespace } = options;
  const wait: WaitOptions = { timeoutMs: PROPAGATION_TIMEOUT_MS, intervalMs: 2_000 };
  const idp = await readIdp(options.idpDirectory);
  const ca = await readFile(options.caPath, "utf8");
  // Holds cart's private key for the attacks: removed at the end, and on Ctrl-C / SIGTERM too.
  const scratch = await mkdtemp(join(tmpdir(), "custody-kind-"));
  const forwards: Forward[] = [];
  const onSignal = (signal: NodeJS.Signals) => {
    for (const forward of forwards) forward.close();
    rmSync(scratch, { recursive: true, force: true });
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const generation = await waitForSidecars(namespace, wait);
    progress(`every sidecar serves registry generation ${generation} or later`);
    const registry = await clusterRegistry(namespace);
    if (registry === undefined) throw new DemoError("demo_not_ready", "the registry went away");
    const cartIdentity = await loadIdentityFiles(await identityFilesOf(namespace, "cart", scratch));
    const signer = signerFor(cartIdentity, snapshotOf(registry));
    if (signer === undefined) {
      throw new DemoError("demo_not_ready", `the registry does not publish ${CART}'s current key`);
    }
    const shop = await portForward(namespace, "service/shop", INBOUND_PORT);
    forwards.push(shop);
    const payments = await portForward(namespace, "service/payments", INBOUND_PORT);
    forwards.push(payments);
    progress(
      `port-forward: shop's inbound on 127.0.0.1:${shop.port}, payments' on 127.0.0.1:${payments.port}`,
    );
    const mesh = clusterMesh({
      namespace,
      ca,
      trustDomain: registry.trustDomain,
      shop,
      payments,
      cart: { cert: cartIdentity.certificatePem, key: cartIdentity.keyPem, signer },
      wait,
    });
    const { results, captured, chainTree } = await runScenarios({ mesh, idp, progress });
    process.stdout.write(`\n${renderReport(results, captured, chainTree)}`);
    return results.length === SCENARIOS.length && results.every((result) => result.matched);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    for (const forward of forwards) forward.close();
    await rm(scratch, { recursive: true, force: true });
  }
}

async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  const { values } = parseArgs({
    args: [...rest],
    options: {
      out: { type: "string" },
      ca: { type: "string" },
      idp: { type: "string" },
      namespace: { type: "string", default: "shop" },
    },
    strict: true,
  });
  if (command === "idp" && values.out !== undefined) {
    await writeIdp(values.out);
    return 0;
  }
  if (command === "run" && values.ca !== undefined && values.idp !== undefined) {
    const passed = await runInCluster({
      caPath: values.ca,
      idpDirectory: values.idp,
      namespace: values.namespace,
    });
    return passed ? 0 : 1;
  }
  process.stderr.write(
    "Usage: scenarios.ts idp --out DIR | scenarios.ts run --ca FILE --idp DIR [--namespace NS]\n",
  );
  return 2;
}

if (process.argv[1] !== undefined && pathToFileURL(resolve(process.argv[1])).href === import.meta.url) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      process.stderr.write(`scenarios: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
