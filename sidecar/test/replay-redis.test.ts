import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { Registry } from "prom-client";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { freePort, HOST, type RedisProcess, startRedis } from "../../e2e/support/redis.js";
import { requireTool } from "../../e2e/support/tools.js";
import { ReplayStoreUnavailableError } from "../src/replay/guard.js";
import { createReplayMetrics } from "../src/replay/metrics.js";
import {
  DEFAULT_REPLAY_KEY_PREFIX,
  RedisReplayGuard,
  type RedisReplayGuardOptions,
} from "../src/replay/redis.js";

const hasRedis = requireTool("redis-server");
async function checkCount(registry: Registry, result: string): Promise<number> {
  const metric = await registry.getSingleMetric("custody_replay_checks_total")?.get();
  const sample = metric?.values.find((v) => v.labels.store === "redis" && v.labels.result === result);
  return sample?.value ?? 0;
}

/** Retries `claim` until Redis answers again (the guard reconnects with backoff). */
async function eventuallyClaims(guard: RedisReplayGuard, jti: string): Promise<boolean> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await guard.claim(jti, Date.now() + 60_000);
    } catch (error) {
      if (!(error instanceof ReplayStoreUnavailableError) || Date.now() > deadline) throw error;
      await sleep(50);
    }
  }
}

let sequence = 0;
const jti = (label: string) => `${label}-${process.pid}-${++sequence}-${Math.random().toString(36).slice(2)}`;

describe.skipIf(!hasRedis)("Redis replay guard", () => {
  let redis: RedisProcess;
  let registry: Registry;
  const guards: RedisReplayGuard[] = [];
  const clients: Redis[] = [];

  beforeAll(async () => {
    redis = await startRedis();
  });

  afterAll(async () => {
    await redis?.stop();
  });

  afterEach(async () => {
    await Promise.all(guards.splice(0).map((guard) => guard.close()));
    await Promise.all(clients.splice(0).map((client) => client.quit().catch(() => client.disconnect())));
  });

  /** A connected guard with its own metrics registry. */
  async function guardFor(options: Partial<RedisReplayGuardOptions> = {}): Promise<RedisReplayGuard> {
    registry = new Registry();
    const guard = new RedisReplayGuard({
      url: redis.url,
      metrics: createReplayMetrics(registry),
      ...options,
    });
    guards.push(guard);
    if (options.url === undefined) await guard.ready(5_000);
    return guard;
  }

  function inspector(): Redis {
    const client = new Redis(redis.url, { lazyConnect: false, maxRetriesPerRequest: 1 });
    clients.push(client);
    return client;
  }

  it("accepts a fresh jti and refuses its replay", async () => {
    const guard = await guardFor();
    const id = jti("fresh");
    expect(await guard.claim(id, Date.now() + 60_000)).toBe(true);
    expect(await guard.claim(id, Date.now() + 60_000)).toBe(false);
    expect(await checkCount(registry, "fresh")).toBe(1);
    expect(await checkCount(registry, "replayed")).toBe(1);
  });

  it("shares what it has seen between replicas", async () => {
    const replicaA = await guardFor();
    const replicaB = await guardFor();
    const id = jti("shared");
    expect(await replicaA.claim(id, Date.now() + 60_000)).toBe(true);
    expect(await replicaB.claim(id, Date.now() + 60_000)).toBe(false);
    expect(await replicaA.claim(id, Date.now() + 60_000)).toBe(false);
  });

  it("lets Redis forget a jti once it has expired", async () => {
    const guard = await guardFor();
    const id = jti("expiring");
    expect(await guard.claim(id, Date.now() + 50)).toBe(true);
    expect(await guard.claim(id, Date.now() + 50)).toBe(false);
    await sleep(150);
    expect(await guard.claim(id, Date.now() + 60_000)).toBe(true);
  });

  it("stores a bounded, prefixed key with TTL = expiry - now", async () => {
    const now = 1_700_000_000_000;
    const guard = await guardFor({ keyPrefix: "test:replicas:", now: () => now });
    const longJti = "x".repeat(10_000);
    expect(await guard.claim(longJti, now + 30_000)).toBe(true);
    const key = guard.key(longJti);
    expect(key).toMatch(/^test:replicas:[A-Za-z0-9_-]{43}$/);
    const ttl = await inspector().pttl(key);
    expect(ttl).toBeGreaterThan(25_000);
    expect(ttl).toBeLessThanOrEqual(30_000);
  });

  it("uses the default prefix, and a TTL of at least 1 ms for a jti already past its expiry", async () => {
    const guard = await guardFor();
    const id = jti("late");
    expect(guard.key(id).startsWith(DEFAULT_REPLAY_KEY_PREFIX)).toBe(true);
    expect(await guard.claim(id, Date.now() - 5_000)).toBe(true);
    await sleep(20);
    expect(await inspector().exists(guard.key(id))).toBe(0);
  });

  it("fails closed, promptly, when Redis cannot be reached", async () => {
    const closedPort = await freePort();
    const guard = await guardFor({ url: `redis://${HOST}:${closedPort}` });
    const started = Date.now();
    const claim = guard.claim(jti("unreachable"), Date.now() + 60_000);
    await expect(claim).rejects.toBeInstanceOf(ReplayStoreUnavailableError);
    expect(Date.now() - started).toBeLessThan(2_000);
    const error = await claim.catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "replay_store_unavailable" });
    // The ioredis error stays out of the message, reachable for debugging as the cause.
    expect(String((error as Error).message)).not.toMatch(/stream|writeable|ECONNREFUSED/i);
    expect((error as Error).cause).toBeInstanceOf(Error);
    expect(guard.available).toBe(false);
    expect(await checkCount(registry, "store_unavailable_rejected")).toBe(1);
    expect(await checkCount(registry, "store_unavailable_allowed")).toBe(0);
  });

  it("fails closed when Redis refuses to store more (maxmemory, noeviction)", async () => {
    const guard = await guardFor();
    const admin = inspector();
    await admin.config("SET", "maxmemory", "1");
    try {
      await expect(guard.claim(jti("full"), Date.now() + 60_000)).rejects.toThrow(
        /Redis refused the command: OOM/,
      );
    } finally {
      await admin.config("SET", "maxmemory", "0");
    }
    expect(await guard.claim(jti("room-again"), Date.now() + 60_000)).toBe(true);
  });

  it("fails open, when configured so, and counts every call it let through", async () => {
    const closedPort = await freePort();
    const guard = await guardFor({ url: `redis://${HOST}:${closedPort}`, failureMode: "open" });
    const id = jti("open");
    expect(await guard.claim(id, Date.now() + 60_000)).toBe(true);
    expect(await guard.claim(id, Date.now() + 60_000)).toBe(true);
    expect(await checkCount(registry, "store_unavailable_allowed")).toBe(2);
    expect(await checkCount(registry, "store_unavailable_rejected")).toBe(0);
  });

  it("times out instead of waiting on a Redis that does not answer", async () => {
    const closed = await guardFor({ commandTimeoutMs: 100 });
    const open = await guardFor({ commandTimeoutMs: 100, failureMode: "open" });
    redis.pause();
    try {
      const started = Date.now();
      const refused = closed.claim(jti("hung"), Date.now() + 60_000);
      await expect(refused).rejects.toThrow(/no answer within 100 ms/);
      expect(await open.claim(jti("hung"), Date.now() + 60_000)).toBe(true);
      expect(Date.now() - started).toBeLessThan(2_000);
    } finally {
      redis.resume();
    }
    expect(await eventuallyClaims(closed, jti("after-pause"))).toBe(true);
  });

  it("refuses while Redis is down and recovers when it comes back", async () => {
    const closed = await guardFor();
    const registryOfClosed = registry;
    const open = await guardFor({ failureMode: "open" });
    const registryOfOpen = registry;
    const before = jti("before");
    expect(await closed.claim(before, Date.now() + 60_000)).toBe(true);

    await redis.stop();
    const started = Date.now();
    await expect(closed.claim(jti("down"), Date.now() + 60_000)).rejects.toBeInstanceOf(
      ReplayStoreUnavailableError,
    );
    expect(await open.claim(jti("down"), Date.now() + 60_000)).toBe(true);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(await checkCount(registryOfClosed, "store_unavailable_rejected")).toBe(1);
    expect(await checkCount(registryOfOpen, "store_unavailable_allowed")).toBe(1);

    await redis.start();
    expect(await eventuallyClaims(closed, jti("after"))).toBe(true);
    expect(closed.available).toBe(true);
    // A fail-open guard answers true either way: look at what Redis remembers instead.
    await open.ready(10_000);
    const afterOpen = jti("after");
    expect(await open.claim(afterOpen, Date.now() + 60_000)).toBe(true);
    expect(await open.claim(afterOpen, Date.now() + 60_000)).toBe(false);
    // Nothing is persisted (--save ""): the restarted Redis has forgotten `before`. Fail-closed
    // deployments that cannot accept that run Redis with persistence or replicas.
    expect(await closed.claim(before, Date.now() + 60_000)).toBe(true);
    expect(await closed.claim(before, Date.now() + 60_000)).toBe(false);
  });

  it("closes cleanly, and never fails open once closed", async () => {
    const guard = await guardFor({ failureMode: "open" });
    await guard.close();
    await guard.close();
    expect(guard.available).toBe(false);
    await expect(guard.claim(jti("closed"), Date.now() + 60_000)).rejects.toBeInstanceOf(
      ReplayStoreUnavailableError,
    );
    expect(await checkCount(registry, "store_unavailable_rejected")).toBe(1);
  });

  it("closes cleanly while Redis is unreachable", async () => {
    const closedPort = await freePort();
    const guard = await guardFor({ url: `redis://${HOST}:${closedPort}` });
    await guard.close();
    await expect(guard.ready(100)).rejects.toBeInstanceOf(ReplayStoreUnavailableError);
  });

  it("says why it could not connect", async () => {
    const closedPort = await freePort();
    const guard = await guardFor({ url: `redis://${HOST}:${closedPort}` });
    const error = await guard.ready(300).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ReplayStoreUnavailableError);
    expect((error as Error).cause).toMatchObject({ code: "ECONNREFUSED" });
  });

  it("rejects bad options and expiries", async () => {
    const metrics = createReplayMetrics(new Registry());
    expect(() => new RedisReplayGuard({ url: redis.url, metrics, commandTimeoutMs: 0 })).toThrow(RangeError);
    expect(() => new RedisReplayGuard({ url: redis.url, metrics, keyPrefix: "p".repeat(129) })).toThrow(
      RangeError,
    );
    const guard = await guardFor();
    await expect(guard.claim(jti("nan"), Number.NaN)).rejects.toBeInstanceOf(RangeError);
  });
});
