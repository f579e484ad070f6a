import { createHmac, generateKeyPairSync, type KeyObject } from "node:crypto";
import { describe, expect, it } from "vitest";
import { type JwsAlgorithm, signCompactJws } from "../src/jws.js";
import { JwtError, type JwtErrorCode, type JwtKey, MAX_JWT_BYTES, verifyJwt } from "../src/jwt.js";

const ISSUER = "https://login.example";
const now = 1_800_000_000;
const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
const other = generateKeyPairSync("ec", { namedCurve: "P-256" });

const keys: Record<string, JwtKey> = { k1: { alg: "ES256", key: publicKey, audiences: ["shop"] } };
const options = {
  keyFor: (issuer: string, kid: string | undefined) =>
    issuer === ISSUER && kid !== undefined ? keys[kid] : undefined,
  algorithms: ["ES256", "RS256"] as JwsAlgorithm[],
  nowSeconds: now,
  skewSeconds: 30,
  refusedTypes: ["custody+jwt"],
};

function token(
  claims: Record<string, unknown> = {},
  header: Record<string, unknown> = {},
  key: KeyObject = privateKey,
) {
  return signCompactJws(
    { alg: "ES256", kid: "k1", ...header },
    { iss: ISSUER, sub: "marissa", aud: "shop", scope: "a b", iat: now, exp: now + 60, ...claims },
    key,
  );
}

function code(text: string): JwtErrorCode {
  try {
    verifyJwt(text, options);
  } catch (error) {
    if (error instanceof JwtError) return error.code;
    throw error;
  }
  throw new Error("expected a JwtError");
}

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

describe("verifyJwt", () => {
  it("accepts a good token and reads scopes and audiences", () => {
    const verified = verifyJwt(token(), options);
    expect(verified).toMatchObject({
      issuer: ISSUER,
      subject: "marissa",
      scopes: ["a", "b"],
      audiences: ["shop"],
      expiresAt: now + 60,
    });
  });

  it.each<[string, () => string, JwtErrorCode]>([
    [
      "alg none",
      () => `${b64({ alg: "none" })}.${b64({ iss: ISSUER, sub: "x", exp: now + 60 })}.`,
      "alg_not_allowed",
    ],
    [
      "HS256 keyed with the public key",
      () => {
        const input = `${b64({ alg: "HS256", kid: "k1" })}.${b64({ iss: ISSUER, sub: "x", aud: "shop", exp: now + 60 })}`;
        const mac = createHmac("sha256", publicKey.export({ format: "pem", type: "spki" }))
          .update(input)
          .digest("base64url");
        return `${input}.${mac}`;
      },
      "alg_not_allowed",
    ],
    [
      "RS256 header over an EC key",
      () => token().replace(/^[^.]+/, b64({ alg: "RS256", kid: "k1" })),
      "bad_signature",
    ],
    ["a key in the header (jwk)", () => token({}, { jwk: { kty: "EC" } }), "malformed"],
    ["a key URL in the header (jku)", () => token({}, { jku: "https://evil.example/jwks" }), "malformed"],
    ["crit", () => token({}, { crit: ["exp"] }), "malformed"],
    ["an untrusted issuer", () => token({ iss: "https://evil.example" }), "untrusted_issuer"],
    ["an unknown kid", () => token({}, { kid: "k2" }), "untrusted_issuer"],
    ["another key's signature", () => token({}, {}, other.privateKey), "bad_signature"],
    ["expired beyond the skew", () => token({ exp: now - 31 }), "expired"],
    ["no exp", () => token({ exp: undefined }), "malformed"],
    ["iat in the future", () => token({ iat: now + 31 }), "not_yet_valid"],
    ["nbf in the future", () => token({ nbf: now + 31 }), "not_yet_valid"],
    ["another audience", () => token({ aud: ["elsewhere"] }), "wrong_audience"],
    ["a call-chain link", () => token({}, { typ: "custody+JWT" }), "wrong_type"],
    ["an empty sub", () => token({ sub: "" }), "malformed"],
    ["scope of the wrong type", () => token({ scope: 7 }), "malformed"],
    ["a token over the size bound", () => token({ pad: "x".repeat(MAX_JWT_BYTES) }), "malformed"],
    ["not a JWS", () => "a.b", "malformed"],
  ])("refuses %s", (_what, make, expected) => {
    expect(code(make())).toBe(expected);
  });

  it("accepts expiry within the clock skew", () => {
    expect(verifyJwt(token({ exp: now - 29 }), options).expiresAt).toBe(now - 29);
  });
});
