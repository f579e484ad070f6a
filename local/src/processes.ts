/**
 * The children of `custody local up`: each one's output goes to its own log file (a line-oriented
 * JSON log for custody processes), readiness is a log line, and stopping is SIGTERM, then SIGKILL
 * after a grace period, always waiting for the exit. Nothing outlives the parent: children are
 * killed if it exits without stopping them.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, type WriteStream } from "node:fs";
import { CustodyError } from "../../crds/src/errors.js";

export class ProcessError extends CustodyError {
  declare readonly code: "process_failed";
  constructor(message: string) {
    super("process_failed", message);
  }
}

export interface ProcessSpec {
  /** A short name for messages: "operator", "sidecar cart.shop", "app cart.shop". */
  readonly name: string;
  readonly command: string;
  readonly args: readonly string[];
  readonly cwd: string;
  readonly env: NodeJS.ProcessEnv;
  readonly logFile: string;
  /** Resolves the start once a stdout line contains this; without it, the start resolves at once. */
  readonly readyWhen?: string;
  readonly readyTimeoutMs?: number;
}

export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

const alive = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of alive) child.kill("SIGKILL");
});

/** How many bytes of a log's end an error message quotes. */
const TAIL_BYTES = 2_000;

export class ManagedProcess {
  readonly exited: Promise<Exit>;
  #tail = "";

  private constructor(
    readonly spec: ProcessSpec,
    private readonly child: ChildProcess,
    log: WriteStream,
  ) {
    alive.add(child);
    const keep = (chunk: Buffer) => {
      log.write(chunk);
      this.#tail = (this.#tail + chunk.toString("utf8")).slice(-TAIL_BYTES);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        alive.delete(child);
        log.end();
        resolve({ code, signal });
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The end of its output, for error messages. */
  tail(): string {
    return this.#tail.trim();
  }

  static async start(spec: ProcessSpec): Promise<ManagedProcess> {
    const log = createWriteStream(spec.logFile, { flags: "a", mode: 0o600 });
    const child = spawn(spec.command, [...spec.args], {
      cwd: spec.cwd,
      env: spec.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const started = new ManagedProcess(spec, child, log);
    const spawnFailed = new Promise<string>((resolve) =>
      child.once("error", (error) => resolve(error.message)),
    );
    if (spec.readyWhen === undefined) {
      const outcome = await Promise.race([
        spawnFailed,
        new Promise<undefined>((resolve) => setImmediate(() => resolve(undefined))),
      ]);
      if (outcome !== undefined)
        throw new ProcessError(`${spec.name}: cannot start ${spec.command}: ${outcome}`);
      return started;
    }
    const marker = spec.readyWhen;
    let buffered = "";
    const ready = new Promise<"ready">((resolve) => {
      child.stdout?.on("data", (chunk: Buffer) => {
        buffered = (buffered + chunk.toString("utf8")).slice(-64 * 1024);
        if (buffered.includes(marker)) resolve("ready");
      });
    });
    const outcome = await Promise.race([
      ready,
      started.exited.then(() => "exited" as const),
      spawnFailed,
      new Promise<"timeout">((resolve) =>
        setTimeout(resolve, spec.readyTimeoutMs ?? 30_000, "timeout").unref(),
      ),
    ]);
    if (outcome === "ready") return started;
    await started.stop(0);
    const why =
      outcome === "exited" ? "exited" : outcome === "timeout" ? "did not become ready in time" : outcome;
    throw new ProcessError(`${spec.name} ${why}; its log (${spec.logFile}) ends with:\n${started.tail()}`);
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit. */
  async stop(graceMs = 5_000): Promise<Exit> {
    if (this.running) {
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => {
        if (this.running) this.child.kill("SIGKILL");
      }, graceMs);
      timer.unref();
      const exit = await this.exited;
      clearTimeout(timer);
      return exit;
    }
    return this.exited;
  }
}
