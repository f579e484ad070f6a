/**
 * Replay guard shared by the replicas of a service: one Redis `SET key 1 NX PX <ttl>` per call, so a
 * link accepted by one replica is a replay at every other. Redis drops the key when the link could no
 * longer be accepted anyway, so Redis memory is bounded by traffic within one link lifetime.
 *
 * The guard sits on the request path of payment systems, so a slow or absent Redis must answer fast:
 * no offline queue, no retries of a command, a timeout on every command. What happens then is
 * configured (`failureMode`), and counted either way.
 */
import { createHash } from "node:crypto";
import type { Redis } from "ioredis";
import {
  closeRedis,
  connectRedis,
  DEFAULT_REDIS_TIMEOUT_MS,
  describeRedisFailure,
  positiveMs,
  type RedisConnectionOptions,
  redisReady,
} from "../redis/client.js";
import { type ReplayGuard, ReplayStoreUnavailableError } from "./guard.js";
import { elapsedSeconds, type ReplayCheckResult, type ReplayMetrics } from "./metrics.js";

export type ReplayFailureMode = "closed" | "open";

export interface RedisReplayGuardOptions extends RedisConnectionOptions {
  readonly metrics: ReplayMetrics;
  /**
   * closed (default): refuse calls while Redis cannot answer. open: accept them unchecked, which
   * reopens the replay window for as long as Redis is down; only for services that prefer that.
   */
  readonly failureMode?: ReplayFailureMode;
  /** Separates deployments (clusters, trust domains) that share one Redis. */
  readonly keyPrefix?: string;
  readonly now?: () => number;
}

export { DEFAULT_REDIS_TIMEOUT_MS };
export const DEFAULT_REPLAY_KEY_PREFIX = "custody:jti:";
const MAX_KEY_PREFIX_LENGTH = 128;

export class RedisReplayGuard implements ReplayGuard {
  readonly #client: Redis;
  readonly #metrics: ReplayMetrics;
  readonly #failureMode: ReplayFailureMode;
  readonly #keyPrefix: string;
  readonly #commandTimeoutMs: number;
  readonly #now: () => number;
  #closed = false;
  /** Why the last connection attempt failed (refused, wrong password, …): the cause `ready()` reports. */
  readonly #lastConnectionError: () => unknown;

  /** Starts connecting at once (and reconnects forever, with backoff); `ready()` waits for it. */
  constructor(options: RedisReplayGuardOptions) {
    this.#keyPrefix = validKeyPrefix(options.keyPrefix ?? DEFAULT_REPLAY_KEY_PREFIX);
    this.#commandTimeoutMs = positiveMs(
      options.commandTimeoutMs ?? DEFAULT_REDIS_TIMEOUT_MS,
      "commandTimeoutMs",
    );
    this.#failureMode = options.failureMode ?? "closed";
    this.#metrics = options.metrics;
    this.#now = options.now ?? Date.now;
    const { client, lastError } = connectRedis(options);
    this.#client = client;
    this.#lastConnectionError = lastError;
  }

  /** True when Redis is connected and answering (for readiness probes). */
  get available(): boolean {
    return !this.#closed && this.#client.status === "ready";
  }

  /** Resolves once connected; throws ReplayStoreUnavailableError if that takes longer than `timeoutMs`. */
  async ready(timeoutMs: number): Promise<void> {
    if (this.available) return;
    if (this.#closed) throw new ReplayStoreUnavailableError("the Redis replay guard is closed.");
    await redisReady(
      this.#client,
      timeoutMs,
      this.#lastConnectionError,
      (message, cause) => new ReplayStoreUnavailableError(`Redis replay store: ${message}`, { cause }),
    );
  }

  async claim(jti: string, expiresAtMs: number): Promise<boolean> {
    const started = performance.now();
    const ttlMs = Math.max(1, Math.ceil(expiresAtMs - this.#now()));
    if (!Number.isFinite(ttlMs)) throw new RangeError("expiresAtMs must be a finite number");
    if (this.#closed) {
      // Never fail open here: a guard used after shutdown is a bug, not an outage.
      this.#record("store_unavailable_rejected", started);
      throw new ReplayStoreUnavailableError("the Redis replay guard is closed.");
    }
    let reply: "OK" | null;
    try {
      reply = await this.#client.set(this.key(jti), "1", "PX", ttlMs, "NX");
    } catch (error) {
      return this.#unavailable(error, started);
    }
    const fresh = reply === "OK";
    this.#record(fresh ? "fresh" : "replayed", started);
    return fresh;
  }

  /**
   * The Redis key of a jti. Hashed: a jti is chosen by the caller, so its length and bytes are not
   * ours to put in a key; the hash gives every key the same small size and a plain alphabet.
   */
  key(jti: string): string {
    return this.#keyPrefix + createHash("sha256").update(jti, "utf8").digest("base64url");
  }

  /** Stops reconnecting and closes the connection; later claims throw. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await closeRedis(this.#client);
  }

  #unavailable(error: unknown, started: number): boolean {
    if (this.#failureMode === "open") {
      this.#record("store_unavailable_allowed", started);
      return true;
    }
    this.#record("store_unavailable_rejected", started);
    throw new ReplayStoreUnavailableError(
      `Redis replay store unavailable (${describeRedisFailure(error, this.#commandTimeoutMs)}); refusing (fail closed).`,
      { cause: error },
    );
  }

  #record(result: ReplayCheckResult, started: number): void {
    this.#metrics.record("redis", result, elapsedSeconds(started));
  }
}

function validKeyPrefix(prefix: string): string {
  if (prefix.length > MAX_KEY_PREFIX_LENGTH) {
    throw new RangeError(`keyPrefix must be at most ${MAX_KEY_PREFIX_LENGTH} characters`);
  }
  return prefix;
}
