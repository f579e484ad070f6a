/**
 * What the Kubernetes store and the leader elector share about talking to the API server through
 * client-node: every call bounded in time and cancellable on shutdown (client-node's generated
 * clients have no timeout of their own), and failures turned into StoreErrors whose messages say
 * what failed without repeating response bodies or headers (ApiException's own message carries
 * both).
 */
import { createHash } from "node:crypto";
import { Agent as HttpsAgent } from "node:https";
import {
  ApiException,
  type ConfigurationOptions,
  Observable,
  type RequestContext,
  type ResponseContext,
} from "@kubernetes/client-node";
import { StoreConflictError, StoreError } from "./store.js";

/** Long enough for a list of a few thousand objects, short enough that a hung connection heals. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
const MAX_DETAIL_CHARS = 300;

/** A request that did not answer in time (the API server or the network is stuck). */
class RequestTimeoutError extends Error {
  constructor(timeoutMs: number) {
    super(`no answer within ${timeoutMs} ms`);
    this.name = "RequestTimeoutError";
  }
}

/**
 * client-node builds a new https.Agent, without keep-alive, for every call: one TLS handshake per
 * request, which against a real API server cost the operator more CPU than the work itself. Calls
 * made with the same TLS material share one keep-alive agent instead. Keyed by that material, so a
 * rotated client certificate gets an agent of its own; the few kept are bounded.
 */
const MAX_SHARED_AGENTS = 8;
const sharedAgents = new Map<string, HttpsAgent>();

function sharedAgentFor(fresh: unknown): HttpsAgent | undefined {
  // Only client-node's plain HTTPS agents; a proxy's agent is left as it is.
  if (!(fresh instanceof HttpsAgent) || fresh.constructor !== HttpsAgent) return undefined;
  const { ca, cert, key, pfx, passphrase, rejectUnauthorized, servername } = fresh.options;
  const material = JSON.stringify(
    [ca, cert, key, pfx, passphrase, rejectUnauthorized, servername],
    (_key, value) => (Buffer.isBuffer(value) ? value.toString("base64") : (value as unknown)),
  );
  const id = createHash("sha256").update(material).digest("base64url");
  let agent = sharedAgents.get(id);
  if (agent === undefined) {
    agent = new HttpsAgent({ ...fresh.options, keepAlive: true, maxSockets: 32, maxFreeSockets: 8 });
    sharedAgents.set(id, agent);
    if (sharedAgents.size > MAX_SHARED_AGENTS) {
      const [oldestId, oldest] = sharedAgents.entries().next().value ?? [];
      if (oldestId !== undefined) sharedAgents.delete(oldestId);
      oldest?.destroy();
    }
  }
  return agent;
}

/**
 * Runs one client-node call with a deadline and the caller's cancellation. `run` must pass the
 * options it gets to the generated method (they carry the abort signal).
 */
export async function callApi<T>(
  timeoutMs: number,
  cancel: AbortSignal | undefined,
  run: (options: ConfigurationOptions) => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new RequestTimeoutError(timeoutMs)), timeoutMs);
  const onCancel = (): void => controller.abort(cancel?.reason);
  if (cancel?.aborted) onCancel();
  else cancel?.addEventListener("abort", onCancel, { once: true });
  try {
    return await run({
      middleware: [
        {
          pre: (context: RequestContext) => {
            context.setSignal(controller.signal);
            const shared = sharedAgentFor(context.getAgent());
            if (shared !== undefined) context.setAgent(shared);
            return new Observable(Promise.resolve(context));
          },
          post: (context: ResponseContext) => new Observable(Promise.resolve(context)),
        },
      ],
      // After whatever middleware the API client was configured with, not instead of it.
      middlewareMergeStrategy: "append",
    });
  } catch (error) {
    // node-fetch reports every abort alike ("The user aborted a request."): say which it was.
    const reason: unknown = controller.signal.reason;
    if (controller.signal.aborted && reason instanceof Error) throw reason;
    throw error;
  } finally {
    clearTimeout(timer);
    cancel?.removeEventListener("abort", onCancel);
  }
}

/** The HTTP status of a failed call, undefined for network errors and timeouts. */
export function statusOf(error: unknown): number | undefined {
  if (error instanceof ApiException) return error.code;
  // Watches fail with a plain Error carrying `statusCode` (client-node's Watch).
  if (error instanceof Error && "statusCode" in error && typeof error.statusCode === "number") {
    return error.statusCode;
  }
  return undefined;
}

interface StatusBody {
  readonly reason?: unknown;
  readonly message?: unknown;
}

function statusBodyOf(body: unknown): StatusBody | undefined {
  if (typeof body === "string") {
    try {
      return statusBodyOf(JSON.parse(body));
    } catch {
      return undefined;
    }
  }
  return typeof body === "object" && body !== null ? (body as StatusBody) : undefined;
}

function clip(text: string): string {
  return text.length <= MAX_DETAIL_CHARS ? text : `${text.slice(0, MAX_DETAIL_CHARS)}…`;
}

/**
 * "HTTP 422 Invalid: <the Status message>" or the network failure: enough to act on. Status
 * messages name fields and objects, never Secret values, so they are safe to log.
 */
export function describeFailure(error: unknown): string {
  if (error instanceof ApiException) {
    const status = statusBodyOf(error.body);
    const reason = typeof status?.reason === "string" ? ` ${status.reason}` : "";
    const message = typeof status?.message === "string" ? `: ${clip(status.message)}` : "";
    return `HTTP ${error.code}${reason}${message}`;
  }
  if (error instanceof Error) {
    const status = statusOf(error);
    if (status !== undefined) return `HTTP ${status} ${clip(error.message)}`;
    const code = "code" in error && typeof error.code === "string" ? `${error.code} ` : "";
    return `${code}${clip(error.message)}`;
  }
  return clip(String(error));
}

/**
 * The StoreError for a failed call other than the 404/409 its caller handles: the request itself
 * is wrong (400, 413, 422: retrying the same write cannot help) or the API server is unavailable
 * (everything else, including a 404 for a missing namespace: retry with back-off). No `cause`: ApiException's message holds the response
 * body and headers, which a log line should not repeat.
 */
export function storeErrorOf(action: string, error: unknown): StoreError {
  if (error instanceof StoreError) return error;
  const status = statusOf(error);
  if (status === 409) return new StoreConflictError(`${action}: ${describeFailure(error)}`);
  if (status === 404) {
    return new StoreError("store_unavailable", `${action} failed: ${describeFailure(error)}`);
  }
  if (status === 400 || status === 413 || status === 422) {
    return new StoreError("store_invalid", `${action} was refused: ${describeFailure(error)}`);
  }
  return new StoreError(
    "store_unavailable",
    `${action} failed: ${describeFailure(error)}; check that the API server is reachable and the operator's RBAC allows it`,
  );
}
