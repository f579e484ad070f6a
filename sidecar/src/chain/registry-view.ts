/**
 * The registry document (crds/) seen as a TrustView: JWKs imported once per registry generation into
 * node:crypto keys, indexed for O(1) lookups on the hot path.
 */
import { CustodyError } from "../../../crds/src/errors.js";
import type { Registry } from "../../../crds/src/registry-schema.js";
import { externalSubjectKey } from "../../../crds/src/service-identity.js";
import { IssuerKeySet, importPublicJwk, JwkImportError } from "../../../pki/src/jwks.js";
import type { IssuerKey, ServiceInfo, ServiceKey, TrustView } from "./trust.js";

export class RegistryViewError extends CustodyError {}

interface TimedServiceKey extends ServiceKey {
  readonly notAfterMs: number;
}

function importKey(jwk: Parameters<typeof importPublicJwk>[0], where: string) {
  try {
    return importPublicJwk(jwk, where);
  } catch (error) {
    if (error instanceof JwkImportError) throw new RegistryViewError("invalid_registry_key", error.message);
    throw error;
  }
}

export class RegistryTrustView implements TrustView {
  readonly tokenServiceIssuer: string;
  readonly generation: number;
  readonly #keys = new Map<string, TimedServiceKey>();
  readonly #services = new Map<string, ServiceInfo>();
  readonly #issuers = new IssuerKeySet();
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
        edgeAudiences: service.edgeAudiences,
        externalSubjects:
          service.externalSubjects === undefined
            ? undefined
            : new Set(service.externalSubjects.map(externalSubjectKey)),
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
        const { key, alg } = importKey(entry.jwk, `services ${service.id} key ${entry.kid}`);
        this.#keys.set(entry.kid, {
          kid: entry.kid,
          serviceId: service.id,
          alg,
          key,
          notAfterMs: Date.parse(entry.notAfter),
        });
      }
    }
    try {
      this.#issuers.add(registry.tokenService.issuer, registry.tokenService.jwks.keys);
      for (const trusted of registry.trustedIssuers) {
        this.#issuers.add(trusted.issuer, trusted.jwks.keys, trusted.audiences);
      }
    } catch (error) {
      if (error instanceof JwkImportError) throw new RegistryViewError("invalid_registry_key", error.message);
      throw error;
    }
  }

  /** A key past its certificate's notAfter no longer verifies anything, even if still published. */
  serviceKey(kid: string): ServiceKey | undefined {
    const key = this.#keys.get(kid);
    return key !== undefined && this.#now() <= key.notAfterMs ? key : undefined;
  }

  issuerKey(issuer: string, kid: string | undefined): IssuerKey | undefined {
    return this.#issuers.keyFor(issuer, kid);
  }

  service(id: string): ServiceInfo | undefined {
    return this.#services.get(id);
  }
}
