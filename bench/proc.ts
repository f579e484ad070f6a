/**
 * The child processes of a benchmark and what Linux says about a process in /proc: each child with
 * its log in a file (not a pipe the benchmark would have to read while it measures) and the tail of
 * its stderr kept for error messages; CPU time of a process and of the whole machine; resident memory.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { constants } from "node:os";
import { fileURLToPath } from "node:url";

export const REPO = fileURLToPath(new URL("../", import.meta.url));
const STOP_GRACE_MS = 15_000;
/** Start-up guard only (a child that never answers): never a performance assertion. */
const STARTUP_LIMIT_MS = 60_000;

/** CPU time (user + system) consumed so far, in seconds. */
export type CpuClock = () => number;

function clockTicksPerSecond(): number {
  try {
    const ticks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());
    return Number.isInteger(ticks) && ticks > 0 ? ticks : 100;
  } catch {
    return 100;
  }
}

const TICKS = clockTicksPerSecond();

/** CPU seconds (user + system) the process has used so far, from /proc/PID/stat; NaN when unreadable. */
export function processCpuSeconds(pid: number): number {
  try {
    // Fields after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
    const text = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / TICKS;
  } catch {
    return Number.NaN;
  }
}

/**
 * CPU time (user + system + irq + steal) all cores of this machine have spent so far, in seconds,
 * from /proc/stat; undefined where there is none. Minus the server's and the client's, it is what
 * other processes took during a batch: on a shared machine, the noise.
 */
export function machineCpuClock(): CpuClock | undefined {
  const read = () => {
    const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0] ?? "";
    // cpu user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
    return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / TICKS;
  };
  try {
    return Number.isFinite(read()) && read() > 0 ? read : undefined;
  } catch {
    return undefined;
  }
}

export interface Memory {
  /** Resident set now (VmRSS), in MiB. */
  readonly rssMb: number;
  /** The highest resident set since the process started (VmHWM), in MiB. */
  readonly peakRssMb: number;
}

/** From /proc/PID/status; NaN where there is none (not Linux, process gone). */
export function processMemory(pid: number): Memory {
  let text = "";
  try {
    text = readFileSync(`/proc/${pid}/status`, "utf8");
  } catch {}
  const kib = (field: string) => {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(text);
    return match === null ? Number.NaN : Number(match[1]) / 1024;
  };
  return { rssMb: kib("VmRSS"), peakRssMb: kib("VmHWM") };
}

export interface Child {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string;
  /** Resolves with the reason if the child exits before stop() is called. */
  readonly exited: Promise<string>;
  /** The last lines of the child's log and stderr, for error messages. */
  tail(lines?: number): string;
  /** SIGTERM, SIGKILL if it takes too long. */
  stop(): Promise<void>;
}

/**
 * Starts `node <args>` with stdout going to `logFile` (not a pipe this process would have to read
 * while it measures) and stderr kept in memory (its last 8 KB).
 */
export function startChild(
  name: string,
  args: readonly string[],
  logFile: string,
  options: { readonly hideLogLines?: (line: string) => boolean } = {},
): Child {
  const logFd = openSync(logFile, "w");
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, args, { cwd: REPO, stdio: ["ignore", logFd, "pipe"] });
  } finally {
    closeSync(logFd);
  }
  let stderr = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (chunk: string) => {
    stderr = `${stderr}${chunk}`.slice(-8_000);
  });
  let stopping = false;
  const exited = new Promise<string>((resolve) => {
    child.once("exit", (code, signal) => {
      if (!stopping) resolve(signal === null ? `exited with code ${code}` : `was killed by ${signal}`);
    });
    child.once("error", (error) => resolve(`could not start: ${error.message}`));
  });
  const pid = child.pid ?? -1;
  return {
    name,
    pid,
    logFile,
    exited,
    tail(lines = 15) {
      let log = "";
      try {
        log = readFileSync(logFile, "utf8");
      } catch {}
      const last = (text: string) =>
        text
          .trimEnd()
          .split("\n")
          .filter((line) => options.hideLogLines?.(line) !== true)
          .slice(-lines)
          .join("\n");
      return `--- ${name} log (last ${lines} lines) ---\n${last(log)}\n--- ${name} stderr ---\n${last(stderr)}`;
    },
    async stop() {
      stopping = true;
      if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
      const gone = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      const force = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
      await gone;
      clearTimeout(force);
    },
  };
}

/** Polls `url` until it answers 200; fails if the child exits first or after STARTUP_LIMIT_MS. */
export async function waitUntilReady(child: Child, url: string): Promise<void> {
  let gone: string | undefined;
  void child.exited.then((reason) => {
    gone = reason;
  });
  const deadline = Date.now() + STARTUP_LIMIT_MS;
  while (Date.now() < deadline) {
    if (gone !== undefined) throw new Error(`${child.name} ${gone} before it was ready\n${child.tail()}`);
    try {
      const response = await fetch(url);
      await response.arrayBuffer();
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${child.name} was not ready within ${STARTUP_LIMIT_MS / 1000} s\n${child.tail()}`);
}

/** Set by the first SIGINT or SIGTERM a benchmark receives (one benchmark per process). */
let interruptedBy: NodeJS.Signals | undefined;

/**
 * Aborts `controller` on SIGINT or SIGTERM; returns the function that stops listening. `on`, not
 * `once`: a Ctrl-C (or `timeout`) signals the whole process group, and the same signal can arrive
 * twice; a second one must not kill the benchmark before it has stopped its children.
 */
export function abortOnSignals(controller: AbortController): () => void {
  const onSignal = (signal: NodeJS.Signals) => {
    interruptedBy ??= signal;
    controller.abort(new Error(`interrupted by ${signal}`));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  return () => {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  };
}

export function wasInterrupted(): boolean {
  return interruptedBy !== undefined;
}

/** The exit code of a failed run: 128 + the signal's number after an interruption, else 1. */
export function failureExitCode(): number {
  return interruptedBy === undefined ? 1 : 128 + (constants.signals[interruptedBy] ?? 0);
}
