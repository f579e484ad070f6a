import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { VerifiedElementCache } from "../src/chain/cache.js";
import { sha256Base64url } from "../src/chain/jws.js";
import { mintLink } from "../src/chain/mint.js";
import { normalizeOperation } from "../src/chain/normalize.js";
import { type VerifiedLink, verifyChain } from "../src/chain/verify.js";
import { MemoryReplayGuard } from "../src/replay/memory.js";
import { makeService, TestIssuer, TestTrust, USER_IDP } from "./support/mesh.js";

const shop = makeService("shop.shop", { edge: true });
const cart = makeService("cart.shop", { keyType: "ed25519" });
const idp = new TestIssuer(USER_IDP);
const trust = new TestTrust().addService(shop).addService(cart).addIssuer(idp);
const body = '{"card":"4444"}';

/** user token → shop → cart → payments: three elements, both link algorithms. */
function validChain(): string {
  const first = mintLink(shop.signer, {
    audience: "cart.shop",
    operation: normalizeOperation("POST", "/cart/confirm"),
    previous: [idp.token({ sub: "marissa", aud: "shop.shop", scope: "shop.customer" })],
  });
  return mintLink(cart.signer, {
    audience: "payments.shop",
    operation: normalizeOperation("POST", "/pay-for-order/12345"),
    body,
    previous: first.elements,
  }).header;
}

const verifyAtPayments = (header: string, cache?: VerifiedElementCache<VerifiedLink>) =>
  verifyChain(
    header,
    {
      self: "payments.shop",
      operation: normalizeOperation("POST", "/pay-for-order/12345"),
      bodyHash: sha256Base64url(body),
      nowSeconds: Math.floor(Date.now() / 1000),
    },
    trust,
    new MemoryReplayGuard(),
    cache === undefined ? {} : { cache },
  );

describe("chain integrity (property)", () => {
  const header = validChain();

  it("the unmodified chain verifies", async () => {
    await expect(verifyAtPayments(header)).resolves.toBeDefined();
  });

  it("any single-byte change anywhere in the chain is refused, with or without a warm cache", async () => {
    const cache = new VerifiedElementCache<VerifiedLink>(64);
    await verifyAtPayments(header, cache);
    await fc.assert(
      fc.asyncProperty(
        fc.nat({ max: header.length - 1 }),
        fc.integer({ min: 0, max: 255 }),
        async (position, byte) => {
          const replacement = String.fromCharCode(byte);
          fc.pre(header[position] !== replacement);
          const tampered = `${header.slice(0, position)}${replacement}${header.slice(position + 1)}`;
          await expect(verifyAtPayments(tampered)).rejects.toHaveProperty("code");
          await expect(verifyAtPayments(tampered, cache)).rejects.toHaveProperty("code");
        },
      ),
      { numRuns: 2000 },
    );
  });
});
