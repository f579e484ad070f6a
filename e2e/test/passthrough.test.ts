/**
 * The outbound policy's refusals, over real HTTP on loopback: registry-only refuses what is not a
 * mesh service (HTTP and CONNECT); passthrough refuses loopback (by name and by what a name
 * resolves to), tunnels to mesh services, malformed authorities and clients without the workload's
 * credential. What passthrough forwards, and that HTTPS works end to end through CONNECT, needs
 * addresses other than loopback: e2e/cluster shows it between Pods.
 */
import { lookup } from "node:dns/promises";
import { request as httpRequest } from "node:http";
import { hostname } from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { temporaryDirectory } from "../../pki/test/support.js";
import { DEFAULT_LIMITS } from "../../sidecar/src/chain/limits.js";
import { type RunningSidecar, startSidecar } from "../../sidecar/src/runtime/sidecar.js";
import { callThrough, Mesh, type ServiceSpec } from "../support/mesh.js";

const SPECS: ServiceSpec[] = [
  { name: "shop", namespace: "shop" },
  { name: "cart", namespace: "shop" },
];
const SECRET = "passthrough-secret-0123456789abcdef";

/** Sends CONNECT `authority` to the sidecar's outbound port; the status and body of its answer. */
function connectThrough(
  sidecar: RunningSidecar,
  authority: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  const proxy = new URL(sidecar.outboundUrl);
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest({
      host: proxy.hostname,
      port: Number(proxy.port),
      method: "CONNECT",
      path: authority,
      headers,
    });
    // Node reports every answer to CONNECT as "connect", with the socket after the head: a refusal's
    // body is what is left on it.
    outgoing.on("connect", (response, socket, head) => {
      if (response.statusCode === 200) {
        socket.destroy();
        resolve({ status: 200, body: "" });
        return;
      }
      const chunks: Buffer[] = [head];
      socket.on("data", (chunk: Buffer) => chunks.push(chunk));
      socket.on("end", () =>
        resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }),
      );
      socket.on("error", reject);
    });
    outgoing.on("error", reject);
    outgoing.end();
  });
}

const reasonOf = (answer: { status: number; body: string }) => ({
  status: answer.status,
  reason: (JSON.parse(answer.body) as { reason?: string }).reason,
});

describe("the outbound policy", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let mesh: Mesh;
  let closed: RunningSidecar;
  let open: RunningSidecar;

  const start = (outboundPolicy: "passthrough" | "registry-only") =>
    startSidecar({
      identityDirectory: mesh.service("shop.shop").identityDirectory,
      registryPath: mesh.registryPath,
      appPort: mesh.service("shop.shop").appPort,
      tokenUrl: undefined,
      outbound: { host: "127.0.0.1", port: 0 },
      clientSecret: SECRET,
      inbound: { host: "127.0.0.1", port: 0 },
      admin: { host: "127.0.0.1", port: 0 },
      limits: DEFAULT_LIMITS,
      whenNoPolicy: "allow",
      outboundPolicy,
      replay: { redisUrl: undefined, failureMode: "closed" },
      spool: {},
      pollIntervalMs: 200,
      logger: mesh.logger,
    });
  const authorized = {
    "proxy-authorization": `Basic ${Buffer.from(`custody:${SECRET}`).toString("base64")}`,
  };

  beforeAll(async () => {
    directory = await temporaryDirectory();
    mesh = new Mesh(directory.path);
    await mesh.start(SPECS, []);
    [closed, open] = await Promise.all([start("registry-only"), start("passthrough")]);
  }, 30_000);

  afterAll(async () => {
    await closed?.close(100);
    await open?.close(100);
    await mesh?.close();
    await directory?.cleanup();
  });

  it("registry-only: a host outside the registry is refused, and so is every tunnel", async () => {
    const http = await callThrough(closed, "http://telemetry.example.com/v1/traces", { headers: authorized });
    expect(reasonOf(http)).toEqual({ status: 502, reason: "unknown_service" });
    const tunnel = await connectThrough(closed, "api.example.com:443", authorized);
    expect(reasonOf(tunnel)).toEqual({ status: 403, reason: "passthrough_disabled" });
  });

  it("passthrough: never to loopback, by name, by address or by what a name resolves to", async () => {
    for (const url of [
      "http://127.0.0.1:9/x",
      "http://localhost:9/x",
      "http://[::1]:9/x",
      "http://0.0.0.0:9/x",
    ]) {
      const answer = await callThrough(open, url, { headers: authorized });
      expect(reasonOf(answer), url).toEqual({ status: 400, reason: "loopback_target" });
    }
    for (const authority of [
      "127.0.0.1:15001",
      "127.1:443",
      "localhost:443",
      "[::1]:443",
      "[::ffff:127.0.0.1]:443",
    ]) {
      const answer = await connectThrough(open, authority, authorized);
      expect(reasonOf(answer), authority).toEqual({ status: 400, reason: "loopback_target" });
    }
    // 2130706433 is 127.0.0.1 to the resolver: only the check of what a name resolves to sees it.
    expect(reasonOf(await connectThrough(open, "2130706433:443", authorized))).toEqual({
      status: 400,
      reason: "loopback_target",
    });
    // So is a host name that /etc/hosts maps to loopback (this machine's own name, often).
    const own = await lookup(hostname()).catch(() => undefined);
    if (own !== undefined && /^127\./.test(own.address)) {
      const answer = await callThrough(open, `http://${hostname()}:9/x`, { headers: authorized });
      expect(reasonOf(answer)).toEqual({ status: 400, reason: "loopback_target" });
    }
  });

  it("passthrough: no tunnel to a mesh service, no malformed authority, no client without the credential", async () => {
    expect(reasonOf(await connectThrough(open, "cart.shop:15006", authorized))).toEqual({
      status: 400,
      reason: "mesh_service_tunnel",
    });
    for (const authority of [
      "api.example.com",
      "api.example.com:0",
      "api.example.com:99999",
      "a_b:443",
      "[not-v6]:443",
    ]) {
      const answer = await connectThrough(open, authority, authorized);
      expect(answer.status, authority).toBe(400);
    }
    expect(reasonOf(await connectThrough(open, "api.example.com:443"))).toEqual({
      status: 407,
      reason: "proxy_auth_required",
    });
    const browser = await connectThrough(open, "api.example.com:443", {
      ...authorized,
      "sec-fetch-site": "cross-site",
      "sec-fetch-dest": "empty",
    });
    expect(browser.status).toBe(403);
  });

  it("passthrough: mesh services still get a link and mutual TLS", async () => {
    const cart = mesh.service("cart.shop");
    const seen = cart.received.length;
    const answer = await callThrough(open, "http://cart.shop/items", { headers: authorized });
    expect(answer.status).toBe(200);
    expect(cart.received.slice(seen).map((request) => request.headers["custody-caller"])).toEqual([
      "shop.shop",
    ]);
  });
});
