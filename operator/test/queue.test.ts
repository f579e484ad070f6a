/** The work queue: a key waits once, never runs twice at a time, retries with back-off, comes back when asked. */
import { describe, expect, it, vi } from "vitest";
import { backoff, WorkQueue } from "../src/controllers/queue.js";

const options = { concurrency: 4, baseRetryMs: 10, maxRetryMs: 100, maxKeys: 100 };

describe("WorkQueue", () => {
  it("runs a key added many times while it waits once", async () => {
    const runs: string[] = [];
    const queue = new WorkQueue(async (key) => {
      runs.push(key);
      return undefined;
    }, options);
    for (let index = 0; index < 5; index++) queue.add("a", 20);
    queue.add("b", 20);
    queue.start();
    await vi.waitFor(() => expect(runs).toHaveLength(2), { timeout: 5_000, interval: 10 });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(runs.sort()).toEqual(["a", "b"]);
    queue.stop();
  });

  it("never runs one key twice at once; an add during the run runs it again afterwards", async () => {
    let running = 0;
    let maximum = 0;
    let runs = 0;
    const queue: WorkQueue = new WorkQueue(async (key) => {
      running++;
      runs++;
      maximum = Math.max(maximum, running);
      // Added twice while it runs: one more run, after this one.
      if (runs === 1) {
        queue.add(key);
        queue.add(key);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
      running--;
      return undefined;
    }, options);
    queue.start();
    queue.add("a");
    await vi.waitFor(() => expect(runs).toBe(2), { timeout: 5_000, interval: 10 });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(maximum).toBe(1);
    expect(runs).toBe(2);
    queue.stop();
  });

  it("retries a failing key with back-off and reports each outcome", async () => {
    let attempts = 0;
    const outcomes: string[] = [];
    const queue = new WorkQueue(
      async () => {
        attempts++;
        if (attempts < 3) throw new Error("boom");
        return undefined;
      },
      options,
      { processed: (_key, outcome) => outcomes.push(outcome), dropped: () => undefined },
    );
    queue.start();
    queue.add("a");
    await vi.waitFor(() => expect(outcomes).toEqual(["error", "error", "ok"]), {
      timeout: 5_000,
      interval: 10,
    });
    queue.stop();
  });

  it("brings a key back after requeueAfterMs, and refuses keys beyond maxKeys", async () => {
    const runs: number[] = [];
    const dropped: string[] = [];
    const queue = new WorkQueue(
      async () => {
        runs.push(Date.now());
        return runs.length === 1 ? { requeueAfterMs: 30 } : undefined;
      },
      { ...options, maxKeys: 1 },
      { processed: () => undefined, dropped: (key) => dropped.push(key) },
    );
    queue.add("a", 1_000);
    queue.add("b", 1_000);
    expect(dropped).toEqual(["b"]);
    queue.stop();
    queue.start();
    queue.add("a");
    await vi.waitFor(() => expect(runs).toHaveLength(2), { timeout: 5_000, interval: 10 });
    expect((runs[1] ?? 0) - (runs[0] ?? 0)).toBeGreaterThanOrEqual(25);
    queue.stop();
  });

  it("runs an urgent key before ordinary keys that were due earlier", async () => {
    const runs: string[] = [];
    const queue = new WorkQueue(
      async (key) => {
        runs.push(key);
        return undefined;
      },
      { ...options, concurrency: 1 },
    );
    for (const key of ["a", "b", "c"]) queue.add(key);
    queue.add("publish", 0, { urgent: true });
    queue.start();
    await vi.waitFor(() => expect(runs).toHaveLength(4), { timeout: 5_000, interval: 10 });
    expect(runs).toEqual(["publish", "a", "b", "c"]);
    queue.stop();
  });

  it("backs off exponentially up to the cap, with jitter", () => {
    expect(backoff(100, 10_000, 1)).toBeGreaterThanOrEqual(80);
    expect(backoff(100, 10_000, 1)).toBeLessThanOrEqual(120);
    expect(backoff(100, 10_000, 4)).toBeGreaterThanOrEqual(640);
    expect(backoff(100, 10_000, 40)).toBeLessThanOrEqual(12_000);
  });
});
