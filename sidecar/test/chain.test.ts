import { beforeEach, describe, expect, it } from "vitest";
import { VerifiedElementCache } from "../src/chain/cache.js";
import { sha256Base64url } from "../src/chain/jws.js";
import { mintLink, newJti } from "../src/chain/mint.js";
import { normalizeOperation } from "../src/chain/normalize.js";
import { type VerifiedLink, verifyChain } from "../src/chain/verify.js";
import { MemoryReplayGuard } from "../src/replay/memory.js";
import { makeService, TestIssuer, TestTrust, TOKEN_SERVICE, USER_IDP } from "./support/mesh.js";

const shop = makeService("shop.shop", { edge: true, claims: { team: "storefront" } });
const cart = makeService("cart.shop");
const payments = makeService("payments.shop", { keyType: "ed25519" });
const idp = new TestIssuer(USER_IDP, "rsa");
const tokenService = new TestIssuer(TOKEN_SERVICE);

function trust(): TestTrust {
  return new TestTrust()
    .addService(shop)
    .addService(cart)
    .addService(payments)
    .addIssuer(idp)
    .addIssuer(tokenService);
}

function receive(self: string, method: string, target: string, body?: string) {
  return {
    self,
    operation: normalizeOperation(method, target),
    bodyHash: body === undefined ? undefined : sha256Base64url(body),
    nowSeconds: Math.floor(Date.now() / 1000),
  };
}

const userToken = () =>
  idp.token({ sub: "marissa", aud: ["shop.shop"], scope: "openid shop.customer", user_name: "marissa" });

/** The talk's checkout: user → shop → cart (POST /cart/confirm) → payments (POST /pay-for-order/12345). */
function checkout() {
  const toCart = mintLink(shop.signer, {
    audience: "cart.shop",
    operation: normalizeOperation("POST", "/cart/confirm"),
    body: '{"order":12345}',
    previous: [userToken()],
  });
  const toPayments = mintLink(cart.signer, {
    audience: "payments.shop",
    operation: normalizeOperation("POST", "/pay-for-order/12345"),
    body: '{"card":"sealed"}',
    previous: toCart.elements,
  });
  return { toCart, toPayments };
}

describe("call-chain tokens", () => {
  let guard: MemoryReplayGuard;
  beforeEach(() => {
    guard = new MemoryReplayGuard();
  });

  it("A→B: a single link verifies at its audience", async () => {
    const chain = mintLink(cart.signer, {
      audience: "payments.shop",
      operation: normalizeOperation("GET", "/health"),
    });
    const verified = await verifyChain(
      chain.header,
      receive("payments.shop", "GET", "/health"),
      trust(),
      guard,
    );
    expect(verified.head.iss).toBe("cart.shop");
    expect(verified.links).toHaveLength(1);
    expect(verified.initial).toBeUndefined();
  });

  it("A→B→C: the user's initial token and its claims reach C with the whole path", async () => {
    const { toCart, toPayments } = checkout();
    const atCart = await verifyChain(
      toCart.header,
      receive("cart.shop", "POST", "/cart/confirm", '{"order":12345}'),
      trust(),
      guard,
    );
    expect(atCart.initial?.kind).toBe("user");
    const atPayments = await verifyChain(
      toPayments.header,
      receive("payments.shop", "POST", "/pay-for-order/12345", '{"card":"sealed"}'),
      trust(),
      guard,
    );
    expect(atPayments.links.map((link) => `${link.iss}→${link.aud} ${link.op}`)).toEqual([
      "shop.shop→cart.shop POST /cart/confirm",
      "cart.shop→payments.shop POST /pay-for-order/12345",
    ]);
    expect(atPayments.initial?.scopes).toContain("shop.customer");
    expect(atPayments.initial?.claims.user_name).toBe("marissa");
    expect(atPayments.initial?.subject).toBe("marissa");
  });

  it("accepts the origin's own identity token from the token service as e0", async () => {
    const identity = tokenService.token({ sub: "cart.shop", aud: "custody", scope: "payments.write" });
    const chain = mintLink(cart.signer, {
      audience: "payments.shop",
      operation: normalizeOperation("GET", "/x"),
      previous: [identity],
    });
    const verified = await verifyChain(chain.header, receive("payments.shop", "GET", "/x"), trust(), guard);
    expect(verified.initial?.kind).toBe("identity");
    expect(verified.initial?.scopes).toEqual(["payments.write"]);
  });

  it("accepts a token-exchange token (RFC 8693 act) as e0 from the edge service that is its actor", async () => {
    const exchanged = tokenService.token({
      sub: "marissa",
      act: { sub: "shop.shop" },
      scope: "shop.customer",
    });
    const chain = mintLink(shop.signer, {
      audience: "cart.shop",
      operation: normalizeOperation("GET", "/x"),
      previous: [exchanged],
    });
    const verified = await verifyChain(chain.header, receive("cart.shop", "GET", "/x"), trust(), guard);
    expect(verified.initial?.kind).toBe("delegated");
    expect(verified.initial?.actor).toBe("shop.shop");
    expect(verified.initial?.subject).toBe("marissa");
  });

  it("carries ctx claims downstream with their author", async () => {
    const first = mintLink(shop.signer, {
      audience: "cart.shop",
      operation: normalizeOperation("GET", "/a"),
      ctx: { tenant: "acme" },
    });
    const second = mintLink(cart.signer, {
      audience: "payments.shop",
      operation: normalizeOperation("GET", "/b"),
      previous: first.elements,
    });
    const verified = await verifyChain(second.header, receive("payments.shop", "GET", "/b"), trust(), guard);
    expect(verified.links[0]?.iss).toBe("shop.shop");
    expect(verified.links[0]?.ctx).toEqual({ tenant: "acme" });
  });

  it("uses the cache for inner links without changing any decision", async () => {
    const view = trust();
    const cache = new VerifiedElementCache<VerifiedLink>(16);
    const first = mintLink(shop.signer, {
      audience: "cart.shop",
      operation: normalizeOperation("GET", "/a"),
    });
    const call = () =>
      mintLink(cart.signer, {
        audience: "payments.shop",
        operation: normalizeOperation("GET", "/b"),
        previous: first.elements,
      });
    await verifyChain(call().header, receive("payments.shop", "GET", "/b"), view, guard, { cache });
    expect(cache.size).toBe(1);
    await verifyChain(call().header, receive("payments.shop", "GET", "/b"), view, guard, { cache });
    // A new registry view without shop's key: the cached verification must not be used.
    const withoutShop = trust();
    withoutShop.removeKey(shop.signer.kid);
    await expect(
      verifyChain(call().header, receive("payments.shop", "GET", "/b"), withoutShop, guard, { cache }),
    ).rejects.toMatchObject({ code: "unknown_key", element: 0 });
  });

  it("keeps the chain header linear in depth (hash links, not nesting)", () => {
    let elements: readonly string[] = [];
    const services = [shop, cart];
    for (let depth = 0; depth < 10; depth++) {
      const from = services[depth % 2] ?? shop;
      const to = depth % 2 === 0 ? "cart.shop" : "shop.shop";
      elements = mintLink(from.signer, {
        audience: to,
        operation: normalizeOperation("POST", "/pay-for-order/12345"),
        previous: elements,
      }).elements;
    }
    // Every link after the first (which has no prv) has the same size, whatever the depth.
    const sizes = new Set(elements.slice(1).map((element) => element.length));
    expect(sizes.size).toBe(1);
    expect(elements.join("~").length).toBeLessThan(4500);
  });
});

describe("jti", () => {
  it("is 128 random bits, never repeated across refills of the random pool", () => {
    const ids = Array.from({ length: 2_000 }, newJti);
    expect(new Set(ids).size).toBe(ids.length);
    for (const id of ids) expect(Buffer.from(id, "base64url")).toHaveLength(16);
  });
});
