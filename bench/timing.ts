/**
 * Timing for the benchmarks: per measured function a warm-up (which also sizes a batch to about
 * `batchMs`), then `batches` timed batches, interleaved round-robin between the functions so that
 * drift and noise on a shared machine hit all of them alike. Reports the median batch's per-op time.
 */

/** Runs the operation `iterations` times and answers the elapsed nanoseconds (process.hrtime.bigint). */
export type Runner = (iterations: number) => Promise<bigint>;

export interface TimingOptions {
  readonly warmupMs: number;
  readonly batchMs: number;
  readonly batches: number;
}

/** A synchronous operation; a false result means it failed (and keeps the call from being optimized away). */
export function syncRunner(op: () => boolean): Runner {
  return async (iterations) => {
    const start = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) {
      if (!op()) throw new Error("bench: operation failed while timing");
    }
    return process.hrtime.bigint() - start;
  };
}

/** An asynchronous operation, awaited one at a time (as one request at a time would). */
export function asyncRunner(op: () => Promise<unknown>): Runner {
  return async (iterations) => {
    const start = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) await op();
    return process.hrtime.bigint() - start;
  };
}

/** Runs `runner` for about `warmupMs`; answers how many iterations fill one batch of `batchMs`. */
async function warmUp(runner: Runner, options: TimingOptions): Promise<number> {
  const budget = BigInt(options.warmupMs) * 1_000_000n;
  let iterations = 0;
  let elapsed = 0n;
  let step = 1;
  while (elapsed < budget) {
    elapsed += await runner(step);
    iterations += step;
    step = Math.min(step * 2, 256);
  }
  const perOpNs = Number(elapsed) / iterations;
  return Math.max(1, Math.round((options.batchMs * 1e6) / perOpNs));
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  const upper = sorted[middle] ?? Number.NaN;
  return sorted.length % 2 === 1 ? upper : ((sorted[middle - 1] ?? Number.NaN) + upper) / 2;
}

/** The median batch's per-operation time in microseconds, for each runner, in the order given. */
export async function measure(runners: readonly Runner[], options: TimingOptions): Promise<number[]> {
  const sizes: number[] = [];
  for (const runner of runners) sizes.push(await warmUp(runner, options));
  const samples: number[][] = runners.map(() => []);
  for (let batch = 0; batch < options.batches; batch++) {
    for (let k = 0; k < runners.length; k++) {
      // Rotate the order so no function always runs right after the same neighbour.
      const index = (batch + k) % runners.length;
      const runner = runners[index];
      const size = sizes[index];
      const sink = samples[index];
      if (runner === undefined || size === undefined || sink === undefined)
        throw new Error("bench: no runner");
      const ns = await runner(size);
      sink.push(Number(ns) / size / 1000);
    }
  }
  return samples.map(median);
}
