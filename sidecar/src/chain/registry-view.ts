/**
 * The registry document (crds/) seen as a TrustView: JWKs imported once per registry generation into
 * node:crypto keys, indexed for O(1) lookups on the hot path.
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from "node:crypto";
import { CustodyError } from "../../../crds/src/errors.js";
import type { PublicJwk } from "../../../crds/src/jwk.js";
import type { Registry } from "../../../crds/src/registry-schema.js";
import { algorithmForKey, type LinkAlgorithm } from "./jws.js";
import type { IssuerKey, ServiceInfo, ServiceKey, TrustView } from "./trust.js";

export class RegistryViewError extends CustodyError {}

interface TimedServiceKey extends ServiceKey {
  readonly notAfterMs: number;
}

function importJwk(jwk: PublicJwk, where: string): { key: KeyObject; alg: LinkAlgorithm } {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: jwk as JsonWebKey, format: "jwk" });
  } catch {
    throw new RegistryViewError("invalid_registry_key", `${where}: the JWK does not import as a public key.`);
  }
  const alg = algorithmForKey(key);
  if (alg === undefined || alg !== jwk.alg) {
    throw new RegistryViewError(
      "invalid_registry_key",
      `${where}: alg ${jwk.alg} does not match the key type.`,
    );
  }
  return { key, alg };
}

export class RegistryTrustView implements TrustView {
  readonly tokenServiceIssuer: string;
  readonly generation: number;
  readonly #keys = new Map<string, TimedServiceKey>();
  readonly #services = new Map<string, ServiceInfo>();
  readonly #issuers = new Map<string, IssuerKey[]>();
  readonly #now: () => number;

  /** Throws RegistryViewError when the registry cannot be trusted as a whole (keep the last good one). */
  constructor(registry: Registry, options: { now?: () => number } = {}) {
    this.#now = options.now ?? Date.now;
    this.generation = registry.generation;
    this.tokenServiceIssuer = registry.tokenService.issuer;
    for (const service of registry.services) {
      this.#services.set(service.id, {
        id: service.id,
        environment: service.environment,
        claims: service.claims,
        edge: service.edge,
      });
      for (const entry of service.keys) {
        const other = this.#keys.get(entry.kid);
        if (other !== undefined) {
          // One kid naming keys of two services would let a lookup pick the wrong owner.
          throw new RegistryViewError(
            "duplicate_kid",
            `kid ${entry.kid} is published by both ${other.serviceId} and ${service.id}.`,
          );
        }
        const { key, alg } = importJwk(entry.jwk, `services ${service.id} key ${entry.kid}`);
        this.#keys.set(entry.kid, {
          kid: entry.kid,
          serviceId: service.id,
          alg,
          key,
          notAfterMs: Date.parse(entry.notAfter),
        });
      }
    }
    this.#addIssuer(registry.tokenService.issuer, registry.tokenService.jwks.keys, undefined);
    for (const trusted of registry.trustedIssuers) {
      this.#addIssuer(trusted.issuer, trusted.jwks.keys, trusted.audiences);
    }
  }

  #addIssuer(issuer: string, jwks: readonly PublicJwk[], audiences: readonly string[] | undefined): void {
    const keys = jwks.map((jwk, index) => {
      const { key, alg } = importJwk(jwk, `issuer ${issuer} key ${jwk.kid ?? index}`);
      return { issuer, kid: jwk.kid, alg, key, audiences };
    });
    this.#issuers.set(issuer, keys);
  }

  /** A key past its certificate's notAfter no longer verifies anything, even if still published. */
  serviceKey(kid: string): ServiceKey | undefined {
    const key = this.#keys.get(kid);
    return key !== undefined && this.#now() <= key.notAfterMs ? key : undefined;
  }

  issuerKey(issuer: string, kid: string | undefined): IssuerKey | undefined {
    const keys = this.#issuers.get(issuer);
    if (keys === undefined) return undefined;
    if (kid === undefined) return keys.length === 1 ? keys[0] : undefined;
    return keys.find((key) => key.kid === kid);
  }

  service(id: string): ServiceInfo | undefined {
    return this.#services.get(id);
  }
}
