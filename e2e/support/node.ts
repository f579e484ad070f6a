/**
 * A real Kubernetes node for the test cluster, on this machine: the kubelet and kube-proxy of the
 * control plane's release (e2e/control-plane/build.sh), containerd and runc
 * (e2e/node/build.sh), the CNI bridge and host-local plugins of the Debian package, so Pods get
 * network namespaces and addresses of their own on a bridge, their Services ClusterIPs (kube-proxy
 * in iptables mode), their names a resolver (support/cluster-dns.ts, in place of CoreDNS).
 *
 * The layout, fixed so that the leftovers of a run that was killed can be found by the next one:
 *
 *   bridge custody0, 10.244.0.1/24   the node's address: kube-apiserver, the kubelet and the DNS
 *                                    resolver listen there; Pods get 10.244.0.10 and up
 *   10.0.0.0/24                      Services (the control plane's range; kubernetes = 10.0.0.1)
 *   /run/custody-node                sockets, containerd's state, the Pods' network namespaces
 *   /var/lib/custody-node            images, container filesystems, the kubelet's volumes, logs
 *   cgroup /custody-node             every Pod's cgroups (the kubelet's cgroupRoot)
 *   iptables chains KUBE-*           kube-proxy's and the kubelet's
 *
 * It needs root (network namespaces, mounts, iptables, cgroups). One node per machine: a second
 * start while one runs fails with the running one's process id.
 */
import { execFile } from "node:child_process";
import { accessSync, constants, existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { mkdir, readdir, readFile, rm, rmdir, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { stringify } from "yaml";
import { ClusterDns, serviceRecordsOf } from "./cluster-dns.js";
import {
  type ControlPlane,
  controlPlaneCacheDirectory,
  DEFAULT_KUBERNETES_VERSION,
} from "./control-plane.js";
import { Daemons, seconds } from "./daemons.js";
import { freePort } from "./net.js";
import { findTool, realClockEnv } from "./tools.js";

export const NODE_NAME = "custody-node";
export const BRIDGE = "custody0";
export const NODE_ADDRESS = "10.244.0.1";
export const POD_SUBNET = "10.244.0.0/24";
const POD_RANGE_START = "10.244.0.10";
const STATE_DIRECTORY = "/run/custody-node";
const DATA_DIRECTORY = "/var/lib/custody-node";
const LOCK_FILE = "/run/custody-node.pid";
const CGROUP_ROOT = "custody-node";
const CGROUP_FS = "/sys/fs/cgroup";
const CNI_PLUGIN_DIRECTORY = "/usr/lib/cni";
const CNI_PLUGINS = ["bridge", "host-local", "loopback"];
const CONTAINERD_SOCKET = join(STATE_DIRECTORY, "containerd", "containerd.sock");
export const CONTAINERD_NAMESPACE = "k8s.io";
/** The sandbox image e2e/node/build.sh makes (containerd's pinned sandbox image). */
export const PAUSE_IMAGE = "custody.local/pause:3.10";
export const KUBELET_PORT = 10250;
const CLUSTER_DOMAIN = "cluster.local";
const DEFAULT_CONTAINERD_VERSION = "v2.4.2";
const DEFAULT_RUNC_VERSION = "v1.4.4";
const DEFAULT_PROMETHEUS_VERSION = "v3.16.0";
const BRIDGE_NF_CALL_IPTABLES = "/proc/sys/net/bridge/bridge-nf-call-iptables";
const IP_FORWARD = "/proc/sys/net/ipv4/ip_forward";
const COMMAND_TIMEOUT_MS = 120_000;

export interface NodeBinaries {
  readonly kubelet: string;
  readonly kubeProxy: string;
  readonly containerd: string;
  readonly ctr: string;
  readonly runc: string;
  /** The OCI archives of the sandbox image and the `node:24-bookworm-slim` stand-in. */
  readonly baseImages: readonly string[];
  /** Prometheus with Kubernetes service discovery, which Debian's package lacks, and its promtool. */
  readonly prometheus: string;
  readonly promtool: string;
}

type NodeCheck =
  | { readonly available: true; readonly binaries: NodeBinaries }
  | { readonly available: false; readonly reason: string };

function nodeCacheDirectory(): string {
  return join(process.env.CUSTODY_CACHE_DIR ?? join(homedir(), ".cache", "custody"), "node");
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** What the node needs on this machine, or the first reason it cannot start here. */
function findNode(): NodeCheck {
  if (process.getuid?.() !== 0) {
    return {
      available: false,
      reason: "the test node needs root (network namespaces, mounts, iptables, cgroups)",
    };
  }
  const kubernetes = join(
    controlPlaneCacheDirectory(),
    `kubernetes-${process.env.CUSTODY_K8S_VERSION ?? DEFAULT_KUBERNETES_VERSION}`,
  );
  const cache = nodeCacheDirectory();
  const containerd = join(
    cache,
    `containerd-${process.env.CUSTODY_CONTAINERD_VERSION ?? DEFAULT_CONTAINERD_VERSION}`,
  );
  const prometheus = join(
    cache,
    `prometheus-${process.env.CUSTODY_PROMETHEUS_VERSION ?? DEFAULT_PROMETHEUS_VERSION}`,
  );
  const binaries: NodeBinaries = {
    kubelet: join(kubernetes, "kubelet"),
    kubeProxy: join(kubernetes, "kube-proxy"),
    containerd: join(containerd, "containerd"),
    ctr: join(containerd, "ctr"),
    runc: join(cache, `runc-${process.env.CUSTODY_RUNC_VERSION ?? DEFAULT_RUNC_VERSION}`, "runc"),
    baseImages: [join(cache, "images", "pause.tar"), join(cache, "images", "node-24-bookworm-slim.tar")],
    prometheus: join(prometheus, "prometheus"),
    promtool: join(prometheus, "promtool"),
  };
  const built = [
    binaries.kubelet,
    binaries.kubeProxy,
    binaries.containerd,
    binaries.ctr,
    binaries.runc,
    binaries.prometheus,
    binaries.promtool,
  ];
  const missingBuilt = [
    ...built.filter((path) => !executable(path)),
    ...binaries.baseImages.filter((path) => !existsSync(path)),
  ];
  if (missingBuilt.length > 0) {
    return {
      available: false,
      reason: `the test node is not built (missing ${missingBuilt.join(", ")}); build it with: bash e2e/control-plane/build.sh && bash e2e/node/build.sh`,
    };
  }
  const plugins = CNI_PLUGINS.map((name) => join(CNI_PLUGIN_DIRECTORY, name)).filter(
    (path) => !executable(path),
  );
  if (plugins.length > 0) {
    return {
      available: false,
      reason: `the CNI plugins are missing (${plugins.join(", ")}): apt-get install -y containernetworking-plugins`,
    };
  }
  for (const [tool, apt] of [
    ["ip", "iproute2"],
    ["iptables", "iptables"],
    ["ip6tables", "iptables"],
    ["buildah", "buildah"],
    ["umount", "mount"],
  ] as const) {
    if (!findTool(tool).available) {
      return { available: false, reason: `${tool} is not installed (apt-get install -y ${apt})` };
    }
  }
  const foreign = foreignKubernetesNode();
  if (foreign !== undefined) {
    return {
      available: false,
      reason: `this machine is a Kubernetes node already (${foreign}): a test node here would clash with its iptables chains, cgroups and ports`,
    };
  }
  if (!existsSync(BRIDGE_NF_CALL_IPTABLES)) {
    return {
      available: false,
      reason:
        "the kernel has no bridge netfilter (br_netfilter): kube-proxy cannot see Pod-to-Pod Service traffic",
    };
  }
  return { available: true, binaries };
}

/** A kubelet or kube-proxy of someone else's running here ("kubelet, process 123"), if any. */
function foreignKubernetesNode(): string | undefined {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const commandLine = readFileSync(join("/proc", entry, "cmdline"), "utf8").split("\0");
      const program = (commandLine[0] ?? "").split("/").at(-1);
      const ours = commandLine.some(
        (argument) => argument.includes(STATE_DIRECTORY) || argument.includes(DATA_DIRECTORY),
      );
      if ((program === "kubelet" || program === "kube-proxy") && !ours) return `${program}, process ${entry}`;
    } catch {
      // exited meanwhile
    }
  }
  return undefined;
}

/**
 * Like `requireControlPlane`: true when a node can run here; otherwise throws when
 * CUSTODY_REQUIRE_ALL=1, or prints a visible `SKIP:` line.
 */
export function requireNode(): boolean {
  const check = findNode();
  if (check.available) return true;
  if (process.env.CUSTODY_REQUIRE_ALL === "1") throw new Error(`CUSTODY_REQUIRE_ALL=1 but ${check.reason}`);
  process.stderr.write(`SKIP: ${check.reason}; tests that need it are skipped.\n`);
  return false;
}

// --- commands -----------------------------------------------------------------------------------

export class NodeCommandError extends Error {
  readonly code = "node_command_failed";
}

/** Runs a command to completion; rejects with its stderr when it fails. */
function run(
  command: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv = realClockEnv(),
): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      [...args],
      { env, timeout: COMMAND_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024, encoding: "utf8" },
      (error, stdout, stderr) => {
        if (error === null) resolve(stdout);
        else
          reject(new NodeCommandError(`${command} ${args.join(" ")}: ${(stderr || error.message).trim()}`));
      },
    );
  });
}

/** Like `run`, for cleanup: a failure is not an error (the thing may not be there). */
async function attempt(command: string, args: readonly string[]): Promise<boolean> {
  try {
    await run(command, args);
    return true;
  } catch {
    return false;
  }
}

// --- leftovers ----------------------------------------------------------------------------------

/** Every cgroup directory of the node's cgroup root, in each hierarchy, deepest first. */
function nodeCgroups(): string[] {
  const found: string[] = [];
  const walk = (directory: string) => {
    let entries: string[];
    try {
      entries = readdirSync(directory);
    } catch {
      return;
    }
    for (const entry of entries) {
      const path = join(directory, entry);
      try {
        if (statSync(path).isDirectory()) walk(path);
      } catch {
        // gone meanwhile
      }
    }
    found.push(directory);
  };
  let hierarchies: string[] = [];
  try {
    hierarchies = readdirSync(CGROUP_FS);
  } catch {
    return found;
  }
  for (const hierarchy of hierarchies) {
    const root = join(CGROUP_FS, hierarchy, CGROUP_ROOT);
    if (existsSync(root)) walk(root);
  }
  return found;
}

/** The processes in the node's cgroups: every container, every sandbox. */
function processesInNodeCgroups(): number[] {
  const pids = new Set<number>();
  for (const cgroup of nodeCgroups()) {
    try {
      for (const line of readFileSync(join(cgroup, "cgroup.procs"), "utf8").split("\n")) {
        if (/^\d+$/.test(line)) pids.add(Number(line));
      }
    } catch {
      // gone meanwhile
    }
  }
  return [...pids];
}

/** Processes whose command line names the node's directories: containerd, its shims, kubelet, kube-proxy. */
function processesOfTheNode(): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const commandLine = readFileSync(join("/proc", entry, "cmdline"), "utf8");
      if (commandLine.includes(STATE_DIRECTORY) || commandLine.includes(DATA_DIRECTORY))
        pids.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

function kill(pids: readonly number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // exited meanwhile
    }
  }
}

/** Mount points under the node's directories, deepest first. */
async function nodeMounts(): Promise<string[]> {
  const table = await readFile("/proc/self/mountinfo", "utf8");
  const points = table
    .split("\n")
    .map((line) => line.split(" ")[4] ?? "")
    .map((point) => point.replaceAll("\\040", " "))
    .filter((point) => point.startsWith(`${STATE_DIRECTORY}/`) || point.startsWith(`${DATA_DIRECTORY}/`));
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

/** Removes, in each table of iptables and ip6tables, every KUBE-* chain and every jump to one. */
async function removeKubeChains(): Promise<void> {
  for (const tool of ["iptables", "ip6tables"]) {
    for (const table of ["filter", "nat", "mangle"]) {
      let rules: string;
      try {
        rules = await run(tool, ["-w", "5", "-t", table, "-S"]);
      } catch {
        continue;
      }
      const lines = rules.split("\n");
      for (const line of lines) {
        const jump = /^-A (\S+) (.*-j KUBE-\S+.*)$/.exec(line);
        if (jump !== null && jump[1] !== undefined && !jump[1].startsWith("KUBE-")) {
          await attempt("sh", ["-c", `${tool} -w 5 -t ${table} -D ${line.slice(3)}`]);
        }
      }
      const chains = lines.flatMap((line) => /^-N (KUBE-\S+)$/.exec(line)?.[1] ?? []);
      for (const chain of chains) await attempt(tool, ["-w", "5", "-t", table, "-F", chain]);
      for (const chain of chains) await attempt(tool, ["-w", "5", "-t", table, "-X", chain]);
    }
  }
}

/**
 * Removes everything a node leaves on the machine: its processes and containers, mounts, network
 * namespaces (mounted under the state directory), the bridge, iptables chains, cgroups, files.
 * Safe to run when nothing is there.
 */
export async function removeNodeLeftovers(): Promise<void> {
  for (let round = 0; round < 5; round++) {
    const pids = [...processesOfTheNode(), ...processesInNodeCgroups()];
    if (pids.length === 0) break;
    kill(pids);
    await sleep(200);
  }
  for (const point of await nodeMounts()) await attempt("umount", ["-l", point]);
  await rm(STATE_DIRECTORY, { recursive: true, force: true });
  await rm(DATA_DIRECTORY, { recursive: true, force: true });
  if (existsSync(`/sys/class/net/${BRIDGE}`)) await attempt("ip", ["link", "delete", BRIDGE]);
  await removeKubeChains();
  for (const cgroup of nodeCgroups()) {
    await rmdir(cgroup).catch(() => undefined);
  }
}

// --- configuration ------------------------------------------------------------------------------

function containerdConfig(binaries: NodeBinaries): string {
  // TOML by hand: a few strings, all paths of ours (no quotes or backslashes in them).
  return `version = 3
root = "${DATA_DIRECTORY}/containerd"
state = "${STATE_DIRECTORY}/containerd"
imports = []

[plugins.'io.containerd.server.v1.grpc']
  address = "${CONTAINERD_SOCKET}"
[plugins.'io.containerd.server.v1.ttrpc']
  address = "${CONTAINERD_SOCKET}.ttrpc"
[plugins.'io.containerd.server.v1.debug']
  address = ""
[plugins.'io.containerd.server.v1.metrics']
  address = ""
# NRI's socket is a fixed host path shared with any other containerd: not ours to take.
[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "${PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  # This machine's capability bounding set lacks CAP_SYS_RESOURCE: containers may only raise their
  # OOM score, never lower it below containerd's.
  restrict_oom_score_adj = true
  # The Pods' network namespaces under the state directory, where cleanup finds them.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "${binaries.runc}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["${CNI_PLUGIN_DIRECTORY}"]
    conf_dir = "${DATA_DIRECTORY}/cni/net.d"
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`;
}

function cniConfig(): string {
  return JSON.stringify(
    {
      cniVersion: "1.0.0",
      name: "custody",
      plugins: [
        {
          type: "bridge",
          bridge: BRIDGE,
          isGateway: true,
          ipMasq: false,
          // A Pod calling its own Service may be sent back to itself, out of and into one port.
          hairpinMode: true,
          ipam: {
            type: "host-local",
            ranges: [[{ subnet: POD_SUBNET, rangeStart: POD_RANGE_START, gateway: NODE_ADDRESS }]],
            routes: [{ dst: "0.0.0.0/0" }],
            dataDir: join(DATA_DIRECTORY, "cni", "ipam"),
          },
        },
      ],
    },
    null,
    2,
  );
}

function kubeletConfig(clientCaFile: string, resolvConf: string): string {
  return stringify({
    apiVersion: "kubelet.config.k8s.io/v1beta1",
    kind: "KubeletConfiguration",
    address: NODE_ADDRESS,
    port: KUBELET_PORT,
    readOnlyPort: 0,
    healthzBindAddress: "127.0.0.1",
    healthzPort: 0,
    containerRuntimeEndpoint: `unix://${CONTAINERD_SOCKET}`,
    // This machine has cgroup v1 and no systemd.
    cgroupDriver: "cgroupfs",
    failCgroupV1: false,
    failSwapOn: false,
    cgroupRoot: `/${CGROUP_ROOT}`,
    // As kubeadm sets it up: the API server authenticates with its client certificate; anything
    // else is checked with the API server (TokenReview, SubjectAccessReview).
    authentication: {
      anonymous: { enabled: false },
      webhook: { enabled: true },
      x509: { clientCAFile: clientCaFile },
    },
    authorization: { mode: "Webhook" },
    clusterDomain: CLUSTER_DOMAIN,
    clusterDNS: [NODE_ADDRESS],
    resolvConf,
    podLogsDir: join(DATA_DIRECTORY, "pod-logs"),
    rotateCertificates: false,
    serverTLSBootstrap: false,
    // The machine's disk is small and shared with the builds: never evict, never collect images.
    evictionHard: {
      "memory.available": "100Mi",
      "nodefs.available": "1%",
      "imagefs.available": "1%",
      "nodefs.inodesFree": "1%",
    },
    imageGCHighThresholdPercent: 100,
    imageGCLowThresholdPercent: 99,
    // The kubelet's default chains (KUBE-FIREWALL…) are for kube-proxy-less setups we do not run.
    makeIPTablesUtilChains: false,
    shutdownGracePeriod: "0s",
  });
}

function kubeProxyConfig(kubeconfig: string, healthzPort: number, metricsPort: number): string {
  return stringify({
    apiVersion: "kubeproxy.config.k8s.io/v1alpha1",
    kind: "KubeProxyConfiguration",
    clientConnection: { kubeconfig },
    hostnameOverride: NODE_NAME,
    mode: "iptables",
    clusterCIDR: POD_SUBNET,
    detectLocalMode: "ClusterCIDR",
    healthzBindAddress: `127.0.0.1:${healthzPort}`,
    metricsBindAddress: `127.0.0.1:${metricsPort}`,
    // NodePorts only on the node's own address, never on the machine's other interfaces.
    nodePortAddresses: [`${NODE_ADDRESS}/32`],
    iptables: { localhostNodePorts: false, masqueradeAll: false },
    // Leave the machine's conntrack settings alone (0: do not set).
    conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: "0s", tcpCloseWaitTimeout: "0s" },
  });
}

// --- the node -----------------------------------------------------------------------------------

function ctrWith(ctr: string, args: readonly string[]): Promise<string> {
  return run(ctr, ["--address", CONTAINERD_SOCKET, "--namespace", CONTAINERD_NAMESPACE, ...args]);
}

/** The node's binaries (Prometheus with Kubernetes discovery among them); throws when not built. */
export function nodeBinaries(): NodeBinaries {
  const check = findNode();
  if (!check.available) throw new NodeCommandError(check.reason);
  return check.binaries;
}

/** `ctr` against the running node's containerd, in the Kubernetes namespace. */
export function nodeCtr(args: readonly string[]): Promise<string> {
  const check = findNode();
  if (!check.available) return Promise.reject(new NodeCommandError(check.reason));
  return ctrWith(check.binaries.ctr, args);
}

export interface NodeNetworkOptions {
  readonly log?: (line: string) => void;
}

/**
 * The node's bridge and address, made before the control plane starts: kube-apiserver listens on
 * the node's address so that Pods reach it as the `kubernetes` Service. Removes what an earlier,
 * killed, run left behind first.
 */
export class NodeNetwork {
  static async create(options: NodeNetworkOptions = {}): Promise<NodeNetwork> {
    const log = options.log ?? ((line: string) => process.stderr.write(`node: ${line}\n`));
    await claimLock();
    try {
      await removeNodeLeftovers();
      await run("ip", ["link", "add", BRIDGE, "type", "bridge"]);
      await run("ip", ["addr", "add", `${NODE_ADDRESS}/24`, "dev", BRIDGE]);
      await run("ip", ["link", "set", BRIDGE, "up"]);
      // Pod-to-Pod traffic through a Service crosses the bridge and must pass kube-proxy's rules.
      const previous = {
        bridgeNf: (await readFile(BRIDGE_NF_CALL_IPTABLES, "utf8")).trim(),
        ipForward: (await readFile(IP_FORWARD, "utf8")).trim(),
      };
      await writeFile(BRIDGE_NF_CALL_IPTABLES, "1");
      await writeFile(IP_FORWARD, "1");
      log(`bridge ${BRIDGE} with ${NODE_ADDRESS}/24`);
      return new NodeNetwork(previous);
    } catch (error) {
      await removeNodeLeftovers();
      await releaseLock();
      throw error;
    }
  }

  readonly address = NODE_ADDRESS;
  readonly podSubnet = POD_SUBNET;
  readonly bridge = BRIDGE;
  #removed = false;

  private constructor(private readonly previous: { readonly bridgeNf: string; readonly ipForward: string }) {}

  /** Removes the bridge and everything the node left; restores the sysctls. Idempotent. */
  async remove(): Promise<void> {
    if (this.#removed) return;
    this.#removed = true;
    await removeNodeLeftovers();
    await writeFile(BRIDGE_NF_CALL_IPTABLES, this.previous.bridgeNf).catch(() => undefined);
    await writeFile(IP_FORWARD, this.previous.ipForward).catch(() => undefined);
    await releaseLock();
  }
}

async function claimLock(): Promise<void> {
  try {
    const holder = Number((await readFile(LOCK_FILE, "utf8")).trim());
    if (holder > 0 && holder !== process.pid && existsSync(`/proc/${holder}`)) {
      throw new NodeCommandError(
        `another test node runs on this machine (process ${holder}, ${LOCK_FILE}): stop it (make e2e-cluster-down) or wait for it`,
      );
    }
  } catch (error) {
    if (error instanceof NodeCommandError) throw error;
  }
  await writeFile(LOCK_FILE, `${process.pid}\n`);
}

async function releaseLock(): Promise<void> {
  try {
    if (Number((await readFile(LOCK_FILE, "utf8")).trim()) === process.pid)
      await rm(LOCK_FILE, { force: true });
  } catch {
    // not ours, or gone
  }
}

export interface TestNodeOptions {
  readonly controlPlane: ControlPlane;
  readonly network: NodeNetwork;
  /** OCI archives to import besides the base images (the operator's, the sidecar's, the init container's). */
  readonly images?: readonly string[];
  readonly readyTimeoutMs?: number;
  readonly log?: (line: string) => void;
}

/** A running node: containerd, the kubelet (registered and Ready), kube-proxy, the DNS resolver. */
export class TestNode {
  static async start(options: TestNodeOptions): Promise<TestNode> {
    const check = findNode();
    if (!check.available) throw new Error(check.reason);
    const node = new TestNode(check.binaries, options);
    try {
      await node.#boot();
      return node;
    } catch (error) {
      await node.stop();
      throw error;
    }
  }

  readonly name = NODE_NAME;
  readonly address = NODE_ADDRESS;
  readonly binaries: NodeBinaries;
  readonly #options: TestNodeOptions;
  readonly #daemons: Daemons;
  readonly #log: (line: string) => void;
  #dns: ClusterDns | undefined;
  #stopped = false;

  private constructor(binaries: NodeBinaries, options: TestNodeOptions) {
    this.binaries = binaries;
    this.#options = options;
    this.#log = options.log ?? ((line: string) => process.stderr.write(`node: ${line}\n`));
    this.#daemons = new Daemons(join(DATA_DIRECTORY, "logs"), this.#log);
  }

  /** Where a component's output goes: containerd, kubelet, kube-proxy. */
  logPath(component: "containerd" | "kubelet" | "kube-proxy"): string {
    return this.#daemons.logPath(component);
  }

  ctr(args: readonly string[]): Promise<string> {
    return ctrWith(this.binaries.ctr, args);
  }

  /** Imports OCI archives into containerd, where the kubelet finds them without pulling. */
  async importImages(archives: readonly string[]): Promise<void> {
    for (const archive of archives) {
      const started = Date.now();
      await this.ctr(["images", "import", "--platform", "linux/amd64", archive]);
      this.#log(`imported ${archive} in ${seconds(started)} s`);
    }
  }

  /**
   * Stops kube-proxy, the kubelet and containerd, kills every container, and removes the node's
   * files; the bridge and the lock stay until `NodeNetwork.remove()`. Idempotent.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#dns?.stop();
    await this.#daemons.stop(["kube-proxy", "kubelet"]);
    await this.#daemons.stop(["containerd"]);
  }

  async #boot(): Promise<void> {
    const started = Date.now();
    const timeout = this.#options.readyTimeoutMs ?? 120_000;
    const plane = this.#options.controlPlane;
    for (const directory of ["logs", "cni/net.d", "kubelet", "pod-logs", "config"]) {
      await mkdir(join(DATA_DIRECTORY, directory), { recursive: true });
    }
    await mkdir(join(STATE_DIRECTORY, "containerd"), { recursive: true });
    const config = join(DATA_DIRECTORY, "config");

    // containerd, with the shim next to it on PATH (containerd looks the shim up there).
    await writeFile(join(config, "containerd.toml"), containerdConfig(this.binaries));
    await writeFile(join(DATA_DIRECTORY, "cni", "net.d", "10-custody.conflist"), cniConfig());
    const containerdDirectory = this.binaries.containerd.slice(0, this.binaries.containerd.lastIndexOf("/"));
    this.#daemons.spawn(
      "containerd",
      this.binaries.containerd,
      ["--config", join(config, "containerd.toml")],
      {
        env: { ...realClockEnv(), PATH: `${containerdDirectory}:${process.env.PATH ?? "/usr/bin:/bin"}` },
      },
    );
    await this.#daemons.waitFor("containerd", timeout, async () => {
      await this.ctr(["version"]);
      return true;
    });
    await this.importImages([...this.binaries.baseImages, ...(this.#options.images ?? [])]);

    // The kubelet, as system:node:<name> (Node authorizer, NodeRestriction), Pods' cgroups under
    // its own root in every hierarchy.
    for (const hierarchy of readdirSync(CGROUP_FS)) {
      const root = join(CGROUP_FS, hierarchy);
      if (existsSync(join(root, "cgroup.procs"))) await mkdir(join(root, CGROUP_ROOT), { recursive: true });
    }
    const nodeKubeconfig = await plane.mintUser(`system:node:${NODE_NAME}`, ["system:nodes"]);
    const clientCa = join(config, "ca.crt");
    await writeFile(clientCa, plane.caPem);
    // No search domains or servers of this machine's in the Pods: only the cluster's resolver.
    const resolvConf = join(config, "resolv.conf");
    await writeFile(resolvConf, "");
    await writeFile(join(config, "kubelet.yaml"), kubeletConfig(clientCa, resolvConf));
    this.#daemons.spawn("kubelet", this.binaries.kubelet, [
      `--config=${join(config, "kubelet.yaml")}`,
      `--kubeconfig=${nodeKubeconfig}`,
      `--root-dir=${join(DATA_DIRECTORY, "kubelet")}`,
      `--cert-dir=${join(DATA_DIRECTORY, "kubelet", "pki")}`,
      `--hostname-override=${NODE_NAME}`,
      `--node-ip=${NODE_ADDRESS}`,
      "--v=1",
    ]);

    // kube-proxy, as system:kube-proxy (bound to system:node-proxier by the default RBAC).
    const proxyKubeconfig = await plane.mintUser("system:kube-proxy");
    const proxyHealthzPort = await freePort();
    await writeFile(
      join(config, "kube-proxy.yaml"),
      kubeProxyConfig(proxyKubeconfig, proxyHealthzPort, await freePort()),
    );
    this.#daemons.spawn("kube-proxy", this.binaries.kubeProxy, [
      `--config=${join(config, "kube-proxy.yaml")}`,
      "--v=1",
    ]);

    // Names of Services for the Pods, from the API server's Services and EndpointSlices.
    this.#dns = await ClusterDns.start({
      host: NODE_ADDRESS,
      port: 53,
      clusterDomain: CLUSTER_DOMAIN,
      records: async () => {
        const [services, slices] = await Promise.all([
          plane.get("/api/v1/services"),
          plane.get("/apis/discovery.k8s.io/v1/endpointslices"),
        ]);
        if (services.status !== 200 || slices.status !== 200) {
          throw new Error(`the API server answered ${services.status} and ${slices.status}`);
        }
        return serviceRecordsOf(JSON.parse(services.body), JSON.parse(slices.body));
      },
      log: this.#log,
    });

    await this.#daemons.waitFor(`node ${NODE_NAME} Ready`, timeout, async () => {
      const answer = await plane.get(`/api/v1/nodes/${NODE_NAME}`);
      if (answer.status !== 200) return `GET node: ${answer.status}`;
      const node = JSON.parse(answer.body) as {
        status?: { conditions?: { type: string; status: string; message?: string }[] };
      };
      const ready = node.status?.conditions?.find((condition) => condition.type === "Ready");
      return ready?.status === "True" ? true : `Ready=${ready?.status ?? "?"}: ${ready?.message ?? ""}`;
    });
    // kube-proxy's /healthz answers 200 once its rules are in place for the Services it has seen.
    await this.#daemons.waitFor("kube-proxy /healthz", timeout, async () => {
      const response = await fetch(`http://127.0.0.1:${proxyHealthzPort}/healthz`, {
        signal: AbortSignal.timeout(2_000),
      });
      return response.status === 200 ? true : `${response.status} ${(await response.text()).slice(0, 200)}`;
    });
    this.#log(`node ${NODE_NAME} Ready after ${seconds(started)} s`);
  }
}

/** Names of the node's daemons' log files, for diagnostics. */
export async function nodeLogFiles(): Promise<string[]> {
  const directory = join(DATA_DIRECTORY, "logs");
  try {
    return (await readdir(directory)).map((name) => join(directory, name));
  } catch {
    return [];
  }
}
