/** Recipient service ids → current encryption keys from the registry document. */
import { beforeAll, describe, expect, it } from "vitest";
import type { Registry } from "../../crds/src/registry-schema.js";
import { createCertificateAuthority } from "../../pki/src/index.js";
import { MAX_RECIPIENTS, open, seal } from "../src/keys/jwe.js";
import { RecipientDirectory } from "../src/keys/recipients.js";
import { refusal, rsaService } from "./support/keys.js";
import { makeService, TestIssuer, TOKEN_SERVICE } from "./support/mesh.js";
import { jwk, serviceEntry, testRegistry } from "./support/registry.js";

const shop = makeService("shop.shop", { edge: true });
const cart = makeService("cart.shop");
const payments = makeService("payments.shop");
const ledger = makeService("ledger.shop", { keyType: "ed25519" });
const legacy = rsaService("legacy.shop");
const tokenService = new TestIssuer(TOKEN_SERVICE);
const DAY = 86_400_000;

let trustBundle: string;
beforeAll(async () => {
  trustBundle = (await createCertificateAuthority()).certificate.pem;
});

function registry(overrides: Record<string, unknown> = {}): Registry {
  return testRegistry(
    { trustBundle, tokenService, services: [shop, cart, payments, ledger, legacy] },
    overrides,
  );
}

describe("RecipientDirectory", () => {
  it("resolves the Shop → Cart → Payments scenario: Shop seals for Payments and Cart through the registry", () => {
    const directory = new RecipientDirectory(registry());
    const recipients = directory.resolve(["payments.shop", "cart.shop"]);
    expect(recipients.map((recipient) => [recipient.serviceId, recipient.kid])).toEqual([
      ["payments.shop", payments.signer.kid],
      ["cart.shop", cart.signer.kid],
    ]);
    const jwe = seal(new TextEncoder().encode("4111111111111111"), recipients, { contentType: "text/plain" });
    expect(open(jwe, payments.signer).plaintext.toString()).toBe("4111111111111111");
    expect(open(jwe, cart.signer).plaintext.toString()).toBe("4111111111111111");
    refusal(() => open(jwe, shop.signer), "not_a_recipient");
  });

  it("refuses Ed25519 and RSA recipients, unknown services, duplicates and too many", () => {
    const directory = new RecipientDirectory(registry());
    refusal(() => directory.resolve(["payments.shop", "ledger.shop"]), "no_encryption_key");
    refusal(() => directory.resolve(["legacy.shop"]), "no_encryption_key");
    refusal(() => directory.resolve(["nobody.shop"]), "unknown_recipient");
    refusal(() => directory.resolve([]), "no_recipients");
    refusal(() => directory.resolve(["cart.shop", "cart.shop"]), "duplicate_recipient");
    const many = Array.from({ length: MAX_RECIPIENTS + 1 }, (_, index) => `s${index}.shop`);
    refusal(() => directory.resolve(many), "too_many_recipients");
  });

  it("seals to the current and, during a rotation, the next key; never to the previous one", () => {
    const next = makeService("cart.shop");
    const previous = makeService("cart.shop");
    const entry = serviceEntry(cart);
    const rotating = {
      ...entry,
      keys: [
        {
          kid: previous.signer.kid,
          status: "previous",
          notAfter: entry.keys[0]?.notAfter,
          jwk: jwk(previous.publicKey, previous.signer.kid),
        },
        ...entry.keys,
        {
          kid: next.signer.kid,
          status: "next",
          notAfter: entry.keys[0]?.notAfter,
          jwk: jwk(next.publicKey, next.signer.kid),
        },
      ],
    };
    const directory = new RecipientDirectory(registry({ services: [rotating, serviceEntry(payments)] }));
    expect(directory.recipientsOf("cart.shop").map((recipient) => recipient.kid)).toEqual([
      cart.signer.kid,
      next.signer.kid,
    ]);
    // Whichever key cart holds when the message arrives opens it; the previous key opens nothing.
    const sealed = seal(new Uint8Array([1, 2, 3]), directory.resolve(["cart.shop"]));
    expect(open(sealed, cart.signer).plaintext).toEqual(Buffer.from([1, 2, 3]));
    expect(open(sealed, next.signer).plaintext).toEqual(Buffer.from([1, 2, 3]));
    refusal(() => open(sealed, previous.signer), "not_a_recipient");
  });

  it("refuses a current key past its notAfter, and a key published for signing only", () => {
    let now = Date.now();
    const directory = new RecipientDirectory(registry(), { now: () => now });
    expect(directory.recipientsOf("cart.shop").map((recipient) => recipient.kid)).toEqual([cart.signer.kid]);
    now += 2 * DAY;
    refusal(() => directory.recipientsOf("cart.shop"), "unknown_recipient");

    const entry = serviceEntry(cart);
    const signingOnly = {
      ...entry,
      keys: entry.keys.map((key) => ({ ...key, jwk: { ...key.jwk, use: "sig" } })),
    };
    const marked = new RecipientDirectory(registry({ services: [signingOnly] }));
    refusal(() => marked.recipientsOf("cart.shop"), "no_encryption_key");
  });

  it("remembers the registry generation it was built from", () => {
    expect(new RecipientDirectory(registry()).generation).toBe(7);
  });
});
