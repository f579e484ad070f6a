/**
 * Edge entry: what an edge service admits as `Authorization: Bearer`, what it refuses and why, and
 * that the chain it starts with such a token verifies downstream (and only when an edge started it).
 */
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { compilePolicy } from "../../crds/src/compiled-policy.js";
import { admitBearer, bearerToken, type CertificateHolder } from "../src/chain/entry.js";
import { sha256Base64url } from "../src/chain/jws.js";
import { DEFAULT_LIMITS } from "../src/chain/limits.js";
import { mintLink } from "../src/chain/mint.js";
import { normalizeOperation } from "../src/chain/normalize.js";
import { verifyChain } from "../src/chain/verify.js";
import { decide, provenanceOfBearer } from "../src/policy/engine.js";
import { PatternCache } from "../src/policy/operation.js";
import { MemoryReplayGuard } from "../src/replay/memory.js";
import { makeService, TestIssuer, TestTrust, TOKEN_SERVICE, USER_IDP } from "./support/mesh.js";

const shop = makeService("shop.shop", { edge: true });
const cart = makeService("cart.shop");
const batch = makeService("batch.shop", { claims: { tier: "internal" } });
const idp = new TestIssuer(USER_IDP);
const rogue = new TestIssuer("https://evil.example");
const tokenService = new TestIssuer(TOKEN_SERVICE);
const trust = new TestTrust()
  .addService(shop)
  .addService(cart)
  .addService(batch)
  .addIssuer(idp)
  .addIssuer(tokenService);

const certificate = randomBytes(300);
const otherCertificate = randomBytes(300);
const now = () => Math.floor(Date.now() / 1000);
/** `bound: null` for a token without `cnf`. */
const identityToken = (sub: string, bound: Uint8Array | null = certificate) =>
  tokenService.token({
    sub,
    scope: "",
    ...(bound === null ? {} : { cnf: { "x5t#S256": sha256Base64url(bound) } }),
  });
const userToken = (claims: Record<string, unknown> = {}) =>
  idp.token({ sub: "marissa", aud: "shop.shop", scope: "shop.customer", ...claims });

/**
 * `holder`: whom the certificate authenticates as under the registry's anchors; by default the
 * workload the identity token names (batch), as its own Custody certificate would.
 */
const admit = (
  token: string,
  options: { der?: Uint8Array; self?: typeof shop; holder?: CertificateHolder } = {},
) =>
  admitBearer(
    {
      self: (options.self ?? shop).info,
      token,
      clientCertificate: options.der,
      holder: options.holder ?? (options.der === undefined ? undefined : { service: "batch.shop" }),
      nowSeconds: now(),
    },
    trust,
    DEFAULT_LIMITS,
  );

const refusedWith = (action: () => unknown, code: string) =>
  expect(action).toThrow(expect.objectContaining({ code }));

describe("bearerToken", () => {
  it("reads the Bearer scheme case-insensitively and nothing else", () => {
    expect(bearerToken("Bearer abc.def.ghi")).toBe("abc.def.ghi");
    expect(bearerToken("bearer abc.def.ghi")).toBe("abc.def.ghi");
    expect(bearerToken("Basic dXNlcjpwYXNz")).toBeUndefined();
    expect(bearerToken("Bearer")).toBeUndefined();
    expect(bearerToken("Bearer a b")).toBeUndefined();
    expect(bearerToken(undefined)).toBeUndefined();
  });
});

describe("admitBearer", () => {
  it("admits a user's token without a client certificate", () => {
    const admitted = admit(userToken());
    expect(admitted.caller).toBeUndefined();
    expect(admitted.initial).toMatchObject({ kind: "user", subject: "marissa", scopes: ["shop.customer"] });
  });

  it("admits a workload's identity token over the certificate it is bound to", () => {
    const admitted = admit(identityToken("batch.shop"), { der: certificate });
    expect(admitted.caller).toBe("batch.shop");
    expect(admitted.initial.kind).toBe("identity");
  });

  it("refuses on a service that is not an edge", () => {
    refusedWith(() => admit(userToken(), { self: cart }), "initial_token_not_admitted");
  });

  it("refuses an identity token without the client certificate, or with another one", () => {
    refusedWith(() => admit(identityToken("batch.shop")), "binding_mismatch");
    refusedWith(() => admit(identityToken("batch.shop"), { der: otherCertificate }), "binding_mismatch");
  });

  it("refuses an identity token that is not certificate-bound", () => {
    refusedWith(() => admit(identityToken("batch.shop", null), { der: certificate }), "binding_mismatch");
  });

  it("honours cnf on a user's token, and refuses a confirmation method it cannot check", () => {
    const bound = userToken({ cnf: { "x5t#S256": sha256Base64url(certificate) } });
    refusedWith(() => admit(bound), "binding_mismatch");
    expect(admit(bound, { der: certificate }).caller).toBeUndefined();
    refusedWith(() => admit(userToken({ cnf: { jkt: "abc" } })), "binding_mismatch");
  });

  it("refuses an exchanged (act) token: it is its actor's own e0", () => {
    const exchanged = tokenService.token({
      sub: "marissa",
      act: { sub: "shop.shop" },
      cnf: { "x5t#S256": sha256Base64url(certificate) },
    });
    refusedWith(() => admit(exchanged, { der: certificate }), "initial_token_not_admitted");
  });

  it("refuses tokens from untrusted issuers, expired, or with a bad signature", () => {
    refusedWith(() => admit(rogue.token({ sub: "mallory" })), "initial_token_invalid");
    refusedWith(() => admit(userToken({ exp: now() - 120 })), "initial_token_invalid");
    const [header, payload] = userToken().split(".");
    refusedWith(
      () => admit(`${header}.${payload}.${Buffer.alloc(64).toString("base64url")}`),
      "initial_token_invalid",
    );
  });

  it("refuses a call link presented as a bearer credential", () => {
    const link = mintLink(cart.signer, {
      audience: "shop.shop",
      operation: normalizeOperation("GET", "/"),
      nowSeconds: now(),
    }).header;
    refusedWith(() => admit(link), "wrong_type");
  });

  it("refuses what cannot be an element: too large, or not a JWS", () => {
    refusedWith(
      () => admit(userToken({ pad: "x".repeat(DEFAULT_LIMITS.maxElementBytes) })),
      "element_too_large",
    );
    refusedWith(() => admit("not-a-jws"), "malformed");
  });
});

describe("a chain an edge started with a bearer token", () => {
  const hop = (previous: string, from = shop) =>
    mintLink(from.signer, {
      audience: "cart.shop",
      operation: normalizeOperation("POST", "/cart/confirm"),
      previous: [previous],
      nowSeconds: now(),
    }).header;
  const verifyAtCart = (header: string, peer: string) =>
    verifyChain(
      header,
      {
        self: "cart.shop",
        peer,
        operation: normalizeOperation("POST", "/cart/confirm"),
        bodyHash: undefined,
        nowSeconds: now(),
      },
      trust,
      new MemoryReplayGuard(),
    );

  it("verifies downstream with another workload's identity token as e0, started by the edge", async () => {
    const chain = await verifyAtCart(hop(identityToken("batch.shop")), "shop.shop");
    expect(chain.initial).toMatchObject({ kind: "identity", subject: "batch.shop" });
  });

  it("is refused when a service that is not an edge starts it", async () => {
    await expect(verifyAtCart(hop(identityToken("shop.shop"), batch), "batch.shop")).rejects.toMatchObject({
      code: "initial_token_not_admitted",
    });
  });
});

describe("policies on an edge entry", () => {
  const patterns = new PatternCache();
  const storefront = (require: Record<string, unknown>) =>
    compilePolicy({
      apiVersion: "custody.dev/v1alpha1",
      kind: "AccessPolicy",
      metadata: { name: "storefront", namespace: "shop" },
      spec: {
        target: "shop",
        rules: [{ name: "browse", operation: { methods: ["GET"] }, require, action: "allow" }],
      },
    });
  const decideFor = (token: string, der: Uint8Array | undefined, require: Record<string, unknown>) => {
    const operation = normalizeOperation("GET", "/catalog");
    const from = provenanceOfBearer(admit(token, der === undefined ? {} : { der }), operation);
    return decide(
      [storefront(require)],
      { target: shop.info, operation, from },
      {
        service: (id) => trust.service(id),
        patterns,
      },
    );
  };

  it("applies initialToken requirements to the bearer token", () => {
    expect(
      decideFor(userToken(), undefined, { initialToken: { scopesContain: ["shop.customer"] } }).allowed,
    ).toBe(true);
    expect(
      decideFor(userToken({ scope: "" }), undefined, { initialToken: { scopesContain: ["shop.customer"] } }),
    ).toMatchObject({
      allowed: false,
      reason: "scope_missing",
    });
  });

  it("gives a user no caller: comeFrom and callerClaims that name a service refuse", () => {
    expect(decideFor(userToken(), undefined, { comeFrom: [{ service: "batch" }] })).toMatchObject({
      allowed: false,
      reason: "call_path",
    });
    expect(decideFor(userToken(), undefined, { callerClaims: { tier: "internal" } })).toMatchObject({
      allowed: false,
      reason: "caller_claims",
    });
  });

  it("gives a workload's identity token its workload as the caller", () => {
    const token = identityToken("batch.shop");
    expect(decideFor(token, certificate, { comeFrom: [{ service: "batch" }] }).allowed).toBe(true);
    expect(decideFor(token, certificate, { callerClaims: { tier: "internal" } }).allowed).toBe(true);
    expect(decideFor(token, certificate, { comeFrom: [{ service: "cart" }] }).allowed).toBe(false);
  });
});
