import { execFileSync } from "node:child_process";
import fc from "fast-check";
import { Registry, register } from "prom-client";
import { describe, expect, it } from "vitest";
import { requireTool } from "../../e2e/support/tools.js";
import { ReplayStoreUnavailableError } from "../src/replay/guard.js";
import { MemoryReplayGuard } from "../src/replay/memory.js";
import { createReplayMetrics, withReplayMetrics } from "../src/replay/metrics.js";
import { manualClock } from "./support/clock.js";

/** A clock the test moves by hand. */

async function checkCount(registry: Registry, store: string, result: string): Promise<number> {
  const metric = await registry.getSingleMetric("custody_replay_checks_total")?.get();
  const sample = metric?.values.find((v) => v.labels.store === store && v.labels.result === result);
  return sample?.value ?? 0;
}

describe("memory replay guard", () => {
  it("accepts a jti once and refuses it after", async () => {
    const clock = manualClock(1_700_000_000_000);
    const guard = new MemoryReplayGuard({ now: clock.now });
    expect(await guard.claim("a", clock.ms + 60_000)).toBe(true);
    expect(await guard.claim("a", clock.ms + 60_000)).toBe(false);
    expect(await guard.claim("b", clock.ms + 60_000)).toBe(true);
  });

  it("frees a jti only once its expiry has passed", async () => {
    const clock = manualClock(1_700_000_000_000);
    const guard = new MemoryReplayGuard({ now: clock.now });
    const expiresAtMs = clock.ms + 30_000;
    expect(await guard.claim("a", expiresAtMs)).toBe(true);
    clock.advance(29_999);
    expect(await guard.claim("a", expiresAtMs)).toBe(false);
    clock.advance(1);
    expect(guard.size).toBe(1);
    expect(await guard.claim("a", clock.ms + 30_000)).toBe(true);
  });

  it("a replay with a later expiry does not extend or shorten the first entry", async () => {
    const clock = manualClock(1_700_000_000_000);
    const guard = new MemoryReplayGuard({ now: clock.now });
    expect(await guard.claim("a", clock.ms + 1_000)).toBe(true);
    expect(await guard.claim("a", clock.ms + 90_000)).toBe(false);
    clock.advance(1_000);
    expect(await guard.claim("a", clock.ms + 1_000)).toBe(true);
  });

  it("does not remember a jti whose expiry has already passed", async () => {
    const clock = manualClock(1_700_000_000_000);
    const guard = new MemoryReplayGuard({ now: clock.now });
    expect(await guard.claim("late", clock.ms)).toBe(true);
    expect(guard.size).toBe(0);
  });

  it("fails closed when full of live entries", async () => {
    const clock = manualClock(1_700_000_000_000);
    const guard = new MemoryReplayGuard({ now: clock.now, capacity: 3 });
    for (const jti of ["a", "b", "c"]) expect(await guard.claim(jti, clock.ms + 10_000)).toBe(true);
    const refused = guard.claim("d", clock.ms + 10_000);
    await expect(refused).rejects.toBeInstanceOf(ReplayStoreUnavailableError);
    await expect(refused).rejects.toMatchObject({ code: "replay_store_unavailable" });
    // Full is not forgetful: the live entries are still replays.
    expect(await guard.claim("a", clock.ms + 10_000)).toBe(false);
  });

  it("purges expired entries before deciding it is full", async () => {
    const clock = manualClock(1_700_000_000_000);
    const guard = new MemoryReplayGuard({ now: clock.now, capacity: 3 });
    for (const jti of ["a", "b", "c"]) await guard.claim(jti, clock.ms + 1_000);
    clock.advance(1_000);
    expect(await guard.claim("d", clock.ms + 1_000)).toBe(true);
    expect(guard.size).toBe(1);
  });

  it("steady traffic within capacity never fails", async () => {
    const clock = manualClock(1_700_000_000_000);
    const lifetimeMs = 10_000;
    const intervalMs = 20;
    // Exactly the live entries of this traffic: one call per interval, each live for one lifetime.
    const capacity = lifetimeMs / intervalMs;
    const guard = new MemoryReplayGuard({ now: clock.now, capacity });
    for (let call = 0; call < 20 * capacity; call++) {
      expect(await guard.claim(`jti-${call}`, clock.ms + lifetimeMs)).toBe(true);
      clock.advance(intervalMs);
    }
    expect(guard.size).toBe(capacity);
  });

  it("under any interleaving of lifetimes: bounded, and never accepts a live replay", async () => {
    const capacity = 16;
    const step = fc.record({
      advanceMs: fc.integer({ min: 0, max: 2_000 }),
      jti: fc.integer({ min: 0, max: 40 }).map((n) => `j${n}`),
      lifetimeMs: fc.integer({ min: -500, max: 5_000 }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(step, { maxLength: 300 }), async (steps) => {
        const clock = manualClock(1_700_000_000_000);
        const guard = new MemoryReplayGuard({ now: clock.now, capacity });
        /** What a correct guard must still remember: jti → expiry of the claim it accepted. */
        const live = new Map<string, number>();
        for (const { advanceMs, jti, lifetimeMs } of steps) {
          clock.advance(advanceMs);
          for (const [id, expiry] of live) if (expiry <= clock.ms) live.delete(id);
          const expiresAtMs = clock.ms + lifetimeMs;
          let accepted: boolean;
          try {
            accepted = await guard.claim(jti, expiresAtMs);
          } catch (error) {
            expect(error).toBeInstanceOf(ReplayStoreUnavailableError);
            // Refusing is only allowed when the live entries really fill the guard.
            expect(live.size).toBe(capacity);
            continue;
          }
          expect(accepted).toBe(!live.has(jti));
          if (accepted && expiresAtMs > clock.ms) live.set(jti, expiresAtMs);
          expect(guard.size).toBeLessThanOrEqual(capacity);
        }
      }),
      { numRuns: 200 },
    );
  });

  it("rejects a capacity that is not a positive whole number", () => {
    expect(() => new MemoryReplayGuard({ capacity: 0 })).toThrow(RangeError);
    expect(() => new MemoryReplayGuard({ capacity: 1.5 })).toThrow(RangeError);
  });
});

describe("replay metrics", () => {
  it("count fresh, replayed and fail-closed claims of the memory guard", async () => {
    const registry = new Registry();
    const clock = manualClock(1_700_000_000_000);
    const metrics = createReplayMetrics(registry);
    const guard = withReplayMetrics(
      new MemoryReplayGuard({ now: clock.now, capacity: 1 }),
      metrics,
      "memory",
    );
    await guard.claim("a", clock.ms + 1_000);
    await guard.claim("a", clock.ms + 1_000);
    await expect(guard.claim("b", clock.ms + 1_000)).rejects.toBeInstanceOf(ReplayStoreUnavailableError);
    expect(await checkCount(registry, "memory", "fresh")).toBe(1);
    expect(await checkCount(registry, "memory", "replayed")).toBe(1);
    expect(await checkCount(registry, "memory", "store_unavailable_rejected")).toBe(1);
    const exposition = await registry.getSingleMetricAsString("custody_replay_check_duration_seconds");
    expect(exposition).toContain('custody_replay_check_duration_seconds_count{store="memory"} 3');
  });

  it("export every outcome from the start, at zero", async () => {
    const registry = new Registry();
    createReplayMetrics(registry);
    const text = await registry.getSingleMetricAsString("custody_replay_checks_total");
    expect(text).toContain('custody_replay_checks_total{store="redis",result="store_unavailable_allowed"} 0');
    expect(text).toContain('custody_replay_checks_total{store="memory",result="fresh"} 0');
  });

  it("live on the registry they are given, not on the global one", async () => {
    createReplayMetrics(new Registry());
    expect(register.getSingleMetric("custody_replay_checks_total")).toBeUndefined();
  });
});

const hasPromtool = requireTool("promtool");

describe.skipIf(!hasPromtool)("replay metrics exposition", () => {
  it("passes promtool check metrics", async () => {
    const registry = new Registry();
    const metrics = createReplayMetrics(registry);
    metrics.record("redis", "fresh", 0.002);
    // promtool reads the exposition on stdin and exits non-zero on any lint problem.
    const run = () => execFileSync("promtool", ["check", "metrics"], { input: exposition, stdio: "pipe" });
    const exposition = await registry.metrics();
    expect(run).not.toThrow();
  });
});
