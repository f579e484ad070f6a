/**
 * HTTP plumbing both proxy directions share: the Custody headers, hop-by-hop header removal
 * (RFC 9110 §7.6.1), and JSON refusals that carry a reason and nothing internal.
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { leaveBodyUnread } from "../../../cli/src/unread-body.js";
import { CHAIN_HEADER } from "../chain/limits.js";

export { CHAIN_HEADER };

export const CALLER_HEADER = "custody-caller";
export const DECISION_HEADER = "custody-decision";
/** The facts of the chain's initial token, for apps that need them (the token itself they never see). */
export const INITIAL_ISSUER_HEADER = "custody-initial-issuer";
export const INITIAL_SUBJECT_HEADER = "custody-initial-subject";
export const INITIAL_SCOPE_HEADER = "custody-initial-scope";
/** The sidecar's credential to its app, where the app port is reachable by others (local mode). */
export const SIDECAR_TOKEN_HEADER = "custody-sidecar-token";

/**
 * Whether a client's header could pass, in some application stack, for one of the sidecar's own: any
 * `Custody-*` name, also with `_` for `-` (CGI, WSGI, PHP and nginx map both to HTTP_CUSTODY_*).
 * Only the sidecar tells the app who called and what was decided; every such header of a client
 * is dropped, whatever its spelling.
 */
function isCustodyLike(name: string): boolean {
  return name.replaceAll("_", "-").startsWith("custody-");
}

/**
 * Headers by which frameworks let a client change the method or path the app acts on after the
 * proxy authorized another (Rails, Laravel, Symfony, ASP.NET, Express's method-override): the app
 * must act on exactly the operation that was authorized, so they never reach it.
 */
const OPERATION_OVERRIDES = new Set([
  "x-http-method-override",
  "x-http-method",
  "x-method-override",
  "x-original-method",
  "x-original-url",
  "x-rewrite-url",
]);

function isOperationOverride(name: string): boolean {
  return OPERATION_OVERRIDES.has(name.replaceAll("_", "-"));
}

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
 * `dropCustody`, any Custody-* header a client supplied in any spelling, and method or URL overrides
 * (only the sidecar says who called and what was authorized).
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
    if (options.dropCustody && (isCustodyLike(name) || isOperationOverride(name))) continue;
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

/** A refusal written before the request's body was read, which is then never read (unread-body.ts). */
export function refuseUnreadBody(request: IncomingMessage, response: ServerResponse, refusal: Refusal): void {
  leaveBodyUnread(request, response);
  sendRefusal(response, refusal);
}

/**
 * `{error, reason}`: a stable code a client can act on; the details stay in the sidecar's log. With
 * `closeConnection`, the connection is closed after the answer.
 */
export function sendRefusal(
  response: ServerResponse,
  refusal: Refusal,
  options: { readonly closeConnection?: boolean } = {},
): void {
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
    ...(options.closeConnection === true ? { connection: "close" } : {}),
  });
  response.end(body);
}

/**
 * A claim's value as a header value: printable ASCII passes, anything else (controls, non-ASCII,
 * `%`) is percent-encoded as UTF-8, so a hostile claim can neither break the header nor smuggle one.
 */
export function headerSafe(value: string): string {
  return value.replace(/[^\x21-\x24\x26-\x7e ]/gu, (char) => encodeURIComponent(char));
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

/** Headers a request may carry; beyond, it is refused (too_many_headers) rather than cut short. */
export const MAX_REQUEST_HEADERS = 256;
/** Connections a sidecar port holds at once: beyond, new ones are refused by the kernel's backlog. */
const MAX_CONNECTIONS = 4096;
/** How long a connection may stay open before its first request: idle ones only cost file handles. */
const FIRST_REQUEST_MS = 10_000;

/**
 * Bounds what a client can hold open without sending anything: connections in all, and a
 * connection with no first request (a finished TLS handshake, then silence).
 * `connectionEvent`: "secureConnection" for a TLS server (its handshake has its own timeout).
 */
export function boundConnections(server: Server, connectionEvent: "connection" | "secureConnection"): void {
  server.maxConnections = MAX_CONNECTIONS;
  const served = new WeakSet<object>();
  server.on(connectionEvent, (socket: Socket) => {
    const timer = setTimeout(() => {
      if (!served.has(socket)) socket.destroy();
    }, FIRST_REQUEST_MS);
    timer.unref();
    socket.once("close", () => clearTimeout(timer));
  });
  const seen = (request: IncomingMessage) => served.add(request.socket);
  server.prependListener("request", seen);
  server.prependListener("checkContinue", seen);
}

/**
 * Whether a request carries more headers than MAX_REQUEST_HEADERS. Refused, never passed on: an app
 * stack keeps only so many headers (Node 2000) and would drop what comes after. (Node's own count
 * limit is left at its default: past it Node drops headers silently, Host and all.)
 */
export function hasTooManyHeaders(request: IncomingMessage): boolean {
  return request.rawHeaders.length / 2 > MAX_REQUEST_HEADERS;
}
