/**
 * HTTP plumbing both proxy directions share: the Custody headers, hop-by-hop header removal
 * (RFC 9110 §7.6.1), and JSON refusals that carry a reason and nothing internal.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { CHAIN_HEADER } from "../chain/limits.js";

export { CHAIN_HEADER };

export const CALLER_HEADER = "custody-caller";
export const DECISION_HEADER = "custody-decision";
const CUSTODY_HEADERS = new Set([CHAIN_HEADER, CALLER_HEADER, DECISION_HEADER]);

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "host",
  // The sidecar has read the whole body before it sends anything on: there is nothing to continue.
  "expect",
]);

/** Received headers: Node's server and undici's client both give lower-case names, repeats as arrays. */
export type ReceivedHeaders = Readonly<Record<string, string | string[] | undefined>>;

/**
 * The headers to pass on: hop-by-hop ones and those named in `Connection` removed, and, with
 * `dropCustody`, any Custody-* header a client supplied (only the sidecar may set those).
 */
export function forwardableHeaders(
  headers: ReceivedHeaders,
  options: { readonly dropCustody: boolean; readonly dropLength: boolean },
): Record<string, string | string[]> {
  const connection = headers.connection;
  const named =
    connection === undefined
      ? undefined
      : new Set(
          String(connection)
            .split(",")
            .map((name) => name.trim().toLowerCase())
            .filter((name) => name !== ""),
        );
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || HOP_BY_HOP.has(name) || named?.has(name) === true) continue;
    if (options.dropLength && name === "content-length") continue;
    if (options.dropCustody && CUSTODY_HEADERS.has(name)) continue;
    out[name] = value;
  }
  return out;
}

export interface Refusal {
  readonly status: number;
  readonly error: string;
  readonly reason: string;
  readonly retryAfterSeconds?: number | undefined;
}

/** `{error, reason}`: a stable code a client can act on; the details stay in the sidecar's log. */
export function sendRefusal(response: ServerResponse, refusal: Refusal): void {
  if (response.headersSent) {
    response.destroy();
    return;
  }
  const body = JSON.stringify({ error: refusal.error, reason: refusal.reason });
  response.writeHead(refusal.status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    "cache-control": "no-store",
    ...(refusal.retryAfterSeconds === undefined ? {} : { "retry-after": String(refusal.retryAfterSeconds) }),
  });
  response.end(body);
}

/**
 * The request's one Custody-Chain value (undefined when absent or empty), or `null` when it was sent
 * more than once: Node joins repeated headers with ", ", so only the distinct view can tell.
 */
export function chainHeaderOf(request: IncomingMessage): string | undefined | null {
  const values = request.headersDistinct[CHAIN_HEADER];
  if (values === undefined || values.length === 0) return undefined;
  if (values.length > 1) return null;
  return values[0] === "" ? undefined : values[0];
}
