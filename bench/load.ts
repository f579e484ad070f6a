/**
 * Closed-loop load for bench/issuer.ts: `concurrency` workers each run one operation after another
 * for a fixed time (a batch), so exactly that many operations are in flight. Like timing.ts, each
 * mode is warmed up first, then the batches run in interleaved rounds (the order rotates every
 * round) so that drift and noise hit every mode alike, and the median round is reported.
 */
import { median } from "./timing.js";

/** One operation: resolves when it succeeded, rejects (with the reason) when it failed. */
export type Operation = () => Promise<void>;

export interface Mode {
  readonly name: string;
  /** Untimed set-up before every batch (e.g. opening the kept-alive connections); answers the operation. */
  readonly prepare: () => Promise<Operation>;
  /** Untimed tear-down after every batch. */
  readonly finish?: () => Promise<void>;
}

export interface LoadOptions {
  readonly concurrency: number;
  readonly warmupMs: number;
  readonly batchMs: number;
  readonly rounds: number;
  /** CPU seconds consumed so far by the server process, and by the whole machine, if they can be read. */
  readonly serverCpu: (() => number) | undefined;
  readonly machineCpu: (() => number) | undefined;
  /** Stops the run early (the server died, too many failures). */
  readonly signal: AbortSignal;
  readonly onFailure: (mode: string, error: unknown) => void;
  readonly progress: (message: string) => void;
}

export interface Batch {
  readonly operations: number;
  readonly failures: number;
  readonly seconds: number;
  /** CPU seconds spent during the batch by the server, the client (this process), everything; NaN if unknown. */
  readonly serverCpuSeconds: number;
  readonly clientCpuSeconds: number;
  readonly machineCpuSeconds: number;
}

export interface ModeResult {
  readonly name: string;
  /** Median over the rounds of successful operations per second. */
  readonly perSecond: number;
  /** Medians over the rounds of CPU µs per operation, and of the CPU's busy share (1 = one core). */
  readonly serverCpuUsPerOp: number;
  readonly clientCpuUsPerOp: number;
  readonly serverCpuShare: number;
  readonly clientCpuShare: number;
  /** Median share of the machine's CPU taken by other processes during the batches (the noise). */
  readonly otherCpuShare: number;
  /** Timed operations and failures over all rounds (warm-up not included). */
  readonly operations: number;
  readonly failures: number;
  readonly batches: readonly Batch[];
}

const clientCpuSeconds = () => {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
};

/** Runs `operation` on `concurrency` workers until `ms` have passed; each worker finishes its last operation. */
async function runBatch(mode: Mode, ms: number, options: LoadOptions): Promise<Batch> {
  const operation = await mode.prepare();
  try {
    let operations = 0;
    let failures = 0;
    const serverBefore = options.serverCpu?.() ?? Number.NaN;
    const machineBefore = options.machineCpu?.() ?? Number.NaN;
    const clientBefore = clientCpuSeconds();
    const start = process.hrtime.bigint();
    const deadline = start + BigInt(ms) * 1_000_000n;
    const worker = async () => {
      while (process.hrtime.bigint() < deadline && !options.signal.aborted) {
        try {
          await operation();
          operations++;
        } catch (error) {
          failures++;
          options.onFailure(mode.name, error);
        }
      }
    };
    await Promise.all(Array.from({ length: options.concurrency }, worker));
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    return {
      operations,
      failures,
      seconds,
      serverCpuSeconds: (options.serverCpu?.() ?? Number.NaN) - serverBefore,
      clientCpuSeconds: clientCpuSeconds() - clientBefore,
      machineCpuSeconds: (options.machineCpu?.() ?? Number.NaN) - machineBefore,
    };
  } finally {
    await mode.finish?.();
  }
}

function summarize(name: string, batches: readonly Batch[]): ModeResult {
  const perOp = (cpu: (batch: Batch) => number) =>
    median(batches.map((batch) => (cpu(batch) * 1e6) / Math.max(1, batch.operations)));
  const share = (cpu: (batch: Batch) => number) => median(batches.map((batch) => cpu(batch) / batch.seconds));
  return {
    name,
    perSecond: median(batches.map((batch) => batch.operations / batch.seconds)),
    serverCpuUsPerOp: perOp((batch) => batch.serverCpuSeconds),
    clientCpuUsPerOp: perOp((batch) => batch.clientCpuSeconds),
    serverCpuShare: share((batch) => batch.serverCpuSeconds),
    clientCpuShare: share((batch) => batch.clientCpuSeconds),
    otherCpuShare: share((batch) =>
      Math.max(0, batch.machineCpuSeconds - batch.serverCpuSeconds - batch.clientCpuSeconds),
    ),
    operations: batches.reduce((sum, batch) => sum + batch.operations, 0),
    failures: batches.reduce((sum, batch) => sum + batch.failures, 0),
    batches,
  };
}

/** Warms up every mode, then runs `rounds` rounds of one batch per mode; results in the order given. */
export async function measureLoad(modes: readonly Mode[], options: LoadOptions): Promise<ModeResult[]> {
  for (const mode of modes) {
    if (options.signal.aborted) break;
    const warm = await runBatch(mode, options.warmupMs, options);
    options.progress(
      `warm-up ${mode.name}: ${Math.round(warm.operations / warm.seconds)}/s` +
        (warm.failures > 0 ? `, ${warm.failures} failed` : ""),
    );
  }
  const batches: Batch[][] = modes.map(() => []);
  for (let round = 0; round < options.rounds && !options.signal.aborted; round++) {
    const line: string[] = [];
    for (let k = 0; k < modes.length && !options.signal.aborted; k++) {
      // Rotate the order so no mode always runs right after the same neighbour.
      const index = (round + k) % modes.length;
      const mode = modes[index];
      const sink = batches[index];
      if (mode === undefined || sink === undefined) throw new Error("bench: no mode");
      const batch = await runBatch(mode, options.batchMs, options);
      sink.push(batch);
      line.push(`${mode.name} ${Math.round(batch.operations / batch.seconds)}/s`);
    }
    options.progress(`round ${round + 1}/${options.rounds}: ${line.join(", ")}`);
  }
  return modes.map((mode, index) => summarize(mode.name, batches[index] ?? []));
}
