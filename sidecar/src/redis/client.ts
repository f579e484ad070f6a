/**
 * The Redis connection the replicas of a service share state through (the replay guard's spent
 * jtis, the quota buckets). It sits on the request path of payment systems, so a slow or absent
 * Redis must answer fast: no offline queue, no retries of a command, a timeout on every command,
 * and reconnection forever in the background.
 */
import type { ConnectionOptions } from "node:tls";
import { Redis, type RedisOptions } from "ioredis";

export interface RedisConnectionOptions {
  /** `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS. */
  readonly url: string;
  /** Kept out of the URL so it can come from a mounted Secret file. */
  readonly password?: string;
  /** Extra TLS settings (a private CA); implies TLS. */
  readonly tls?: ConnectionOptions;
  readonly connectTimeoutMs?: number;
  readonly commandTimeoutMs?: number;
  /** Reconnection backs off exponentially from 50 ms up to this. */
  readonly maxReconnectDelayMs?: number;
}

export const DEFAULT_REDIS_TIMEOUT_MS = 250;
const DEFAULT_MAX_RECONNECT_DELAY_MS = 1000;
const FIRST_RECONNECT_DELAY_MS = 50;

/** A client that starts connecting at once; `lastError` keeps why the last attempt failed. */
export function connectRedis(options: RedisConnectionOptions): { client: Redis; lastError: () => unknown } {
  const commandTimeoutMs = positiveMs(
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
  const settings: RedisOptions = {
    ...(options.password === undefined ? {} : { password: options.password }),
    ...(options.tls === undefined ? {} : { tls: options.tls }),
    connectTimeout: connectTimeoutMs,
    commandTimeout: commandTimeoutMs,
    // A command Redis cannot take now fails now: a queue would turn an outage into latency and
    // memory growth on the request path, and a command replayed after reconnection has no one waiting.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    // Never give up: the state must come back by itself when Redis does.
    retryStrategy: (attempt) =>
      Math.min(FIRST_RECONNECT_DELAY_MS * 2 ** Math.min(attempt - 1, 16), maxReconnectDelayMs),
  };
  const client = new Redis(options.url, settings);
  let lastError: unknown;
  // Connection errors repeat on every reconnection attempt: kept, not logged; each command they
  // fail is counted and reported instead. Without a listener ioredis would print them to stderr.
  client.on("error", (error: unknown) => {
    lastError = error;
  });
  return { client, lastError: () => lastError };
}

/**
 * A short, fixed description of why Redis did not answer. ioredis messages can carry addresses and
 * internals; callers get these words, and the original stays reachable as `cause` for debugging.
 */
export function describeRedisFailure(error: unknown, commandTimeoutMs: number): string {
  if (!(error instanceof Error)) return "unexpected failure";
  if (error.message === "Command timed out") return `no answer within ${commandTimeoutMs} ms`;
  if (error.name === "ReplyError") {
    // Redis error replies start with an upper-case code (OOM, READONLY, NOAUTH, …): safe and useful.
    const code = /^[A-Z]{2,20}\b/.exec(error.message)?.[0];
    return code === undefined ? "Redis refused the command" : `Redis refused the command: ${code}`;
  }
  return "not connected";
}

/**
 * Resolves once `client` is connected; rejects with `unavailable(message, cause)` (the caller's
 * error type) when that takes longer than `timeoutMs`, with the last connection error as cause.
 */
export async function redisReady(
  client: Redis,
  timeoutMs: number,
  lastError: () => unknown,
  unavailable: (message: string, cause: unknown) => Error,
): Promise<void> {
  if (client.status === "ready") return;
  await new Promise<void>((resolve, reject) => {
    const onReady = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      client.off("ready", onReady);
      reject(unavailable(`Redis not reachable within ${timeoutMs} ms.`, lastError()));
    }, timeoutMs);
    client.once("ready", onReady);
  });
}

/** Closes the connection and stops reconnecting; safe when it never connected. */
export async function closeRedis(client: Redis): Promise<void> {
  try {
    await client.quit();
  } catch {
    // Not connected: nothing to flush, disconnect() below ends the reconnection loop.
  } finally {
    client.disconnect();
  }
}

export function positiveMs(value: number, name: string): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`${name} must be a positive whole number`);
  return value;
}
