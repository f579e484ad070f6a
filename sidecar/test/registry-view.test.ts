import { beforeAll, describe, expect, it } from "vitest";
import type { Registry } from "../../crds/src/registry-schema.js";
import { createCertificateAuthority } from "../../pki/src/index.js";
import { sha256Base64url } from "../src/chain/jws.js";
import { mintLink } from "../src/chain/mint.js";
import { normalizeOperation } from "../src/chain/normalize.js";
import { RegistryTrustView } from "../src/chain/registry-view.js";
import { verifyChain } from "../src/chain/verify.js";
import { makeService, TestIssuer, TOKEN_SERVICE, USER_IDP } from "./support/mesh.js";
import { serviceEntry, testRegistry } from "./support/registry.js";

const shop = makeService("shop.shop", { edge: true, claims: { team: "storefront" } });
const cart = makeService("cart.shop", { keyType: "ed25519" });
const idp = new TestIssuer(USER_IDP, "rsa");
const tokenService = new TestIssuer(TOKEN_SERVICE);
const _DAY = 86_400_000;

let trustBundle: string;
beforeAll(async () => {
  trustBundle = (await createCertificateAuthority()).certificate.pem;
});

function registry(overrides: Record<string, unknown> = {}): Registry {
  return testRegistry(
    {
      trustBundle,
      tokenService,
      trustedIssuers: [{ issuer: idp, audiences: ["shop.shop"] }],
      services: [shop, cart],
    },
    overrides,
  );
}

function checkout(token: string) {
  const first = mintLink(shop.signer, {
    audience: "cart.shop",
    operation: normalizeOperation("POST", "/cart/confirm"),
    previous: [token],
  });
  return mintLink(cart.signer, {
    audience: "payments.shop",
    operation: normalizeOperation("POST", "/pay/1"),
    previous: first.elements,
  }).header;
}

const atPayments = (header: string, view: RegistryTrustView) =>
  verifyChain(
    header,
    {
      self: "payments.shop",
      operation: normalizeOperation("POST", "/pay/1"),
      bodyHash: undefined,
      nowSeconds: Math.floor(Date.now() / 1000),
    },
    view,
    { claim: async () => true },
  );

describe("RegistryTrustView", () => {
  it("verifies a chain against keys and issuers published in a registry document", async () => {
    const view = new RegistryTrustView(registry());
    expect(view.generation).toBe(7);
    expect(view.service("shop.shop")).toEqual({
      id: "shop.shop",
      environment: "prod",
      claims: { team: "storefront" },
      edge: true,
    });
    const verified = await atPayments(checkout(idp.token({ sub: "marissa", aud: ["shop.shop"] })), view);
    expect(verified.initial?.issuer).toBe(USER_IDP);
    expect(sha256Base64url(verified.elements[0] ?? "")).toBe(verified.initial?.hash);
  });

  it("refuses a user token not addressed to an audience the issuer is trusted for", async () => {
    const view = new RegistryTrustView(registry());
    await expect(
      atPayments(checkout(idp.token({ sub: "marissa", aud: ["admin"] })), view),
    ).rejects.toMatchObject({
      code: "initial_token_invalid",
    });
  });

  it("stops accepting a key after its notAfter, even while it is still published", async () => {
    const expired = registry({
      services: [serviceEntry(shop), serviceEntry(cart, new Date(Date.now() - 1000).toISOString())],
    });
    await expect(
      atPayments(checkout(idp.token({ sub: "m", aud: ["shop.shop"] })), new RegistryTrustView(expired)),
    ).rejects.toMatchObject({
      code: "unknown_key",
    });
  });

  it("refuses a registry in which one kid belongs to two services", () => {
    const clash = { ...serviceEntry(cart), keys: serviceEntry(shop).keys };
    expect(() => new RegistryTrustView(registry({ services: [serviceEntry(shop), clash] }))).toThrow(
      expect.objectContaining({ code: "duplicate_kid" }),
    );
  });

  it("refuses a JWK whose alg does not match its key type", () => {
    const wrongAlg = serviceEntry(cart);
    const [key] = wrongAlg.keys;
    if (key === undefined) throw new Error("fixture");
    const lying = { ...wrongAlg, keys: [{ ...key, jwk: { ...key.jwk, alg: "ES256" } }] };
    expect(() => registry({ services: [serviceEntry(shop), lying] })).toThrow();
  });

  it("answers an issuer lookup without kid only when the issuer has exactly one key", () => {
    const view = new RegistryTrustView(registry());
    expect(view.issuerKey(USER_IDP, undefined)?.kid).toBe(idp.kid);
    expect(view.issuerKey("https://unknown.example", undefined)).toBeUndefined();
    expect(view.issuerKey(USER_IDP, "other-kid")).toBeUndefined();
  });
});
