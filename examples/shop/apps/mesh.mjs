// The little an app needs to live behind a Custody sidecar, with Node built-ins only. Copy this
// file next to your app. Nothing here is secret: the sidecar holds the keys and does the checks.
import { timingSafeEqual } from "node:crypto";
import { createServer, request as httpRequest } from "node:http";

/** Bodies are bounded: a request larger than this is refused with 413, never buffered. */
export const MAX_BODY_BYTES = 64 * 1024;
const TIMEOUT_MS = 10_000;

/**
 * The sidecar's outbound port, given as HTTP_PROXY (http://custody:<credential>@127.0.0.1:<port>):
 * the port signs as this workload, so it asks for the workload's credential.
 */
function proxy() {
  const value = process.env.HTTP_PROXY ?? process.env.http_proxy;
  if (value === undefined) throw new Error("HTTP_PROXY is not set: run this app with `custody local up`.");
  return new URL(value);
}

/** `Basic base64(user:password)` of a URL's userinfo, as curl and most HTTP clients send it; undefined without. */
function basicOf(url) {
  if (url.username === "" && url.password === "") return undefined;
  const user = decodeURIComponent(url.username);
  const password = decodeURIComponent(url.password);
  return `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
}

export class HttpError extends Error {
  constructor(status, code) {
    super(code);
    this.status = status;
    this.code = code;
  }
}

/** Reads a stream up to `limit` bytes; more is an HttpError 413. */
function readBounded(stream, limit) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let length = 0;
    stream.on("data", (chunk) => {
      length += chunk.length;
      if (length > limit) {
        stream.destroy();
        reject(new HttpError(413, "body_too_large"));
        return;
      }
      chunks.push(chunk);
    });
    stream.on("error", reject);
    stream.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
  });
}

/** The request body as text, at most MAX_BODY_BYTES. */
export function readText(request) {
  return readBounded(request, MAX_BODY_BYTES);
}

/** Text that must be a JSON object (400 if it is not one). */
export function parseJsonObject(text) {
  try {
    const value = JSON.parse(text);
    if (typeof value === "object" && value !== null && !Array.isArray(value)) return value;
  } catch {
    // refused below
  }
  throw new HttpError(400, "body_not_a_json_object");
}

/** The request body as a JSON object. */
export async function readJson(request) {
  return parseJsonObject(await readText(request));
}

export function sendJson(response, status, value) {
  const body = JSON.stringify(value);
  response.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
  });
  response.end(body);
}

/** One JSON POST over plain HTTP; the answer's body is bounded and parsed when it is JSON. */
function post({ host, port, path, headers }, value) {
  const body = JSON.stringify(value);
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest(
      {
        host,
        port,
        method: "POST",
        path,
        timeout: TIMEOUT_MS,
        headers: {
          ...headers,
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
        },
      },
      (response) => {
        readBounded(response, 1024 * 1024).then((text) => {
          let json;
          try {
            json = JSON.parse(text);
          } catch {
            json = { text };
          }
          resolve({ status: response.statusCode ?? 502, json });
        }, reject);
      },
    );
    outgoing.on("timeout", () => outgoing.destroy(new HttpError(504, "upstream_timeout")));
    outgoing.on("error", reject);
    outgoing.end(body);
  });
}

/**
 * POST JSON to another service through the sidecar. `url` names a service, e.g.
 * http://cart.shop/cart/confirm: Node's http client ignores HTTP_PROXY, so the request goes to the
 * proxy in absolute form (the whole URL as the path), which is what the sidecar's outbound port
 * expects. `chain` is the Custody-Chain this app received: passing it on makes this call part of
 * the same call chain (like a trace header); without it the sidecar starts a new chain, with this
 * service as the origin.
 */
export function postJson(url, value, { chain } = {}) {
  const target = new URL(url);
  const via = proxy();
  return post(
    {
      host: via.hostname,
      port: Number(via.port),
      path: target.href,
      headers: {
        host: target.host,
        ...(basicOf(via) === undefined ? {} : { "proxy-authorization": basicOf(via) }),
        ...(chain === undefined ? {} : { "custody-chain": chain }),
      },
    },
    value,
  );
}

/**
 * The sidecar's key service (CUSTODY_KEYS_URL, on the same loopback port, addressed directly):
 * `seal` encrypts for services by name (JWE), `open` decrypts what was sealed for this service.
 * The private key never leaves the sidecar.
 */
export function keyService(route, value) {
  const base = new URL(process.env.CUSTODY_KEYS_URL ?? `${proxy().origin}/.custody`);
  return post(
    {
      host: base.hostname,
      port: Number(base.port),
      path: `${base.pathname.replace(/\/+$/, "")}/${route}`,
      headers: basicOf(base) === undefined ? {} : { authorization: basicOf(base) },
    },
    value,
  );
}

/**
 * Whether a request came through this app's sidecar. On one machine every local process can reach
 * 127.0.0.1:$PORT and skip the sidecar; the sidecar sends CUSTODY_SIDECAR_TOKEN in
 * Custody-Sidecar-Token, and other callers do not know it. (In a Kubernetes pod, traffic capture
 * keeps other pods off the app's port instead.)
 */
function fromSidecar(request) {
  const expected = process.env.CUSTODY_SIDECAR_TOKEN;
  if (expected === undefined || expected === "") return true;
  const given = Buffer.from(String(request.headers["custody-sidecar-token"] ?? ""));
  const wanted = Buffer.from(expected);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

/** Listens on 127.0.0.1:$PORT; a handler's HttpError becomes {error}, anything else a 500. */
export function serve(name, handler) {
  const port = Number(process.env.PORT);
  if (!Number.isInteger(port) || port <= 0)
    throw new Error("PORT is not set: run this app with `custody local up`.");
  const server = createServer((request, response) => {
    if (!fromSidecar(request)) {
      sendJson(response, 401, { step: name, error: "not_from_sidecar" });
      return;
    }
    handler(request, response).catch((error) => {
      if (response.headersSent) {
        response.destroy();
        return;
      }
      if (error instanceof HttpError) sendJson(response, error.status, { step: name, error: error.code });
      else {
        console.error(`${name}:`, error);
        sendJson(response, 500, { step: name, error: "internal_error" });
      }
    });
  });
  server.listen(port, "127.0.0.1", () => console.log(`${name} listening on 127.0.0.1:${port}`));
  // Stop cleanly when `custody local up` stops us.
  process.on("SIGTERM", () => server.close(() => process.exit(0)));
  return server;
}
