/**
 * The cluster under test for bench/operator.ts, one per size: a real Kubernetes control plane and
 * `custody operator` run from source as a child process.
 *
 * The control plane is the tests' (e2e/support/cluster.ts): etcd, kube-apiserver and
 * kube-controller-manager as built by e2e/control-plane/build.sh (ControlPlane.start()), the CRDs
 * and namespaces applied with kubectl, the chart's ServiceAccount and RBAC (helm template of
 * charts/custody templates/rbac.yaml), a Custody CA on disk. The operator runs as the chart's
 * ServiceAccount, never as admin: its kubeconfig carries a token from `kubectl create token
 * custody-operator -n custody-system`. It talks to kube-apiserver directly, not through the TCP
 * proxy cluster.ts puts in front of it for the tests (that proxy runs in this process, whose event
 * loop would then carry every byte the operator sends and receives). The benchmark's own requests
 * (creates, watches, the final LISTs, /metrics) are made as admin.
 *
 * Request counts come from kube-apiserver's own Prometheus metrics (see `requestCounts`), CPU and
 * memory of each process from /proc.
 */
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { KubeConfig } from "@kubernetes/client-node";
import {
  type Cluster as KubernetesCluster,
  OPERATOR_NAMESPACE,
  OPERATOR_SERVICE_ACCOUNT,
  startCluster as startKubernetes,
} from "../e2e/support/cluster.js";
import type { ComponentName, ControlPlane } from "../e2e/support/control-plane.js";
import { freePort } from "../e2e/support/net.js";
import { type Child, processCpuSeconds, processMemory, REPO, startChild, waitUntilReady } from "./proc.js";

const HOST = "127.0.0.1";
const ENTRY = join(REPO, "cli/src/entry.ts");
/** Start-up guard for leader election (the Lease is free, so it is normally won at once). */
const LEADERSHIP_LIMIT_MS = 60_000;
/** How often the control plane's processes are checked for having exited. */
const PROCESS_POLL_MS = 1_000;
const COMPONENTS: readonly ComponentName[] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/**
 * A snapshot of kube-apiserver's request metrics (GET /metrics as admin).
 *
 * `byKey`: `apiserver_request_total`, a counter of the requests the API server has *finished*,
 * summed over the labels not in the key (group, version, scope, component, dry_run), keyed
 * `VERB resource[/subresource] code`, e.g. `PATCH serviceidentities/status 200`; requests to no
 * resource (discovery, health) are keyed by their path, e.g. `GET /apis 200`. VERB is the API
 * server's: POST (create), PUT (update), PATCH, APPLY (server-side apply), DELETE, GET, LIST,
 * WATCH. What it counts, and what it does not:
 * - every client's requests: the operator's, the benchmark's (its creates), kube-controller-manager's
 *   and kube-apiserver's own loopback client's (e.g. its identity Lease, renewed every 10 s); the
 *   metric has no user label, so a Lease renewal of the operator and one of kube-apiserver look
 *   the same;
 * - a WATCH counts once, when it ends: open watches are not in it (see `watchesOpen`);
 * - a request refused before it reached the handler chain's instrumentation (e.g. a 429 from
 *   priority and fairness is counted, a TLS failure is not);
 * - the benchmark's own scrapes, `GET /metrics`, are left out.
 *
 * `secondsByKind`: `apiserver_request_duration_seconds_sum`, the time the API server spent on
 * those requests, keyed `VERB resource[/subresource]` (this metric has no code label).
 *
 * `watchesOpen`: `apiserver_longrunning_requests{verb="WATCH"}`, the watches open right now, by
 * resource (a gauge, not a counter: it is reported as it is at the snapshot, never as a delta).
 */
export interface RequestCounts {
  readonly total: number;
  readonly byKey: Readonly<Record<string, number>>;
  readonly secondsByKind: Readonly<Record<string, number>>;
  readonly watchesOpen: Readonly<Record<string, number>>;
}

export interface ClusterOptions {
  /** Namespaces created before the operator starts (besides custody-system). */
  readonly namespaces: readonly string[];
  readonly operatorLogLevel: string;
  /** More `custody operator` flags (e.g. --concurrency 16), for experiments. */
  readonly operatorArgs: readonly string[];
  /** Node flags for the operator (e.g. --cpu-prof --cpu-prof-dir=DIR). */
  readonly nodeArgs: readonly string[];
  /** Keep the logs (the operator's and each control-plane component's) in `directory` after stop(). */
  readonly keep: boolean;
  /** Aborted on Ctrl-C: start-up stops at the next step and tears down what it made. */
  readonly signal: AbortSignal;
  readonly progress: (message: string) => void;
}

/** A process of the cluster, as /proc sees it. */
export interface ProcessView {
  readonly pid: number;
  readonly logFile: string;
  /** Resolves with the reason if the process exits before stop() is called. */
  readonly exited: Promise<string>;
  cpuSeconds(): number;
  peakRssMb(): number;
  tail(lines?: number): string;
}

export interface Cluster {
  /** The admin's (system:masters): for the benchmark's creates and watches, never the operator's. */
  readonly kubeConfig: KubeConfig;
  readonly controlPlane: ControlPlane;
  readonly apiServer: ProcessView & { counts(): Promise<RequestCounts> };
  readonly etcd: ProcessView;
  readonly controllerManager: ProcessView;
  readonly operator: ProcessView & { readonly adminUrl: string; metrics(): Promise<string> };
  /** GET `path` on kube-apiserver as admin and parse the JSON; throws unless it answers 200. */
  getJson(path: string): Promise<unknown>;
  /** The benchmark's own temp directory: the operator's log (and, with `keep`, the control plane's). */
  readonly directory: string;
  /** Stops the operator, then the control plane; removes every temp directory (but `directory` with `keep`). */
  stop(): Promise<void>;
}

async function getText(url: string): Promise<string> {
  const response = await fetch(url);
  const text = await response.text();
  if (!response.ok) throw new Error(`GET ${url}: ${response.status} ${text.slice(0, 200)}`);
  return text;
}

/** Polls the operator's /readyz until it says it leads (its controllers run only then). */
async function waitForLeadership(operator: Child, adminUrl: string, signal: AbortSignal): Promise<void> {
  let gone: string | undefined;
  void operator.exited.then((reason) => {
    gone = reason;
  });
  const deadline = Date.now() + LEADERSHIP_LIMIT_MS;
  while (Date.now() < deadline) {
    signal.throwIfAborted();
    if (gone !== undefined) throw new Error(`custody operator ${gone} before it led\n${operator.tail()}`);
    const body = JSON.parse(await getText(`${adminUrl}/readyz`)) as { leader?: unknown };
    if (body.leader === true) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`custody operator did not win the Lease within ${LEADERSHIP_LIMIT_MS / 1000} s`);
}

/** `name="value"` pairs of one Prometheus sample's label set. */
function labelsOf(text: string): Map<string, string> {
  const labels = new Map<string, string>();
  for (const match of text.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
    if (match[1] !== undefined) labels.set(match[1], match[2] ?? "");
  }
  return labels;
}

/** `VERB resource[/subresource]`, or `VERB /path` for a request to no resource. */
function kindOf(labels: ReadonlyMap<string, string>): string {
  const verb = labels.get("verb") ?? "?";
  const resource = labels.get("resource") ?? "";
  const subresource = labels.get("subresource") ?? "";
  // Non-resource requests carry their path in `subresource` (`/healthz`, `api`, `openapi/v3`).
  if (resource === "") return `${verb} ${subresource.startsWith("/") ? subresource : `/${subresource}`}`;
  return `${verb} ${resource}${subresource === "" ? "" : `/${subresource}`}`;
}

/** kube-apiserver's /metrics text → RequestCounts (see its doc comment for what is counted). */
export function requestCounts(exposition: string): RequestCounts {
  const byKey: Record<string, number> = {};
  const secondsByKind: Record<string, number> = {};
  const watchesOpen: Record<string, number> = {};
  let total = 0;
  for (const line of exposition.split("\n")) {
    const match = /^(\w+)\{([^}]*)\}\s+(\S+)$/.exec(line);
    if (match === null) continue;
    const [, name, labelText = "", valueText] = match;
    const value = Number(valueText);
    if (!Number.isFinite(value)) continue;
    if (
      name !== "apiserver_request_total" &&
      name !== "apiserver_request_duration_seconds_sum" &&
      name !== "apiserver_longrunning_requests"
    )
      continue;
    const labels = labelsOf(labelText);
    const kind = kindOf(labels);
    if (kind === "GET /metrics") continue;
    if (name === "apiserver_request_total") {
      const key = `${kind} ${labels.get("code") ?? "?"}`;
      byKey[key] = (byKey[key] ?? 0) + value;
      total += value;
    } else if (name === "apiserver_request_duration_seconds_sum") {
      secondsByKind[kind] = (secondsByKind[kind] ?? 0) + value;
    } else if (labels.get("verb") === "WATCH" && value > 0) {
      const resource = kind.slice("WATCH ".length);
      watchesOpen[resource] = (watchesOpen[resource] ?? 0) + value;
    }
  }
  return { total, byKey, secondsByKind, watchesOpen };
}

/** The last lines of a log file (the control plane's logs are files, not pipes). */
function tailOf(file: string, lines: number): string {
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {}
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/**
 * A control-plane component as the benchmark sees it: /proc by pid, and `exited` from polling
 * /proc (ControlPlane keeps its ChildProcess objects to itself); the poll ends with `release()`.
 */
function componentView(
  controlPlane: ControlPlane,
  component: ComponentName,
): ProcessView & { release(): void } {
  const pid = controlPlane.pid(component);
  if (pid === undefined) throw new Error(`${component} is not running`);
  const logFile = controlPlane.logPath(component);
  let poll: NodeJS.Timeout | undefined;
  const exited = new Promise<string>((resolve) => {
    poll = setInterval(() => {
      let state = "";
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
        state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
      } catch {
        state = "gone";
      }
      if (state === "gone" || state === "Z" || state === "X") {
        clearInterval(poll);
        resolve("exited");
      }
    }, PROCESS_POLL_MS);
    poll.unref();
  });
  return {
    pid,
    logFile,
    exited,
    cpuSeconds: () => processCpuSeconds(pid),
    peakRssMb: () => processMemory(pid).peakRssMb,
    tail: (lines = 15) => `--- ${component} log (last ${lines} lines) ---\n${tailOf(logFile, lines)}`,
    release: () => clearInterval(poll),
  };
}

async function kubectlOrThrow(kubernetes: KubernetesCluster, args: readonly string[]): Promise<string> {
  const result = await kubernetes.kubectl(args);
  if (result.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed: ${result.stderr}`);
  return result.stdout;
}

/**
 * Starts the control plane with the CRDs, namespaces and the chart's RBAC, starts the operator as
 * the chart's ServiceAccount and waits until it leads. On any failure (or an abort of
 * `options.signal`) everything started so far is stopped and removed before the error is thrown.
 * Should the process exit without stop() (an uncaught error, process.exit), the operator is
 * killed and the temp directories are removed in an "exit" handler; ControlPlane kills its own
 * processes then too, and the kernel does if this process is killed outright (they run under
 * `setpriv --pdeathsig KILL`).
 */
export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const directory = mkdtempSync(join(tmpdir(), "custody-bench-operator-"));
  // The temp directories of cluster.ts and ControlPlane (and helm's home) are made under this one,
  // so that removing it removes them whatever happened: cluster.ts does not remove its own when
  // ControlPlane.start() fails, e.g. because a Ctrl-C reached etcd and kube-apiserver while they
  // were starting (a terminal signals the whole process group).
  const scratch = join(directory, "tmp");
  mkdirSync(scratch);
  let kubernetes: KubernetesCluster | undefined;
  let operator: Child | undefined;
  const views: { release(): void }[] = [];
  const removeDirectories = (keepOwn: boolean) =>
    rmSync(keepOwn ? scratch : directory, { recursive: true, force: true });
  const onExit = () => {
    try {
      if (operator !== undefined && operator.pid > 0) process.kill(operator.pid, "SIGKILL");
    } catch {}
    removeDirectories(options.keep);
  };
  process.once("exit", onExit);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    for (const view of views) view.release();
    // The operator first: its watches and writes end before the server they talk to.
    await operator?.stop();
    if (kubernetes !== undefined) {
      if (options.keep) {
        for (const component of COMPONENTS) {
          try {
            copyFileSync(kubernetes.controlPlane.logPath(component), join(directory, `${component}.log`));
          } catch {}
        }
      }
      await kubernetes.close();
    }
    removeDirectories(options.keep);
    if (options.keep) options.progress(`kept ${directory}`);
    process.off("exit", onExit);
  };
  try {
    options.progress("starting the control plane (etcd, kube-apiserver, kube-controller-manager) ...");
    const tmpdirBefore = process.env.TMPDIR;
    process.env.TMPDIR = scratch;
    try {
      kubernetes = await startKubernetes({ namespaces: options.namespaces });
    } finally {
      if (tmpdirBefore === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = tmpdirBefore;
    }
    const { controlPlane } = kubernetes;
    options.signal.throwIfAborted();
    await kubectlOrThrow(kubernetes, [
      "wait",
      "--for=condition=Established",
      "crd/serviceidentities.custody.dev",
      "crd/accesspolicies.custody.dev",
      "--timeout=60s",
    ]);
    const token = (
      await kubectlOrThrow(kubernetes, [
        "create",
        "token",
        OPERATOR_SERVICE_ACCOUNT,
        "-n",
        OPERATOR_NAMESPACE,
      ])
    ).trim();
    // Straight to kube-apiserver (not cluster.ts's proxy); a user name of its own, so the file is
    // not the proxy's kubeconfig, which tokenKubeconfig would name alike.
    const operatorKubeconfig = await controlPlane.tokenKubeconfig(`${OPERATOR_SERVICE_ACCOUNT}-bench`, token);
    options.signal.throwIfAborted();

    const adminPort = await freePort();
    const adminUrl = `http://${HOST}:${adminPort}`;
    operator = startChild(
      "custody operator",
      [
        ...options.nodeArgs,
        "--import",
        "tsx",
        ENTRY,
        "operator",
        "--ca",
        kubernetes.caDirectory,
        "--kubeconfig",
        operatorKubeconfig,
        "--namespace",
        OPERATOR_NAMESPACE,
        "--token-listen",
        `${HOST}:0`,
        "--token-admin",
        `${HOST}:0`,
        "--admin",
        `${HOST}:${adminPort}`,
        "--webhook-listen",
        `${HOST}:0`,
        // The default: a first certificate is used at once; the delay only paces rotations.
        "--propagation-delay",
        "2m",
        "--log-level",
        options.operatorLogLevel,
        ...options.operatorArgs,
      ],
      join(directory, "operator.log"),
    );
    const started = operator;
    await waitUntilReady(started, `${adminUrl}/readyz`);
    await waitForLeadership(started, adminUrl, options.signal);

    const [etcd, apiServer, controllerManager] = COMPONENTS.map((component) => {
      const view = componentView(controlPlane, component);
      views.push(view);
      return view;
    }) as [
      ReturnType<typeof componentView>,
      ReturnType<typeof componentView>,
      ReturnType<typeof componentView>,
    ];
    options.progress(
      `cluster up: kube-apiserver ${controlPlane.version} pid ${apiServer.pid} at ${controlPlane.server}, ` +
        `etcd pid ${etcd.pid}, kube-controller-manager pid ${controllerManager.pid}, ` +
        `operator pid ${started.pid} as system:serviceaccount:${OPERATOR_NAMESPACE}:${OPERATOR_SERVICE_ACCOUNT}`,
    );
    const getJson = async (path: string): Promise<unknown> => {
      const answer = await controlPlane.get(path);
      if (answer.status !== 200)
        throw new Error(`GET ${path}: ${answer.status} ${answer.body.slice(0, 200)}`);
      return JSON.parse(answer.body);
    };
    return {
      kubeConfig: kubernetes.kubeConfig,
      controlPlane,
      apiServer: {
        ...apiServer,
        counts: async () => {
          const answer = await controlPlane.get("/metrics");
          if (answer.status !== 200)
            throw new Error(`GET /metrics: ${answer.status} ${answer.body.slice(0, 200)}`);
          return requestCounts(answer.body);
        },
      },
      etcd,
      controllerManager,
      operator: {
        pid: started.pid,
        logFile: started.logFile,
        exited: started.exited,
        cpuSeconds: () => processCpuSeconds(started.pid),
        peakRssMb: () => processMemory(started.pid).peakRssMb,
        tail: (lines) => started.tail(lines),
        adminUrl,
        metrics: () => getText(`${adminUrl}/metrics`),
      },
      getJson,
      directory,
      stop,
    };
  } catch (error) {
    await stop().catch(() => onExit());
    throw error;
  }
}

/** Where the operator's V8 profiles went, largest first (the main thread's is the largest). */
export function profiles(directory: string): string[] {
  return readdirSync(directory)
    .map((name) => join(directory, name))
    .sort((a, b) => statSync(b).size - statSync(a).size);
}
