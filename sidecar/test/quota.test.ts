import fc from "fast-check";
import { Registry, register } from "prom-client";
import { describe, expect, it } from "vitest";
import { promtoolProblems, requireTool } from "../../e2e/support/tools.js";
import { type QuotaKey, type QuotaLimit, QuotaLimiter } from "../src/quota/limiter.js";
import { createQuotaMetrics } from "../src/quota/metrics.js";
import { manualClock } from "./support/clock.js";

const pay: QuotaKey = { policy: "shop/payments", rule: "pay-for-order", caller: "cart.shop" };
const tenPerSecond: QuotaLimit = { requestsPerSecond: 10, burst: 5 };

function takeMany(limiter: QuotaLimiter, key: QuotaKey, limit: QuotaLimit, count: number): number {
  let allowed = 0;
  for (let i = 0; i < count; i++) if (limiter.take(key, limit).allowed) allowed++;
  return allowed;
}

async function counterValue(registry: Registry, name: string, labels: Record<string, string> = {}) {
  const metric = await registry.getSingleMetric(name)?.get();
  const sample = metric?.values.find((v) =>
    Object.entries(labels).every(([k, value]) => v.labels[k] === value),
  );
  return sample?.value ?? 0;
}

describe("quota limiter", () => {
  it("allows a burst, then refills at the configured rate", () => {
    const clock = manualClock(5_000);
    const limiter = new QuotaLimiter({ now: clock.now });
    expect(takeMany(limiter, pay, tenPerSecond, 8)).toBe(5);
    clock.advance(100); // 10 per second: one call per 100 ms
    expect(takeMany(limiter, pay, tenPerSecond, 3)).toBe(1);
    clock.advance(350);
    expect(takeMany(limiter, pay, tenPerSecond, 5)).toBe(3);
    clock.advance(60_000); // refills to the burst, not beyond
    expect(takeMany(limiter, pay, tenPerSecond, 10)).toBe(5);
  });

  it("reports what is left and when to retry", () => {
    const clock = manualClock(5_000);
    const limiter = new QuotaLimiter({ now: clock.now });
    const limit = { requestsPerSecond: 4, burst: 2 };
    expect(limiter.take(pay, limit)).toEqual({
      allowed: true,
      retryAfterMs: 0,
      retryAfterSeconds: 0,
      remaining: 1,
    });
    expect(limiter.take(pay, limit)).toEqual({
      allowed: true,
      retryAfterMs: 0,
      retryAfterSeconds: 0,
      remaining: 0,
    });
    expect(limiter.take(pay, limit)).toEqual({
      allowed: false,
      retryAfterMs: 250,
      retryAfterSeconds: 1,
      remaining: 0,
      exhausted: pay,
    });
    clock.advance(100);
    const refused = limiter.take(pay, limit);
    expect(refused.retryAfterMs).toBe(150);
    clock.advance(refused.retryAfterMs - 1);
    expect(limiter.take(pay, limit).allowed).toBe(false);
    clock.advance(1);
    expect(limiter.take(pay, limit).allowed).toBe(true);
  });

  it("retrying after retryAfterMs, not a millisecond before, is allowed", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1_000 }),
        fc.integer({ min: 1, max: 20 }),
        fc.integer({ min: 0, max: 5_000 }),
        (requestsPerSecond, burst, pauseMs) => {
          const clock = manualClock(5_000);
          const limiter = new QuotaLimiter({ now: clock.now });
          const limit = { requestsPerSecond, burst };
          takeMany(limiter, pay, limit, burst);
          clock.advance(pauseMs);
          let decision = limiter.take(pay, limit);
          while (decision.allowed) decision = limiter.take(pay, limit);
          expect(decision.retryAfterSeconds).toBe(Math.ceil(decision.retryAfterMs / 1000));
          clock.advance(decision.retryAfterMs - 1);
          expect(limiter.take(pay, limit).allowed).toBe(false);
          clock.advance(1);
          expect(limiter.take(pay, limit).allowed).toBe(true);
        },
      ),
    );
  });

  it("keeps separate buckets per caller and per rule", () => {
    const clock = manualClock(5_000);
    const limiter = new QuotaLimiter({ now: clock.now });
    const limit = { requestsPerSecond: 1, burst: 2 };
    expect(takeMany(limiter, pay, limit, 5)).toBe(2);
    expect(takeMany(limiter, { ...pay, caller: "checkout.shop" }, limit, 5)).toBe(2);
    expect(takeMany(limiter, { ...pay, rule: "refund" }, limit, 5)).toBe(2);
    expect(takeMany(limiter, { ...pay, policy: "shop/payments-extra" }, limit, 5)).toBe(2);
    expect(limiter.size).toBe(4);
  });

  it("does not confuse keys whose parts run together", () => {
    const limiter = new QuotaLimiter({ now: manualClock(5_000).now });
    const limit = { requestsPerSecond: 1, burst: 1 };
    expect(limiter.take({ policy: "a", rule: "b/c", caller: "d" }, limit).allowed).toBe(true);
    expect(limiter.take({ policy: "a/b", rule: "c", caller: "d" }, limit).allowed).toBe(true);
  });

  it("applies a changed limit (policy update) at once", () => {
    const clock = manualClock(5_000);
    const limiter = new QuotaLimiter({ now: clock.now });
    expect(takeMany(limiter, pay, { requestsPerSecond: 10, burst: 10 }, 3)).toBe(3);
    // Seven calls were saved up; the new burst of two cuts them down now.
    const lowered = { requestsPerSecond: 1, burst: 2 };
    expect(takeMany(limiter, pay, lowered, 5)).toBe(2);
    clock.advance(999);
    expect(limiter.take(pay, lowered).allowed).toBe(false);
    clock.advance(1);
    expect(limiter.take(pay, lowered).allowed).toBe(true);
    // Raising the limit does not hand out calls that were never earned: they accrue at the new rate.
    const raised = { requestsPerSecond: 100, burst: 50 };
    expect(limiter.take(pay, raised).allowed).toBe(false);
    clock.advance(100);
    expect(takeMany(limiter, pay, raised, 20)).toBe(10);
  });

  it("earns nothing while the clock goes back", () => {
    const clock = manualClock(10_000);
    const limiter = new QuotaLimiter({ now: clock.now });
    const limit = { requestsPerSecond: 1, burst: 1 };
    expect(limiter.take(pay, limit).allowed).toBe(true);
    clock.advance(-5_000);
    expect(limiter.take(pay, limit).allowed).toBe(false);
    clock.advance(5_999);
    expect(limiter.take(pay, limit).allowed).toBe(false);
    clock.advance(1);
    expect(limiter.take(pay, limit).allowed).toBe(true);
  });

  it("keeps at most `capacity` buckets, evicting the least recently used", () => {
    const clock = manualClock(5_000);
    const limiter = new QuotaLimiter({ now: clock.now, capacity: 3 });
    const limit = { requestsPerSecond: 1, burst: 1 };
    const caller = (n: number) => ({ ...pay, caller: `c${n}.shop` });
    for (const n of [0, 1, 2]) limiter.take(caller(n), limit);
    limiter.take(caller(0), limit); // c0 is now the most recently used
    limiter.take(caller(3), limit); // evicts c1
    expect(limiter.size).toBe(3);
    expect(limiter.take(caller(0), limit).allowed).toBe(false);
    expect(limiter.take(caller(2), limit).allowed).toBe(false);
    // c1 was forgotten, so it starts again with a full bucket: the cost of an early eviction.
    expect(limiter.take(caller(1), limit).allowed).toBe(true);
    for (let n = 0; n < 1_000; n++) limiter.take(caller(n), limit);
    expect(limiter.size).toBe(3);
  });

  it("counts decisions, and evictions of buckets that had not refilled", async () => {
    const registry = new Registry();
    const clock = manualClock(5_000);
    const limiter = new QuotaLimiter({ now: clock.now, capacity: 1, metrics: createQuotaMetrics(registry) });
    const limit = { requestsPerSecond: 1, burst: 1 };
    limiter.take(pay, limit);
    limiter.take(pay, limit);
    limiter.take({ ...pay, caller: "other.shop" }, limit); // evicts a drained bucket: early
    clock.advance(1_000);
    limiter.take(pay, limit); // evicts a bucket that has refilled by now: harmless, not counted
    expect(await counterValue(registry, "custody_quota_decisions_total", { result: "allowed" })).toBe(3);
    expect(await counterValue(registry, "custody_quota_decisions_total", { result: "limited" })).toBe(1);
    expect(await counterValue(registry, "custody_quota_early_evictions_total")).toBe(1);
    expect(register.getSingleMetric("custody_quota_decisions_total")).toBeUndefined();
  });

  it("refuses limits outside the API's bounds", () => {
    const limiter = new QuotaLimiter();
    expect(() => limiter.take(pay, { requestsPerSecond: 0, burst: 1 })).toThrow(RangeError);
    expect(() => limiter.take(pay, { requestsPerSecond: 1.5, burst: 1 })).toThrow(RangeError);
    expect(() => limiter.take(pay, { requestsPerSecond: 1, burst: 0 })).toThrow(RangeError);
    expect(() => limiter.take(pay, { requestsPerSecond: Number.NaN, burst: 1 })).toThrow(RangeError);
    expect(() => new QuotaLimiter({ capacity: 0 })).toThrow(RangeError);
  });

  it("never allows more than burst + rate × window in any window", () => {
    const keys = [pay, { ...pay, caller: "checkout.shop" }, { ...pay, rule: "refund" }];
    const step = fc.record({
      advanceMs: fc.oneof(
        fc.constant(0),
        fc.integer({ min: 0, max: 50 }),
        fc.integer({ min: 0, max: 3_000 }),
      ),
      key: fc.integer({ min: 0, max: keys.length - 1 }),
    });
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 50 }),
        fc.integer({ min: 1, max: 10 }),
        fc.array(step, { maxLength: 250 }),
        (requestsPerSecond, burst, steps) => {
          let nowMs = 0;
          const limiter = new QuotaLimiter({ now: () => nowMs });
          const limit = { requestsPerSecond, burst };
          const allowedAt: number[][] = keys.map(() => []);
          for (const { advanceMs, key } of steps) {
            nowMs += advanceMs;
            if (limiter.take(keys[key] ?? pay, limit).allowed) allowedAt[key]?.push(nowMs);
          }
          for (const times of allowedAt) {
            // Every window that starts and ends on an allowed call (the tightest ones).
            for (let first = 0; first < times.length; first++) {
              for (let last = first; last < times.length; last++) {
                const windowSeconds = ((times[last] ?? 0) - (times[first] ?? 0)) / 1000;
                expect(last - first + 1).toBeLessThanOrEqual(burst + requestsPerSecond * windowSeconds);
              }
            }
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

const hasPromtool = requireTool("promtool");

describe.skipIf(!hasPromtool)("quota metrics exposition", () => {
  it("passes promtool check metrics", async () => {
    const registry = new Registry();
    const metrics = createQuotaMetrics(registry);
    metrics.decided("allowed");
    metrics.evictedEarly();
    const exposition = await registry.metrics();
    expect(promtoolProblems(exposition)).toBe("");
  });
});
