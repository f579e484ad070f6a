/**
 * Starts and stops the process that owns the one-node test cluster (e2e/cluster/host.ts), for a
 * test suite. The cluster is that process's: the suite talks to it the way a user does, with
 * kubectl and helm and the admin kubeconfig the host writes.
 *
 * Normally the host dies with the test (a parent-death signal, then SIGTERM at the end, and it
 * removes everything it made). With `keep`, it is started in a session of its own and left
 * running after the suite, for a person to look at; `host.ts down` (make e2e-cluster-down) ends it.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { tail, terminate } from "./daemons.js";
import { findTool, realClockEnv } from "./tools.js";

export const CLUSTER_STATE_FILE = "/run/custody-node/cluster.json";
export const KUBECONFIG_FILE = "/run/custody-node/admin.kubeconfig";
/** Where a kept host writes its output (it outlives the test that started it). */
export const KEPT_HOST_LOG = "/var/log/custody-cluster-host.log";
const ROOT = resolve(import.meta.dirname, "..", "..");
const HOST_SCRIPT = join(ROOT, "e2e", "cluster", "host.ts");
/** Images built cold, the control plane and the node: minutes on two cores. */
const DEFAULT_START_TIMEOUT_MS = 15 * 60_000;
const STOP_GRACE_MS = 90_000;

export interface ClusterState {
  readonly pid: number;
  /** The admin kubeconfig (system:masters). */
  readonly kubeconfig: string;
  readonly server: string;
  readonly kubernetesVersion: string;
  readonly node: string;
  readonly nodeAddress: string;
  /** The images built from the checkout, as the node's containerd names them. */
  readonly operatorImage: string;
  readonly sidecarImage: string;
  /** Traffic capture's init container (Dockerfile.init). */
  readonly initImage: string;
  /** Directories of the components' logs. */
  readonly logs: { readonly controlPlane: string; readonly node: string };
}

export interface ClusterHost {
  readonly state: ClusterState;
  /** Left running after `stop()`? */
  readonly kept: boolean;
  /** Ends the host (and with it the cluster), unless it is kept. */
  stop(): Promise<void>;
}

export interface ClusterHostOptions {
  readonly keep?: boolean;
  readonly timeoutMs?: number;
  /** The host's progress lines. Default: stderr. */
  readonly log?: (line: string) => void;
}

async function readState(): Promise<ClusterState | undefined> {
  try {
    return JSON.parse(await readFile(CLUSTER_STATE_FILE, "utf8")) as ClusterState;
  } catch {
    return undefined;
  }
}

function spawnHost(
  keep: boolean,
  log: (line: string) => void,
): { child: ChildProcess; output: () => string } {
  const args = ["--import", "tsx", HOST_SCRIPT, "up"];
  if (keep) {
    const fd = openSync(KEPT_HOST_LOG, "w");
    try {
      const child = spawn(process.execPath, args, {
        cwd: ROOT,
        detached: true,
        stdio: ["ignore", fd, fd],
        env: realClockEnv(),
      });
      child.unref();
      return { child, output: () => `(see ${KEPT_HOST_LOG})` };
    } finally {
      closeSync(fd);
    }
  }
  // Dies with the test process even when that one is killed outright: it then gets SIGTERM and
  // removes what it made.
  const setpriv = findTool("setpriv");
  const [command, commandArgs] = setpriv.available
    ? [setpriv.detail, ["--pdeathsig", "TERM", "--", process.execPath, ...args]]
    : [process.execPath, args];
  const child = spawn(command, commandArgs, {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: realClockEnv(),
  });
  let output = "";
  let pending = "";
  const onData = (chunk: Buffer) => {
    const text = chunk.toString("utf8");
    output = (output + text).slice(-64 * 1024);
    pending += text;
    const lines = pending.split("\n");
    pending = lines.pop() ?? "";
    for (const line of lines) log(line);
  };
  child.stdout?.on("data", onData);
  child.stderr?.on("data", onData);
  return { child, output: () => output };
}

/** Starts the host and waits until its cluster is up (its cluster.json names it). */
export async function startClusterHost(options: ClusterHostOptions = {}): Promise<ClusterHost> {
  const keep = options.keep ?? false;
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const timeout = options.timeoutMs ?? DEFAULT_START_TIMEOUT_MS;
  const { child, output } = spawnHost(keep, log);
  child.once("error", () => undefined);
  const exitedEarly = new Promise<void>((resolvePromise) => child.once("exit", () => resolvePromise()));
  let gone = false;
  void exitedEarly.then(() => {
    gone = true;
  });
  const started = Date.now();
  for (;;) {
    const state = await readState();
    if (state !== undefined && state.pid === child.pid) {
      return {
        state,
        kept: keep,
        async stop() {
          if (!keep) await terminate(child, STOP_GRACE_MS);
        },
      };
    }
    if (gone) {
      const detail = keep ? await tail(KEPT_HOST_LOG, 60) : output().split("\n").slice(-60).join("\n");
      throw new Error(
        `the cluster host exited (${child.exitCode ?? child.signalCode}) before its cluster was up:\n${detail}`,
      );
    }
    if (Date.now() - started > timeout) {
      await terminate(child, STOP_GRACE_MS);
      throw new Error(
        `the cluster was not up within ${timeout / 1000} s:\n${output().split("\n").slice(-60).join("\n")}`,
      );
    }
    await sleep(500);
  }
}
