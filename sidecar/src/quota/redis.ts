/**
 * Quota buckets in Redis, shared by every replica of a service: a rule's rate then holds for the
 * service, not for each replica (ten replicas with in-memory buckets grant ten times the rate).
 *
 * One script per call takes from every bucket the call is charged to, or from none, atomically, on
 * Redis's own clock (TIME), so replicas whose clocks disagree still share one bucket. The buckets
 * are the in-memory limiter's (integer credits, 1 token = 1000, refilled per millisecond) and a
 * bucket's key expires once it would have refilled anyway, so Redis holds only active callers.
 *
 * Redis unavailable: the replay guard's failure policy. closed refuses the call
 * (QuotaStoreUnavailableError, 503); open decides it with this replica's in-memory buckets, which
 * keeps a quota (one replica's share) rather than none.
 */
import { createHash } from "node:crypto";
import type { Redis } from "ioredis";
import {
  closeRedis,
  connectRedis,
  DEFAULT_REDIS_TIMEOUT_MS,
  describeRedisFailure,
  type RedisConnectionOptions,
  redisReady,
} from "../redis/client.js";
import {
  bucketId,
  CREDITS_PER_TOKEN,
  checkLimit,
  type QuotaCharge,
  type QuotaDecision,
  type QuotaLimiter,
  type QuotaStore,
  QuotaStoreUnavailableError,
} from "./limiter.js";
import type { QuotaMetrics } from "./metrics.js";

export interface RedisQuotaLimiterOptions extends RedisConnectionOptions {
  readonly failureMode: "closed" | "open";
  /** Decides while Redis cannot answer, in open mode. */
  readonly fallback: QuotaLimiter;
  /** Separates deployments that share one Redis. */
  readonly keyPrefix?: string;
  readonly metrics?: QuotaMetrics;
}

/**
 * KEYS: the buckets. ARGV: per bucket, its rate (credits per ms = requests per second) and burst.
 * Returns {1, 0, remaining} when every bucket had a whole token (each is charged one), else
 * {0, retryAfterMs, index of the emptiest bucket} and nothing is charged.
 */
const SCRIPT = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local credits = {}
local longest, emptiest = -1, 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i]) * ${CREDITS_PER_TOKEN}
  local state = redis.call('HMGET', key, 'c', 't')
  local c = tonumber(state[1]) or capacity
  local t = tonumber(state[2]) or now
  if now > t then c = c + math.min(now - t, capacity) * rate end
  if c > capacity then c = capacity end
  credits[i] = c
  if c < ${CREDITS_PER_TOKEN} then
    local wait = math.ceil((${CREDITS_PER_TOKEN} - c) / rate)
    if wait > longest then longest, emptiest = wait, i end
  end
end
if longest >= 0 then return {0, longest, emptiest} end
local remaining = -1
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local capacity = tonumber(ARGV[2 * i]) * ${CREDITS_PER_TOKEN}
  local c = credits[i] - ${CREDITS_PER_TOKEN}
  redis.call('HSET', key, 'c', c, 't', now)
  redis.call('PEXPIRE', key, math.ceil(capacity / rate) + 1000)
  local whole = math.floor(c / ${CREDITS_PER_TOKEN})
  if remaining < 0 or whole < remaining then remaining = whole end
end
return {1, 0, remaining}
`;
const SCRIPT_SHA = createHash("sha1").update(SCRIPT).digest("hex");

export const DEFAULT_QUOTA_KEY_PREFIX = "custody:quota:";

export class RedisQuotaLimiter implements QuotaStore {
  readonly #client: Redis;
  readonly #lastError: () => unknown;
  readonly #options: RedisQuotaLimiterOptions;
  readonly #keyPrefix: string;
  #closed = false;

  constructor(options: RedisQuotaLimiterOptions) {
    this.#options = options;
    this.#keyPrefix = options.keyPrefix ?? DEFAULT_QUOTA_KEY_PREFIX;
    if (this.#keyPrefix.length > 128) throw new RangeError("keyPrefix must be at most 128 characters");
    const { client, lastError } = connectRedis(options);
    this.#client = client;
    this.#lastError = lastError;
  }

  /** Resolves once connected; throws QuotaStoreUnavailableError after `timeoutMs`. */
  async ready(timeoutMs: number): Promise<void> {
    if (this.#closed) throw new QuotaStoreUnavailableError("the Redis quota store is closed.");
    await redisReady(
      this.#client,
      timeoutMs,
      this.#lastError,
      (message, cause) => new QuotaStoreUnavailableError(`Redis quota store: ${message}`, { cause }),
    );
  }

  async takeAll(charges: readonly QuotaCharge[]): Promise<QuotaDecision> {
    for (const { limit } of charges) checkLimit(limit);
    if (charges.length === 0) return { allowed: true, retryAfterMs: 0, retryAfterSeconds: 0, remaining: 0 };
    if (this.#closed) throw new QuotaStoreUnavailableError("the Redis quota store is closed.");
    const keys = charges.map(({ key }) => this.key(bucketId(key)));
    const limits = charges.flatMap(({ limit }) => [limit.requestsPerSecond, limit.burst]);
    let reply: unknown;
    try {
      reply = await this.#run(keys, limits);
    } catch (error) {
      if (this.#options.failureMode === "open") return this.#options.fallback.takeAll(charges);
      this.#options.metrics?.decided("limited");
      const timeoutMs = this.#options.commandTimeoutMs ?? DEFAULT_REDIS_TIMEOUT_MS;
      throw new QuotaStoreUnavailableError(
        `Redis quota store unavailable (${describeRedisFailure(error, timeoutMs)}); refusing (fail closed).`,
        { cause: error },
      );
    }
    const [allowed, second, third] = Array.isArray(reply) ? reply.map(Number) : [];
    let decision: QuotaDecision;
    if (allowed === 1) {
      decision = { allowed: true, retryAfterMs: 0, retryAfterSeconds: 0, remaining: Math.max(0, third ?? 0) };
    } else {
      const retryAfterMs = Math.max(1, second ?? 1);
      const exhausted = charges[(third ?? 1) - 1]?.key;
      decision = {
        allowed: false,
        retryAfterMs,
        retryAfterSeconds: Math.ceil(retryAfterMs / 1000),
        remaining: 0,
        ...(exhausted === undefined ? {} : { exhausted }),
      };
    }
    this.#options.metrics?.decided(decision.allowed ? "allowed" : "limited");
    return decision;
  }

  /**
   * A bucket's Redis key. Hashed, as the parts are names from policies and the registry; one hash
   * tag puts every bucket in one Redis Cluster slot, since a call may be charged to several.
   */
  key(id: string): string {
    return `${this.#keyPrefix}{q}${createHash("sha256").update(id, "utf8").digest("base64url")}`;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await closeRedis(this.#client);
  }

  async #run(keys: readonly string[], limits: readonly number[]): Promise<unknown> {
    try {
      return await this.#client.evalsha(SCRIPT_SHA, keys.length, ...keys, ...limits);
    } catch (error) {
      // The first call on a Redis that has not seen the script yet (or was restarted).
      if (error instanceof Error && error.message.startsWith("NOSCRIPT")) {
        return this.#client.eval(SCRIPT, keys.length, ...keys, ...limits);
      }
      throw error;
    }
  }
}
