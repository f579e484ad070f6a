/**
 * `custody sidecar` as a real process, for what an in-process sidecar cannot show: SIGTERM and the
 * exit code, the memory a large body costs the process, readiness after the token service went
 * away, and the process's stdout (pino JSON, no credential). The CA, the token service, the
 * registry and the apps come from the e2e Mesh; the sidecars under test are child processes.
 */
import { createHash, randomBytes } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { createServer, request as httpRequest, type Server } from "node:http";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { issueCertificate, privateKeyToPem } from "../../pki/src/index.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import type { RunningSidecar } from "../../sidecar/src/runtime/sidecar.js";
import { callThrough, Mesh, type ServiceSpec } from "../support/mesh.js";
import { freePort } from "../support/net.js";
import {
  deferred,
  killAll,
  memoryOf,
  parseLogLines,
  peakBaseline,
  type SidecarProcess,
  signal,
  startSidecarProcess,
  tryConnect,
  waitFor,
} from "../support/process.js";

const SPECS: ServiceSpec[] = [
  { name: "shop", namespace: "shop" },
  { name: "cart", namespace: "shop" },
  { name: "orders", namespace: "shop" },
];

const JWS = /eyJ[\w-]*\.[\w-]*\.[\w-]+/;

/** Resolves with the promise's value, or rejects after `ms` naming `what`. */
function within<T>(what: string, promise: Promise<T>, ms: number): Promise<T> {
  return Promise.race([
    promise,
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms).unref(),
    ),
  ]);
}

/** Every stdout line is a pino JSON object from the sidecar, and none carries a credential. */
function expectCleanLog(sidecar: SidecarProcess, secrets: readonly string[] = []): void {
  const entries = parseLogLines(sidecar.lines);
  expect(entries.length).toBeGreaterThan(0);
  for (const entry of entries) {
    expect(entry).toMatchObject({ component: "sidecar", level: expect.any(Number), msg: expect.any(String) });
  }
  for (const line of sidecar.lines) {
    expect(line).not.toMatch(JWS);
    expect(line).not.toContain("PRIVATE KEY");
    for (const secret of secrets) expect(line).not.toContain(secret);
  }
}

/** The first base64 line of a PEM private key: what a leaked key would contain. */
async function keyFingerprint(identityDirectory: string): Promise<string> {
  const pem = await readFile(join(identityDirectory, "tls.key"), "utf8");
  return pem.split("\n")[1] ?? "";
}

async function readiness(
  sidecar: SidecarProcess,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const answer = await fetch(`${sidecar.adminUrl}/readyz`);
  return { status: answer.status, body: (await answer.json()) as Record<string, unknown> };
}

describe("custody sidecar as a process", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let mesh: Mesh;
  /** The in-process sidecar of shop: the caller for the tests whose callee is a process. */
  let shop: RunningSidecar;

  /** Cart's sidecar as a process on the inbound port the registry lists for cart. */
  const startCart = (options: { appPort?: number; flags?: readonly string[] } = {}) => {
    const cart = mesh.service("cart.shop");
    return startSidecarProcess({
      identityDirectory: cart.identityDirectory,
      registryPath: mesh.registryPath,
      appPort: options.appPort ?? cart.appPort,
      tokenUrl: mesh.issuer.tokenUrl,
      inboundPort: cart.inboundPort,
      flags: options.flags ?? [],
    });
  };

  beforeAll(async () => {
    directory = await temporaryDirectory();
    mesh = new Mesh(directory.path);
    await mesh.start(SPECS, []);
    shop = mesh.service("shop.shop").sidecar as RunningSidecar;
    // Cart's inbound port and orders' identity belong to the process sidecars below.
    for (const id of ["cart.shop", "orders.shop"]) {
      const service = mesh.service(id);
      await service.sidecar?.close(100);
      service.sidecar = undefined;
    }
  });

  afterAll(async () => {
    await killAll();
    await mesh?.close();
    await directory?.cleanup();
  });

  it("on SIGTERM refuses new connections, finishes the request in flight, and exits 0", async () => {
    const app = mesh.service("cart.shop");
    const body = `confirmed:${"x".repeat(200_000)}`;
    const { promise: gate, resolve: release } = deferred();
    const { promise: arrival, resolve: arrived } = deferred();
    app.handler = async () => {
      arrived();
      await gate;
      return { status: 200, body };
    };
    const seen = app.received.length;
    // A grace far beyond the wait for the exit below: the process must exit once nothing is in
    // flight, not at the deadline (the caller's pool keeps its connection alive after the answer).
    const cart = await startCart({ flags: ["--shutdown-grace", "2m"] });
    try {
      const inFlight = callThrough(shop, "http://cart.shop/cart/confirm", { method: "POST", body: "{}" });
      await within("the request reaching the app", arrival, 10_000);
      signal(cart, "SIGTERM");
      await waitFor(
        "the inbound port to refuse connections",
        async () => ((await tryConnect(cart.inboundPort)) === "ECONNREFUSED" ? true : undefined),
        10_000,
        20,
      );
      expect(await tryConnect(cart.outboundPort)).toBe("ECONNREFUSED");
      expect(await tryConnect(Number(new URL(cart.adminUrl).port))).toBe("ECONNREFUSED");
      // A new call meets the closed port: the caller's sidecar answers 502, the app never sees it.
      const refused = await callThrough(shop, "http://cart.shop/cart/confirm", {
        method: "POST",
        body: "{}",
      });
      expect(refused.status).toBe(502);
      expect(JSON.parse(refused.body)).toMatchObject({ reason: "peer_unreachable" });
      expect(app.received.slice(seen).map((request) => request.url)).toEqual(["/cart/confirm"]);

      release();
      const answer = await within("the request in flight", inFlight, 10_000);
      expect(answer.status).toBe(200);
      expect(answer.body).toBe(body);
      expect(await within("the process exit", cart.exited, 20_000)).toEqual({ code: 0, signal: null });
      const events = parseLogLines(cart.lines).map((entry) => entry.event);
      expect(events).toContain("shutting_down");
      expect(events.at(-1)).toBe("stopped");
      expectCleanLog(cart, [await keyFingerprint(app.identityDirectory)]);
    } finally {
      release();
      await cart.kill();
      app.handler = async () => ({ status: 200, body: "ok" });
    }
  }, 45_000);

  it("with shutdown-delay, keeps serving after SIGTERM, not ready and closing connections, then stops", async () => {
    const app = mesh.service("cart.shop");
    const cart = await startCart({ flags: ["--shutdown-delay", "3s"] });
    try {
      expect((await fetch(`${cart.adminUrl}/readyz`)).status).toBe(200);
      const sent = Date.now();
      signal(cart, "SIGTERM");
      const readyz = await waitFor(
        "/readyz to say draining",
        async () => {
          const answer = await fetch(`${cart.adminUrl}/readyz`);
          return answer.status === 503 ? answer : undefined;
        },
        5_000,
        20,
      );
      expect(readyz.headers.get("connection")).toBe("close");
      expect(await readyz.json()).toMatchObject({ status: "not_ready", reason: "draining: shutting down" });
      // Calls still go through, both ways: a caller's call to it, and its app's call out.
      const inbound = await callThrough(shop, "http://cart.shop/cart/confirm", {
        method: "POST",
        body: "{}",
      });
      expect(inbound.status).toBe(200);
      const shopApp = mesh.service("shop.shop");
      const shopSeen = shopApp.received.length;
      const outbound = await callThrough(
        { outboundUrl: `http://127.0.0.1:${cart.outboundPort}` } as RunningSidecar,
        "http://shop.shop/last-words",
        { method: "POST", body: "{}" },
      );
      expect(outbound.status).toBe(200);
      expect(shopApp.received.slice(shopSeen).map((request) => request.url)).toEqual(["/last-words"]);
      expect(await within("the process exit", cart.exited, 20_000)).toEqual({ code: 0, signal: null });
      expect(Date.now() - sent).toBeGreaterThanOrEqual(3_000);
      const events = parseLogLines(cart.lines).map((entry) => entry.event);
      expect(events.indexOf("draining")).toBeLessThan(events.indexOf("shutting_down"));
      expect(app.received.length).toBeGreaterThan(0);
    } finally {
      await cart.kill();
    }
  }, 45_000);

  it("cuts a request that outlives shutdown-grace, and still exits 0", async () => {
    const app = mesh.service("cart.shop");
    const { promise: never, resolve: release } = deferred();
    const { promise: arrival, resolve: arrived } = deferred();
    app.handler = async () => {
      arrived();
      await never;
      return { status: 200, body: "too late" };
    };
    const cart = await startCart({ flags: ["--shutdown-grace", "500ms"] });
    try {
      const inFlight = callThrough(shop, "http://cart.shop/stuck", { method: "POST", body: "{}" });
      await within("the request reaching the app", arrival, 10_000);
      signal(cart, "SIGTERM");
      expect(await within("the process exit", cart.exited, 15_000)).toEqual({ code: 0, signal: null });
      // Cut: the caller's sidecar lost its peer mid-request and says so.
      const answer = await within("the cut request's answer", inFlight, 10_000);
      expect(answer.status).toBe(502);
      expect(JSON.parse(answer.body)).toMatchObject({ error: "bad_gateway", reason: "peer_unreachable" });
      expectCleanLog(cart);
    } finally {
      release();
      await cart.kill();
      app.handler = async () => ({ status: 200, body: "ok" });
    }
  });

  it.skipIf(process.platform !== "linux")(
    "streams a 64 MB body through two sidecar processes, each growing far less than the body (Linux: /proc)",
    async () => {
      const SIZE = 64_000_000;
      // The app counts and hashes what arrives, holding none of it.
      const counter: Server = createServer((request, response) => {
        const hash = createHash("sha256");
        let bytes = 0;
        request.on("data", (chunk: Buffer) => {
          bytes += chunk.length;
          hash.update(chunk);
        });
        request.on("end", () => {
          response.writeHead(200, { "content-type": "application/json" });
          response.end(JSON.stringify({ bytes, sha256: hash.digest("hex") }));
        });
      });
      const appPort = await freePort();
      await new Promise<void>((resolve) => counter.listen(appPort, "127.0.0.1", resolve));
      const caller = await startSidecarProcess({
        identityDirectory: mesh.service("shop.shop").identityDirectory,
        registryPath: mesh.registryPath,
        appPort: await freePort(),
        tokenUrl: mesh.issuer.tokenUrl,
      });
      const cart = await startCart({ appPort });
      try {
        /** POSTs `size` pseudo-random bytes, generated chunk by chunk, through the caller's outbound port. */
        const upload = async (size: number) => {
          const block = randomBytes(1024 * 1024);
          const sent = createHash("sha256");
          async function* chunks() {
            for (let offset = 0, index = 0; offset < size; offset += block.length, index++) {
              const chunk = Buffer.from(block.subarray(0, Math.min(block.length, size - offset)));
              chunk.writeUInt32BE(index, 0);
              sent.update(chunk);
              yield chunk;
            }
          }
          const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
            const outgoing = httpRequest(
              {
                host: "127.0.0.1",
                port: caller.outboundPort,
                method: "POST",
                path: "/upload",
                headers: {
                  host: "cart.shop",
                  "content-type": "application/octet-stream",
                  "content-length": String(size),
                },
              },
              (response) => {
                let text = "";
                response.setEncoding("utf8");
                response.on("data", (part: string) => {
                  text += part;
                });
                response.on("end", () => resolve({ status: response.statusCode ?? 0, body: text }));
                response.on("error", reject);
              },
            );
            outgoing.on("error", reject);
            pipeline(Readable.from(chunks()), outgoing).catch(reject);
          });
          const result = await answer;
          return { ...result, sha256: sent.digest("hex") };
        };

        // Warm up: the first large body costs each process a one-off ~30 MB whatever its size (heap
        // and buffer pools settling; a 16 MB and a 64 MB body cost the same), later ones ~nothing.
        // Then measure the peak from here.
        const warm = await upload(16 * 1024 * 1024);
        expect(warm.status).toBe(200);
        const before = { caller: await peakBaseline(caller.pid), cart: await peakBaseline(cart.pid) };

        const big = await upload(SIZE);
        expect(big.status).toBe(200);
        expect(JSON.parse(big.body)).toEqual({ bytes: SIZE, sha256: big.sha256 });

        const growth = {
          caller: (await memoryOf(caller.pid)).peak - before.caller,
          cart: (await memoryOf(cart.pid)).peak - before.cart,
        };
        expect(growth.caller, `caller's peak RSS growth: ${growth.caller} bytes`).toBeLessThan(SIZE / 2);
        expect(growth.cart, `callee's peak RSS growth: ${growth.cart} bytes`).toBeLessThan(SIZE / 2);
        expectCleanLog(caller);
        expectCleanLog(cart);
      } finally {
        await Promise.all([caller.kill(), cart.kill()]);
        counter.closeAllConnections();
        await new Promise((resolve) => counter.close(resolve));
      }
    },
    60_000,
  );

  it("keeps calling on its identity token after the token service stops, then turns not ready when it expires", async () => {
    // The token service never lets a token outlive the client certificate, so a certificate ending
    // ~20 s from now bounds the token it issues (a ServiceIdentity's tokenTTL is at least 1m).
    const orders = mesh.service("orders.shop");
    const issued = await issueCertificate(mesh.ca, {
      id: orders.id,
      dnsNames: ["localhost"],
      ipAddresses: ["127.0.0.1"],
      lifetimeSeconds: 60,
      notBefore: new Date(Date.now() - 40_000),
    });
    const notAfterMs = issued.certificate.notAfter.getTime();
    await writeFile(join(orders.identityDirectory, "tls.key"), privateKeyToPem(issued.privateKey));
    await writeFile(join(orders.identityDirectory, "tls.crt"), issued.certificate.pem);
    await mesh.publishRegistry(mesh.specs);

    const cartApp = mesh.service("cart.shop");
    const [caller, cart] = await Promise.all([
      startSidecarProcess({
        identityDirectory: orders.identityDirectory,
        registryPath: mesh.registryPath,
        appPort: orders.appPort,
        tokenUrl: mesh.issuer.tokenUrl,
      }),
      startCart(),
    ]);
    try {
      expect(await readiness(caller)).toMatchObject({ status: 200, body: { status: "ready" } });

      // (The token service stays down for the rest of this file: keep this test last.)
      await mesh.issuer.close(100);
      const seen = cartApp.received.length;
      const call = () =>
        new Promise<{ status: number; body: string }>((resolve, reject) => {
          const outgoing = httpRequest(
            {
              host: "127.0.0.1",
              port: caller.outboundPort,
              method: "POST",
              path: "/cart/add",
              headers: { host: "cart.shop", "content-type": "application/json" },
            },
            (response) => {
              let text = "";
              response.setEncoding("utf8");
              response.on("data", (part: string) => {
                text += part;
              });
              response.on("end", () => resolve({ status: response.statusCode ?? 0, body: text }));
            },
          );
          outgoing.on("error", reject);
          outgoing.end('{"sku":42}');
        });
      const during = await call();
      expect(during).toEqual({ status: 200, body: "ok" });
      // The chain the app received starts with orders' identity token (sealed: the app learns its
      // subject from the sidecar), and the token is bounded by the certificate.
      expect(cartApp.received[seen]?.headers["custody-initial-subject"]).toBe("orders.shop");
      const metrics = await (await fetch(`${caller.adminUrl}/metrics`)).text();
      const expiry = /^custody_sidecar_identity_token_expiry_timestamp_seconds (\d+)/m.exec(metrics)?.[1];
      const claims = { exp: Number(expiry) };
      expect(claims.exp).toBeGreaterThan(0);
      expect(claims.exp * 1000).toBeLessThanOrEqual(notAfterMs);
      expect((await readiness(caller)).status).toBe(200);

      const notReady = await waitFor(
        "/readyz to answer 503",
        async () => {
          const answer = await readiness(caller);
          return answer.status === 503 ? { ...answer, at: Date.now() } : undefined;
        },
        notAfterMs - Date.now() + 15_000,
        200,
      );
      expect(notReady.at).toBeGreaterThanOrEqual(claims.exp * 1000);
      // Token and certificate end together (exp is the certificate's notAfter), and readiness
      // names the certificate first.
      expect(notReady.body).toMatchObject({
        status: "not_ready",
        reason: "the workload certificate has expired",
      });
      // And the callee refuses what the expired identity still sends.
      const after = await call();
      expect(after.status).toBe(401);
      expect(JSON.parse(after.body)).toEqual({ error: "unauthenticated", reason: "peer_expired" });
      expectCleanLog(caller, [await keyFingerprint(orders.identityDirectory)]);
      expectCleanLog(cart);
    } finally {
      await Promise.all([caller.kill(), cart.kill()]);
    }
  }, 60_000);
});
