/**
 * JWE for several recipients: Shop seals a card number for Payments and Cart; each opens it, a third
 * service cannot, and no change to any member yields a plaintext.
 */
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { describe, expect, it } from "vitest";
import { KeyServiceError } from "../src/keys/errors.js";
import {
  type GeneralJwe,
  MAX_JWE_LENGTH,
  MAX_PLAINTEXT_BYTES,
  MAX_RECIPIENTS,
  open,
  type RecipientKey,
  seal,
} from "../src/keys/jwe.js";
import { oneCharacterChanges, refusal, rsaService } from "./support/keys.js";
import { makeService } from "./support/mesh.js";

const shop = makeService("shop.shop", { edge: true });
const cart = makeService("cart.shop");
const payments = makeService("payments.shop");
const ledger = makeService("ledger.shop", { keyType: "ed25519" });

const recipient = (service: typeof cart) => ({
  serviceId: service.info.id,
  kid: service.signer.kid,
  publicKey: service.publicKey,
});
const card = new TextEncoder().encode('{"pan":"4111111111111111"}');

type Mutable = { -readonly [K in keyof GeneralJwe]: unknown } & Record<string, unknown>;
const copy = (jwe: GeneralJwe): Mutable => JSON.parse(JSON.stringify(jwe)) as Mutable;
const decode = (text: string) =>
  JSON.parse(Buffer.from(text, "base64url").toString()) as Record<string, unknown>;
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

function sealForBoth(options: Parameters<typeof seal>[2] = {}): GeneralJwe {
  return seal(card, [recipient(payments), recipient(cart)], options);
}

function x25519Recipient(kid: string): {
  recipient: { kid: string; publicKey: KeyObject };
  key: RecipientKey;
} {
  const pair = generateKeyPairSync("x25519");
  return { recipient: { kid, publicKey: pair.publicKey }, key: { kid, privateKey: pair.privateKey } };
}

describe("seal / open", () => {
  it("seals once for Payments and Cart; each opens it, Shop cannot", () => {
    const jwe = sealForBoth();
    expect(Object.keys(jwe)).toEqual(["protected", "recipients", "iv", "ciphertext", "tag"]);
    expect(decode(jwe.protected)).toEqual({ enc: "A256GCM" });
    expect(jwe.recipients.map((entry) => entry.header.kid)).toEqual([payments.signer.kid, cart.signer.kid]);
    for (const entry of jwe.recipients) {
      expect(Object.keys(entry.header)).toEqual(["alg", "kid", "epk"]);
      expect(entry.header.alg).toBe("ECDH-ES+A256KW");
      expect(entry.header.epk).toMatchObject({ kty: "EC", crv: "P-256" });
      expect(Object.keys(entry.header.epk).sort()).toEqual(["crv", "kty", "x", "y"]);
    }
    // A fresh ephemeral key per recipient.
    expect(jwe.recipients[0]?.header.epk.x).not.toBe(jwe.recipients[1]?.header.epk.x);

    const atPayments = open(jwe, payments.signer);
    expect(atPayments.plaintext).toEqual(Buffer.from(card));
    expect(atPayments.kid).toBe(payments.signer.kid);
    expect(open(JSON.stringify(jwe), cart.signer).plaintext).toEqual(Buffer.from(card));

    refusal(() => open(jwe, shop.signer), "not_a_recipient");
    // Shop claiming Payments' kid with its own key gets nothing either.
    refusal(
      () => open(jwe, { kid: payments.signer.kid, privateKey: shop.signer.privateKey }),
      "decryption_failed",
    );
  });

  it("is randomized: two seals of the same plaintext share nothing", () => {
    const a = sealForBoth();
    const b = sealForBoth();
    expect(a.iv).not.toBe(b.iv);
    expect(a.ciphertext).not.toBe(b.ciphertext);
    expect(a.recipients[0]?.encrypted_key).not.toBe(b.recipients[0]?.encrypted_key);
  });

  it("authenticates cty and aad and returns them", () => {
    const aad = Buffer.from("order 12345");
    const jwe = sealForBoth({ contentType: "application/json", aad });
    expect(decode(jwe.protected)).toEqual({ enc: "A256GCM", cty: "application/json" });
    const opened = open(jwe, payments.signer);
    expect(opened.contentType).toBe("application/json");
    expect(opened.aad).toEqual(aad);
    refusal(
      () => open({ ...jwe, aad: Buffer.from("order 12346").toString("base64url") }, cart.signer),
      "decryption_failed",
    );
    const { aad: _aad, ...withoutAad } = jwe;
    refusal(() => open(withoutAad, cart.signer), "decryption_failed");
  });

  it("seals empty and maximal plaintexts", () => {
    expect(open(seal(new Uint8Array(0), [recipient(cart)]), cart.signer).plaintext).toHaveLength(0);
    const big = new Uint8Array(MAX_PLAINTEXT_BYTES).fill(7);
    const jwe = seal(big, [recipient(cart)]);
    expect(JSON.stringify(jwe).length).toBeLessThan(MAX_JWE_LENGTH);
    expect(open(JSON.stringify(jwe), cart.signer).plaintext.equals(Buffer.from(big))).toBe(true);
  });

  it("works with X25519 recipients, alone or next to P-256 ones", () => {
    const a = x25519Recipient("x-a");
    const jwe = seal(card, [a.recipient, recipient(payments)]);
    expect(jwe.recipients[0]?.header.epk).toMatchObject({ kty: "OKP", crv: "X25519" });
    expect(open(jwe, a.key).plaintext).toEqual(Buffer.from(card));
    expect(open(jwe, payments.signer).plaintext).toEqual(Buffer.from(card));
  });

  it("opens with any key of a key ring (a rotation: current and previous)", () => {
    const previous = makeService("payments.shop");
    const jwe = seal(card, [recipient(previous)]);
    expect(open(jwe, [payments.signer, previous.signer]).kid).toBe(previous.signer.kid);
    refusal(() => open(jwe, [payments.signer]), "not_a_recipient");
  });
});

describe("seal refuses", () => {
  it("keys that cannot agree keys: Ed25519, RSA, other curves, private keys", () => {
    refusal(() => seal(card, [recipient(payments), recipient(ledger)]), "no_encryption_key");
    refusal(() => seal(card, [recipient(rsaService("legacy.shop"))]), "no_encryption_key");
    const p384 = generateKeyPairSync("ec", { namedCurve: "P-384" });
    refusal(() => seal(card, [{ kid: "p384", publicKey: p384.publicKey }]), "no_encryption_key");
    refusal(() => seal(card, [{ kid: "private", publicKey: payments.signer.privateKey }]), "unsupported_key");
  });

  it("no, duplicate or too many recipients, and oversized input", () => {
    refusal(() => seal(card, []), "no_recipients");
    refusal(() => seal(card, [recipient(cart), recipient(cart)]), "duplicate_recipient");
    const many = Array.from(
      { length: MAX_RECIPIENTS + 1 },
      (_, index) => x25519Recipient(`k${index}`).recipient,
    );
    refusal(() => seal(card, many), "too_many_recipients");
    expect(seal(card, many.slice(0, MAX_RECIPIENTS)).recipients).toHaveLength(MAX_RECIPIENTS);
    refusal(() => seal(new Uint8Array(MAX_PLAINTEXT_BYTES + 1), [recipient(cart)]), "too_large");
    refusal(() => seal(card, [recipient(cart)], { aad: new Uint8Array(9000) }), "too_large");
    refusal(() => seal(card, [recipient(cart)], { contentType: "json\r\nx: y" }), "malformed");
    refusal(() => seal("text" as never, [recipient(cart)]), "invalid_payload");
  });
});

describe("open fails closed on tampering", () => {
  const openers = [payments.signer, cart.signer];

  function expectRefusedByAll(jwe: unknown) {
    for (const key of openers) refusal(() => open(jwe, key));
  }

  it.each(["protected", "iv", "ciphertext", "tag"] as const)("every one-character change of %s", (member) => {
    const jwe = sealForBoth();
    let count = 0;
    for (const { text } of oneCharacterChanges(jwe[member])) {
      expectRefusedByAll({ ...jwe, [member]: text });
      count++;
    }
    expect(count).toBeGreaterThanOrEqual(jwe[member].length);
  });

  it("every one-character change of aad", () => {
    const jwe = sealForBoth({ aad: Buffer.from("order 12345") });
    for (const { text } of oneCharacterChanges(jwe.aad ?? "")) expectRefusedByAll({ ...jwe, aad: text });
  });

  it.each([0, 1])("every one-character change of recipient %i's encrypted_key and epk", (index) => {
    const jwe = sealForBoth();
    const owner = openers[index] as RecipientKey;
    const other = openers[1 - index] as RecipientKey;
    const entry = jwe.recipients[index];
    if (entry === undefined) throw new Error("no entry");
    const variants: unknown[] = [];
    for (const { text } of oneCharacterChanges(entry.encrypted_key))
      variants.push({ ...entry, encrypted_key: text });
    for (const coordinate of ["x", "y"] as const) {
      const epk = entry.header.epk as Record<string, string>;
      for (const { text } of oneCharacterChanges(epk[coordinate] ?? "")) {
        variants.push({ ...entry, header: { ...entry.header, epk: { ...epk, [coordinate]: text } } });
      }
    }
    expect(variants.length).toBeGreaterThan(250);
    for (const variant of variants) {
      const recipients = [...jwe.recipients];
      recipients[index] = variant as (typeof recipients)[number];
      const tampered = { ...jwe, recipients };
      expect(refusal(() => open(tampered, owner))).toMatch(/^(decryption_failed|malformed)$/);
      // The other recipient: the whole JWE is parsed strictly first, so a malformed entry (say, a
      // non-canonical base64url character) is refused for everyone; otherwise its own entry and the
      // content are intact and it opens the same plaintext (per-recipient headers are not covered by
      // the tag, so a change there only concerns that recipient).
      try {
        expect(open(tampered, other).plaintext).toEqual(Buffer.from(card));
      } catch (error) {
        expect(error).toMatchObject({ code: "malformed" });
      }
    }
  });

  it("swapped epks or encrypted keys between recipients, and recipient headers changed in meaning", () => {
    const jwe = sealForBoth();
    const [first, second] = jwe.recipients;
    if (first === undefined || second === undefined) throw new Error("two recipients expected");
    const swapEpk = {
      ...jwe,
      recipients: [{ ...first, header: { ...first.header, epk: second.header.epk } }, second],
    };
    refusal(() => open(swapEpk, payments.signer), "decryption_failed");
    const swapKey = { ...jwe, recipients: [{ ...first, encrypted_key: second.encrypted_key }, second] };
    refusal(() => open(swapKey, payments.signer), "decryption_failed");
    const withHeader = (header: Record<string, unknown>) => ({
      ...jwe,
      recipients: [{ ...first, header: { ...first.header, ...header } }, second],
    });
    refusal(() => open(withHeader({ kid: "someone-else" }), payments.signer), "not_a_recipient");
    refusal(() => open(withHeader({ kid: cart.signer.kid }), payments.signer), "malformed");
    for (const alg of ["ECDH-ES", "ECDH-ES+A128KW", "RSA-OAEP", "dir", "none"]) {
      refusal(() => open(withHeader({ alg }), payments.signer), "alg_not_allowed");
    }
    refusal(() => open(withHeader({ apu: "QWxpY2U" }), payments.signer), "malformed");
    refusal(
      () => open(withHeader({ epk: { ...first.header.epk, d: "AAAA" } }), payments.signer),
      "malformed",
    );
    refusal(
      () => open(withHeader({ epk: { kty: "OKP", crv: "X25519", x: first.header.epk.x } }), payments.signer),
      "decryption_failed",
    );
    refusal(
      () => open(withHeader({ epk: { ...first.header.epk, crv: "P-384" } }), payments.signer),
      "malformed",
    );
  });

  it("a protected header changed in meaning, refused before any decryption", () => {
    const jwe = sealForBoth();
    for (const header of [
      { enc: "A128GCM" },
      { enc: "A256CBC-HS512" },
      { enc: "A256GCM", zip: "DEF" },
      { enc: "A256GCM", crit: ["exp"] },
      { enc: "A256GCM", alg: "ECDH-ES+A256KW" },
    ]) {
      refusal(() => open({ ...jwe, protected: b64(header) }, payments.signer), "alg_not_allowed");
    }
    refusal(
      () => open({ ...jwe, protected: b64({ enc: "A256GCM", kid: "x" }) }, payments.signer),
      "malformed",
    );
    refusal(
      () => open({ ...jwe, protected: b64({ enc: "A256GCM", cty: "json" }) }, payments.signer),
      "decryption_failed",
    );
  });

  it("members outside the shape, truncated or missing members, and oversized input", () => {
    const jwe = sealForBoth();
    const base = copy(jwe);
    refusal(() => open({ ...base, unprotected: { alg: "ECDH-ES+A256KW" } }, cart.signer), "malformed");
    refusal(() => open({ ...base, header: {} }, cart.signer), "malformed");
    for (const member of ["protected", "recipients", "iv", "ciphertext", "tag"]) {
      const { [member]: _dropped, ...rest } = base;
      refusal(() => open(rest, cart.signer));
    }
    const shortTag = Buffer.from(jwe.tag, "base64url").subarray(0, 12).toString("base64url");
    refusal(() => open({ ...base, tag: shortTag }, cart.signer), "malformed");
    refusal(() => open({ ...base, recipients: [] }, cart.signer), "malformed");
    const many = Array.from({ length: MAX_RECIPIENTS + 1 }, () => jwe.recipients[0]);
    refusal(() => open({ ...base, recipients: many }, cart.signer), "too_many_recipients");
    refusal(() => open(" ".repeat(MAX_JWE_LENGTH + 1), cart.signer), "too_large");
    refusal(() => open("{not json", cart.signer), "malformed");
    refusal(() => open([jwe], cart.signer), "malformed");
    refusal(() => open(null, cart.signer), "malformed");
  });

  it("any one-character change of the serialized JWE either is refused or yields the same plaintext", () => {
    const text = JSON.stringify(sealForBoth());
    let refusedByBoth = 0;
    for (let position = 0; position < text.length; position++) {
      const original = text.charAt(position);
      const replacement = original === "A" ? "B" : "A";
      const tampered = text.slice(0, position) + replacement + text.slice(position + 1);
      let refusals = 0;
      for (const key of openers) {
        try {
          expect(open(tampered, key).plaintext).toEqual(Buffer.from(card));
        } catch (error) {
          if (!(error instanceof KeyServiceError)) throw error;
          refusals++;
        }
      }
      if (refusals === openers.length) refusedByBoth++;
    }
    // Only changes inside one recipient's entry leave the other able to open (and unchanged).
    expect(refusedByBoth).toBeGreaterThan(text.length / 3);
  });
});
