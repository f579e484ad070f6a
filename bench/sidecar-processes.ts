/**
 * The processes of bench/sidecar.ts: the CLI compiled once into a temp directory (what
 * `bin/custody.mjs` runs from dist/, without tsx's loader thread in every sidecar's memory), child
 * processes with their log in a file and the tail of their stderr kept for error messages, and what
 * Linux says about a process in /proc: CPU time, resident memory now (VmRSS) and at its peak (VmHWM),
 * accounted per mode of the benchmark.
 */
import { execFile } from "node:child_process";
import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { type Child, machineCpuClock, processCpuSeconds, processMemory, REPO } from "./proc.js";

const SOURCE_ENTRY = join(REPO, "cli/src/entry.ts");

/** How a sidecar is started: node, its flags, and the CLI entry. */
export interface CliRuntime {
  readonly name: "compiled" | "tsx";
  /** Arguments to node before the custody command (the entry script last). */
  readonly nodeArgs: readonly string[];
  /** Arguments to node that run one of COMPILED_SCRIPTS (a path from the repository root), built alike. */
  scriptArgs(script: (typeof COMPILED_SCRIPTS)[number]): string[];
}

/** Scripts of bench/ compiled with the CLI, so they run as the sidecars do (the plain proxy pair). */
export const COMPILED_SCRIPTS = ["bench/plain-proxy.ts"] as const;

/** Runs from source through tsx: the CLI as the e2e tests and the issuer bench run it. */
export function tsxRuntime(): CliRuntime {
  return {
    name: "tsx",
    nodeArgs: ["--import", "tsx", SOURCE_ENTRY],
    scriptArgs: (script) => ["--import", "tsx", join(REPO, script)],
  };
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
  // The build configuration plus the bench scripts that must run compiled too (its include and
  // rootDir stay relative to the repository, where tsconfig.build.json is).
  const project = join(directory, "tsconfig.json");
  writeFileSync(
    project,
    JSON.stringify({
      extends: join(REPO, "tsconfig.build.json"),
      compilerOptions: { outDir },
      files: COMPILED_SCRIPTS.map((script) => join(REPO, script)),
    }),
  );
  symlinkSync(join(REPO, "node_modules"), join(directory, "node_modules"), "dir");
  const tsc = join(REPO, "node_modules/typescript/bin/tsc");
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [tsc, "-p", project],
      { cwd: REPO, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error !== null) {
          reject(new Error(`tsc -p tsconfig.build.json failed: ${error.message}\n${stdout}${stderr}`));
          return;
        }
        resolve({
          name: "compiled",
          nodeArgs: [join(outDir, "cli/src/entry.js")],
          scriptArgs: (script) => [join(outDir, script.replace(/\.ts$/, ".js"))],
        });
      },
    );
  });
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
