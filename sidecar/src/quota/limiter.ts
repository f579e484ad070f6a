/**
 * Token-bucket quotas, one bucket per (policy, rule, caller): a rule's `quota` limits each immediate
 * caller separately, and two rules never share a bucket. A call that several policies allow is
 * charged to each of their buckets at once, or to none (takeAll).
 *
 * Buckets count in integer credits (1 token = 1000 credits) on a whole-millisecond clock, so a rate
 * of r requests per second adds exactly r credits per millisecond: no floating-point drift can let
 * one call too many through, and `retryAfterMs` is exact.
 */
import { MAX_BURST, MAX_REQUESTS_PER_SECOND } from "../../../crds/src/access-policy.js";
import { CustodyError } from "../../../crds/src/errors.js";
import type { QuotaMetrics } from "./metrics.js";

export interface QuotaKey {
  /** The compiled policy's identity, e.g. `shop/payments`. */
  readonly policy: string;
  /** The rule's label in that policy. */
  readonly rule: string;
  /** The immediate caller's service id. */
  readonly caller: string;
}

export interface QuotaLimit {
  readonly requestsPerSecond: number;
  readonly burst: number;
}

/** One bucket to charge: its key and the limit in force for it. */
export interface QuotaCharge {
  readonly key: QuotaKey;
  readonly limit: QuotaLimit;
}

export interface QuotaDecision {
  readonly allowed: boolean;
  /** 0 when allowed; otherwise the wait until the next call would be allowed, exact to the ms. */
  readonly retryAfterMs: number;
  /** The same wait in whole seconds, rounded up: the value of a Retry-After header. */
  readonly retryAfterSeconds: number;
  /** Whole calls left in the bucket after this decision (the fullest's, for several). */
  readonly remaining: number;
  /** When refused: the key of a bucket that was empty (the one with the longest wait). */
  readonly exhausted?: QuotaKey;
}

/**
 * Where the buckets live: in this process (QuotaLimiter: one replica's share), or in Redis, shared
 * by every replica of the service (RedisQuotaLimiter: the rule's rate holds for the service).
 */
export interface QuotaStore {
  takeAll(charges: readonly QuotaCharge[]): QuotaDecision | Promise<QuotaDecision>;
}

/** The shared quota store could not answer and the failure policy is closed: the call is refused. */
export class QuotaStoreUnavailableError extends CustodyError {
  declare readonly code: "quota_store_unavailable";
  constructor(message: string, options?: { cause?: unknown }) {
    super("quota_store_unavailable", message, options);
  }
}

export interface QuotaLimiterOptions {
  /** Most buckets kept at once; see DEFAULT_QUOTA_CAPACITY. */
  readonly capacity?: number;
  /** Milliseconds on a clock that only needs to move forward (default: the monotonic clock). */
  readonly now?: () => number;
  readonly metrics?: QuotaMetrics;
}

/**
 * Evicting the least recently used bucket is safe because a bucket left alone for burst / rate
 * seconds has refilled to full, and a new bucket starts full: forgetting it changes nothing. Eviction
 * only matters when more than `capacity` buckets were used within that refill time; each bucket
 * evicted early then lets its caller make up to `burst` extra calls (counted by
 * custody_quota_early_evictions_total). Callers are registry services, so the live buckets are about
 * (rules with a quota) × (their distinct callers): 10 000 covers large meshes for about 3 MB.
 */
export const DEFAULT_QUOTA_CAPACITY = 10_000;

export const CREDITS_PER_TOKEN = 1000;

interface Bucket {
  credits: number;
  updatedMs: number;
  requestsPerSecond: number;
  burst: number;
}

export class QuotaLimiter implements QuotaStore {
  /** Map order is recency order: the first entry is the least recently used. */
  readonly #buckets = new Map<string, Bucket>();
  readonly #capacity: number;
  readonly #now: () => number;
  readonly #metrics: QuotaMetrics | undefined;

  constructor(options: QuotaLimiterOptions = {}) {
    this.#capacity = options.capacity ?? DEFAULT_QUOTA_CAPACITY;
    if (!Number.isInteger(this.#capacity) || this.#capacity < 1) {
      throw new RangeError("capacity must be a positive whole number");
    }
    // Wall-clock time can jump back (NTP); quotas only need elapsed time.
    this.#now = options.now ?? (() => performance.now());
    this.#metrics = options.metrics;
  }

  get size(): number {
    return this.#buckets.size;
  }

  /** Takes one call from the bucket of `key`. A changed `limit` (policy update) applies at once. */
  take(key: QuotaKey, limit: QuotaLimit): QuotaDecision {
    return this.takeAll([{ key, limit }]);
  }

  /**
   * Takes one call from every bucket, or from none: when any of them is empty the call is refused
   * and the others keep their credit (a refused call costs nothing). With no charges, allowed.
   */
  takeAll(charges: readonly QuotaCharge[]): QuotaDecision {
    for (const { limit } of charges) checkLimit(limit);
    const nowMs = Math.floor(this.#now());
    const buckets = charges.map(({ key, limit }) => ({
      key,
      bucket: this.#touch(bucketId(key), limit, nowMs),
    }));
    let longest: { key: QuotaKey; decision: QuotaDecision } | undefined;
    for (const { key, bucket } of buckets) {
      const wait = waitFor(bucket);
      if (
        wait !== undefined &&
        (longest === undefined || wait.retryAfterMs > longest.decision.retryAfterMs)
      ) {
        longest = { key, decision: wait };
      }
    }
    let decision: QuotaDecision;
    if (longest !== undefined) {
      decision = { ...longest.decision, exhausted: longest.key };
    } else {
      let remaining = Number.POSITIVE_INFINITY;
      for (const { bucket } of buckets) {
        bucket.credits -= CREDITS_PER_TOKEN;
        remaining = Math.min(remaining, Math.floor(bucket.credits / CREDITS_PER_TOKEN));
      }
      decision = {
        allowed: true,
        retryAfterMs: 0,
        retryAfterSeconds: 0,
        remaining: Number.isFinite(remaining) ? remaining : 0,
      };
    }
    this.#metrics?.decided(decision.allowed ? "allowed" : "limited");
    return decision;
  }

  /** The bucket of `id`, refilled up to `nowMs`, under `limit`, and now the most recently used. */
  #touch(id: string, limit: QuotaLimit, nowMs: number): Bucket {
    const existing = this.#buckets.get(id);
    if (existing === undefined) return this.#insert(id, fullBucket(limit, nowMs), nowMs);
    this.#buckets.delete(id);
    this.#buckets.set(id, existing);
    refill(existing, nowMs);
    applyLimit(existing, limit);
    return existing;
  }

  #insert(id: string, bucket: Bucket, nowMs: number): Bucket {
    this.#buckets.set(id, bucket);
    if (this.#buckets.size > this.#capacity) this.#evictLeastRecentlyUsed(nowMs);
    return bucket;
  }

  #evictLeastRecentlyUsed(nowMs: number): void {
    const oldest = this.#buckets.entries().next();
    if (oldest.done === true) return;
    const [id, bucket] = oldest.value;
    this.#buckets.delete(id);
    refill(bucket, nowMs);
    if (bucket.credits < bucket.burst * CREDITS_PER_TOKEN) this.#metrics?.evictedEarly();
  }
}

export function bucketId(key: QuotaKey): string {
  // JSON keeps the three parts apart whatever characters they contain.
  return JSON.stringify([key.policy, key.rule, key.caller]);
}

function fullBucket(limit: QuotaLimit, nowMs: number): Bucket {
  return {
    credits: limit.burst * CREDITS_PER_TOKEN,
    updatedMs: nowMs,
    requestsPerSecond: limit.requestsPerSecond,
    burst: limit.burst,
  };
}

/** Adds the credits earned since the last update, at the rate in force during that time. */
function refill(bucket: Bucket, nowMs: number): void {
  if (nowMs <= bucket.updatedMs) return; // a clock that went back earns nothing
  const capacity = bucket.burst * CREDITS_PER_TOKEN;
  // Capping the elapsed time first keeps the product far below 2^53 whatever the gap.
  const elapsedMs = Math.min(nowMs - bucket.updatedMs, capacity);
  bucket.credits = Math.min(capacity, bucket.credits + elapsedMs * bucket.requestsPerSecond);
  bucket.updatedMs = nowMs;
}

/** A lower burst cuts the saved-up calls at once; a new rate applies from now on. */
function applyLimit(bucket: Bucket, limit: QuotaLimit): void {
  bucket.requestsPerSecond = limit.requestsPerSecond;
  bucket.burst = limit.burst;
  bucket.credits = Math.min(bucket.credits, limit.burst * CREDITS_PER_TOKEN);
}

/** The refusal for a bucket without a whole call's credit, exact to the ms; undefined when it has one. */
function waitFor(bucket: Bucket): QuotaDecision | undefined {
  if (bucket.credits >= CREDITS_PER_TOKEN) return undefined;
  const retryAfterMs = Math.ceil((CREDITS_PER_TOKEN - bucket.credits) / bucket.requestsPerSecond);
  return { allowed: false, retryAfterMs, retryAfterSeconds: Math.ceil(retryAfterMs / 1000), remaining: 0 };
}

export function checkLimit(limit: QuotaLimit): void {
  const { requestsPerSecond, burst } = limit;
  if (
    !Number.isInteger(requestsPerSecond) ||
    requestsPerSecond < 1 ||
    requestsPerSecond > MAX_REQUESTS_PER_SECOND
  ) {
    throw new RangeError(`requestsPerSecond must be a whole number from 1 to ${MAX_REQUESTS_PER_SECOND}`);
  }
  if (!Number.isInteger(burst) || burst < 1 || burst > MAX_BURST) {
    throw new RangeError(`burst must be a whole number from 1 to ${MAX_BURST}`);
  }
}
