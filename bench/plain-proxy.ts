/**
 * The baseline of bench/sidecar.ts: a pair of proxies that moves a call exactly as the sidecars do
 * (the same servers, the same undici pools and relay, the same mutual TLS 1.3 with the same
 * certificates) and does nothing else: no chain, no signature, no policy, no replay guard, no
 * metrics. What the sidecars cost beyond it is what Custody's authorization costs; what it costs
 * itself is the floor of a Node proxy pair on this machine.
 *
 *   node --import tsx bench/plain-proxy.ts outbound PORT IDENTITY_DIR PEER_HOST:PEER_PORT
 *   node --import tsx bench/plain-proxy.ts inbound  PORT IDENTITY_DIR APP_PORT
 */
import { readFileSync } from "node:fs";
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { join } from "node:path";
import { Pool } from "undici";
import { spoolRequestBody } from "../sidecar/src/runtime/body.js";
import { forwardableHeaders, sendRefusal } from "../sidecar/src/runtime/http.js";
import { relay } from "../sidecar/src/runtime/relay.js";

const [role, portText, identityDirectory, upstream] = process.argv.slice(2);
const port = Number(portText);
if (
  (role !== "outbound" && role !== "inbound") ||
  !Number.isInteger(port) ||
  !identityDirectory ||
  !upstream
) {
  process.stderr.write(
    "usage: plain-proxy.ts outbound PORT IDENTITY_DIR PEER_HOST:PORT | inbound PORT IDENTITY_DIR APP_PORT\n",
  );
  process.exit(2);
}
const read = (name: string) => readFileSync(join(identityDirectory, name), "utf8");
const credentials = { cert: read("tls.crt"), key: read("tls.key"), ca: read("ca.crt") };
const timeouts = { headersTimeout: 60_000, bodyTimeout: 60_000 };

const pool =
  role === "outbound"
    ? new Pool(`https://${upstream}`, {
        connections: 128,
        keepAliveTimeout: 20_000,
        keepAliveMaxTimeout: 20_000,
        ...timeouts,
        connect: { ...credentials, minVersion: "TLSv1.3" },
      })
    : new Pool(`http://127.0.0.1:${upstream}`, { connections: 256, ...timeouts });

async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
  const body = await spoolRequestBody(request);
  try {
    await relay(
      pool,
      {
        method: request.method ?? "GET",
        path: request.url ?? "/",
        headers: {
          ...forwardableHeaders(request.headers, { dropCustody: true, dropLength: true }),
          host: upstream ?? "",
          "content-length": String(body.length),
        },
        body: body.payload(),
      },
      response,
    );
  } catch {
    sendRefusal(response, { status: 502, error: "bad_gateway", reason: "upstream_unreachable" });
  } finally {
    await body.dispose();
  }
}

const onRequest = (request: IncomingMessage, response: ServerResponse) => void handle(request, response);
const server =
  role === "outbound"
    ? createHttpServer({ keepAliveTimeout: 30_000 }, onRequest)
    : createHttpsServer(
        {
          ...credentials,
          requestCert: true,
          rejectUnauthorized: true,
          minVersion: "TLSv1.3",
          keepAliveTimeout: 30_000,
        },
        onRequest,
      );
server.listen(port, "127.0.0.1");

const stop = () => {
  server.close();
  server.closeAllConnections();
  void pool.close();
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
