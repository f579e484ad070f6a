/**
 * Quota buckets shared through a real redis-server: two limiters stand for two replicas of one
 * service, and together they grant the rule's burst once, not once each; a call charged to two
 * buckets takes from both or neither; a Redis that cannot answer refuses (closed) or falls back to
 * the replica's own buckets (open).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { freePort, type RedisProcess, startRedis } from "../../e2e/support/redis.js";
import { requireTool } from "../../e2e/support/tools.js";
import { type QuotaCharge, QuotaLimiter, QuotaStoreUnavailableError } from "../src/quota/limiter.js";
import { RedisQuotaLimiter, type RedisQuotaLimiterOptions } from "../src/quota/redis.js";

const hasRedis = requireTool("redis-server");

const charge = (rule: string, requestsPerSecond: number, burst: number): QuotaCharge => ({
  key: { policy: "shop/payments", rule, caller: "cart.shop" },
  limit: { requestsPerSecond, burst },
});

describe.skipIf(!hasRedis)("quota buckets in Redis, shared by replicas", () => {
  let redis: RedisProcess;
  const limiters: RedisQuotaLimiter[] = [];
  let prefix = 0;

  beforeAll(async () => {
    redis = await startRedis();
  });

  afterAll(async () => {
    await redis?.stop();
  });

  afterEach(async () => {
    await Promise.all(limiters.splice(0).map((limiter) => limiter.close()));
  });

  /** Limiters on one key prefix (one service's replicas), each with its own fallback. */
  const replicas = async (count: number, options: Partial<RedisQuotaLimiterOptions> = {}) => {
    prefix += 1;
    const made = Array.from({ length: count }, () => {
      const limiter = new RedisQuotaLimiter({
        url: redis.url,
        failureMode: "closed",
        fallback: new QuotaLimiter(),
        keyPrefix: `test-${prefix}:`,
        connectTimeoutMs: 1_000,
        commandTimeoutMs: 1_000,
        ...options,
      });
      limiters.push(limiter);
      return limiter;
    });
    if (options.url === undefined) await Promise.all(made.map((limiter) => limiter.ready(5_000)));
    return made;
  };

  it("two replicas together grant the burst once, then refuse with the wait until the next call", async () => {
    const [a, b] = (await replicas(2)) as [RedisQuotaLimiter, RedisQuotaLimiter];
    // One call a second, burst 4: however the calls are spread, 4 pass at once, not 8.
    const rule = charge("pay", 1, 4);
    const decisions = [];
    for (let index = 0; index < 8; index++) decisions.push(await (index % 2 === 0 ? a : b).takeAll([rule]));
    expect(decisions.filter((decision) => decision.allowed)).toHaveLength(4);
    const refused = decisions.at(-1);
    expect(refused).toMatchObject({ allowed: false, remaining: 0, exhausted: rule.key });
    expect(refused?.retryAfterMs).toBeGreaterThan(0);
    expect(refused?.retryAfterMs).toBeLessThanOrEqual(1_000);
    expect(refused?.retryAfterSeconds).toBe(1);
    expect(decisions[0]).toMatchObject({ allowed: true, remaining: 3 });
  });

  it("charges every bucket of a call or none", async () => {
    const [a] = (await replicas(1)) as [RedisQuotaLimiter];
    const wide = charge("wide", 1, 5);
    const narrow = charge("narrow", 1, 1);
    expect((await a.takeAll([wide, narrow])).allowed).toBe(true);
    // narrow is empty: refused, and wide keeps its credit.
    const refused = await a.takeAll([wide, narrow]);
    expect(refused).toMatchObject({ allowed: false, exhausted: narrow.key });
    const rest = [];
    for (let index = 0; index < 5; index++) rest.push((await a.takeAll([wide])).allowed);
    expect(rest).toEqual([true, true, true, true, false]);
  });

  it("keeps buckets apart per rule and per caller, and lets Redis forget a full bucket", async () => {
    const [a] = (await replicas(1)) as [RedisQuotaLimiter];
    const first = charge("one", 1, 1);
    const other = { ...first, key: { ...first.key, caller: "shop.shop" } };
    expect((await a.takeAll([first])).allowed).toBe(true);
    expect((await a.takeAll([first])).allowed).toBe(false);
    expect((await a.takeAll([other])).allowed).toBe(true);
    expect((await a.takeAll([charge("two", 1, 1)])).allowed).toBe(true);
    expect(a.key("x")).toMatch(/^test-\d+:\{q\}[A-Za-z0-9_-]{43}$/);
  });

  it("fails closed when Redis cannot answer, or falls back to the replica's own buckets when open", async () => {
    const url = `redis://127.0.0.1:${await freePort()}`;
    const [closed] = (await replicas(1, { url, connectTimeoutMs: 100, commandTimeoutMs: 100 })) as [
      RedisQuotaLimiter,
    ];
    await expect(closed.takeAll([charge("pay", 1, 2)])).rejects.toBeInstanceOf(QuotaStoreUnavailableError);
    await expect(closed.takeAll([charge("pay", 1, 2)])).rejects.toMatchObject({
      code: "quota_store_unavailable",
    });
    const [open] = (await replicas(1, {
      url,
      failureMode: "open",
      connectTimeoutMs: 100,
      commandTimeoutMs: 100,
    })) as [RedisQuotaLimiter];
    // Still a quota: this replica's share, from its in-memory buckets.
    const decisions = [];
    for (let index = 0; index < 3; index++)
      decisions.push((await open.takeAll([charge("pay", 1, 2)])).allowed);
    expect(decisions).toEqual([true, true, false]);
  });
});
