/**
 * `custody sidecar` as a real child process (`node --import tsx cli/src/entry.ts sidecar …`), for
 * what only a process shows: signals and exit codes, its own memory, its stdout log lines.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { fileURLToPath } from "node:url";
import { freePort } from "./net.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

export interface SidecarProcessOptions {
  readonly identityDirectory: string;
  readonly registryPath: string;
  readonly appPort: number;
  readonly tokenUrl?: string;
  /** Default: a free port (the registry lists the port peers call, so a callee needs its own). */
  readonly inboundPort?: number;
  /** More `--setting value` flags. */
  readonly flags?: readonly string[];
}

export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface SidecarProcess extends CliProcess {
  readonly outboundPort: number;
  readonly inboundPort: number;
  readonly adminUrl: string;
}

/** All processes started and not yet known to have exited: killed by `killAll`. */
const running = new Set<CliProcess>();
/** And, should the test worker exit without `killAll` (a crash), killed on its way out. */
const children = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/** Starts a sidecar process and resolves once it logged `listening`; rejects if it exits first. */
export async function startSidecarProcess(options: SidecarProcessOptions): Promise<SidecarProcess> {
  const outboundPort = await freePort();
  const inboundPort = options.inboundPort ?? (await freePort());
  const adminPort = await freePort();
  const args = [
    "sidecar",
    "--identity",
    options.identityDirectory,
    "--registry",
    options.registryPath,
    "--app-port",
    String(options.appPort),
    ...(options.tokenUrl === undefined ? [] : ["--token-url", options.tokenUrl]),
    "--outbound",
    `127.0.0.1:${outboundPort}`,
    "--inbound",
    `127.0.0.1:${inboundPort}`,
    "--admin",
    `127.0.0.1:${adminPort}`,
    "--when-no-policy",
    "allow",
    "--poll-interval",
    "1s",
    ...(options.flags ?? []),
  ];
  const child = await startCliProcess(args, "listening", "sidecar");
  const sidecar: SidecarProcess = {
    ...child,
    outboundPort,
    inboundPort,
    adminUrl: `http://127.0.0.1:${adminPort}`,
  };
  return sidecar;
}

/** A `custody` command as a child process: its log lines, stderr, exit and a kill that waits. */
export interface CliProcess {
  readonly pid: number;
  /** Every stdout line so far (pino JSON, one per line). */
  readonly lines: string[];
  stderr(): string;
  readonly exited: Promise<Exit>;
  /** SIGKILL unless it already exited; resolves once it has. Safe to call more than once. */
  kill(): Promise<Exit>;
}

/**
 * Starts `custody <args>` (from source, through tsx) and resolves once it logged `readyEvent` (or
 * printed a line containing `readyLine`); rejects if it exits first or takes over `readyTimeoutMs`
 * (30 s unless given: a command that starts other processes needs more on a loaded 2-core machine).
 */
export async function startCliProcess(
  args: readonly string[],
  readyEvent: string,
  what: string,
  options: { readonly readyLine?: string; readonly readyTimeoutMs?: number } = {},
): Promise<CliProcess> {
  // Settings come only from the arguments, never from a CUSTODY_* variable of the test run.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith("CUSTODY_")),
  );
  const child = spawn(process.execPath, ["--import", "tsx", "cli/src/entry.ts", ...args], {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: string[] = [];
  let partial = "";
  let stderr = "";
  let ready: (() => void) | undefined;
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (text: string) => {
    const parts = (partial + text).split("\n");
    partial = parts.pop() ?? "";
    for (const line of parts) {
      lines.push(line);
      if (line.includes(options.readyLine ?? `"event":"${readyEvent}"`)) ready?.();
    }
  });
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (text: string) => {
    stderr += text;
  });
  children.add(child);
  const exited = new Promise<Exit>((resolve) => {
    child.on("exit", (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
  });
  const started: CliProcess = {
    pid: child.pid ?? 0,
    lines,
    stderr: () => stderr,
    exited: exited.then((exit) => {
      running.delete(started);
      if (partial !== "") lines.push(partial);
      partial = "";
      return exit;
    }),
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      return started.exited;
    },
  };
  running.add(started);
  const outcome = await Promise.race([
    new Promise<"ready">((resolve) => {
      ready = () => resolve("ready");
    }),
    exited.then(() => "exited" as const),
    new Promise<"timeout">((resolve) =>
      setTimeout(resolve, options.readyTimeoutMs ?? 30_000, "timeout").unref(),
    ),
  ]);
  if (outcome !== "ready") {
    await started.kill();
    throw new Error(`the ${what} process ${outcome} before "${readyEvent}":\n${stderr}\n${lines.join("\n")}`);
  }
  return started;
}

/** Kills every sidecar process still running (for afterAll / finally). */
export async function killAll(): Promise<void> {
  await Promise.all([...running].map((sidecar) => sidecar.kill()));
}

export function signal(sidecar: SidecarProcess, name: NodeJS.Signals): void {
  process.kill(sidecar.pid, name);
}

/** Resident set size now (VmRSS) and its peak (VmHWM) of a process, in bytes; Linux only. */
export async function memoryOf(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = (field: string) => {
    const match = new RegExp(`^${field}:\\s+(\\d+)\\s+kB$`, "m").exec(status);
    if (match === null) throw new Error(`no ${field} in /proc/${pid}/status`);
    return Number(match[1]) * 1024;
  };
  return { rss: kib("VmRSS"), peak: kib("VmHWM") };
}

/**
 * The baseline to measure a peak from: resets VmHWM to the current RSS (`5` > clear_refs, Linux 4.0+)
 * so the start-up peak does not hide what comes next; where that is refused, the peak so far.
 */
export async function peakBaseline(pid: number): Promise<number> {
  try {
    await writeFile(`/proc/${pid}/clear_refs`, "5");
    return (await memoryOf(pid)).rss;
  } catch {
    return (await memoryOf(pid)).peak;
  }
}

/** What a new TCP connection to the port meets: accepted, or the error code (ECONNREFUSED…). */
export function tryConnect(port: number): Promise<"connected" | string> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.once("error", (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

/** Polls `check` every `everyMs` until it returns a value other than undefined, or fails after `timeoutMs`. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs: number,
  everyMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** Each line parsed as JSON (throws on one that is not), for checks on the process's log. */
export function parseLogLines(lines: readonly string[]): Record<string, unknown>[] {
  return lines
    .filter((line) => line !== "")
    .map((line) => {
      try {
        return JSON.parse(line) as Record<string, unknown>;
      } catch {
        throw new Error(`a log line is not JSON: ${line.slice(0, 200)}`);
      }
    });
}

/** A promise and the function that fulfils it (Promise.withResolvers, which Node 20 lacks). */
export function deferred(): { readonly promise: Promise<void>; readonly resolve: () => void } {
  let resolve = () => {};
  const promise = new Promise<void>((settle) => {
    resolve = settle;
  });
  return { promise, resolve };
}
