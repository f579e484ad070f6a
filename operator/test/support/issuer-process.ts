/**
 * Test support: `custody issuer` as a real child process, run from source
 * (`node --import tsx cli/src/entry.ts issuer …`). Starts it, waits for its `listening` log line
 * (with a timeout, and an error that carries what the process printed), collects every pino JSON
 * line it logs, and stops it with SIGTERM (SIGKILL if it does not exit in time). Every process
 * started here is killed when the test worker exits, whatever happened to the test.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const ENTRY = "cli/src/entry.ts";
const DEFAULT_START_TIMEOUT_MS = 20_000;
const DEFAULT_WAIT_TIMEOUT_MS = 5_000;
const DEFAULT_STOP_TIMEOUT_MS = 10_000;
/** How much of stdout/stderr an error message quotes (the end, where the problem usually is). */
const QUOTED_OUTPUT_CHARS = 4_000;

/** One pino line; `raw` is the text as printed (also for lines that are not JSON). */
export interface LogLine {
  readonly raw: string;
  readonly event?: string;
  readonly level?: number;
  readonly msg?: string;
  readonly [field: string]: unknown;
}

export interface ExitStatus {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface IssuerProcess {
  readonly pid: number;
  /** https://127.0.0.1:PORT/oauth2/token, from the listening line. */
  readonly tokenUrl: string;
  /** http://127.0.0.1:PORT (/metrics, /healthz, /readyz). */
  readonly adminUrl: string;
  /** `iss` of the tokens it signs (https://localhost:PORT by default). */
  readonly issuer: string;
  /** The token endpoint's port. */
  readonly port: number;
  /** The listening line itself. */
  readonly listening: LogLine;
  /** Every line logged so far, in order (a live array: it grows while the process runs). */
  readonly logs: readonly LogLine[];
  readonly stdout: () => string;
  readonly stderr: () => string;
  /** Undefined while it runs. */
  readonly exitStatus: () => ExitStatus | undefined;
  /** Lines with this `event`, from index `from` on. */
  events(event: string, from?: number): LogLine[];
  /**
   * The first line from index `from` (default 0) that satisfies `predicate`, waiting for it up to
   * `timeoutMs`. Rejects with the recent output when it does not come or the process exits.
   */
  waitForLog(
    predicate: (line: LogLine) => boolean,
    options?: { readonly from?: number; readonly timeoutMs?: number; readonly what?: string },
  ): Promise<LogLine>;
  /**
   * The first `count` lines from index `from` on that satisfy `predicate`, waiting for them: a
   * response can reach the test before the log line written right after it has crossed the pipe.
   */
  waitForCount(
    predicate: (line: LogLine) => boolean,
    count: number,
    options?: { readonly from?: number; readonly timeoutMs?: number; readonly what?: string },
  ): Promise<LogLine[]>;
  /** waitForCount for lines with this `event`. */
  waitForEvents(
    event: string,
    count: number,
    options?: { readonly from?: number; readonly timeoutMs?: number },
  ): Promise<LogLine[]>;
  /** SIGTERM, then waits for the exit (SIGKILL after `timeoutMs`). Idempotent. */
  stop(timeoutMs?: number): Promise<ExitStatus>;
  /** SIGKILL now (teardown of a test that went wrong). */
  kill(): void;
}

export interface StartOptions {
  /** Arguments after `issuer`. */
  readonly args: readonly string[];
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
}

interface Waiter {
  readonly predicate: (line: LogLine) => boolean;
  readonly resolve: (line: LogLine) => void;
  readonly reject: (error: Error) => void;
}

const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

function parseLine(raw: string): LogLine {
  try {
    const value: unknown = JSON.parse(raw);
    if (typeof value === "object" && value !== null && !Array.isArray(value)) {
      return { ...(value as Record<string, unknown>), raw } as LogLine;
    }
  } catch {
    // Not JSON (e.g. a Node warning): kept as raw text.
  }
  return { raw };
}

function tail(text: string): string {
  return text.length <= QUOTED_OUTPUT_CHARS ? text : `…${text.slice(-QUOTED_OUTPUT_CHARS)}`;
}

function stringField(line: LogLine, name: string): string {
  const value = line[name];
  if (typeof value !== "string" || value === "") {
    throw new Error(`the listening line has no "${name}": ${line.raw}`);
  }
  return value;
}

/** Spawns `custody issuer ARGS` and resolves once it logs `"event":"listening"`. */
export async function startIssuerProcess(options: StartOptions): Promise<IssuerProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", ENTRY, "issuer", ...options.args], {
    cwd: REPO_ROOT,
    env: options.env ?? process.env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  const logs: LogLine[] = [];
  const waiters = new Set<Waiter>();
  let stdout = "";
  let stderr = "";
  let partial = "";
  let status: ExitStatus | undefined;

  const output = () => `\n--- stderr ---\n${tail(stderr)}\n--- stdout ---\n${tail(stdout)}`;

  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stdout.on("data", (chunk: string) => {
    stdout += chunk;
    partial += chunk;
    const lines = partial.split("\n");
    partial = lines.pop() ?? "";
    for (const raw of lines) {
      if (raw.trim() === "") continue;
      const line = parseLine(raw);
      logs.push(line);
      for (const waiter of [...waiters]) {
        if (waiter.predicate(line)) {
          waiters.delete(waiter);
          waiter.resolve(line);
        }
      }
    }
  });
  child.stderr.on("data", (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once("close", (code, signal) => {
      running.delete(child);
      status = { code, signal };
      for (const waiter of waiters) {
        waiter.reject(
          new Error(
            `custody issuer exited (code ${code}, signal ${signal}) while a log line was awaited${output()}`,
          ),
        );
      }
      waiters.clear();
      resolve(status);
    });
  });
  child.once("error", (error) => {
    stderr += `\n[spawn error] ${error.message}`;
  });

  const waitForLog: IssuerProcess["waitForLog"] = (predicate, waitOptions = {}) => {
    const from = waitOptions.from ?? 0;
    const found = logs.slice(from).find(predicate);
    if (found !== undefined) return Promise.resolve(found);
    if (status !== undefined) {
      return Promise.reject(
        new Error(
          `custody issuer has exited (code ${status.code}, signal ${status.signal}); ${waitOptions.what ?? "the log line"} never came${output()}`,
        ),
      );
    }
    const timeoutMs = waitOptions.timeoutMs ?? DEFAULT_WAIT_TIMEOUT_MS;
    return new Promise<LogLine>((resolve, reject) => {
      const waiter: Waiter = {
        predicate,
        resolve: (line) => {
          clearTimeout(timer);
          resolve(line);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        waiters.delete(waiter);
        reject(
          new Error(
            `custody issuer did not log ${waitOptions.what ?? "the awaited line"} within ${timeoutMs} ms${output()}`,
          ),
        );
      }, timeoutMs);
      waiters.add(waiter);
    });
  };

  const events = (event: string, from = 0) => logs.slice(from).filter((line) => line.event === event);
  const waitForCount: IssuerProcess["waitForCount"] = async (predicate, count, waitOptions = {}) => {
    const from = waitOptions.from ?? 0;
    const matching = () => logs.slice(from).filter(predicate);
    let seen = matching().length;
    if (seen < count) {
      await waitForLog((line) => predicate(line) && ++seen >= count, {
        from: logs.length,
        timeoutMs: waitOptions.timeoutMs,
        what: `${count} ${waitOptions.what ?? "matching"} line(s) from line ${from} (${seen} so far)`,
      });
    }
    return matching().slice(0, count);
  };
  const waitForEvents: IssuerProcess["waitForEvents"] = (event, count, waitOptions = {}) =>
    waitForCount((line) => line.event === event, count, { ...waitOptions, what: `"${event}"` });

  const kill = () => {
    if (status === undefined) child.kill("SIGKILL");
  };
  const stop = async (timeoutMs = DEFAULT_STOP_TIMEOUT_MS): Promise<ExitStatus> => {
    if (status !== undefined) return status;
    child.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const forced = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        kill();
        resolve();
      }, timeoutMs);
    });
    await Promise.race([exited, forced]);
    clearTimeout(timer);
    return exited;
  };

  const startTimeoutMs = options.timeoutMs ?? DEFAULT_START_TIMEOUT_MS;
  let listening: LogLine;
  try {
    listening = await waitForLog((line) => line.event === "listening", {
      timeoutMs: startTimeoutMs,
      what: `"event":"listening" (started with: issuer ${options.args.join(" ")})`,
    });
  } catch (error) {
    kill();
    await exited;
    throw error;
  }
  const tokenUrl = stringField(listening, "tokenUrl");
  return {
    pid: child.pid ?? -1,
    tokenUrl,
    adminUrl: stringField(listening, "adminUrl"),
    issuer: stringField(listening, "issuer"),
    port: Number(new URL(tokenUrl).port),
    listening,
    logs,
    stdout: () => stdout,
    stderr: () => stderr,
    exitStatus: () => status,
    events,
    waitForLog,
    waitForCount,
    waitForEvents,
    stop,
    kill,
  };
}
