/**
 * Quota metrics. Labels never carry caller, policy or rule names: those grow with the registry, and
 * per-caller detail belongs in the audit log line of each decision.
 */
import { Counter, type Registry } from "prom-client";

export type QuotaResult = "allowed" | "limited";

export interface QuotaMetrics {
  decided(result: QuotaResult): void;
  /** A bucket that had not refilled yet was evicted (see QuotaLimiter): its caller got extra calls. */
  evictedEarly(): void;
}

/** Registers the quota metrics on `registry` (never the global default one). Call once per registry. */
export function createQuotaMetrics(registry: Registry): QuotaMetrics {
  const decisions = new Counter({
    name: "custody_quota_decisions_total",
    help: "Quota decisions on calls that a rule with a quota allowed.",
    labelNames: ["result"] as const,
    registers: [registry],
  });
  const earlyEvictions = new Counter({
    name: "custody_quota_early_evictions_total",
    help: "Token buckets evicted before they had refilled; each lets its caller exceed its quota once. Raise the quota capacity if this grows.",
    registers: [registry],
  });
  decisions.labels("allowed").inc(0);
  decisions.labels("limited").inc(0);
  return {
    decided(result) {
      decisions.labels(result).inc();
    },
    evictedEarly() {
      earlyEvictions.inc();
    },
  };
}
