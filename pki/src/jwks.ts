/**
 * Public JWKs (already schema-checked by crds/jwk.ts) turned into node:crypto keys once, and the
 * keys of trusted token issuers indexed by (issuer, kid) for offline verification.
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from "node:crypto";
import { CustodyError } from "../../crds/src/errors.js";
import type { PublicJwk } from "../../crds/src/jwk.js";
import { algorithmForKey, type JwsAlgorithm } from "./jws.js";

export class JwkImportError extends CustodyError {
  declare readonly code: "invalid_jwk";
  constructor(message: string) {
    super("invalid_jwk", message);
  }
}

/** The key and its one algorithm; `where` names the key in the error. */
export function importPublicJwk(jwk: PublicJwk, where: string): { key: KeyObject; alg: JwsAlgorithm } {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: jwk as JsonWebKey, format: "jwk" });
  } catch {
    throw new JwkImportError(`${where}: the JWK does not import as a public key.`);
  }
  const alg = algorithmForKey(key);
  if (alg === undefined || alg !== jwk.alg) {
    throw new JwkImportError(`${where}: alg ${jwk.alg} does not match the key type.`);
  }
  return { key, alg };
}

export interface IssuerKey {
  readonly issuer: string;
  readonly kid: string | undefined;
  readonly alg: JwsAlgorithm;
  readonly key: KeyObject;
  /** When set, a token must be addressed to one of these. */
  readonly audiences: readonly string[] | undefined;
}

/** Keys of trusted issuers. A token without `kid` is accepted only from an issuer with one key. */
export class IssuerKeySet {
  readonly #issuers = new Map<string, IssuerKey[]>();

  add(issuer: string, jwks: readonly PublicJwk[], audiences?: readonly string[]): this {
    const keys = jwks.map((jwk, index) => {
      const { key, alg } = importPublicJwk(jwk, `issuer ${issuer} key ${jwk.kid ?? index}`);
      return { issuer, kid: jwk.kid, alg, key, audiences };
    });
    this.#issuers.set(issuer, keys);
    return this;
  }

  has(issuer: string): boolean {
    return this.#issuers.has(issuer);
  }

  keyFor(issuer: string, kid: string | undefined): IssuerKey | undefined {
    const keys = this.#issuers.get(issuer);
    if (keys === undefined) return undefined;
    if (kid === undefined) return keys.length === 1 ? keys[0] : undefined;
    return keys.find((key) => key.kid === kid);
  }
}
