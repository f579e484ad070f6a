/**
 * Open-loop, constant-rate load for bench/sidecar.ts (load.ts is the closed-loop counterpart): request
 * i of a run is due at start + i / rate, whether or not earlier ones have been answered, and its
 * latency is measured from that due time, not from when it was actually sent. A slow answer therefore
 * cannot hold back the requests behind it and hide their waiting (coordinated omission); the
 * generator's own lateness (a timer fires up to ~1 ms late) is part of every mode's latency alike, and
 * is reported on its own ("lag").
 *
 * Like load.ts: every mode is warmed up at the same rate first, then the modes run in interleaved
 * rounds, the order rotating every round, so drift and noise hit all of them alike. The first
 * `leadInMs` of every round are sent but not recorded (connections and caches settle after the switch).
 */
import { performance } from "node:perf_hooks";
import { median } from "./timing.js";

export interface OpenLoopMode {
  readonly name: string;
  /** One request: resolves once the whole answer arrived and was checked; rejects with the reason. */
  readonly send: () => Promise<void>;
  /** Untimed, before each of this mode's runs (warm-up included), e.g. to read CPU clocks. */
  readonly beforeRound?: () => void;
  /** Untimed, after each of this mode's runs: how many requests were sent, and whether it was a timed round. */
  readonly afterRound?: (run: { readonly sent: number; readonly timed: boolean }) => void;
}

export interface OpenLoopOptions {
  readonly ratePerSecond: number;
  readonly warmupMs: number;
  readonly leadInMs: number;
  readonly roundMs: number;
  readonly rounds: number;
  /** How long to wait for the answers still outstanding when a round's last request has been sent. */
  readonly drainLimitMs: number;
  readonly signal: AbortSignal;
  readonly onFailure: (mode: string, error: unknown) => void;
  readonly progress: (message: string) => void;
}

export interface OpenLoopResult {
  readonly name: string;
  /**
   * Latency from the due time to the end of the answer: each round's percentile, then the median
   * over the rounds (as load.ts and timing.ts report the median batch), so one round disturbed by
   * another process does not decide the result.
   */
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** The same over every recorded request of every round pooled (a disturbed round weighs in fully). */
  readonly pooledP50Ms: number;
  readonly pooledP99Ms: number;
  readonly pooledP999Ms: number;
  readonly maxMs: number;
  /** How late the generator sent (sent − due), pooled: included in the latencies above. */
  readonly lagP50Ms: number;
  readonly lagP99Ms: number;
  /** Per round, p50 and p99 (for the spread). */
  readonly roundP50Ms: readonly number[];
  readonly roundP99Ms: readonly number[];
  /** Recorded requests and failures over all rounds (warm-up and lead-ins not included). */
  readonly requests: number;
  readonly failures: number;
  /** Recorded requests per second of recorded time: the rate actually offered. */
  readonly offeredPerSecond: number;
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: Float64Array | readonly number[], fraction: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil(fraction * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] ?? Number.NaN;
}

interface Run {
  /** Latency and lag of the recorded requests that succeeded, in ms. */
  readonly latencies: Float64Array;
  readonly lags: Float64Array;
  readonly failures: number;
  readonly recordedMs: number;
}

/** Sends `leadIn + count` requests at the rate; records the last `count`. */
function runSchedule(
  mode: OpenLoopMode,
  leadIn: number,
  count: number,
  options: OpenLoopOptions,
): Promise<Run> {
  const total = leadIn + count;
  const intervalMs = 1000 / options.ratePerSecond;
  const latencies = new Float64Array(count);
  const lags = new Float64Array(count);
  const ok = new Uint8Array(count);
  let failures = 0;
  let outstanding = 0;
  let next = 0;
  // A millisecond ahead: the first request is not already late when the schedule is made.
  const start = performance.now() + 1;
  return new Promise((resolve) => {
    let drainTimer: NodeJS.Timeout | undefined;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      if (drainTimer !== undefined) clearTimeout(drainTimer);
      const keep = ok.reduce((sum, value) => sum + value, 0);
      const kept = { latencies: new Float64Array(keep), lags: new Float64Array(keep) };
      for (let i = 0, j = 0; i < count; i++) {
        if (ok[i] !== 1) continue;
        kept.latencies[j] = latencies[i] ?? Number.NaN;
        kept.lags[j] = lags[i] ?? Number.NaN;
        j++;
      }
      resolve({ ...kept, failures, recordedMs: count * intervalMs });
    };
    const fire = (index: number, due: number) => {
      const sent = performance.now();
      outstanding++;
      mode.send().then(
        () => {
          const done = performance.now();
          const slot = index - leadIn;
          if (slot >= 0 && !finished) {
            latencies[slot] = done - due;
            lags[slot] = sent - due;
            ok[slot] = 1;
          }
          settle();
        },
        (error: unknown) => {
          // A failure is counted (and makes the run invalid) wherever it happens, lead-in included.
          failures++;
          options.onFailure(mode.name, error);
          settle();
        },
      );
    };
    const settle = () => {
      outstanding--;
      if (outstanding === 0 && (next >= total || options.signal.aborted)) finish();
    };
    const tick = () => {
      const now = performance.now();
      while (next < total && !options.signal.aborted) {
        const due = start + next * intervalMs;
        if (due > now) break;
        fire(next, due);
        next++;
      }
      if (next < total && !options.signal.aborted) {
        // Node's timers have a 1 ms resolution: this fires at the next due time or up to ~1 ms later.
        setTimeout(tick, Math.max(0, start + next * intervalMs - performance.now()));
        return;
      }
      if (outstanding === 0) {
        finish();
        return;
      }
      drainTimer = setTimeout(() => {
        failures += outstanding;
        options.onFailure(mode.name, new Error(`${outstanding} answers still missing after the drain limit`));
        outstanding = 0;
        finish();
      }, options.drainLimitMs);
    };
    setTimeout(tick, Math.max(0, start - performance.now()));
  });
}

function concat(parts: readonly Float64Array[]): Float64Array {
  const out = new Float64Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

const fixed2 = (value: number) => value.toFixed(2);

/** Warms up every mode, then `rounds` rounds of one run per mode; results in the order given. */
export async function measureOpenLoop(
  modes: readonly OpenLoopMode[],
  options: OpenLoopOptions,
): Promise<OpenLoopResult[]> {
  const perMs = options.ratePerSecond / 1000;
  const leadIn = Math.round(options.leadInMs * perMs);
  const count = Math.round(options.roundMs * perMs);
  for (const mode of modes) {
    if (options.signal.aborted) break;
    const warmup = Math.round(options.warmupMs * perMs);
    mode.beforeRound?.();
    const warm = await runSchedule(mode, warmup, 0, options);
    mode.afterRound?.({ sent: warmup, timed: false });
    options.progress(
      `warm-up ${mode.name}: ${warmup} requests at ${options.ratePerSecond}/s` +
        (warm.failures > 0 ? `, ${warm.failures} failed` : ""),
    );
  }
  const runs: Run[][] = modes.map(() => []);
  for (let round = 0; round < options.rounds && !options.signal.aborted; round++) {
    const line: string[] = [];
    for (let k = 0; k < modes.length && !options.signal.aborted; k++) {
      const index = (round + k) % modes.length;
      const mode = modes[index];
      const sink = runs[index];
      if (mode === undefined || sink === undefined) throw new Error("bench: no mode");
      mode.beforeRound?.();
      const run = await runSchedule(mode, leadIn, count, options);
      mode.afterRound?.({ sent: leadIn + count, timed: true });
      sink.push(run);
      const sorted = run.latencies.slice().sort();
      line.push(
        `${mode.name} ${fixed2(percentile(sorted, 0.5))}/${fixed2(percentile(sorted, 0.99))}` +
          (run.failures > 0 ? ` (${run.failures} failed)` : ""),
      );
    }
    options.progress(`round ${round + 1}/${options.rounds} p50/p99 ms: ${line.join(", ")}`);
  }
  return modes.map((mode, index) => {
    const modeRuns = runs[index] ?? [];
    const latencies = concat(modeRuns.map((run) => run.latencies)).sort();
    const lags = concat(modeRuns.map((run) => run.lags)).sort();
    const roundSorted = modeRuns.map((run) => run.latencies.slice().sort());
    const recordedMs = modeRuns.reduce((sum, run) => sum + run.recordedMs, 0);
    const roundP50Ms = roundSorted.map((sorted) => percentile(sorted, 0.5));
    const roundP99Ms = roundSorted.map((sorted) => percentile(sorted, 0.99));
    return {
      name: mode.name,
      p50Ms: median(roundP50Ms),
      p99Ms: median(roundP99Ms),
      pooledP50Ms: percentile(latencies, 0.5),
      pooledP99Ms: percentile(latencies, 0.99),
      pooledP999Ms: percentile(latencies, 0.999),
      maxMs: latencies.at(-1) ?? Number.NaN,
      lagP50Ms: percentile(lags, 0.5),
      lagP99Ms: percentile(lags, 0.99),
      roundP50Ms,
      roundP99Ms,
      requests: latencies.length,
      failures: modeRuns.reduce((sum, run) => sum + run.failures, 0),
      offeredPerSecond: recordedMs > 0 ? (latencies.length / recordedMs) * 1000 : Number.NaN,
    };
  });
}
