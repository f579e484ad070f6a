/**
 * Three sidecars, three apps, the token service: the talk's checkout over real mutual TLS.
 * shop → cart (POST /cart/confirm) → payments (POST /pay-for-order/…), with Payments' policy
 * requiring exactly that path and the origin's scope.
 */
import { writeFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { temporaryDirectory } from "../../pki/test/support.js";
import { mintLink } from "../../sidecar/src/chain/mint.js";
import { normalizeOperation } from "../../sidecar/src/chain/normalize.js";
import { callThrough, Mesh, type ServiceSpec } from "../support/mesh.js";
import { freePort } from "../support/net.js";
import { startRedis } from "../support/redis.js";
import { promtoolProblems, requireTool } from "../support/tools.js";

const hasPromtool = requireTool("promtool");
const hasRedis = requireTool("redis-server");

const SPECS: ServiceSpec[] = [
  { name: "shop", namespace: "shop", scopes: ["shop.checkout"], edge: true },
  { name: "cart", namespace: "shop", claims: { team: "checkout" } },
  { name: "payments", namespace: "shop" },
];

const CART_POLICY = {
  apiVersion: "custody.dev/v1alpha1",
  kind: "AccessPolicy",
  metadata: { name: "cart", namespace: "shop" },
  spec: {
    target: "cart",
    defaultAction: "allow",
    rules: [
      {
        name: "rate-limited",
        operation: { path: "/limited" },
        require: { comeFrom: [{ service: "shop" }] },
        quota: { requestsPerSecond: 1, burst: 2, per: "caller" },
        action: "allow",
      },
    ],
  },
};

const PAYMENTS_POLICY = {
  apiVersion: "custody.dev/v1alpha1",
  kind: "AccessPolicy",
  metadata: { name: "payments", namespace: "shop" },
  spec: {
    target: "payments",
    defaultAction: "deny",
    rules: [
      {
        name: "pay-for-order",
        operation: { methods: ["POST"], path: "/pay-for-order/.*" },
        require: {
          initialToken: { scopesContain: ["shop.checkout"] },
          comeFrom: [
            { service: "cart" },
            { service: "shop", via: { methods: ["POST"], path: "/cart/confirm" } },
          ],
        },
        action: "allow",
      },
    ],
  },
};

describe("the checkout through three sidecars", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let mesh: Mesh;

  beforeAll(async () => {
    directory = await temporaryDirectory();
    mesh = new Mesh(directory.path);
    await mesh.start(SPECS, [PAYMENTS_POLICY, CART_POLICY]);
    const cart = mesh.service("cart.shop");
    // Cart's app pays for the order it confirms, copying the chain it received (like a trace header).
    cart.handler = async (request) => {
      if (request.url !== "/cart/confirm") return { status: 200, body: "ok" };
      const paid = await callThrough(
        mesh.sidecarOf("cart.shop"),
        "http://payments.shop/pay-for-order/12345",
        {
          method: "POST",
          body: '{"amount":"59.90"}',
          headers: {
            "custody-chain": String(request.headers["custody-chain"] ?? ""),
            "content-type": "application/json",
          },
        },
      );
      return { status: paid.status, body: `payments said ${paid.status}: ${paid.body}` };
    };
  }, 30_000);
  afterAll(async () => {
    await mesh?.close();
    await directory?.cleanup();
  });

  it("carries a three-element chain to payments, which sees the verified chain and its caller", async () => {
    const shop = mesh.sidecarOf("shop.shop");
    const answer = await callThrough(shop, "http://cart.shop/cart/confirm", {
      method: "POST",
      body: '{"cart":"c-1"}',
    });
    expect(answer.body).toBe("payments said 200: ok");
    const atPayments = mesh.service("payments.shop").received.at(-1);
    expect(atPayments?.url).toBe("/pay-for-order/12345");
    expect(atPayments?.body).toBe('{"amount":"59.90"}');
    expect(atPayments?.headers["custody-caller"]).toBe("cart.shop");
    expect(atPayments?.headers["custody-decision"]).toBe("allow policy=shop/payments rule=pay-for-order");
    // The app sees the links; the initial token only sealed, and its facts in plain headers.
    const [sealed, ...links] = String(atPayments?.headers["custody-chain"]).split("~");
    expect(links).toHaveLength(2);
    expect(sealed).toMatch(/^sealed\.v1\.[A-Za-z0-9_-]+$/);
    expect(atPayments?.headers).toMatchObject({
      "custody-initial-issuer": mesh.issuer.issuer,
      "custody-initial-subject": "shop.shop",
      "custody-initial-scope": "shop.checkout",
    });
    const claims = links.map((element) =>
      JSON.parse(Buffer.from(element.split(".")[1] ?? "", "base64url").toString()),
    );
    expect(claims[0]).toMatchObject({ iss: "shop.shop", aud: "cart.shop", op: "POST /cart/confirm" });
    expect(claims[1]).toMatchObject({
      iss: "cart.shop",
      aud: "payments.shop",
      op: "POST /pay-for-order/12345",
    });
  });

  it("denies payments called by shop directly: the call path does not match (403)", async () => {
    const shop = mesh.sidecarOf("shop.shop");
    const answer = await callThrough(shop, "http://payments.shop/pay-for-order/1", {
      method: "POST",
      body: "{}",
    });
    expect(answer.status).toBe(403);
    expect(JSON.parse(answer.body)).toEqual({ error: "forbidden", reason: "call_path" });
  });

  it("answers 502 for a target that is not in the registry, without calling anything", async () => {
    const shop = mesh.sidecarOf("shop.shop");
    const answer = await callThrough(shop, "http://evil.example/steal");
    expect(answer.status).toBe(502);
    expect(JSON.parse(answer.body)).toEqual({ error: "bad_gateway", reason: "unknown_service" });
  });

  const sidecarOf = (id: string) => mesh.sidecarOf(id);

  async function linkFromShop(body: string | undefined, path = "/cart/items") {
    const signer = await mesh.signerOf("shop.shop");
    return mintLink(signer, { audience: "cart.shop", operation: normalizeOperation("POST", path), body })
      .header;
  }

  it("refuses a body changed after signing (401 body_mismatch)", async () => {
    const chain = await linkFromShop('{"qty":1}');
    const answer = await mesh.callInbound("shop.shop", mesh.service("cart.shop").inboundPort, {
      method: "POST",
      path: "/cart/items",
      body: '{"qty":1000}',
      chain,
    });
    expect(answer.status).toBe(401);
    expect(JSON.parse(answer.body)).toEqual({ error: "unauthenticated", reason: "body_mismatch" });
  });

  it("refuses a replayed chain (401 replayed) and a chain played by another workload (peer_mismatch)", async () => {
    const port = mesh.service("cart.shop").inboundPort;
    const chain = await linkFromShop("{}");
    const call = (from: string) =>
      mesh.callInbound(from, port, { method: "POST", path: "/cart/items", body: "{}", chain });
    expect((await call("payments.shop")).body).toContain("peer_mismatch");
    expect((await call("shop.shop")).status).toBe(200);
    expect(JSON.parse((await call("shop.shop")).body).reason).toBe("replayed");
  });

  it("refuses a call without a chain, or without a client certificate", async () => {
    const port = mesh.service("cart.shop").inboundPort;
    const noChain = await mesh.callInbound("shop.shop", port, { method: "GET", path: "/" });
    expect(JSON.parse(noChain.body)).toEqual({ error: "unauthenticated", reason: "missing_chain" });
  });

  it("drops Custody-* headers a client sends and gives the app the ones it verified", async () => {
    const shop = sidecarOf("shop.shop");
    await callThrough(shop, "http://cart.shop/whoami", { headers: { "custody-caller": "admin.shop" } });
    expect(mesh.service("cart.shop").received.at(-1)?.headers["custody-caller"]).toBe("shop.shop");
  });

  it("drops every spelling an app stack could read as the sidecar's headers, and method or URL overrides", async () => {
    const forged = {
      custody_caller: "admin.shop",
      "CUSTODY-DECISION": "allow policy=x rule=y",
      Custody_Initial_Subject: "root",
      "custody-initial-scope": "admin",
      "custody-sidecar-token": "guess",
      "x-http-method-override": "DELETE",
      "X-HTTP-Method": "DELETE",
      "x-method-override": "DELETE",
      "x-original-url": "/admin",
      "x-rewrite-url": "/admin",
      "x-original-method": "DELETE",
    };
    // Straight to cart's inbound port with a genuine link (nothing of the client's is dropped on the way).
    const chain = mintLink(await mesh.signerOf("shop.shop"), {
      audience: "cart.shop",
      operation: normalizeOperation("GET", "/whoami"),
    }).header;
    const answer = await mesh.callInbound("shop.shop", mesh.service("cart.shop").inboundPort, {
      method: "GET",
      path: "/whoami",
      chain,
      headers: forged,
    });
    expect(answer.status).toBe(200);
    const seen = mesh.service("cart.shop").received.at(-1)?.headers ?? {};
    const names = Object.keys(seen);
    expect(names.filter((name) => /^custody[-_]/i.test(name)).sort()).toEqual([
      "custody-caller",
      "custody-chain",
      "custody-decision",
    ]);
    expect(seen["custody-caller"]).toBe("shop.shop");
    expect(names.filter((name) => /override|original|rewrite|^x-http-method$/i.test(name))).toEqual([]);
  });

  it("applies quota per caller: 429 with Retry-After once the burst is spent", async () => {
    const shop = sidecarOf("shop.shop");
    const statuses: string[] = [];
    let retryAfter: string | string[] | undefined;
    for (let i = 0; i < 4; i++) {
      const answer = await callThrough(shop, "http://cart.shop/limited");
      statuses.push(`${answer.status} ${answer.body}`);
      if (answer.status === 429) retryAfter = answer.headers["retry-after"];
    }
    expect(statuses.slice(0, 2)).toEqual(["200 ok", "200 ok"]);
    expect(statuses.at(-1)).toBe(
      JSON.stringify({ error: "rate_limited", reason: "quota_exceeded" }).replace(/^/, "429 "),
    );
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
  });

  it("streams a 10 MB body through both sidecars intact", async () => {
    const shop = sidecarOf("shop.shop");
    const big = "0123456789abcdef".repeat(655_360);
    const answer = await callThrough(shop, "http://cart.shop/upload", { method: "PUT", body: big });
    expect(answer.status).toBe(200);
    const received = mesh.service("cart.shop").received.at(-1);
    expect(received?.body.length).toBe(big.length);
    expect(received?.body === big).toBe(true);
  });

  it("serves calls to a service added to the registry, without restarts", async () => {
    const ledger = await mesh.addService({ name: "ledger", namespace: "shop" });
    const answer = await callThrough(sidecarOf("shop.shop"), "http://ledger.shop/entries", {
      method: "POST",
      body: "{}",
    });
    expect(answer.status).toBe(200);
    expect(ledger.received.at(-1)?.headers["custody-caller"]).toBe("shop.shop");
  });

  it("keeps the last good registry when a malformed one is mounted", async () => {
    const shop = sidecarOf("shop.shop");
    const before = await refusedReloads(shop.adminUrl);
    await writeFile(mesh.registryPath, "{ not json");
    await vi.waitFor(async () => expect(await refusedReloads(shop.adminUrl)).toBeGreaterThan(before), {
      timeout: 5_000,
    });
    const answer = await callThrough(shop, "http://cart.shop/still-there");
    expect(answer.status).toBe(200);
    await mesh.publishRegistry(mesh.specs);
  });

  it.skipIf(!hasPromtool)("exports metrics that pass promtool check metrics", async () => {
    const text = await (await fetch(`${sidecarOf("cart.shop").adminUrl}/metrics`)).text();
    expect(text).toContain(
      'custody_sidecar_requests_total{direction="inbound",decision="allow",reason="allowed"}',
    );
    expect(promtoolProblems(text)).toBe("");
  });

  it("reports ready while it has an identity token and a registry", async () => {
    const answer = await fetch(`${sidecarOf("shop.shop").adminUrl}/readyz`);
    expect(answer.status).toBe(200);
  });

  it.skipIf(!hasRedis)(
    "two replicas sharing Redis: a chain replayed to the second replica is refused",
    async () => {
      const redis = await startRedis();
      try {
        // Cart allows shop's GET /status (defaultAction allow): a jti is spent only on an allowed call.
        const cart = mesh.service("cart.shop");
        const [portA, portB] = [await freePort(), await freePort()];
        await mesh.startSidecar(cart, { redisUrl: redis.url, inboundPort: portA });
        await mesh.startSidecar(cart, { redisUrl: redis.url, inboundPort: portB });
        const signer = await mesh.signerOf("shop.shop");
        const chain = mintLink(signer, {
          audience: "cart.shop",
          operation: normalizeOperation("GET", "/status"),
        }).header;
        const first = await mesh.callInbound("shop.shop", portA, { method: "GET", path: "/status", chain });
        const second = await mesh.callInbound("shop.shop", portB, { method: "GET", path: "/status", chain });
        expect(first.status).toBe(200);
        expect(JSON.parse(second.body)).toEqual({ error: "unauthenticated", reason: "replayed" });
      } finally {
        await redis.stop();
      }
    },
  );

  async function keyService(id: string, route: string, body: unknown) {
    const answer = await fetch(`${sidecarOf(id).outboundUrl}/.custody/${route}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: answer.status, json: (await answer.json()) as Record<string, unknown> };
  }

  it("key service: shop seals a card number for payments and cart; each opens it, shop itself cannot", async () => {
    const sealed = await keyService("shop.shop", "seal", {
      recipients: ["payments.shop", "cart.shop"],
      plaintext: "4111 1111 1111 1111",
      contentType: "text/plain",
    });
    expect(sealed.status).toBe(200);
    for (const reader of ["payments.shop", "cart.shop"]) {
      const opened = await keyService(reader, "open", sealed.json);
      expect(opened.status).toBe(200);
      expect(Buffer.from(String(opened.json.plaintextBase64url), "base64url").toString()).toBe(
        "4111 1111 1111 1111",
      );
    }
    expect(await keyService("shop.shop", "open", sealed.json)).toEqual({
      status: 400,
      json: { error: "key_service", reason: "not_a_recipient" },
    });
    const ciphertext = String(sealed.json.ciphertext);
    const flipped = `${ciphertext.startsWith("A") ? "B" : "A"}${ciphertext.slice(1)}`;
    const tampered = { ...sealed.json, ciphertext: flipped };
    expect((await keyService("payments.shop", "open", tampered)).json.reason).toBe("decryption_failed");
  });

  it("key service: what cart signs, payments verifies through the registry; a changed payload fails", async () => {
    const signed = await keyService("cart.shop", "sign", { payload: { order: 12345, amount: "59.90" } });
    expect(signed.status).toBe(200);
    const verified = await keyService("payments.shop", "verify", {
      jws: signed.json.jws,
      payload: { amount: "59.90", order: 12345 },
    });
    expect(verified.json).toMatchObject({ valid: true, signer: "cart.shop" });
    const forged = await keyService("payments.shop", "verify", {
      jws: signed.json.jws,
      payload: { order: 12345, amount: "0.01" },
    });
    expect(forged).toEqual({ status: 400, json: { error: "key_service", reason: "bad_signature" } });
  });

  it("reports not ready (503) while it has no valid identity token", async () => {
    const unreachable = `https://127.0.0.1:${await freePort()}/oauth2/token`;
    const lonely = await mesh.startSidecar(mesh.service("ledger.shop"), {
      inboundPort: await freePort(),
      tokenUrl: unreachable,
    });
    const answer = await fetch(`${lonely.adminUrl}/readyz`);
    expect(answer.status).toBe(503);
    expect(await answer.json()).toMatchObject({ status: "not_ready", reason: "no valid identity token" });
  });

  it("keeps calling while the token service is down, on the identity token it has", async () => {
    await mesh.issuer.close(100);
    await sleep(50);
    const answer = await callThrough(sidecarOf("shop.shop"), "http://cart.shop/cart/confirm", {
      method: "POST",
      body: "{}",
    });
    expect(answer.body).toBe("payments said 200: ok");
  });
});

async function refusedReloads(adminUrl: string): Promise<number> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const line = text
    .split("\n")
    .find((entry) => entry.startsWith('custody_sidecar_registry_reloads_total{result="refused"}'));
  return Number(line?.split(" ").at(-1) ?? 0);
}
