/**
 * The process that owns a one-node test cluster: it builds the operator, sidecar and init images
 * from the checkout (e2e/node/images.sh), makes the node's bridge, starts the control plane on the
 * node's address and the node (support/node.ts), and keeps them until SIGTERM or SIGINT. A process
 * of its own, rather than the test's, so that the cluster can outlive a test run when asked
 * (`make e2e-cluster KEEP_CLUSTER=1`) and be poked at with kubectl afterwards.
 *
 *   node --import tsx e2e/cluster/host.ts up      starts it; ready once cluster.json is written
 *   node --import tsx e2e/cluster/host.ts down    stops the running one, and removes leftovers
 *   node --import tsx e2e/cluster/host.ts status  prints cluster.json, exit 1 when none runs
 *   node --import tsx e2e/cluster/host.ts kill-container ID
 *                                                 SIGKILL to a container's process (a crash)
 *
 * Progress goes to stderr. The state (cluster.json, admin.kubeconfig) lives in /run/custody-node
 * and is gone once the cluster is.
 */
import { execFile } from "node:child_process";
import { copyFile, readFile, rename, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import { CLUSTER_STATE_FILE, type ClusterState, KUBECONFIG_FILE } from "../support/cluster-host.js";
import { ControlPlane } from "../support/control-plane.js";
import { NodeNetwork, nodeCtr, removeNodeLeftovers, TestNode } from "../support/node.js";

const ROOT = resolve(import.meta.dirname, "..", "..");
const IMAGE_TAG = "e2e";
const IMAGES_DIRECTORY = "/var/lib/custody-node/images";
const DOWN_TIMEOUT_MS = 90_000;

function say(line: string): void {
  process.stderr.write(`cluster: ${line}\n`);
}

/** e2e/node/images.sh, its progress passed through. */
function buildImages(directory: string): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = execFile("bash", [join(ROOT, "e2e", "node", "images.sh"), directory, IMAGE_TAG], {
      cwd: ROOT,
      maxBuffer: 64 * 1024 * 1024,
    });
    child.stdout?.on("data", (chunk: Buffer) => process.stderr.write(chunk));
    child.stderr?.on("data", (chunk: Buffer) => process.stderr.write(chunk));
    child.once("error", reject);
    child.once("exit", (code) =>
      code === 0 ? resolvePromise() : reject(new Error(`e2e/node/images.sh exited ${code}`)),
    );
  });
}

async function up(): Promise<void> {
  const started = Date.now();
  let network: NodeNetwork | undefined;
  let plane: ControlPlane | undefined;
  let node: TestNode | undefined;
  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      say("stopping: the node, the control plane, the bridge");
      await node?.stop();
      await plane?.stop();
      await network?.remove();
      say("stopped");
    })();
    return stopping;
  };
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.once(signal, () => {
      void stop().finally(() => process.exit(0));
    });
  }
  try {
    network = await NodeNetwork.create({ log: (line) => say(line) });
    await buildImages(IMAGES_DIRECTORY);
    plane = await ControlPlane.start({
      address: network.address,
      scheduler: true,
      log: (line) => say(line),
    });
    node = await TestNode.start({
      controlPlane: plane,
      network,
      images: ["custody-operator", "custody-sidecar", "custody-init"].map((name) =>
        join(IMAGES_DIRECTORY, `${name}.tar`),
      ),
      log: (line) => say(line),
    });
    await copyFile(plane.kubeconfigPath, KUBECONFIG_FILE);
    const state: ClusterState = {
      pid: process.pid,
      kubeconfig: KUBECONFIG_FILE,
      server: plane.server,
      kubernetesVersion: plane.version,
      node: node.name,
      nodeAddress: node.address,
      operatorImage: `custody.local/custody-operator:${IMAGE_TAG}`,
      sidecarImage: `custody.local/custody-sidecar:${IMAGE_TAG}`,
      initImage: `custody.local/custody-init:${IMAGE_TAG}`,
      logs: {
        controlPlane: join(plane.directory, "logs"),
        node: node.logPath("kubelet").replace(/\/[^/]*$/, ""),
      },
    };
    // Written whole, then renamed: a reader never sees half of it.
    await writeFile(`${CLUSTER_STATE_FILE}.tmp`, `${JSON.stringify(state, null, 2)}\n`);
    await rename(`${CLUSTER_STATE_FILE}.tmp`, CLUSTER_STATE_FILE);
    say(`ready after ${((Date.now() - started) / 1000).toFixed(1)} s: export KUBECONFIG=${KUBECONFIG_FILE}`);
  } catch (error) {
    say(`failed: ${error instanceof Error ? error.message : String(error)}`);
    await stop();
    process.exit(1);
  }
  // Lives until a signal.
  setInterval(() => undefined, 1 << 30);
}

async function readState(): Promise<ClusterState | undefined> {
  try {
    return JSON.parse(await readFile(CLUSTER_STATE_FILE, "utf8")) as ClusterState;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function down(): Promise<void> {
  const state = await readState();
  if (state !== undefined && alive(state.pid)) {
    say(`stopping the cluster host (process ${state.pid})`);
    process.kill(state.pid, "SIGTERM");
    const deadline = Date.now() + DOWN_TIMEOUT_MS;
    while (alive(state.pid) && Date.now() < deadline) await sleep(250);
    if (alive(state.pid)) process.kill(state.pid, "SIGKILL");
  }
  // Whatever is left (the host killed outright): processes, mounts, bridge, chains, cgroups.
  await removeNodeLeftovers();
  say("no test cluster runs on this machine");
}

async function status(): Promise<number> {
  const state = await readState();
  if (state === undefined || !alive(state.pid)) {
    process.stdout.write("no test cluster runs on this machine\n");
    return 1;
  }
  process.stdout.write(`${JSON.stringify(state, null, 2)}\nexport KUBECONFIG=${state.kubeconfig}\n`);
  return 0;
}

async function main(command: string | undefined): Promise<number> {
  if (command === "up") {
    await up();
    return 0;
  }
  if (command === "down") {
    await down();
    return 0;
  }
  if (command === "status") return status();
  const containerId = process.argv[3];
  if (command === "kill-container" && containerId !== undefined && /^[0-9a-f]{64}$/.test(containerId)) {
    await nodeCtr(["tasks", "kill", "--signal", "SIGKILL", containerId]);
    return 0;
  }
  process.stderr.write("usage: host.ts up | down | status | kill-container <64 hex digits>\n");
  return 2;
}

if (process.argv[1] !== undefined && pathToFileURL(resolve(process.argv[1])).href === import.meta.url) {
  main(process.argv[2]).then(
    (code) => {
      if (code !== 0 || process.argv[2] !== "up") process.exitCode = code;
    },
    (error: unknown) => {
      say(error instanceof Error ? error.message : String(error));
      process.exitCode = 1;
    },
  );
}
