/**
 * The long-running programs a test cluster is made of (etcd, kube-apiserver, the kubelet,
 * containerd…), as child processes of the test: each one's output in a log file of its own, a
 * readiness wait that fails as soon as any of them exits (with the tail of every log, which is
 * where the reason is), and a stop that asks first (SIGTERM) and insists after a grace period.
 *
 * When the test process exits without stopping them they are killed on its "exit" event; when it
 * is killed outright (no event), the kernel kills them: they run under `setpriv --pdeathsig KILL`
 * (util-linux), which execs the binary with a parent-death signal.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { findTool, realClockEnv } from "./tools.js";

const DEFAULT_STOP_GRACE_MS = 5_000;
const LOG_TAIL_LINES = 40;
const REPORT_EVERY_MS = 10_000;
const POLL_MS = 250;

const running = new Set<ChildProcess>();
const SETPRIV = findTool("setpriv");
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function terminate(child: ChildProcess, graceMs = DEFAULT_STOP_GRACE_MS): Promise<void> {
  if (exited(child)) return;
  const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const killer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await gone;
  clearTimeout(killer);
}

/** The last lines of a log file, each cut to a readable length. */
export async function tail(path: string, lines = LOG_TAIL_LINES): Promise<string> {
  try {
    const last = (await readFile(path, "utf8")).trimEnd().split("\n").slice(-lines);
    return last.map((line) => (line.length > 400 ? `${line.slice(0, 400)}…` : line)).join("\n");
  } catch {
    return "(no log)";
  }
}

export function seconds(since: number): string {
  return ((Date.now() - since) / 1000).toFixed(1);
}

interface Daemon {
  readonly name: string;
  readonly child: ChildProcess;
  readonly logPath: string;
}

export interface SpawnOptions {
  readonly cwd?: string;
  /** Default: this process's environment without libfaketime (the Go binaries use the real clock). */
  readonly env?: NodeJS.ProcessEnv;
}

/** A group of daemons with their logs in one directory. */
export class Daemons {
  readonly #daemons: Daemon[] = [];

  constructor(
    readonly logDirectory: string,
    readonly log: (line: string) => void,
  ) {}

  logPath(name: string): string {
    return join(this.logDirectory, `${name}.log`);
  }

  /** The process id of a running daemon (the binary itself: setpriv execs it). */
  pid(name: string): number | undefined {
    return this.#daemons.findLast((daemon) => daemon.name === name && !exited(daemon.child))?.child.pid;
  }

  /** Starts `binary` with its stdout and stderr appended to `logPath(name)`. */
  spawn(name: string, binary: string, args: readonly string[], options: SpawnOptions = {}): ChildProcess {
    const logPath = this.logPath(name);
    const fd = openSync(logPath, "a");
    this.log(`starting ${name}`);
    try {
      const [command, commandArgs] = SETPRIV.available
        ? [SETPRIV.detail, ["--pdeathsig", "KILL", "--", binary, ...args]]
        : [binary, args];
      const child = spawn(command, commandArgs, {
        cwd: options.cwd ?? this.logDirectory,
        stdio: ["ignore", fd, fd],
        env: options.env ?? realClockEnv(),
      });
      running.add(child);
      child.once("exit", () => running.delete(child));
      // A failed spawn (ENOENT, EACCES) is reported as the process having exited.
      child.once("error", () => undefined);
      this.#daemons.push({ name, child, logPath });
      return child;
    } finally {
      closeSync(fd);
    }
  }

  /**
   * Polls `probe` until it returns true, logging its last answer every 10 s; fails as soon as a
   * daemon exits, or after `timeoutMs`, with the tail of each daemon's log.
   */
  async waitFor(what: string, timeoutMs: number, probe: () => Promise<true | string>): Promise<void> {
    const started = Date.now();
    let lastReport = started;
    let last = "no answer yet";
    for (;;) {
      const dead = this.#daemons.find((daemon) => exited(daemon.child));
      if (dead !== undefined) {
        const status = dead.child.exitCode ?? dead.child.signalCode;
        throw new Error(`${dead.name} exited (${status}) while waiting for ${what}${await this.logTails()}`);
      }
      try {
        const answer = await probe();
        if (answer === true) return;
        last = answer;
      } catch (error) {
        last = error instanceof Error ? error.message : String(error);
      }
      if (Date.now() - started > timeoutMs) {
        throw new Error(
          `${what} not ready within ${timeoutMs / 1000} s (last answer: ${last})${await this.logTails()}`,
        );
      }
      if (Date.now() - lastReport >= REPORT_EVERY_MS) {
        lastReport = Date.now();
        this.log(`waiting for ${what} (${seconds(started)} s): ${last.slice(0, 300)}`);
      }
      await sleep(POLL_MS);
    }
  }

  /** Every daemon's state and the last lines of its log, for an error message. */
  async logTails(): Promise<string> {
    const parts = await Promise.all(
      this.#daemons.map(async (daemon) => {
        const status = exited(daemon.child)
          ? `exited ${daemon.child.exitCode ?? daemon.child.signalCode}`
          : "running";
        return `\n--- ${daemon.name} (${status}), last lines of ${daemon.logPath}:\n${await tail(daemon.logPath)}`;
      }),
    );
    return parts.join("");
  }

  /** Stops the named daemons (every one started under those names), together. */
  async stop(names: readonly string[], graceMs = DEFAULT_STOP_GRACE_MS): Promise<void> {
    await Promise.all(
      this.#daemons
        .filter((daemon) => names.includes(daemon.name))
        .map((daemon) => terminate(daemon.child, graceMs)),
    );
  }

  /** Stops every daemon still running, together. */
  async stopAll(graceMs = DEFAULT_STOP_GRACE_MS): Promise<void> {
    await Promise.all(this.#daemons.map((daemon) => terminate(daemon.child, graceMs)));
  }
}
