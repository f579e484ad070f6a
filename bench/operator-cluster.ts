/**
 * The cluster under test for bench/operator.ts, one per size: a temp directory with a throw-away CA,
 * the test Kubernetes API server (e2e/apiserver) and `custody operator` run from source, each its
 * own child process so that neither shares an event loop with the other or with the benchmark's
 * client. The CRDs and the namespaces are in place before the operator starts.
 *
 * This module is also the API server child's entry point (`node --import tsx
 * bench/operator-cluster.ts --port P --counts-port Q`): the server's one log line per request is
 * counted in memory instead of written, and the counts are served as JSON on a second port, so the
 * benchmark learns how many requests of which kind the operator made without anyone parsing a log.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import {
  ApiextensionsV1Api,
  CoreV1Api,
  KubeConfig,
  loadYaml,
  type V1CustomResourceDefinition,
} from "@kubernetes/client-node";
import { kubeconfigYaml, writeKubeconfig } from "../e2e/apiserver/kubeconfig.js";
import { freePort } from "../e2e/support/net.js";
import { createCertificateAuthority, writeCertificateAuthority } from "../pki/src/index.js";
import { type Child, processCpuSeconds, processMemory, REPO, startChild, waitUntilReady } from "./proc.js";

const OPERATOR_NAMESPACE = "custody-system";
const HOST = "127.0.0.1";
const ENTRY = join(REPO, "cli/src/entry.ts");
const SELF = fileURLToPath(import.meta.url);
const CRD_FILES = ["custody.dev_serviceidentities.yaml", "custody.dev_accesspolicies.yaml"];
/** Start-up guard for leader election (the Lease is free, so it is normally won at once). */
const LEADERSHIP_LIMIT_MS = 60_000;

/** Requests the API server answered, keyed `METHOD resource[/subresource] status`. */
export interface RequestCounts {
  readonly total: number;
  readonly byKey: Readonly<Record<string, { readonly count: number; readonly ms: number }>>;
}

export interface ClusterOptions {
  /** Namespaces created before the operator starts (besides custody-system). */
  readonly namespaces: readonly string[];
  readonly operatorLogLevel: string;
  /** More `custody operator` flags (e.g. --concurrency 16), for experiments. */
  readonly operatorArgs: readonly string[];
  /** Node flags for both children (e.g. --cpu-prof --cpu-prof-dir=DIR). */
  readonly nodeArgs: readonly string[];
  /** Leave the temp directory (logs, kubeconfig, CA) in place after stop(), for a look at the logs. */
  readonly keep: boolean;
  readonly progress: (message: string) => void;
}

export interface ChildView {
  readonly pid: number;
  readonly logFile: string;
  readonly exited: Promise<string>;
  cpuSeconds(): number;
  peakRssMb(): number;
  tail(lines?: number): string;
}

export interface Cluster {
  readonly kubeConfig: KubeConfig;
  readonly apiServer: ChildView & { counts(): Promise<RequestCounts> };
  readonly operator: ChildView & { readonly adminUrl: string; metrics(): Promise<string> };
  /** Holds the CA, the kubeconfig and both children's logs. */
  readonly directory: string;
  /** Stops the operator, then the API server, and removes the temp directory unless `keep`. */
  stop(): Promise<void>;
}

function view(child: Child): ChildView {
  return {
    pid: child.pid,
    logFile: child.logFile,
    exited: child.exited,
    cpuSeconds: () => processCpuSeconds(child.pid),
    peakRssMb: () => processMemory(child.pid).peakRssMb,
    tail: (lines) => child.tail(lines),
  };
}

async function getText(url: string): Promise<string> {
  const response = await fetch(url);
  const text = await response.text();
  if (!response.ok) throw new Error(`GET ${url}: ${response.status} ${text.slice(0, 200)}`);
  return text;
}

/** Polls the operator's /readyz until it says it leads (its controllers run only then). */
async function waitForLeadership(operator: Child, adminUrl: string): Promise<void> {
  let gone: string | undefined;
  void operator.exited.then((reason) => {
    gone = reason;
  });
  const deadline = Date.now() + LEADERSHIP_LIMIT_MS;
  while (Date.now() < deadline) {
    if (gone !== undefined) throw new Error(`custody operator ${gone} before it led\n${operator.tail()}`);
    const body = JSON.parse(await getText(`${adminUrl}/readyz`)) as { leader?: unknown };
    if (body.leader === true) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`custody operator did not win the Lease within ${LEADERSHIP_LIMIT_MS / 1000} s`);
}

async function installCrdsAndNamespaces(
  kubeConfig: KubeConfig,
  namespaces: readonly string[],
): Promise<void> {
  const extensions = kubeConfig.makeApiClient(ApiextensionsV1Api);
  for (const file of CRD_FILES) {
    // client-node's loader, not a plain YAML parse: its models keep `default` and x-kubernetes-* keys.
    const crd = loadYaml<V1CustomResourceDefinition>(readFileSync(join(REPO, "crds", file), "utf8"));
    await extensions.createCustomResourceDefinition({ body: crd });
  }
  const core = kubeConfig.makeApiClient(CoreV1Api);
  for (const name of [OPERATOR_NAMESPACE, ...namespaces]) {
    await core.createNamespace({ body: { metadata: { name } } });
  }
}

/**
 * Starts the API server, installs the CRDs and namespaces, starts the operator and waits until it
 * leads. On any failure the children are stopped and the directory removed before the error is thrown.
 */
export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const directory = mkdtempSync(join(tmpdir(), "custody-bench-operator-"));
  const children: Child[] = [];
  const removeDirectory = () => rmSync(directory, { recursive: true, force: true });
  // Last resort if the benchmark dies without stopping the children (an uncaught error, process.exit).
  const onExit = () => {
    for (const child of children) {
      try {
        if (child.pid > 0) process.kill(child.pid, "SIGKILL");
      } catch {}
    }
    removeDirectory();
  };
  process.once("exit", onExit);
  const stop = async () => {
    // The operator first: its watches and writes end before the server they talk to.
    for (const child of [...children].reverse()) await child.stop();
    if (options.keep) options.progress(`kept ${directory}`);
    else removeDirectory();
    process.off("exit", onExit);
  };
  try {
    const apiPort = await freePort();
    const countsPort = await freePort();
    const apiServer = startChild(
      "apiserver",
      [
        ...options.nodeArgs,
        "--import",
        "tsx",
        SELF,
        "--port",
        String(apiPort),
        "--counts-port",
        String(countsPort),
      ],
      join(directory, "apiserver.log"),
    );
    children.push(apiServer);
    const url = `http://${HOST}:${apiPort}`;
    const countsUrl = `http://${HOST}:${countsPort}/counts`;
    await waitUntilReady(apiServer, `${url}/version`);
    await waitUntilReady(apiServer, countsUrl);

    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromString(kubeconfigYaml(url));
    const kubeconfigFile = join(directory, "kubeconfig");
    await writeKubeconfig(kubeconfigFile, url);
    await installCrdsAndNamespaces(kubeConfig, options.namespaces);

    const caDirectory = join(directory, "ca");
    await writeCertificateAuthority(caDirectory, await createCertificateAuthority(), { force: false });

    const adminPort = await freePort();
    const adminUrl = `http://${HOST}:${adminPort}`;
    const operator = startChild(
      "custody operator",
      [
        ...options.nodeArgs,
        "--import",
        "tsx",
        ENTRY,
        "operator",
        "--ca",
        caDirectory,
        "--kubeconfig",
        kubeconfigFile,
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
    children.push(operator);
    await waitUntilReady(operator, `${adminUrl}/readyz`);
    await waitForLeadership(operator, adminUrl);
    options.progress(
      `cluster up: API server pid ${apiServer.pid} at ${url}, operator pid ${operator.pid} (${directory})`,
    );
    return {
      kubeConfig,
      directory,
      apiServer: {
        ...view(apiServer),
        counts: async () => JSON.parse(await getText(countsUrl)) as RequestCounts,
      },
      operator: { ...view(operator), adminUrl, metrics: () => getText(`${adminUrl}/metrics`) },
      stop,
    };
  } catch (error) {
    await stop().catch(() => onExit());
    throw error;
  }
}

/** Where the children's V8 profiles went, largest first (the main thread's is the largest). */
export function profiles(directory: string): string[] {
  return readdirSync(directory)
    .map((name) => join(directory, name))
    .sort((a, b) => statSync(b).size - statSync(a).size);
}

// --- the API server child -------------------------------------------------------------------------

/** `METHOD resource[/subresource]` of a request path, e.g. `PATCH serviceidentities/status`. */
function requestKind(method: string, path: string): string {
  const segments = path.split("/").filter((segment) => segment !== "");
  const namespaced = segments.indexOf("namespaces");
  let rest: string[];
  if (namespaced >= 0 && segments.length > namespaced + 2) rest = segments.slice(namespaced + 2);
  else if (segments[0] === "api") rest = segments.slice(2);
  else if (segments[0] === "apis") rest = segments.slice(3);
  else rest = segments;
  const [resource = "(root)", name, subresource] = rest;
  // A GET of a collection is a list or a watch: the logged path does not carry ?watch.
  const verb = method === "GET" && name === undefined ? "LIST/WATCH" : method;
  return `${verb} ${resource}${subresource === undefined ? "" : `/${subresource}`}`;
}

async function serveApiServer(args: readonly string[]): Promise<void> {
  const { values } = parseArgs({
    args: [...args],
    options: { port: { type: "string" }, "counts-port": { type: "string" } },
    strict: true,
  });
  // Loaded here only: the benchmark process imports this module for startCluster and needs no server.
  const { pino } = await import("pino");
  const { startApiServer } = await import("../e2e/apiserver/server.js");
  const byKey: Record<string, { count: number; ms: number }> = {};
  let total = 0;
  const logger = pino(
    { name: "apiserver", level: "info" },
    {
      write(line: string) {
        const entry = JSON.parse(line) as Record<string, unknown>;
        if (entry.msg !== "request") {
          if (typeof entry.level === "number" && entry.level >= 40) process.stderr.write(line);
          return;
        }
        total++;
        const key = `${requestKind(String(entry.method), String(entry.path))} ${String(entry.status)}`;
        const counted = byKey[key] ?? { count: 0, ms: 0 };
        counted.count++;
        counted.ms += typeof entry.ms === "number" ? entry.ms : 0;
        byKey[key] = counted;
      },
    },
  );
  const server = await startApiServer({ port: Number(values.port ?? 0), host: HOST, logger });
  const counts = createServer((_request, response) => {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ total, byKey } satisfies RequestCounts));
  });
  counts.listen(Number(values["counts-port"] ?? 0), HOST);
  process.stdout.write(`API server: ${server.url}\n`);
  // `on` and a flag, not `once`: a Ctrl-C reaches the whole process group and then the benchmark's
  // SIGTERM follows; a second signal must not cut short the exit (and a --cpu-prof profile with it).
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    counts.close();
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === SELF) {
  await serveApiServer(process.argv.slice(2));
}
