/**
 * The processes of bench/sidecar.ts: the CLI compiled once into a temp directory (what
 * `bin/custody.mjs` runs from dist/, without tsx's loader thread in every sidecar's memory), child
 * processes with their log in a file and the tail of their stderr kept for error messages, and what
 * Linux says about a process in /proc: CPU time, resident memory now (VmRSS) and at its peak (VmHWM),
 * accounted per mode of the benchmark.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { machineCpuClock } from "./issuer-server.js";

export const REPO = fileURLToPath(new URL("../", import.meta.url));
const SOURCE_ENTRY = join(REPO, "cli/src/entry.ts");
const STOP_GRACE_MS = 10_000;
/** Start-up guard only (a child that never answers): never a performance assertion. */
const STARTUP_LIMIT_MS = 60_000;

/** How a sidecar is started: node, its flags, and the CLI entry. */
export interface CliRuntime {
  readonly name: "compiled" | "tsx";
  /** Arguments to node before the custody command (the entry script last). */
  readonly nodeArgs: readonly string[];
}

/** Runs from source through tsx: the CLI as the e2e tests and the issuer bench run it. */
export function tsxRuntime(): CliRuntime {
  return { name: "tsx", nodeArgs: ["--import", "tsx", SOURCE_ENTRY] };
}

/**
 * Compiles the CLI with the repository's own build configuration (tsconfig.build.json, as `npm run
 * build` does) into `<directory>/dist`, next to a package.json (ESM) and a link to the repository's
 * node_modules, so the compiled modules resolve their dependencies exactly as dist/ would. Nothing is
 * written inside the repository; dist/ may be stale, so it is not used.
 */
export function compileCli(directory: string): Promise<CliRuntime> {
  const outDir = join(directory, "dist");
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(directory, "package.json"), `${JSON.stringify({ type: "module", private: true })}\n`);
  symlinkSync(join(REPO, "node_modules"), join(directory, "node_modules"), "dir");
  const tsc = join(REPO, "node_modules/typescript/bin/tsc");
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [tsc, "-p", join(REPO, "tsconfig.build.json"), "--outDir", outDir],
      { cwd: REPO, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error !== null) {
          reject(new Error(`tsc -p tsconfig.build.json failed: ${error.message}\n${stdout}${stderr}`));
          return;
        }
        resolve({ name: "compiled", nodeArgs: [join(outDir, "cli/src/entry.js")] });
      },
    );
  });
}

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
export function startChild(name: string, args: readonly string[], logFile: string): Child {
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
      const last = (text: string) => text.trimEnd().split("\n").slice(-lines).join("\n");
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

/** The processes of one run: the app and the two sidecars. */
export interface Processes {
  readonly app: Child;
  readonly caller: Child;
  readonly callee: Child;
}

/** CPU seconds of every process of the run, read together. */
export type CpuReading = Record<"app" | "caller" | "callee" | "client", number>;

export function readCpu(processes: Processes): CpuReading {
  const client = process.cpuUsage();
  return {
    app: processCpuSeconds(processes.app.pid),
    caller: processCpuSeconds(processes.caller.pid),
    callee: processCpuSeconds(processes.callee.pid),
    client: (client.user + client.system) / 1e6,
  };
}

const machineCpu = machineCpuClock();

/** CPU seconds each process spent on one mode's timed rounds, the requests sent meanwhile, and the noise. */
export class CpuAccount {
  requests = 0;
  seconds: CpuReading = { app: 0, caller: 0, callee: 0, client: 0 };
  /** CPU seconds of the whole machine, and wall seconds, over the same rounds. */
  machineSeconds = 0;
  wallSeconds = 0;
  #start: { reading: CpuReading; machine: number; wall: bigint } | undefined;

  begin(processes: Processes): void {
    this.#start = {
      reading: readCpu(processes),
      machine: machineCpu?.() ?? Number.NaN,
      wall: process.hrtime.bigint(),
    };
  }

  end(processes: Processes, requests: number, timed: boolean): void {
    const start = this.#start;
    this.#start = undefined;
    if (start === undefined || !timed) return;
    const now = readCpu(processes);
    this.requests += requests;
    for (const key of Object.keys(now) as (keyof CpuReading)[])
      this.seconds[key] += now[key] - start.reading[key];
    this.machineSeconds += (machineCpu?.() ?? Number.NaN) - start.machine;
    this.wallSeconds += Number(process.hrtime.bigint() - start.wall) / 1e9;
  }

  /** µs of CPU per request, per process. */
  perRequestUs(): CpuReading {
    const per = (seconds: number) => (this.requests > 0 ? (seconds * 1e6) / this.requests : Number.NaN);
    return {
      app: per(this.seconds.app),
      caller: per(this.seconds.caller),
      callee: per(this.seconds.callee),
      client: per(this.seconds.client),
    };
  }

  /** The share of one core the machine's other processes took meanwhile (NaN without /proc/stat). */
  otherShare(): number {
    const ours = this.seconds.app + this.seconds.caller + this.seconds.callee + this.seconds.client;
    return Math.max(0, this.machineSeconds - ours) / this.wallSeconds;
  }
}

/** The highest VmRSS sampled per sidecar while a mode ran, in MiB. */
export class RssSamples {
  caller = 0;
  callee = 0;

  sample(processes: Processes): void {
    this.caller = Math.max(this.caller, processMemory(processes.caller.pid).rssMb);
    this.callee = Math.max(this.callee, processMemory(processes.callee.pid).rssMb);
  }

  get larger(): number {
    return Math.max(this.caller, this.callee);
  }
}
