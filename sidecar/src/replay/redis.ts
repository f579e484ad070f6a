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
import type { ConnectionOptions } from "node:tls";
import { Redis, type RedisOptions } from "ioredis";
import { type ReplayGuard, ReplayStoreUnavailableError } from "./guard.js";
import { elapsedSeconds, type ReplayCheckResult, type ReplayMetrics } from "./metrics.js";

export type ReplayFailureMode = "closed" | "open";

export interface RedisReplayGuardOptions {
  /** `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS. */
  readonly url: string;
  /** Kept out of the URL so it can come from a mounted Secret file. */
  readonly password?: string;
  /** Extra TLS settings (a private CA); implies TLS. */
  readonly tls?: ConnectionOptions;
  readonly metrics: ReplayMetrics;
  /**
   * closed (default): refuse calls while Redis cannot answer. open: accept them unchecked, which
   * reopens the replay window for as long as Redis is down; only for services that prefer that.
   */
  readonly failureMode?: ReplayFailureMode;
  /** Separates deployments (clusters, trust domains) that share one Redis. */
  readonly keyPrefix?: string;
  readonly connectTimeoutMs?: number;
  readonly commandTimeoutMs?: number;
  /** Reconnection backs off exponentially from 50 ms up to this. */
  readonly maxReconnectDelayMs?: number;
  readonly now?: () => number;
}

export const DEFAULT_REPLAY_KEY_PREFIX = "custody:jti:";
export const DEFAULT_REDIS_TIMEOUT_MS = 250;
const DEFAULT_MAX_RECONNECT_DELAY_MS = 1000;
const FIRST_RECONNECT_DELAY_MS = 50;
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
  #lastConnectionError: unknown;

  /** Starts connecting at once (and reconnects forever, with backoff); `ready()` waits for it. */
  constructor(options: RedisReplayGuardOptions) {
    this.#keyPrefix = validKeyPrefix(options.keyPrefix ?? DEFAULT_REPLAY_KEY_PREFIX);
    this.#commandTimeoutMs = positiveMs(
      options.commandTimeoutMs ?? DEFAULT_REDIS_TIMEOUT_MS,
      "commandTimeoutMs",
    );
    const connectTimeoutMs = positiveMs(
      options.connectTimeoutMs ?? DEFAULT_REDIS_TIMEOUT_MS,
      "connectTimeoutMs",
    );
    const maxReconnectDelayMs = positiveMs(
      options.maxReconnectDelayMs ?? DEFAULT_MAX_RECONNECT_DELAY_MS,
      "maxReconnectDelayMs",
    );
    this.#failureMode = options.failureMode ?? "closed";
    this.#metrics = options.metrics;
    this.#now = options.now ?? Date.now;
    this.#client = new Redis(
      options.url,
      clientOptions(options, connectTimeoutMs, this.#commandTimeoutMs, maxReconnectDelayMs),
    );
    // Connection errors repeat on every reconnection attempt: kept, not logged; each claim they fail
    // is counted and reported instead. Without a listener ioredis would print them to stderr.
    this.#client.on("error", (error: unknown) => {
      this.#lastConnectionError = error;
    });
  }

  /** True when Redis is connected and answering (for readiness probes). */
  get available(): boolean {
    return !this.#closed && this.#client.status === "ready";
  }

  /** Resolves once connected; throws ReplayStoreUnavailableError if that takes longer than `timeoutMs`. */
  async ready(timeoutMs: number): Promise<void> {
    if (this.available) return;
    if (this.#closed) throw new ReplayStoreUnavailableError("the Redis replay guard is closed.");
    await new Promise<void>((resolve, reject) => {
      const onReady = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#client.off("ready", onReady);
        const cause = this.#lastConnectionError;
        reject(
          new ReplayStoreUnavailableError(`Redis replay store not reachable within ${timeoutMs} ms.`, {
            cause,
          }),
        );
      }, timeoutMs);
      this.#client.once("ready", onReady);
    });
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
    try {
      await this.#client.quit();
    } catch {
      // Not connected: nothing to flush, disconnect() below ends the reconnection loop.
    } finally {
      this.#client.disconnect();
    }
  }

  #unavailable(error: unknown, started: number): boolean {
    if (this.#failureMode === "open") {
      this.#record("store_unavailable_allowed", started);
      return true;
    }
    this.#record("store_unavailable_rejected", started);
    throw new ReplayStoreUnavailableError(
      `Redis replay store unavailable (${describeFailure(error, this.#commandTimeoutMs)}); refusing (fail closed).`,
      { cause: error },
    );
  }

  #record(result: ReplayCheckResult, started: number): void {
    this.#metrics.record("redis", result, elapsedSeconds(started));
  }
}

function clientOptions(
  options: RedisReplayGuardOptions,
  connectTimeoutMs: number,
  commandTimeoutMs: number,
  maxReconnectDelayMs: number,
): RedisOptions {
  return {
    ...(options.password === undefined ? {} : { password: options.password }),
    ...(options.tls === undefined ? {} : { tls: options.tls }),
    connectTimeout: connectTimeoutMs,
    commandTimeout: commandTimeoutMs,
    // A command Redis cannot take now fails now: a queue would turn an outage into latency and
    // memory growth on the request path, and a replayed SET after reconnection has no one waiting.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    // Never give up: the guard must come back by itself when Redis does.
    retryStrategy: (attempt) =>
      Math.min(FIRST_RECONNECT_DELAY_MS * 2 ** Math.min(attempt - 1, 16), maxReconnectDelayMs),
  };
}

/**
 * A short, fixed description of why Redis did not answer. ioredis messages can carry addresses and
 * internals; callers get these words, and the original stays reachable as `cause` for debugging.
 */
function describeFailure(error: unknown, commandTimeoutMs: number): string {
  if (!(error instanceof Error)) return "unexpected failure";
  if (error.message === "Command timed out") return `no answer within ${commandTimeoutMs} ms`;
  if (error.name === "ReplyError") {
    // Redis error replies start with an upper-case code (OOM, READONLY, NOAUTH, …): safe and useful.
    const code = /^[A-Z]{2,20}\b/.exec(error.message)?.[0];
    return code === undefined ? "Redis refused the command" : `Redis refused the command: ${code}`;
  }
  return "not connected";
}

function validKeyPrefix(prefix: string): string {
  if (prefix.length > MAX_KEY_PREFIX_LENGTH) {
    throw new RangeError(`keyPrefix must be at most ${MAX_KEY_PREFIX_LENGTH} characters`);
  }
  return prefix;
}

function positiveMs(value: number, name: string): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`${name} must be a positive whole number`);
  return value;
}
