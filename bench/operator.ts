/**
 * `npm run bench:operator`: how long the operator takes from N new ServiceIdentities (N = 100 and
 * 1,000 by default) to all of them Ready and published in the registry, against a real Kubernetes
 * control plane (etcd, kube-apiserver, kube-controller-manager from e2e/control-plane/build.sh),
 * and how large its objects get. Each size runs on a fresh control plane and a fresh operator
 * (bench/operator-cluster.ts); the operator runs as the chart's ServiceAccount. Definitions:
 * bench/README.md.
 *
 * Progress goes to stderr; the markdown tables to stdout; the numbers to bench/out/operator.json.
 * Targets are reported as PASS or MISS, never asserted. It exits non-zero only if something breaks:
 * an API error, a process that dies, a size that does not converge within --timeout, or a final
 * check (a fresh LIST, the registry validated in full) that disagrees with what the watches saw.
 */
import { readFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { Agent } from "node:https";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  CustomObjectsApi,
  type KubeConfig,
  Observable,
  type RequestContext,
  type ResponseContext,
  Watch,
} from "@kubernetes/client-node";
import { loadRegistry, REGISTRY_CONFIGMAP_NAME } from "../crds/src/registry.js";
import { OPERATOR_NAMESPACE } from "../e2e/support/cluster.js";
import { ControlPlane } from "../e2e/support/control-plane.js";
import { IDENTITY_SECRET_PREFIX } from "../operator/src/controllers/identity-secret.js";
import { type Cluster, profiles, type RequestCounts, startCluster } from "./operator-cluster.js";
import { markdownTable, outFile, writeResult } from "./output.js";
import { abortOnSignals, failureExitCode, machineCpuClock } from "./proc.js";

const GROUP = "custody.dev";
const VERSION = "v1alpha1";
const PLURAL = "serviceidentities";
const DEFAULT_SIZES = "100,1000";
/** ServiceIdentity creates in flight: a `kubectl apply` of many files, or a CD tool, does a handful at once. */
const CREATE_CONCURRENCY = 16;
const DEFAULT_TIMEOUT_SECONDS = 300;
const PROGRESS_MS = 3_000;
/** After convergence, how long the operator is watched for writes it should no longer make. */
const SETTLE_MS = 5_000;
/** The issue's targets: 1,000 identities in ≤ 60 s, every object under 1 MiB. */
const TARGET_SECONDS = 60;
const TARGET_IDENTITIES = 1_000;
const MAX_OBJECT_BYTES = 1024 * 1024;
/** A watch that ends this often during one size is broken, not unlucky. */
const MAX_WATCH_RESTARTS = 5;
const OUT_FILE = outFile("operator");

type Json = Record<string, unknown>;

function progress(message: string): void {
  process.stderr.write(`${message}\n`);
}

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function field(object: unknown, name: string): unknown {
  return isObject(object) ? object[name] : undefined;
}

function nameOf(object: unknown): string {
  return String(field(field(object, "metadata"), "name") ?? "");
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = "code" in error && error.code !== undefined ? ` (${String(error.code)})` : "";
  const body = "body" in error && typeof error.body === "string" ? `: ${error.body.slice(0, 300)}` : "";
  return `${error.message}${code}${body}`;
}

const round1 = (value: number) => Math.round(value * 10) / 10;
const round3 = (value: number) => Math.round(value * 1000) / 1000;

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
}

/** A bench failure: something is broken (not slow), so the run's numbers are not valid. */
class BenchError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "BenchError";
  }
}

// --- what the watches see ------------------------------------------------------------------------

/** Whether an identity is Ready for its current spec, and the key its status says it uses. */
function readinessOf(object: unknown): { ready: boolean; keyId: string | undefined } {
  const generation = field(field(object, "metadata"), "generation");
  const status = field(object, "status");
  const conditions = field(status, "conditions");
  const ready =
    Array.isArray(conditions) &&
    conditions.some(
      (condition) =>
        field(condition, "type") === "Ready" &&
        field(condition, "status") === "True" &&
        field(condition, "observedGeneration") === generation,
    );
  const keyId = field(status, "keyId");
  return { ready, keyId: typeof keyId === "string" ? keyId : undefined };
}

/** Bytes of an object as the API server serializes it, and of its data values alone. */
interface Size {
  readonly name: string;
  readonly objectBytes: number;
  readonly dataBytes: number;
}

function sizeOf(object: unknown): Size {
  const data = field(object, "data");
  const dataBytes = isObject(data)
    ? Object.values(data).reduce<number>((sum, value) => sum + Buffer.byteLength(String(value)), 0)
    : 0;
  return { name: nameOf(object), objectBytes: Buffer.byteLength(JSON.stringify(object)), dataBytes };
}

/**
 * One registry shard read cheaply (JSON.parse, no schema validation): the benchmark must not take
 * CPU from the processes it measures. The full validation (loadRegistry) runs once, after timing.
 */
interface ShardView {
  readonly generation: number;
  readonly index: number;
  readonly count: number;
  /** Service id → its kids. */
  readonly services: ReadonlyMap<string, readonly string[]>;
}

function shardViewOf(text: string): ShardView | undefined {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch {
    return undefined;
  }
  const shard = field(document, "shard");
  const services = new Map<string, string[]>();
  const listed = field(document, "services");
  for (const service of Array.isArray(listed) ? listed : []) {
    const keys = field(service, "keys");
    services.set(
      String(field(service, "id")),
      (Array.isArray(keys) ? keys : []).map((key) => String(field(key, "kid"))),
    );
  }
  return {
    generation: Number(field(document, "generation")),
    index: Number(field(shard, "index")),
    count: Number(field(shard, "count")),
    services,
  };
}

/** The registry the shards form, or undefined while they are inconsistent (mid-publication). */
interface RegistryView {
  readonly generation: number;
  readonly shards: number;
  readonly services: ReadonlyMap<string, readonly string[]>;
}

function mergeShardViews(shards: readonly ShardView[]): RegistryView | undefined {
  const [first] = shards;
  if (first === undefined) return undefined;
  const indexes = new Set(shards.map((shard) => shard.index));
  if (
    shards.some((shard) => shard.generation !== first.generation || shard.count !== first.count) ||
    indexes.size !== shards.length ||
    shards.length !== first.count
  )
    return undefined;
  const services = new Map<string, readonly string[]>();
  for (const shard of shards) for (const [id, kids] of shard.services) services.set(id, kids);
  return { generation: first.generation, shards: shards.length, services };
}

/** Milliseconds from the first create to each milestone. */
interface Milestones {
  created?: number;
  secrets?: number;
  ready?: number;
  registry?: number;
  done?: number;
}

/**
 * The namespace as the watches report it, and when each milestone was first reached. Every check is
 * incremental or runs only near the end, so following 1,000 identities costs this process little.
 */
class NamespaceTracker {
  readonly identities = new Map<string, { ready: boolean; keyId: string | undefined }>();
  readyCount = 0;
  /** When each identity was first seen Ready (ms since t0). */
  readonly readyAt = new Map<string, number>();
  readonly secrets = new Set<string>();
  readonly #shards = new Map<string, ShardView[]>();
  registry: RegistryView | undefined;
  /** Registry ConfigMap versions seen (ADDED or MODIFIED): one per shard written. */
  registryUpdates = 0;
  largestConfigMap: Size = { name: "", objectBytes: 0, dataBytes: 0 };
  largestSecret: Size = { name: "", objectBytes: 0, dataBytes: 0 };
  readonly milestones: Milestones = {};
  t0 = Number.NaN;
  readonly #expected: readonly string[];
  #registryComplete = false;
  #resolveDone: (() => void) | undefined;
  readonly done: Promise<void>;

  constructor(
    readonly size: number,
    readonly namespace: string,
  ) {
    this.#expected = Array.from({ length: size }, (_, i) => `${identityName(i)}.${namespace}`);
    this.done = new Promise((resolve) => {
      this.#resolveDone = resolve;
    });
  }

  #now(): number {
    return performance.now() - this.t0;
  }

  identity(type: string, object: unknown): void {
    const name = nameOf(object);
    const before = this.identities.get(name);
    if (type === "DELETED") {
      if (before?.ready === true) this.readyCount--;
      this.identities.delete(name);
      return;
    }
    const now = readinessOf(object);
    this.identities.set(name, now);
    if (now.ready !== (before?.ready ?? false)) this.readyCount += now.ready ? 1 : -1;
    if (now.ready && !this.readyAt.has(name)) this.readyAt.set(name, this.#now());
    this.#check();
  }

  secret(type: string, object: unknown): void {
    const name = nameOf(object);
    // The identities' Secrets live in the operator's namespace, named after theirs.
    if (!name.startsWith(`${IDENTITY_SECRET_PREFIX}${this.namespace}.`)) return;
    if (type === "DELETED") {
      this.secrets.delete(name);
      return;
    }
    this.secrets.add(name);
    const size = sizeOf(object);
    if (size.objectBytes > this.largestSecret.objectBytes) this.largestSecret = size;
    this.#check();
  }

  configMap(type: string, object: unknown): void {
    const name = nameOf(object);
    if (!name.startsWith(REGISTRY_CONFIGMAP_NAME)) return;
    if (type === "DELETED") {
      this.#shards.delete(name);
    } else {
      this.registryUpdates++;
      const size = sizeOf(object);
      if (size.objectBytes > this.largestConfigMap.objectBytes) this.largestConfigMap = size;
      const data = field(object, "data");
      const texts = isObject(data) ? Object.values(data).map(String) : [];
      this.#shards.set(
        name,
        texts.flatMap((text) => shardViewOf(text) ?? []),
      );
    }
    this.registry = mergeShardViews([...this.#shards.values()].flat());
    const services = this.registry?.services;
    this.#registryComplete = services !== undefined && this.#expected.every((id) => services.has(id));
    this.#check();
  }

  /** After a re-list: forget what the list no longer holds (nothing is expected to go). */
  forgetAllBut(kind: "identity" | "secret" | "configMap", names: ReadonlySet<string>): void {
    const known =
      kind === "identity"
        ? [...this.identities.keys()]
        : kind === "secret"
          ? [...this.secrets]
          : [...this.#shards.keys()];
    for (const name of known) {
      if (names.has(name)) continue;
      const gone = { metadata: { name } };
      if (kind === "identity") this.identity("DELETED", gone);
      else if (kind === "secret") this.secret("DELETED", gone);
      else this.configMap("DELETED", gone);
    }
  }

  #check(): void {
    const { milestones } = this;
    if (milestones.done !== undefined || Number.isNaN(this.t0)) return;
    const now = this.#now();
    if (milestones.secrets === undefined && this.secrets.size >= this.size) milestones.secrets = now;
    const allReady = this.readyCount >= this.size && this.identities.size === this.size;
    if (milestones.ready === undefined && allReady) milestones.ready = now;
    if (milestones.registry === undefined && this.#registryComplete) milestones.registry = now;
    if (allReady && this.#registryComplete && this.#everyKeyPublished()) {
      milestones.done = now;
      this.#resolveDone?.();
    }
  }

  /** Every identity's current key (status.keyId) is among its service's keys in the registry. */
  #everyKeyPublished(): boolean {
    const services = this.registry?.services;
    if (services === undefined) return false;
    for (const [name, identity] of this.identities) {
      const kids = services.get(`${name}.${this.namespace}`);
      if (identity.keyId === undefined || kids === undefined || !kids.includes(identity.keyId)) return false;
    }
    return true;
  }

  line(created: number): string {
    const registry =
      this.registry === undefined
        ? this.registryUpdates === 0
          ? "no registry yet"
          : "registry mid-publication"
        : `registry has ${this.registry.services.size} services in ${this.registry.shards} shard${this.registry.shards === 1 ? "" : "s"}`;
    return (
      `${this.namespace}: ${created}/${this.size} created, ${this.secrets.size} Secrets, ` +
      `${this.readyCount} Ready, ${registry} (${this.registryUpdates} shard writes seen), ${(this.#now() / 1000).toFixed(1)} s`
    );
  }
}

function identityName(index: number): string {
  return `svc-${index}`;
}

/**
 * List, then watch from the list's resourceVersion; if the watch ends before stop(), list and
 * watch again (so nothing is missed), at most MAX_WATCH_RESTARTS times.
 */
class Follower {
  #controller: AbortController | undefined;
  #stopped = false;
  #restarts = 0;

  constructor(
    private readonly kubeConfig: KubeConfig,
    /** GET as admin, parsed (Cluster.getJson): the API server wants a client certificate. */
    private readonly getJson: (path: string) => Promise<unknown>,
    private readonly path: string,
    private readonly apply: (type: string, object: unknown) => void,
    private readonly relisted: (names: ReadonlySet<string>) => void,
    private readonly fail: (error: Error) => void,
  ) {}

  async start(): Promise<void> {
    let list: unknown;
    try {
      list = await this.getJson(this.path);
    } catch (error) {
      throw new BenchError("api_error", `LIST ${this.path}: ${describe(error)}`);
    }
    const items = field(list, "items");
    const objects: unknown[] = Array.isArray(items) ? items : [];
    for (const object of objects) this.apply("ADDED", object);
    this.relisted(new Set(objects.map(nameOf)));
    const resourceVersion = String(field(field(list, "metadata"), "resourceVersion") ?? "");
    if (this.#stopped) return;
    this.#controller = await new Watch(this.kubeConfig).watch(
      this.path,
      { resourceVersion, allowWatchBookmarks: true },
      (type: string, object: unknown) => {
        if (type === "BOOKMARK") return;
        if (type === "ERROR") {
          // A 410 Gone or another Status: the watch is over; list again.
          this.#controller?.abort();
          return;
        }
        this.apply(type, object);
      },
      (error: unknown) => {
        if (this.#stopped) return;
        this.#restarts++;
        if (this.#restarts > MAX_WATCH_RESTARTS) {
          this.fail(
            new BenchError("watch_failed", `the watch of ${this.path} ended ${this.#restarts} times`),
          );
          return;
        }
        progress(
          `watch of ${this.path} ended (${error === null ? "closed" : describe(error)}); listing again`,
        );
        this.start().catch((cause: unknown) => this.fail(new BenchError("api_error", describe(cause))));
      },
    );
  }

  stop(): void {
    this.#stopped = true;
    this.#controller?.abort();
  }
}

// --- what the processes say ----------------------------------------------------------------------

/** Prometheus text → `name{labels}` → value (summed when a series repeats). */
function parseMetrics(text: string): Map<string, number> {
  const series = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const match = /^([^\s{]+(?:\{[^}]*\})?)\s+(\S+)$/.exec(line);
    if (match?.[1] === undefined) continue;
    series.set(match[1], (series.get(match[1]) ?? 0) + Number(match[2]));
  }
  return series;
}

function metricSum(
  series: ReadonlyMap<string, number>,
  name: string,
  labels: readonly string[] = [],
): number {
  let sum = 0;
  for (const [key, value] of series) {
    if (key !== name && !key.startsWith(`${name}{`)) continue;
    if (labels.every((label) => key.includes(label))) sum += value;
  }
  return sum;
}

/** `after - before`, per key, dropping keys that did not move (both are counters). */
function delta(
  before: Readonly<Record<string, number>>,
  after: Readonly<Record<string, number>>,
): Record<string, number> {
  const diff: Record<string, number> = {};
  for (const [key, value] of Object.entries(after)) {
    const moved = value - (before[key] ?? 0);
    if (moved > 0) diff[key] = moved;
  }
  return diff;
}

/** Requests between two snapshots: counts by `VERB resource[/subresource] code`, ms by `VERB resource[/subresource]`. */
function requestsBetween(
  before: RequestCounts,
  after: RequestCounts,
): { total: number; byKind: Record<string, number>; msByKind: Record<string, number> } {
  const seconds = delta(before.secondsByKind, after.secondsByKind);
  return {
    total: after.total - before.total,
    byKind: delta(before.byKey, after.byKey),
    msByKind: Object.fromEntries(
      Object.entries(seconds).map(([kind, value]) => [kind, Math.round(value * 1000)]),
    ),
  };
}

function requestsMatching(
  counts: Readonly<Record<string, number>>,
  test: (verb: string, resource: string, code: number) => boolean,
): number {
  let sum = 0;
  for (const [key, count] of Object.entries(counts)) {
    const [verb = "", resource = "", code = "0"] = key.split(" ");
    if (test(verb, resource, Number(code))) sum += count;
  }
  return sum;
}

/** kube-apiserver's verbs that write: create, update, patch, server-side apply, delete. */
const isWrite = (verb: string) =>
  verb === "POST" ||
  verb === "PUT" ||
  verb === "PATCH" ||
  verb === "APPLY" ||
  verb === "DELETE" ||
  verb === "DELETECOLLECTION";

/** The operator's log lines by level and event (and error code), e.g. `warn reconcile_failed (conflict)`. */
function logSummary(file: string): Record<string, number> {
  const counts: Record<string, number> = {};
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return counts;
  }
  const levels: Record<number, string> = { 20: "debug", 30: "info", 40: "warn", 50: "error", 60: "fatal" };
  for (const line of text.split("\n")) {
    if (line === "") continue;
    let entry: unknown;
    try {
      entry = JSON.parse(line);
    } catch {
      counts["(not JSON)"] = (counts["(not JSON)"] ?? 0) + 1;
      continue;
    }
    const level = levels[Number(field(entry, "level"))] ?? String(field(entry, "level"));
    const event = field(entry, "event") ?? String(field(entry, "msg") ?? "").slice(0, 60);
    const code = field(entry, "code");
    const key = `${level} ${String(event)}${code === undefined ? "" : ` (${String(code)})`}`;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return counts;
}

// --- one size ------------------------------------------------------------------------------------

/** One entry of bench/out/operator.json. */
export interface SizeResult {
  readonly identities: number;
  readonly namespace: string;
  /** Seconds from before the first create until… */
  readonly seconds: {
    /** …every create was answered (the API writes alone). */
    readonly created: number;
    /** …every identity's Secret existed. */
    readonly secrets: number;
    /** …every identity was Ready (Ready=True for its current generation). */
    readonly ready: number;
    /** …a consistent set of registry shards listed every service. */
    readonly registry: number;
    /** …both: all Ready, and each one's status.keyId among its service's keys in the registry. */
    readonly done: number;
  };
  /** Per identity, from the start of its create request to its first Ready, in seconds. */
  readonly identityLatencySeconds: { readonly p50: number; readonly p95: number; readonly max: number };
  readonly largestConfigMap: Size;
  readonly largestSecret: Size;
  readonly registryShards: number;
  readonly registryGeneration: number;
  /** ConfigMap creates and replaces the API server accepted, from t0 to done (the registry's shards). */
  readonly registryWrites: number;
  readonly operatorMetrics: {
    readonly identityReconciles: number;
    readonly registryReconciles: number;
    readonly reconcileErrors: number;
    readonly certificatesIssued: number;
    readonly largestShardBytes: number;
  };
  /**
   * From kube-apiserver's `apiserver_request_total` (deltas; what it counts: RequestCounts in
   * operator-cluster.ts): every client's finished requests from t0 to done, the benchmark's creates
   * and kube-controller-manager's and kube-apiserver's own included; watches only once they end.
   */
  readonly apiRequests: {
    readonly total: number;
    readonly writes: number;
    readonly statusPatches: number;
    readonly secretWrites: number;
    readonly events: number;
    readonly conflicts: number;
    /** `VERB resource[/subresource] code` → requests. */
    readonly byKind: Readonly<Record<string, number>>;
    /** `VERB resource[/subresource]` → ms the API server spent on them (`apiserver_request_duration_seconds_sum`). */
    readonly msByKind: Readonly<Record<string, number>>;
    /** Watches open at done, by resource (`apiserver_longrunning_requests`, every client's). */
    readonly watchesOpenAtDone: Readonly<Record<string, number>>;
    /** Writes in the SETTLE_MS after done (expected: Lease renewals only, the operator's and kube-apiserver's). */
    readonly writesInSettle: Readonly<Record<string, number>>;
  };
  /** User + system seconds from t0 to done (/proc/PID/stat). */
  readonly cpuSeconds: {
    readonly operator: number;
    readonly apiServer: number;
    readonly etcd: number;
    readonly controllerManager: number;
    readonly bench: number;
    /** Every other process of the machine (noise). */
    readonly other: number;
  };
  /** VmHWM at done: the highest resident set since each process started (a fresh one per size). */
  readonly peakRssMb: {
    readonly operator: number;
    readonly apiServer: number;
    readonly etcd: number;
    readonly controllerManager: number;
  };
  readonly operatorLog: Readonly<Record<string, number>>;
  readonly withinTargetSeconds: boolean;
  readonly objectsUnderLimit: boolean;
}

interface RunOptions {
  readonly timeoutMs: number;
  readonly operatorLogLevel: string;
  readonly operatorArgs: readonly string[];
  readonly nodeArgs: readonly string[];
  readonly keep: boolean;
  readonly signal: AbortSignal;
}

async function createIdentities(
  kubeConfig: KubeConfig,
  tracker: NamespaceTracker,
  createdAt: number[],
  signal: AbortSignal,
  onCreated: () => void,
): Promise<void> {
  const custom = kubeConfig.makeApiClient(CustomObjectsApi);
  // client-node 1.4 gives every call a new https.Agent, so a new TCP and TLS connection (and a
  // client-certificate check) per create. A real load generator (kubectl, a CD tool: client-go)
  // keeps its connections, so the creates share one keep-alive pool here: the benchmark should
  // load kube-apiserver with the creates, not with handshakes of its own. The operator is run as
  // it is (its calls do pay a handshake each; bench/README.md).
  const tls: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  await kubeConfig.applyToHTTPSOptions(tls);
  const agent = new Agent({ keepAlive: true, ca: tls.ca, cert: tls.cert, key: tls.key });
  const keepAlive = {
    middleware: [
      {
        pre: (context: RequestContext) => {
          context.setAgent(agent);
          return new Observable(Promise.resolve(context));
        },
        post: (context: ResponseContext) => new Observable(Promise.resolve(context)),
      },
    ],
    middlewareMergeStrategy: "append" as const,
  };
  let next = 0;
  const worker = async () => {
    while (next < tracker.size && !signal.aborted) {
      const i = next++;
      createdAt[i] = performance.now() - tracker.t0;
      try {
        await custom.createNamespacedCustomObject(
          {
            group: GROUP,
            version: VERSION,
            namespace: tracker.namespace,
            plural: PLURAL,
            body: {
              apiVersion: `${GROUP}/${VERSION}`,
              kind: "ServiceIdentity",
              metadata: { name: identityName(i), namespace: tracker.namespace },
              spec: { environment: "prod", claims: { team: `t${i % 10}` }, scopes: ["read"] },
            },
          },
          keepAlive,
        );
      } catch (error) {
        throw new BenchError("api_error", `creating ServiceIdentity ${identityName(i)}: ${describe(error)}`);
      }
      onCreated();
    }
  };
  try {
    await Promise.all(Array.from({ length: CREATE_CONCURRENCY }, worker));
  } finally {
    agent.destroy();
  }
}

/** What a fresh LIST says, checked against the watches' view, the registry validated in full. */
async function verify(cluster: Cluster, tracker: NamespaceTracker): Promise<void> {
  const list = async (path: string): Promise<unknown[]> => {
    let answer: unknown;
    try {
      answer = await cluster.getJson(path);
    } catch (error) {
      throw new BenchError("api_error", `LIST ${path}: ${describe(error)}`);
    }
    const items = field(answer, "items");
    return Array.isArray(items) ? items : [];
  };
  const ns = tracker.namespace;
  const identities = await list(`/apis/${GROUP}/${VERSION}/namespaces/${ns}/${PLURAL}`);
  const secrets = (await list(`/api/v1/namespaces/${OPERATOR_NAMESPACE}/secrets`)).filter((secret) =>
    nameOf(secret).startsWith(`${IDENTITY_SECRET_PREFIX}${ns}.`),
  );
  const configMaps = (await list(`/api/v1/namespaces/${ns}/configmaps`)).filter((configMap) =>
    nameOf(configMap).startsWith(REGISTRY_CONFIGMAP_NAME),
  );
  const texts = configMaps.flatMap((configMap) => {
    const data = field(configMap, "data");
    return isObject(data) ? Object.values(data).map(String) : [];
  });
  const registry = loadRegistry(texts);
  const kids = new Map(registry.services.map((service) => [service.id, service.keys.map((key) => key.kid)]));
  const problems: string[] = [];
  if (identities.length !== tracker.size) problems.push(`${identities.length} identities listed`);
  if (secrets.length !== tracker.size) problems.push(`${secrets.length} identity Secrets listed`);
  for (const identity of identities) {
    const { ready, keyId } = readinessOf(identity);
    const id = `${nameOf(identity)}.${ns}`;
    if (!ready) problems.push(`${id} is not Ready`);
    else if (keyId === undefined || !(kids.get(id) ?? []).includes(keyId))
      problems.push(`${id}: key ${keyId} is not in the registry`);
  }
  if (problems.length > 0)
    throw new BenchError(
      "check_failed",
      `final check of ${ns}: ${problems.slice(0, 5).join("; ")}${problems.length > 5 ? ` (+${problems.length - 5} more)` : ""}`,
    );
}

async function measureSize(size: number, options: RunOptions): Promise<SizeResult> {
  const namespace = `bench-${size}`;
  progress(`${namespace}: starting a fresh control plane and operator ...`);
  const cluster = await startCluster({
    namespaces: [namespace],
    operatorLogLevel: options.operatorLogLevel,
    operatorArgs: options.operatorArgs,
    nodeArgs: options.nodeArgs,
    keep: options.keep,
    signal: options.signal,
    progress: (message) => progress(`${namespace}: ${message}`),
  });
  const failed = new AbortController();
  const fail = (error: Error) => {
    if (!failed.signal.aborted) failed.abort(error);
  };
  const onAbort = () =>
    fail(options.signal.reason instanceof Error ? options.signal.reason : new Error("aborted"));
  options.signal.addEventListener("abort", onAbort, { once: true });
  // A Ctrl-C while the cluster was starting: startCluster saw it only if it came before its last step.
  if (options.signal.aborted) onAbort();
  for (const [name, watched] of [
    ["custody operator", cluster.operator],
    ["kube-apiserver", cluster.apiServer],
    ["etcd", cluster.etcd],
    ["kube-controller-manager", cluster.controllerManager],
  ] as const) {
    void watched.exited.then((reason) =>
      fail(new BenchError("child_exited", `${name} ${reason}\n${watched.tail(30)}`)),
    );
  }
  const tracker = new NamespaceTracker(size, namespace);
  const base = `/namespaces/${namespace}`;
  const followers = [
    new Follower(
      cluster.kubeConfig,
      cluster.getJson,
      `/apis/${GROUP}/${VERSION}${base}/${PLURAL}`,
      (type, object) => tracker.identity(type, object),
      (names) => tracker.forgetAllBut("identity", names),
      fail,
    ),
    new Follower(
      cluster.kubeConfig,
      cluster.getJson,
      `/api/v1/namespaces/${OPERATOR_NAMESPACE}/secrets`,
      (type, object) => tracker.secret(type, object),
      (names) => tracker.forgetAllBut("secret", names),
      fail,
    ),
    new Follower(
      cluster.kubeConfig,
      cluster.getJson,
      `/api/v1${base}/configmaps`,
      (type, object) => tracker.configMap(type, object),
      (names) => tracker.forgetAllBut("configMap", names),
      fail,
    ),
  ];
  let ticker: NodeJS.Timeout | undefined;
  let timer: NodeJS.Timeout | undefined;
  let created = 0;
  try {
    for (const follower of followers) await follower.start();
    const countsBefore = await cluster.apiServer.counts();
    const machine = machineCpuClock();
    const cpuBefore = {
      operator: cluster.operator.cpuSeconds(),
      apiServer: cluster.apiServer.cpuSeconds(),
      etcd: cluster.etcd.cpuSeconds(),
      controllerManager: cluster.controllerManager.cpuSeconds(),
      bench: process.cpuUsage(),
      machine: machine?.() ?? Number.NaN,
    };
    const createdAt: number[] = [];
    tracker.t0 = performance.now();
    ticker = setInterval(() => progress(tracker.line(created)), PROGRESS_MS);
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new BenchError(
              "timeout",
              `${namespace} did not converge within ${options.timeoutMs / 1000} s: ${tracker.line(created)}\n${cluster.operator.tail(30)}`,
            ),
          ),
        options.timeoutMs,
      );
    });
    const failure = new Promise<never>((_, reject) => {
      if (failed.signal.aborted) reject(failed.signal.reason);
      failed.signal.addEventListener("abort", () => reject(failed.signal.reason), { once: true });
    });
    // Marked handled: whichever loses the race below may still settle later.
    timedOut.catch(() => {});
    failure.catch(() => {});
    const creating = createIdentities(cluster.kubeConfig, tracker, createdAt, failed.signal, () => {
      created++;
    }).then(() => {
      tracker.milestones.created = performance.now() - tracker.t0;
    });
    creating.catch(() => {});
    await Promise.race([Promise.all([creating, tracker.done]), timedOut, failure]);
    clearInterval(ticker);
    // Read at once: the measurement ends at `done`, not after the reads below.
    const cpu = {
      operator: cluster.operator.cpuSeconds() - cpuBefore.operator,
      apiServer: cluster.apiServer.cpuSeconds() - cpuBefore.apiServer,
      etcd: cluster.etcd.cpuSeconds() - cpuBefore.etcd,
      controllerManager: cluster.controllerManager.cpuSeconds() - cpuBefore.controllerManager,
      bench: (() => {
        const used = process.cpuUsage(cpuBefore.bench);
        return (used.user + used.system) / 1e6;
      })(),
      machine: (machine?.() ?? Number.NaN) - cpuBefore.machine,
    };
    const countsAtDone = await cluster.apiServer.counts();
    const metrics = parseMetrics(await cluster.operator.metrics());
    const peakRssMb = {
      operator: cluster.operator.peakRssMb(),
      apiServer: cluster.apiServer.peakRssMb(),
      etcd: cluster.etcd.peakRssMb(),
      controllerManager: cluster.controllerManager.peakRssMb(),
    };
    progress(`${tracker.line(created)}: done; watching ${SETTLE_MS / 1000} s for further writes`);
    await Promise.race([new Promise((resolve) => setTimeout(resolve, SETTLE_MS)), failure]);
    const countsAfterSettle = await cluster.apiServer.counts();
    for (const follower of followers) follower.stop();
    await verify(cluster, tracker);

    const milestones = tracker.milestones;
    const seconds = (ms: number | undefined) => round3((ms ?? Number.NaN) / 1000);
    const latencies = [...tracker.readyAt]
      .map(([name, at]) => at - (createdAt[Number(name.slice("svc-".length))] ?? 0))
      .sort((a, b) => a - b);
    const requests = requestsBetween(countsBefore, countsAtDone);
    const byKind = requests.byKind;
    const settle = requestsBetween(countsAtDone, countsAfterSettle).byKind;
    const writesInSettle = Object.fromEntries(
      Object.entries(settle).filter(([key]) => isWrite(key.split(" ")[0] ?? "")),
    );
    const done = seconds(milestones.done);
    const largestObject = Math.max(tracker.largestConfigMap.objectBytes, tracker.largestSecret.objectBytes);
    return {
      identities: size,
      namespace,
      seconds: {
        created: seconds(milestones.created),
        secrets: seconds(milestones.secrets),
        ready: seconds(milestones.ready),
        registry: seconds(milestones.registry),
        done,
      },
      identityLatencySeconds: {
        p50: round3(percentile(latencies, 50) / 1000),
        p95: round3(percentile(latencies, 95) / 1000),
        max: round3(percentile(latencies, 100) / 1000),
      },
      largestConfigMap: tracker.largestConfigMap,
      largestSecret: tracker.largestSecret,
      registryShards: tracker.registry?.shards ?? 0,
      registryGeneration: tracker.registry?.generation ?? 0,
      registryWrites: requestsMatching(
        byKind,
        (method, resource, status) =>
          (method === "POST" || method === "PUT") && resource === "configmaps" && status < 300,
      ),
      operatorMetrics: {
        identityReconciles: metricSum(metrics, "custody_operator_reconciles_total", [
          'controller="identity"',
        ]),
        registryReconciles: metricSum(metrics, "custody_operator_reconciles_total", [
          'controller="registry"',
        ]),
        reconcileErrors: metricSum(metrics, "custody_operator_reconciles_total", ['result="error"']),
        certificatesIssued: metricSum(metrics, "custody_operator_certificates_issued_total"),
        largestShardBytes: metricSum(metrics, "custody_operator_registry_largest_shard_bytes"),
      },
      apiRequests: {
        total: requests.total,
        writes: requestsMatching(byKind, (method) => isWrite(method)),
        statusPatches: requestsMatching(
          byKind,
          (method, resource) => method === "PATCH" && resource === `${PLURAL}/status`,
        ),
        secretWrites: requestsMatching(
          byKind,
          (method, resource) => (method === "POST" || method === "PUT") && resource === "secrets",
        ),
        events: requestsMatching(byKind, (method, resource) => isWrite(method) && resource === "events"),
        conflicts: requestsMatching(byKind, (_method, _resource, status) => status === 409),
        byKind,
        msByKind: requests.msByKind,
        watchesOpenAtDone: countsAtDone.watchesOpen,
        writesInSettle,
      },
      cpuSeconds: {
        operator: round1(cpu.operator),
        apiServer: round1(cpu.apiServer),
        etcd: round1(cpu.etcd),
        controllerManager: round1(cpu.controllerManager),
        bench: round1(cpu.bench),
        other: round1(
          Math.max(
            0,
            cpu.machine - cpu.operator - cpu.apiServer - cpu.etcd - cpu.controllerManager - cpu.bench,
          ),
        ),
      },
      peakRssMb: {
        operator: round1(peakRssMb.operator),
        apiServer: round1(peakRssMb.apiServer),
        etcd: round1(peakRssMb.etcd),
        controllerManager: round1(peakRssMb.controllerManager),
      },
      operatorLog: logSummary(cluster.operator.logFile),
      withinTargetSeconds: done <= TARGET_SECONDS,
      objectsUnderLimit: largestObject < MAX_OBJECT_BYTES,
    };
  } finally {
    clearInterval(ticker);
    clearTimeout(timer);
    for (const follower of followers) follower.stop();
    options.signal.removeEventListener("abort", onAbort);
    await cluster.stop();
  }
}

// --- report --------------------------------------------------------------------------------------

/** bench/out/operator.json. */
export interface OperatorBenchResult {
  readonly targetSeconds: number;
  readonly targetIdentities: number;
  readonly maxObjectBytes: number;
  readonly sizes: readonly SizeResult[];
  readonly operatorLogLevel: string;
  readonly operatorArgs: readonly string[];
  /** kube-apiserver's and kube-controller-manager's version, e.g. v1.36.3. */
  readonly kubernetesVersion: string;
  readonly etcdVersion: string;
  readonly node: string;
  readonly cpus: string;
}

function kib(bytes: number): string {
  return `${(bytes / 1024).toFixed(1)} KiB`;
}

function report(result: OperatorBenchResult): string {
  const s = (value: number) => (Number.isFinite(value) ? value.toFixed(1) : "n/a");
  const timing = markdownTable(
    ["identities", "done s", "created s", "Secrets s", "Ready s", "registry s", "per identity p50 / p95 s"],
    result.sizes.map((size) => [
      size.identities.toLocaleString("en-US"),
      s(size.seconds.done),
      s(size.seconds.created),
      s(size.seconds.secrets),
      s(size.seconds.ready),
      s(size.seconds.registry),
      `${s(size.identityLatencySeconds.p50)} / ${s(size.identityLatencySeconds.p95)}`,
    ]),
    { labels: false },
  );
  const cost = markdownTable(
    [
      "identities",
      "largest ConfigMap",
      "largest Secret",
      "shards",
      "registry writes",
      "API requests",
      "writes",
      "409s",
    ],
    result.sizes.map((size) => [
      size.identities.toLocaleString("en-US"),
      kib(size.largestConfigMap.objectBytes),
      kib(size.largestSecret.objectBytes),
      String(size.registryShards),
      String(size.registryWrites),
      size.apiRequests.total.toLocaleString("en-US"),
      size.apiRequests.writes.toLocaleString("en-US"),
      String(size.apiRequests.conflicts),
    ]),
    { labels: false },
  );
  const mb = (value: number) => `${s(value)} MB`;
  const processes = markdownTable(
    [
      "identities",
      "operator CPU s",
      "kube-apiserver CPU s",
      "etcd CPU s",
      "kube-controller-manager CPU s",
      "other CPU s",
      "operator peak RSS",
      "kube-apiserver peak RSS",
      "etcd peak RSS",
    ],
    result.sizes.map((size) => [
      size.identities.toLocaleString("en-US"),
      s(size.cpuSeconds.operator),
      s(size.cpuSeconds.apiServer),
      s(size.cpuSeconds.etcd),
      s(size.cpuSeconds.controllerManager),
      s(size.cpuSeconds.other),
      mb(size.peakRssMb.operator),
      mb(size.peakRssMb.apiServer),
      mb(size.peakRssMb.etcd),
    ]),
    { labels: false },
  );
  // Every request kind that moved in some size, the busiest (in the largest size) first.
  const largestSize = result.sizes.reduce((a, b) => (b.identities > a.identities ? b : a));
  const kinds = [...new Set(result.sizes.flatMap((size) => Object.keys(size.apiRequests.byKind)))].sort(
    (a, b) =>
      (largestSize.apiRequests.byKind[b] ?? 0) - (largestSize.apiRequests.byKind[a] ?? 0) ||
      a.localeCompare(b),
  );
  const requests = markdownTable(
    [
      "kube-apiserver requests t0 → done",
      ...result.sizes.map((size) => `${size.identities.toLocaleString("en-US")} identities`),
    ],
    kinds.map((kind) => [
      kind,
      ...result.sizes.map((size) => (size.apiRequests.byKind[kind] ?? 0).toLocaleString("en-US")),
    ]),
  );
  const atTarget = result.sizes.find((size) => size.identities === result.targetIdentities);
  const timeVerdict =
    atTarget === undefined
      ? `not measured (--sizes has no ${result.targetIdentities})`
      : `${atTarget.withinTargetSeconds ? "PASS" : "MISS"} (${s(atTarget.seconds.done)} s)`;
  const largest = result.sizes
    .flatMap((size) => [size.largestConfigMap, size.largestSecret])
    .reduce((a, b) => (b.objectBytes > a.objectBytes ? b : a));
  const sizeVerdict = `${result.sizes.every((size) => size.objectsUnderLimit) ? "PASS" : "MISS"} (largest: ${largest.name}, ${largest.objectBytes.toLocaleString("en-US")} bytes)`;
  return [
    timing,
    "",
    cost,
    "",
    processes,
    "",
    requests,
    "",
    `Target: ${result.targetIdentities.toLocaleString("en-US")} identities Ready and published in ≤ ${result.targetSeconds} s: ${timeVerdict}`,
    `Target: every object under ${result.maxObjectBytes.toLocaleString("en-US")} bytes: ${sizeVerdict}`,
    `Seconds from before the first create; a fresh control plane (Kubernetes ${result.kubernetesVersion}, etcd ${result.etcdVersion}) and operator per size; ` +
      `request counts from kube-apiserver's apiserver_request_total, every client's, watches only once ended; operator --log-level ${result.operatorLogLevel}` +
      `${result.operatorArgs.length === 0 ? "" : ` ${result.operatorArgs.join(" ")}`}; ${result.node}, ${result.cpus}.`,
  ].join("\n");
}

function summarize(size: SizeResult): void {
  const top = (counts: Readonly<Record<string, number>>, limit = 12, unit = "×") =>
    Object.entries(counts)
      .sort(([, a], [, b]) => b - a)
      .slice(0, limit)
      .map(([key, value]) => (unit === "×" ? `${key} ×${value}` : `${key} ${value} ${unit}`))
      .join(", ");
  progress(`${size.namespace}: API requests t0→done: ${top(size.apiRequests.byKind)}`);
  progress(`${size.namespace}: kube-apiserver ms spent t0→done: ${top(size.apiRequests.msByKind, 8, "ms")}`);
  progress(`${size.namespace}: watches open at done: ${top(size.apiRequests.watchesOpenAtDone, 20)}`);
  const settle = top(size.apiRequests.writesInSettle);
  progress(
    `${size.namespace}: writes in the ${SETTLE_MS / 1000} s after done: ${settle === "" ? "none" : settle}`,
  );
  const log = Object.entries(size.operatorLog)
    .sort(([, a], [, b]) => b - a)
    .slice(0, 12)
    .map(([key, count]) => `${key} ×${count}`)
    .join(", ");
  progress(`${size.namespace}: operator log: ${log === "" ? "nothing" : log}`);
  progress(
    `${size.namespace}: reconciles identity ${size.operatorMetrics.identityReconciles}, registry ${size.operatorMetrics.registryReconciles}, ` +
      `errors ${size.operatorMetrics.reconcileErrors}; certificates issued ${size.operatorMetrics.certificatesIssued}`,
  );
}

function parseSizes(text: string): number[] {
  const sizes = text.split(",").map((part) => Number(part.trim()));
  if (sizes.length === 0 || sizes.some((size) => !Number.isInteger(size) || size < 1 || size > 10_000))
    throw new BenchError(
      "usage",
      `--sizes must be whole numbers from 1 to 10000, comma-separated (got ${text})`,
    );
  return sizes;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      sizes: { type: "string", default: DEFAULT_SIZES },
      timeout: { type: "string", default: String(DEFAULT_TIMEOUT_SECONDS) },
      "log-level": { type: "string", default: "warn" },
      "operator-args": { type: "string", default: "" },
      "cpu-prof": { type: "boolean", default: false },
      keep: { type: "boolean", default: false },
    },
  });
  const sizes = parseSizes(values.sizes);
  const binaries = ControlPlane.binaries();
  if (!binaries.available) throw new BenchError("no_control_plane", binaries.reason);
  const timeoutSeconds = Number(values.timeout);
  if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0)
    throw new BenchError("usage", "--timeout must be a number of seconds");
  const operatorArgs = values["operator-args"].split(/\s+/).filter((arg) => arg !== "");
  // --cpu-prof: the operator runs under V8's sampling profiler, which slows it, so the numbers of
  // such a run are not recorded; the profiles are left in a temp directory for DevTools or speedscope.
  const profileDirectory = values["cpu-prof"]
    ? await mkdtemp(join(tmpdir(), "custody-bench-operator-profile-"))
    : undefined;
  const started = process.hrtime.bigint();
  const cpu = cpus();
  const cpuDescription = `${cpu.length} × ${cpu[0]?.model ?? "unknown CPU"}`;
  progress(
    `bench:operator: node ${process.version}, ${cpuDescription}; Kubernetes ${binaries.binaries.kubernetesVersion}, ` +
      `etcd ${binaries.binaries.etcdVersion}; sizes ${sizes.join(", ")}`,
  );

  const abort = new AbortController();
  const stopListening = abortOnSignals(abort);
  try {
    const results: SizeResult[] = [];
    for (const size of sizes) {
      abort.signal.throwIfAborted();
      const result = await measureSize(size, {
        timeoutMs: timeoutSeconds * 1000,
        operatorLogLevel: values["log-level"],
        operatorArgs,
        nodeArgs: profileDirectory === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${profileDirectory}`],
        keep: values.keep,
        signal: abort.signal,
      });
      summarize(result);
      results.push(result);
    }
    const result: OperatorBenchResult = {
      targetSeconds: TARGET_SECONDS,
      targetIdentities: TARGET_IDENTITIES,
      maxObjectBytes: MAX_OBJECT_BYTES,
      sizes: results,
      operatorLogLevel: values["log-level"],
      operatorArgs,
      kubernetesVersion: binaries.binaries.kubernetesVersion,
      etcdVersion: binaries.binaries.etcdVersion,
      node: process.version,
      cpus: cpuDescription,
    };
    writeResult("operator", result, {
      profiled: profileDirectory !== undefined,
      startedNs: started,
      progress,
    });
    process.stdout.write(`${report(result)}\n`);
  } finally {
    if (profileDirectory !== undefined)
      progress(`CPU profiles (the operator's, per size): ${profiles(profileDirectory).join(", ")}`);
    stopListening();
  }
}

try {
  await main();
} catch (error) {
  progress(`bench:operator: ${describe(error)}`);
  if (!(error instanceof BenchError) || error.code !== "usage") progress(`${OUT_FILE} not written`);
  process.exitCode = failureExitCode();
}
