/**
 * Edge entry over real TLS (seed 000's "API proxy"): a customer's browser, behind an ingress, calls
 * shop with `Authorization: Bearer <user token>` and no client certificate; shop's app calls cart,
 * which calls payments, and payments' policy judges the customer's token as the chain's e0. A
 * workload outside the mesh enters with its certificate-bound identity token instead.
 */
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signCompactJws } from "../../pki/src/jws.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import { loadIdentityFiles } from "../../sidecar/src/runtime/identity-files.js";
import { tokenServiceFetcher } from "../../sidecar/src/runtime/identity-token.js";
import { type Answer, callThrough, Mesh, type ServiceSpec } from "../support/mesh.js";

const IDP = "https://login.shop.example";

const SPECS: ServiceSpec[] = [
  { name: "shop", namespace: "shop", edge: true },
  { name: "cart", namespace: "shop" },
  { name: "payments", namespace: "shop" },
  { name: "batch", namespace: "shop", claims: { tier: "internal" } },
];

const SHOP_POLICY = {
  apiVersion: "custody.dev/v1alpha1",
  kind: "AccessPolicy",
  metadata: { name: "shop", namespace: "shop" },
  spec: {
    target: "shop",
    defaultAction: "deny",
    rules: [
      {
        name: "customers",
        operation: { path: "/checkout" },
        require: { initialToken: { issuer: IDP } },
        action: "allow",
      },
      {
        name: "reports",
        operation: { path: "/reports" },
        require: { callerClaims: { tier: "internal" } },
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
          initialToken: { issuer: IDP, scopesContain: ["shop.customer"] },
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

const claimsOf = (element: string) =>
  JSON.parse(Buffer.from(element.split(".")[1] ?? "", "base64url").toString()) as Record<string, unknown>;

describe("edge entry: a bearer token starts the chain at an edge service", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let mesh: Mesh;
  let idpKey: KeyObject;

  const userToken = (claims: Record<string, unknown> = {}) => {
    const now = Math.floor(Date.now() / 1000);
    return signCompactJws(
      { alg: "ES256", typ: "JWT", kid: "idp-1" },
      {
        iss: IDP,
        sub: "marissa",
        aud: "shop.shop",
        iat: now,
        exp: now + 300,
        scope: "shop.customer",
        ...claims,
      },
      idpKey,
    );
  };
  const atShop = (init: { from?: string; path?: string; token?: string; headers?: Record<string, string> }) =>
    mesh.callInbound(init.from, mesh.service("shop.shop").inboundPort, {
      method: "POST",
      path: init.path ?? "/checkout",
      body: '{"order":7}',
      headers: {
        ...(init.token === undefined ? {} : { authorization: `Bearer ${init.token}` }),
        ...init.headers,
      },
    });
  const refusal = (answer: Answer) => ({ status: answer.status, ...JSON.parse(answer.body) });

  beforeAll(async () => {
    directory = await temporaryDirectory();
    mesh = new Mesh(directory.path);
    const pair = generateKeyPairSync("ec", { namedCurve: "P-256" });
    idpKey = pair.privateKey;
    mesh.trustedIssuers = [
      {
        issuer: IDP,
        jwks: { keys: [{ ...pair.publicKey.export({ format: "jwk" }), kid: "idp-1", alg: "ES256" }] },
      },
    ];
    await mesh.start(SPECS, [SHOP_POLICY, PAYMENTS_POLICY]);
    const sidecarOf = (id: string) => mesh.sidecarOf(id);
    // Each app passes the chain it received on to the next call, as it would a trace header.
    mesh.service("shop.shop").handler = async (request) => {
      if (request.url !== "/checkout") return { status: 200, body: "ok" };
      const confirmed = await callThrough(sidecarOf("shop.shop"), "http://cart.shop/cart/confirm", {
        method: "POST",
        body: request.body,
        headers: { "custody-chain": String(request.headers["custody-chain"] ?? "") },
      });
      return { status: confirmed.status, body: confirmed.body };
    };
    mesh.service("cart.shop").handler = async (request) => {
      const paid = await callThrough(sidecarOf("cart.shop"), "http://payments.shop/pay-for-order/7", {
        method: "POST",
        body: request.body,
        headers: { "custody-chain": String(request.headers["custody-chain"] ?? "") },
      });
      return { status: paid.status, body: paid.body };
    };
  }, 30_000);
  afterAll(async () => {
    await mesh?.close();
    await directory?.cleanup();
  });

  it("admits a customer's token without a client certificate; payments judges it as e0", async () => {
    const token = userToken();
    const answer = await atShop({ token });
    expect(answer.status).toBe(200);
    const atShopApp = mesh.service("shop.shop").received.at(-1);
    // No app sees the customer's token: shop's app gets it sealed, with its facts in plain headers.
    expect(atShopApp?.headers["custody-chain"]).toMatch(/^sealed\.v1\.[A-Za-z0-9_-]+$/);
    expect(atShopApp?.headers.authorization).toBeUndefined();
    expect(atShopApp?.headers["custody-caller"]).toBeUndefined();
    expect(atShopApp?.headers["custody-decision"]).toBe("allow policy=shop/shop rule=customers entry=bearer");
    expect(atShopApp?.headers).toMatchObject({
      "custody-initial-issuer": IDP,
      "custody-initial-subject": "marissa",
      "custody-initial-scope": "shop.customer",
    });
    const chain = String(mesh.service("payments.shop").received.at(-1)?.headers["custody-chain"]).split("~");
    expect(chain).toHaveLength(3);
    expect(chain[0]).toMatch(/^sealed\.v1\./);
    for (const app of ["shop.shop", "cart.shop", "payments.shop"]) {
      const seen = JSON.stringify(mesh.service(app).received.at(-1)?.headers);
      expect(seen).not.toContain(token.split(".")[2]);
    }
    expect(claimsOf(chain[1] ?? "")).toMatchObject({
      iss: "shop.shop",
      aud: "cart.shop",
      op: "POST /cart/confirm",
    });
    expect(claimsOf(chain[2] ?? "")).toMatchObject({ iss: "cart.shop", aud: "payments.shop" });
  });

  it("a customer without the scope gets through shop, and payments refuses (scope_missing)", async () => {
    const answer = await atShop({ token: userToken({ scope: "shop.browse" }) });
    expect(refusal(answer)).toEqual({ status: 403, error: "forbidden", reason: "scope_missing" });
  });

  it("refuses a forged or expired customer token, and a request with neither chain nor token", async () => {
    const [header, payload] = userToken().split(".");
    const forged = `${header}.${payload}.${Buffer.alloc(64, 1).toString("base64url")}`;
    expect(refusal(await atShop({ token: forged }))).toMatchObject({
      status: 401,
      reason: "initial_token_invalid",
    });
    const expired = userToken({ exp: Math.floor(Date.now() / 1000) - 120 });
    expect(refusal(await atShop({ token: expired }))).toMatchObject({
      status: 401,
      reason: "initial_token_invalid",
    });
    expect(refusal(await atShop({}))).toMatchObject({ status: 401, reason: "no_client_certificate" });
    expect(refusal(await atShop({ from: "batch.shop" }))).toMatchObject({
      status: 401,
      reason: "missing_chain",
    });
  });

  it("ignores a bearer token on a service that is not an edge", async () => {
    const answer = await mesh.callInbound("batch.shop", mesh.service("cart.shop").inboundPort, {
      method: "POST",
      path: "/cart/confirm",
      headers: { authorization: `Bearer ${userToken()}` },
    });
    expect(refusal(answer)).toEqual({ status: 401, error: "unauthenticated", reason: "missing_chain" });
  });

  it("admits a workload's identity token only over the certificate it is bound to", async () => {
    const fetchToken = tokenServiceFetcher(mesh.issuer.tokenUrl);
    let token: string;
    try {
      token = (await fetchToken(await loadIdentityFiles(mesh.service("batch.shop").identityDirectory))).token;
    } finally {
      await fetchToken.close();
    }
    const allowed = await atShop({ from: "batch.shop", path: "/reports", token });
    expect(allowed.status).toBe(200);
    expect(mesh.service("shop.shop").received.at(-1)?.headers["custody-caller"]).toBe("batch.shop");
    expect(refusal(await atShop({ path: "/reports", token }))).toMatchObject({
      status: 401,
      reason: "binding_mismatch",
    });
    expect(refusal(await atShop({ from: "cart.shop", path: "/reports", token }))).toMatchObject({
      status: 401,
      reason: "binding_mismatch",
    });
  });

  it("a customer has no caller claims: the workload-only rule refuses them", async () => {
    expect(refusal(await atShop({ path: "/reports", token: userToken() }))).toEqual({
      status: 403,
      error: "forbidden",
      reason: "caller_claims",
    });
  });

  it("a chain, when present, is what is verified: a bearer token does not replace it", async () => {
    const answer = await atShop({
      from: "batch.shop",
      token: userToken(),
      headers: { "custody-chain": "x.y.z" },
    });
    expect(refusal(answer)).toMatchObject({ status: 401, reason: "malformed" });
  });
});
