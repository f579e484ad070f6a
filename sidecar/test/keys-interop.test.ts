/**
 * Interoperability with an independent JOSE implementation (jose, a dev dependency used only here):
 * what Custody seals, jose opens and the reverse; what Custody signs, jose verifies and the reverse.
 */
import { generateKeyPairSync } from "node:crypto";
import {
  FlattenedSign,
  flattenedVerify,
  GeneralEncrypt,
  type GeneralJWE,
  generalDecrypt,
  jwtVerify,
} from "jose";
import { describe, expect, it } from "vitest";
import { canonicalJson } from "../src/keys/canonical-json.js";
import { DETACHED_JWS_TYPE, signDetached, verifyDetached } from "../src/keys/detached-jws.js";
import { type GeneralJwe, open, seal } from "../src/keys/jwe.js";
import { makeService, TestTrust } from "./support/mesh.js";

const cart = makeService("cart.shop");
const payments = makeService("payments.shop");
const ledger = makeService("ledger.shop", { keyType: "ed25519" });
const trust = new TestTrust().addService(cart).addService(payments).addService(ledger);
const card = new TextEncoder().encode('{"pan":"4111111111111111"}');
/** The JSON a peer would receive (jose's type has mutable arrays). */
const onTheWire = (jwe: GeneralJwe) => JSON.parse(JSON.stringify(jwe)) as GeneralJWE;
const recipient = (service: typeof cart) => ({ kid: service.signer.kid, publicKey: service.publicKey });

describe("JWE interop with jose", () => {
  it("jose's generalDecrypt opens what seal produced, for each recipient", async () => {
    const aad = new TextEncoder().encode("order 12345");
    const jwe = seal(card, [recipient(payments), recipient(cart)], { contentType: "json", aad });
    for (const service of [payments, cart]) {
      const result = await generalDecrypt(onTheWire(jwe), service.signer.privateKey, {
        keyManagementAlgorithms: ["ECDH-ES+A256KW"],
        contentEncryptionAlgorithms: ["A256GCM"],
      });
      expect(Buffer.from(result.plaintext)).toEqual(Buffer.from(card));
      expect(result.protectedHeader).toEqual({ enc: "A256GCM", cty: "json" });
      expect(result.unprotectedHeader).toMatchObject({ alg: "ECDH-ES+A256KW", kid: service.signer.kid });
      expect(Buffer.from(result.additionalAuthenticatedData ?? new Uint8Array())).toEqual(Buffer.from(aad));
    }
  });

  it("jose opens X25519 recipients too", async () => {
    const pair = generateKeyPairSync("x25519");
    const jwe = seal(card, [{ kid: "x", publicKey: pair.publicKey }]);
    const result = await generalDecrypt(onTheWire(jwe), pair.privateKey);
    expect(Buffer.from(result.plaintext)).toEqual(Buffer.from(card));
  });

  it("open opens what jose's GeneralEncrypt produced", async () => {
    const encrypt = new GeneralEncrypt(card).setProtectedHeader({ enc: "A256GCM" });
    for (const service of [payments, cart]) {
      encrypt
        .addRecipient(service.publicKey)
        .setUnprotectedHeader({ alg: "ECDH-ES+A256KW", kid: service.signer.kid });
    }
    const jwe = await encrypt.encrypt();
    expect(open(jwe, payments.signer).plaintext).toEqual(Buffer.from(card));
    expect(open(JSON.stringify(jwe), cart.signer).plaintext).toEqual(Buffer.from(card));
  });
});

describe("detached JWS interop with jose", () => {
  const order = { orderId: "12345", amount: 4200 };

  it("jose's flattenedVerify (RFC 7797, detached payload) verifies what signDetached produced", async () => {
    for (const [service, payload, bytes] of [
      [payments, card, card],
      [ledger, card, card],
      [payments, order, new TextEncoder().encode(canonicalJson(order))],
    ] as const) {
      const [protectedHeader = "", , signature = ""] = signDetached(service.signer, payload).split(".");
      const result = await flattenedVerify(
        { protected: protectedHeader, payload: bytes, signature },
        service.publicKey,
      );
      expect(result.protectedHeader).toMatchObject({ typ: DETACHED_JWS_TYPE, b64: false, crit: ["b64"] });
      expect(Buffer.from(result.payload)).toEqual(Buffer.from(bytes));
    }
  });

  it("verifyDetached verifies what jose's FlattenedSign produced with Custody's header", async () => {
    const jws = await new FlattenedSign(card)
      .setProtectedHeader({
        alg: "ES256",
        kid: payments.signer.kid,
        typ: DETACHED_JWS_TYPE,
        iat: Math.floor(Date.now() / 1000),
        b64: false,
        crit: ["b64"],
      })
      .sign(payments.signer.privateKey);
    expect(verifyDetached(`${jws.protected}..${jws.signature}`, card, trust).serviceId).toBe("payments.shop");
  });

  it("jose's jwtVerify does not accept a signature reattached to its claims", async () => {
    const claims = { iss: "payments.shop", sub: "payments.shop", exp: Math.floor(Date.now() / 1000) + 60 };
    const [header, , signature] = signDetached(payments.signer, claims).split(".");
    const reattached = `${header}.${Buffer.from(canonicalJson(claims)).toString("base64url")}.${signature}`;
    await expect(jwtVerify(reattached, payments.publicKey)).rejects.toThrow();
  });
});
