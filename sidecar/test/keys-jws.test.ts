/** Detached JWS: sign with the service key, verify through the registry, and nothing else verifies. */
import { generateKeyPairSync, sign } from "node:crypto";
import { describe, expect, it } from "vitest";
import { verifyJwt } from "../../pki/src/jwt.js";
import { normalizeOperation } from "../src/chain/normalize.js";
import { verifyChain } from "../src/chain/verify.js";
import type { JsonObject } from "../src/keys/canonical-json.js";
import {
  DETACHED_JWS_TYPE,
  MAX_SIGNED_PAYLOAD_BYTES,
  signDetached,
  verifyDetached,
} from "../src/keys/detached-jws.js";
import { MemoryReplayGuard } from "../src/replay/memory.js";
import { oneCharacterChanges, refusal, rsaService } from "./support/keys.js";
import { makeService, TestTrust } from "./support/mesh.js";

const shop = makeService("shop.shop", { edge: true });
const cart = makeService("cart.shop", { keyType: "ed25519" });
const payments = makeService("payments.shop");
const legacy = rsaService("legacy.shop");
const trust = new TestTrust().addService(shop).addService(cart).addService(payments).addService(legacy);

const order = { orderId: "12345", amount: { currency: "EUR", value: 4200 }, items: ["book", "pen"] };
const bytes = new TextEncoder().encode("card=4111111111111111\n");
const now = () => Math.floor(Date.now() / 1000);

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
const headerOf = (jws: string) =>
  JSON.parse(Buffer.from(jws.split(".")[0] ?? "", "base64url").toString()) as Record<string, unknown>;

/** A JWS with any header, signed by `signer` over RFC 7797's input: what a hostile signer could produce. */
function forge(
  header: Record<string, unknown>,
  payload: Uint8Array,
  privateKey = payments.signer.privateKey,
) {
  const headerPart = b64(header);
  const data = Buffer.concat([Buffer.from(`${headerPart}.`), payload]);
  const signature = sign("sha256", data, { key: privateKey, dsaEncoding: "ieee-p1363" });
  return `${headerPart}..${signature.toString("base64url")}`;
}

const validHeader = (extra: Record<string, unknown> = {}) => ({
  alg: "ES256",
  kid: payments.signer.kid,
  typ: DETACHED_JWS_TYPE,
  iat: now(),
  b64: false,
  crit: ["b64"],
  ...extra,
});

describe("signDetached / verifyDetached round trips", () => {
  it.each([
    ["ES256", payments],
    ["EdDSA", cart],
    ["RS256", legacy],
  ] as const)("bytes and JSON with %s", (alg, service) => {
    const options = { algorithms: ["ES256", "EdDSA", "RS256"] as const };
    const onBytes = signDetached(service.signer, bytes);
    expect(onBytes).toMatch(/^[A-Za-z0-9_-]+\.\.[A-Za-z0-9_-]+$/);
    expect(verifyDetached(onBytes, bytes, trust, options)).toMatchObject({
      serviceId: service.info.id,
      kid: service.signer.kid,
      alg,
      payloadType: "bytes",
    });
    const onJson = signDetached(service.signer, order);
    expect(verifyDetached(onJson, order, trust, options)).toMatchObject({
      serviceId: service.info.id,
      payloadType: "json",
    });
  });

  it("has the fixed header: typ, cty for JSON, iat, b64 false with crit", () => {
    const jws = signDetached(payments.signer, order, { nowSeconds: 1_700_000_000 });
    expect(headerOf(jws)).toEqual({
      alg: "ES256",
      kid: payments.signer.kid,
      typ: "custody-detached+jws",
      cty: "json",
      iat: 1_700_000_000,
      b64: false,
      crit: ["b64"],
    });
    expect(headerOf(signDetached(payments.signer, bytes))).not.toHaveProperty("cty");
  });

  it("verifies JSON that an intermediary re-serialized (other member order, spacing, number form)", () => {
    const jws = signDetached(payments.signer, order);
    const reserialized = JSON.parse(
      '{ "items": ["book", "pen"], "amount": { "value": 4200.0, "currency": "EUR" }, "orderId": "12345" }',
    );
    expect(verifyDetached(jws, reserialized, trust).serviceId).toBe("payments.shop");
  });

  it("returns the signing time and enforces a maximum age when asked", () => {
    const jws = signDetached(payments.signer, bytes, { nowSeconds: 1_000 });
    expect(verifyDetached(jws, bytes, trust).issuedAt).toBe(1_000);
    expect(verifyDetached(jws, bytes, trust, { maxAgeSeconds: 60, nowSeconds: 1_030 }).issuedAt).toBe(1_000);
    refusal(() => verifyDetached(jws, bytes, trust, { maxAgeSeconds: 60, nowSeconds: 1_070 }), "expired");
    refusal(
      () => verifyDetached(jws, bytes, trust, { maxAgeSeconds: 60, nowSeconds: 990 }),
      "issued_in_future",
    );
  });

  it("checks the expected signer", () => {
    const jws = signDetached(shop.signer, order);
    expect(verifyDetached(jws, order, trust, { expectedSigner: "shop.shop" }).serviceId).toBe("shop.shop");
    refusal(
      () => verifyDetached(jws, order, trust, { expectedSigner: "payments.shop" }),
      "unexpected_signer",
    );
  });
});

describe("verifyDetached refuses", () => {
  it("a changed payload", () => {
    const onBytes = signDetached(payments.signer, bytes);
    const changed = Uint8Array.from(bytes);
    changed[5] = (changed[5] ?? 0) ^ 1;
    refusal(() => verifyDetached(onBytes, changed, trust), "bad_signature");
    refusal(() => verifyDetached(onBytes, bytes.subarray(1), trust), "bad_signature");
    const onJson = signDetached(payments.signer, order);
    refusal(() => verifyDetached(onJson, { ...order, orderId: "12346" }, trust), "bad_signature");
    refusal(() => verifyDetached(onJson, { ...order, extra: true }, trust), "bad_signature");
  });

  it("bytes for a JSON signature and the reverse, even when the bytes are the canonical JSON", () => {
    const onJson = signDetached(payments.signer, { a: 1 });
    refusal(() => verifyDetached(onJson, Buffer.from('{"a":1}'), trust), "wrong_payload_type");
    const onBytes = signDetached(payments.signer, Buffer.from('{"a":1}'));
    refusal(() => verifyDetached(onBytes, { a: 1 }, trust), "wrong_payload_type");
  });

  it("a changed header (re-encoded with another iat, or an extra parameter)", () => {
    const jws = signDetached(payments.signer, bytes);
    const [, , signature] = jws.split(".");
    const header = headerOf(jws);
    refusal(
      () => verifyDetached(`${b64({ ...header, iat: 1 })}..${signature}`, bytes, trust),
      "bad_signature",
    );
    refusal(
      () => verifyDetached(`${b64({ ...header, x5u: "https://x" })}..${signature}`, bytes, trust),
      "malformed",
    );
    // The same header, members in another order: other bytes, so the signature does not hold.
    const reordered = Object.fromEntries(Object.entries(header).reverse());
    refusal(() => verifyDetached(`${b64(reordered)}..${signature}`, bytes, trust), "bad_signature");
  });

  it("every one-character change of the JWS text", () => {
    const jws = signDetached(payments.signer, order);
    let count = 0;
    for (const { text } of oneCharacterChanges(jws)) {
      if (text.includes("..") === false) continue; // a changed '.' is covered by the malformed cases
      refusal(() => verifyDetached(text, order, trust));
      count++;
    }
    expect(count).toBeGreaterThan(100);
  });

  it("a signature by another service's key under this service's kid", () => {
    const forged = forge(validHeader(), bytes, shop.signer.privateKey);
    refusal(() => verifyDetached(forged, bytes, trust), "bad_signature");
    // Payments' kid with Cart's Ed25519 signature: the key's algorithm decides, not the header.
    const ed = signDetached(cart.signer, bytes);
    const [, , signature] = ed.split(".");
    refusal(
      () => verifyDetached(`${b64(validHeader({ alg: "EdDSA" }))}..${signature}`, bytes, trust),
      "alg_not_allowed",
    );
  });

  it("an unknown or withdrawn key", () => {
    const stranger = makeService("stranger.shop");
    refusal(() => verifyDetached(signDetached(stranger.signer, bytes), bytes, trust), "unknown_key");
    const local = new TestTrust().addService(payments);
    const jws = signDetached(payments.signer, bytes);
    local.removeKey(payments.signer.kid);
    refusal(() => verifyDetached(jws, bytes, local), "unknown_key");
  });

  it("alg none, HMAC, RS256 unless allowed, and alg/key mismatches", () => {
    refusal(() => verifyDetached(`${b64(validHeader({ alg: "none" }))}..`, bytes, trust), "alg_not_allowed");
    refusal(
      () => verifyDetached(`${b64(validHeader({ alg: "none" }))}..AAAA`, bytes, trust),
      "alg_not_allowed",
    );
    refusal(
      () => verifyDetached(`${b64(validHeader({ alg: "HS256" }))}..AAAA`, bytes, trust),
      "alg_not_allowed",
    );
    refusal(
      () => verifyDetached(`${b64(validHeader({ alg: "ES384" }))}..AAAA`, bytes, trust),
      "alg_not_allowed",
    );
    const rsa = signDetached(legacy.signer, bytes);
    refusal(() => verifyDetached(rsa, bytes, trust), "alg_not_allowed");
    // RS256 header over an EC key (allowed list includes RS256): the key's type decides.
    const forged = forge(validHeader({ alg: "RS256" }), bytes);
    refusal(
      () => verifyDetached(forged, bytes, trust, { algorithms: ["ES256", "RS256"] }),
      "alg_not_allowed",
    );
  });

  it("typ custody+jwt, a missing typ, and any other typ", () => {
    refusal(
      () => verifyDetached(forge(validHeader({ typ: "custody+jwt" }), bytes), bytes, trust),
      "wrong_type",
    );
    const { typ: _typ, ...untyped } = validHeader();
    refusal(() => verifyDetached(forge(untyped, bytes), bytes, trust), "wrong_type");
    refusal(() => verifyDetached(forge(validHeader({ typ: "JWT" }), bytes), bytes, trust), "wrong_type");
  });

  it("b64 encoded payloads, other crit values, attached payloads and non-canonical base64url", () => {
    refusal(() => verifyDetached(forge(validHeader({ b64: true }), bytes), bytes, trust), "malformed");
    const { b64: _b, crit: _c, ...plain } = validHeader();
    refusal(() => verifyDetached(forge(plain, bytes), bytes, trust), "malformed");
    refusal(
      () => verifyDetached(forge(validHeader({ crit: ["b64", "exp"] }), bytes), bytes, trust),
      "malformed",
    );
    const jws = signDetached(payments.signer, bytes);
    const [header, , signature] = jws.split(".");
    refusal(
      () =>
        verifyDetached(`${header}.${Buffer.from(bytes).toString("base64url")}.${signature}`, bytes, trust),
      "malformed",
    );
    refusal(() => verifyDetached(`${header}..${signature}=`, bytes, trust), "malformed");
    refusal(() => verifyDetached(`${header}.${signature}`, bytes, trust), "malformed");
    refusal(() => verifyDetached("x".repeat(5000), bytes, trust), "too_large");
  });
});

describe("signDetached refuses", () => {
  it("keys it cannot sign with and payloads that are not bytes or a JSON object", () => {
    const p384 = generateKeyPairSync("ec", { namedCurve: "P-384" });
    refusal(() => signDetached({ kid: "k", privateKey: p384.privateKey }, bytes), "unsupported_key");
    refusal(() => signDetached({ kid: "k", privateKey: payments.publicKey }, bytes), "unsupported_key");
    refusal(() => signDetached(payments.signer, new Uint8Array(MAX_SIGNED_PAYLOAD_BYTES + 1)), "too_large");
    refusal(() => signDetached(payments.signer, { big: "x".repeat(MAX_SIGNED_PAYLOAD_BYTES) }), "too_large");
    refusal(() => signDetached(payments.signer, { n: Number.NaN }), "invalid_payload");
    refusal(() => signDetached(payments.signer, ["a"] as never), "invalid_payload");
    refusal(() => signDetached(payments.signer, "text" as never), "invalid_payload");
  });
});

describe("nothing signed here passes as a call-chain link or a token", () => {
  const linkClaims = () => ({
    iss: "payments.shop",
    aud: "cart.shop",
    op: "POST /refund",
    jti: "AAAAAAAAAAAAAAAAAAAAAA",
    iat: now(),
    exp: now() + 10,
  });

  /** The signature over a JSON object reattached every way a verifier might read it. */
  function reattachments(claims: JsonObject): string[] {
    const jws = signDetached(payments.signer, claims);
    const [header, , signature] = jws.split(".");
    const canonical = Buffer.from(JSON.stringify(Object.fromEntries(Object.entries(claims).sort())));
    return [
      `${header}.${canonical.toString("base64url")}.${signature}`,
      `${header}.${canonical.toString("utf8")}.${signature}`,
    ];
  }

  it("is refused by the chain verifier", async () => {
    for (const element of reattachments(linkClaims())) {
      await expect(
        verifyChain(
          element,
          {
            self: "cart.shop",
            operation: normalizeOperation("POST", "/refund"),
            bodyHash: undefined,
            nowSeconds: now(),
          },
          trust,
          new MemoryReplayGuard(),
        ),
      ).rejects.toMatchObject({ code: expect.stringMatching(/^(wrong_type|malformed)$/) });
    }
  });

  it("is refused as a JWT even by a verifier that trusts the service key", () => {
    const claims = { iss: "payments.shop", sub: "payments.shop", aud: "cart.shop", exp: now() + 60 };
    for (const token of reattachments(claims)) {
      expect(() =>
        verifyJwt(token, {
          keyFor: () => ({ alg: "ES256", key: payments.publicKey }),
          algorithms: ["ES256"],
          nowSeconds: now(),
          skewSeconds: 5,
        }),
      ).toThrow(expect.objectContaining({ code: "malformed" }));
    }
  });
});
