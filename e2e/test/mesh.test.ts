/**
 * Three sidecars, three apps, the token service: the talk's checkout over real mutual TLS.
 * shop → cart (POST /cart/confirm) → payments (POST /pay-for-order/…), with Payments' policy
 * requiring exactly that path and the origin's scope.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { temporaryDirectory } from "../../pki/test/support.js";
import { callThrough, Mesh, type ServiceSpec } from "../support/mesh.js";

const SPECS: ServiceSpec[] = [
  { name: "shop", namespace: "shop", scopes: ["shop.checkout"], edge: true },
  { name: "cart", namespace: "shop", claims: { team: "checkout" } },
  { name: "payments", namespace: "shop" },
];

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
    await mesh.start(SPECS, [PAYMENTS_POLICY]);
    const cart = mesh.service("cart.shop");
    // Cart's app pays for the order it confirms, copying the chain it received (like a trace header).
    cart.handler = async (request) => {
      const cartSidecar = cart.sidecar;
      if (cartSidecar === undefined) throw new Error("no cart sidecar");
      const paid = await callThrough(cartSidecar, "http://payments.shop/pay-for-order/12345", {
        method: "POST",
        body: '{"amount":"59.90"}',
        headers: {
          "custody-chain": String(request.headers["custody-chain"] ?? ""),
          "content-type": "application/json",
        },
      });
      return { status: paid.status, body: `payments said ${paid.status}: ${paid.body}` };
    };
  }, 30_000);
  afterAll(async () => {
    await mesh?.close();
    await directory?.cleanup();
  });

  it("carries a three-element chain to payments, which sees the verified chain and its caller", async () => {
    const shop = mesh.service("shop.shop").sidecar;
    if (shop === undefined) throw new Error("no shop sidecar");
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
    const chain = String(atPayments?.headers["custody-chain"]).split("~");
    expect(chain).toHaveLength(3);
    const claims = chain.map((element) =>
      JSON.parse(Buffer.from(element.split(".")[1] ?? "", "base64url").toString()),
    );
    expect(claims[0]).toMatchObject({ sub: "shop.shop", scope: "shop.checkout" });
    expect(claims[1]).toMatchObject({ iss: "shop.shop", aud: "cart.shop", op: "POST /cart/confirm" });
    expect(claims[2]).toMatchObject({
      iss: "cart.shop",
      aud: "payments.shop",
      op: "POST /pay-for-order/12345",
    });
  });

  it("denies payments called by shop directly: the call path does not match (403)", async () => {
    const shop = mesh.service("shop.shop").sidecar;
    if (shop === undefined) throw new Error("no shop sidecar");
    const answer = await callThrough(shop, "http://payments.shop/pay-for-order/1", {
      method: "POST",
      body: "{}",
    });
    expect(answer.status).toBe(403);
    expect(JSON.parse(answer.body)).toEqual({ error: "forbidden", reason: "call_path" });
  });

  it("answers 502 for a target that is not in the registry, without calling anything", async () => {
    const shop = mesh.service("shop.shop").sidecar;
    if (shop === undefined) throw new Error("no shop sidecar");
    const answer = await callThrough(shop, "http://evil.example/steal");
    expect(answer.status).toBe(502);
    expect(JSON.parse(answer.body)).toEqual({ error: "bad_gateway", reason: "unknown_service" });
  });
});
