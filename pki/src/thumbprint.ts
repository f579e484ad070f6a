/**
 * A public key as the registry publishes it: a JWK with its algorithm, and its RFC 7638 thumbprint
 * as `kid`. The kid is derived from the key, so one kid can never name two keys, and every party
 * that sees the key computes the same kid.
 */
import { createHash, createPublicKey, type KeyObject } from "node:crypto";
import type { PublicJwk } from "../../crds/src/jwk.js";
import { KeyError } from "./errors.js";

export interface PublishedKey {
  readonly kid: string;
  readonly jwk: PublicJwk;
}

/** The JWK (with alg and kid) and RFC 7638 kid of a P-256, Ed25519 or RSA key (public or private). */
export function publishedKeyOf(key: KeyObject): PublishedKey {
  const publicKey = key.type === "public" ? key : createPublicKey(key);
  const exported = publicKey.export({ format: "jwk" });
  const { kty, crv, x, y, n, e } = exported;
  // RFC 7638 §3.2: the required members only, in lexicographic order, no whitespace.
  if (kty === "EC" && crv === "P-256" && typeof x === "string" && typeof y === "string") {
    const kid = thumbprint({ crv, kty, x, y });
    return { kid, jwk: { kty, crv, alg: "ES256", x, y, kid } };
  }
  if (kty === "OKP" && crv === "Ed25519" && typeof x === "string") {
    const kid = thumbprint({ crv, kty, x });
    return { kid, jwk: { kty, crv, alg: "EdDSA", x, kid } };
  }
  if (kty === "RSA" && typeof n === "string" && e === "AQAB") {
    const kid = thumbprint({ e, kty, n });
    return { kid, jwk: { kty, alg: "RS256", n, e, kid } };
  }
  throw new KeyError("unsupported_key", "only P-256, Ed25519 and RSA (e = 65537) keys can be published.");
}

function thumbprint(members: Record<string, string>): string {
  return createHash("sha256").update(JSON.stringify(members)).digest("base64url");
}
