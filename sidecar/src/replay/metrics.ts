/**
 * Replay-guard metrics. Every claim is counted by store and outcome, including the ones a store
 * could not answer: a fail-open guard that silently accepts while Redis is down must still be
 * visible, or the replay protection can be off for hours without anyone noticing.
 */
import { Counter, Histogram, type Registry } from "prom-client";
import { type ReplayGuard, ReplayStoreUnavailableError } from "./guard.js";

export type ReplayStoreKind = "memory" | "redis";

export type ReplayCheckResult =
  | "fresh"
  | "replayed"
  /** The store did not answer and the guard refused the call (fail closed). */
  | "store_unavailable_rejected"
  /** The store did not answer and the guard accepted the call unchecked (fail open). */
  | "store_unavailable_allowed";

/** Which outcomes each store can produce: the series exported at 0 from the start. */
const OUTCOMES: Readonly<Record<ReplayStoreKind, readonly ReplayCheckResult[]>> = {
  memory: ["fresh", "replayed", "store_unavailable_rejected"],
  redis: ["fresh", "replayed", "store_unavailable_rejected", "store_unavailable_allowed"],
};

/** Sub-millisecond for memory, a few ms for a nearby Redis, up to the command timeout when it hangs. */
const DURATION_BUCKETS_SECONDS = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];

export interface ReplayMetrics {
  record(store: ReplayStoreKind, result: ReplayCheckResult, durationSeconds: number): void;
}

/**
 * Registers the replay metrics on `registry` (never the global default one). Call once per registry
 * and share the result between guards: prom-client refuses a second metric with the same name.
 */
export function createReplayMetrics(registry: Registry): ReplayMetrics {
  const checks = new Counter({
    name: "custody_replay_checks_total",
    help: "Replay-guard claims by store and outcome; store_unavailable_allowed counts calls accepted unchecked (fail open).",
    labelNames: ["store", "result"] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: "custody_replay_check_duration_seconds",
    help: "Time to answer one replay-guard claim, including failures and timeouts.",
    labelNames: ["store"] as const,
    buckets: DURATION_BUCKETS_SECONDS,
    registers: [registry],
  });
  // Series that exist from the start make rate() and alerts work before the first failure.
  for (const [store, results] of Object.entries(OUTCOMES)) {
    for (const result of results) checks.labels(store, result).inc(0);
  }
  return {
    record(store, result, durationSeconds) {
      checks.labels(store, result).inc();
      duration.labels(store).observe(durationSeconds);
    },
  };
}

/**
 * Counts the claims of a guard that does not count them itself (the memory guard). A store that
 * cannot answer always surfaces as ReplayStoreUnavailableError here, so it counts as rejected.
 */
export function withReplayMetrics(
  guard: ReplayGuard,
  metrics: ReplayMetrics,
  store: ReplayStoreKind,
): ReplayGuard {
  return {
    async claim(jti, expiresAtMs) {
      const started = performance.now();
      try {
        const fresh = await guard.claim(jti, expiresAtMs);
        metrics.record(store, fresh ? "fresh" : "replayed", elapsedSeconds(started));
        return fresh;
      } catch (error) {
        if (error instanceof ReplayStoreUnavailableError) {
          metrics.record(store, "store_unavailable_rejected", elapsedSeconds(started));
        }
        throw error;
      }
    },
  };
}

export function elapsedSeconds(startedMs: number): number {
  return (performance.now() - startedMs) / 1000;
}
