/**
 * Public JWKs as the registry publishes them: an allow-list of exactly three key types, each with
 * its one algorithm (RFC 7518 / RFC 8037), and nothing else. Objects are strict, and the private
 * members of every key type are named explicitly so that a leaked private key is reported as
 * such, not as an "unknown field". Every key must also import as a public key with node:crypto,
 * which checks that an EC point is on the curve.
 */
import { createPublicKey, type JsonWebKey } from "node:crypto";
import { z } from "zod";
import { ONLY_WHEN_VALID, reportDuplicates } from "./schema-kit.js";

export const JWK_ALGORITHMS = ["ES256", "EdDSA", "RS256"] as const;
export type JwkAlgorithm = (typeof JWK_ALGORITHMS)[number];

/** RFC 7517/7518 members that only a private (or symmetric) key has. */
export const PRIVATE_JWK_MEMBERS = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] as const;

const MIN_RSA_MODULUS_BYTES = 256;
const MAX_RSA_MODULUS_BYTES = 512;
export const MAX_JWKS_KEYS = 8;

const privateMember = z
  .never({
    error:
      "is a private key member: the registry publishes public keys only (remove it, and rotate that key)",
  })
  .optional();
const privateMembers = Object.fromEntries(
  PRIVATE_JWK_MEMBERS.map((member) => [member, privateMember]),
) as Record<(typeof PRIVATE_JWK_MEMBERS)[number], typeof privateMember>;

export const jwkKidSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9_-]+$/, { error: "must contain only letters, digits, '-' and '_' (base64url)" });

/** Base64url (no padding) of exactly `bytes` bytes. */
function base64urlOf(bytes: number) {
  const length = Math.ceil((bytes * 4) / 3);
  return z
    .string()
    .regex(/^[A-Za-z0-9_-]*$/, { error: "must be base64url without padding" })
    .length(length, { error: `must be ${length} base64url characters (${bytes} bytes)` });
}

const common = {
  kid: jwkKidSchema.optional(),
  use: z.literal("sig").optional(),
  ...privateMembers,
};

const ecJwkSchema = z.strictObject({
  kty: z.literal("EC"),
  crv: z.literal("P-256"),
  alg: z.literal("ES256"),
  x: base64urlOf(32),
  y: base64urlOf(32),
  ...common,
});

const okpJwkSchema = z.strictObject({
  kty: z.literal("OKP"),
  crv: z.literal("Ed25519"),
  alg: z.literal("EdDSA"),
  x: base64urlOf(32),
  ...common,
});

const rsaJwkSchema = z.strictObject({
  kty: z.literal("RSA"),
  alg: z.literal("RS256"),
  n: z
    .string()
    .max(Math.ceil((MAX_RSA_MODULUS_BYTES * 4) / 3))
    .regex(/^[A-Za-z0-9_-]+$/, { error: "must be base64url without padding" })
    .superRefine((n, ctx) => {
      const modulus = Buffer.from(n, "base64url");
      if (modulus.length < MIN_RSA_MODULUS_BYTES || modulus[0] === 0) {
        ctx.addIssue({ code: "custom", message: "must be an RSA modulus of at least 2048 bits" });
      }
    }),
  e: z.literal("AQAB", { error: 'must be "AQAB" (public exponent 65537)' }),
  ...common,
});

export const jwkSchema = z
  .discriminatedUnion("kty", [ecJwkSchema, okpJwkSchema, rsaJwkSchema], {
    error: (issue) =>
      issue.code === "invalid_union"
        ? "must be EC (P-256, ES256), OKP (Ed25519, EdDSA) or RSA (RS256)"
        : undefined,
  })
  .superRefine((jwk, ctx) => {
    const problem = publicKeyProblem(jwk);
    if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
  }, ONLY_WHEN_VALID);

export type PublicJwk = z.output<typeof jwkSchema>;

/** A JWK Set whose keys all have distinct `kid`s, so a token's kid picks exactly one key. */
export const jwksSchema = z.strictObject({
  keys: z
    .array(jwkSchema)
    .min(1)
    .max(MAX_JWKS_KEYS)
    .superRefine((keys, ctx) => {
      keys.forEach((key, index) => {
        if (key.kid === undefined) {
          ctx.addIssue({ code: "custom", path: [index, "kid"], message: "is required in a key set" });
        }
      });
      reportDuplicates(
        ctx,
        keys,
        (key) => key.kid,
        (kid, _first, index) => ({ path: [index, "kid"], message: `"${kid}" is used by another key` }),
      );
    }),
});

export type Jwks = z.output<typeof jwksSchema>;

function publicKeyProblem(jwk: PublicJwk): string | undefined {
  try {
    const key = createPublicKey({ key: { ...jwk } as JsonWebKey, format: "jwk" });
    const expected = jwk.kty === "EC" ? "ec" : jwk.kty === "OKP" ? "ed25519" : "rsa";
    if (key.type !== "public" || key.asymmetricKeyType !== expected) return "is not a usable public key";
    const bits = key.asymmetricKeyDetails?.modulusLength;
    if (jwk.kty === "RSA" && (bits === undefined || bits < MIN_RSA_MODULUS_BYTES * 8)) {
      return "must be an RSA key of at least 2048 bits";
    }
    return undefined;
  } catch {
    return jwk.kty === "EC" ? "is not a point on the P-256 curve" : "is not a valid public key";
  }
}
