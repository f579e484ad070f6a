import type { KeyObject } from "node:crypto";
import type { LinkAlgorithm } from "./jws.js";

/** A service's published public key, as the registry lists it. */
export interface ServiceKey {
  readonly kid: string;
  readonly serviceId: string;
  readonly alg: LinkAlgorithm;
  readonly key: KeyObject;
}

/** A signing key of a trusted token issuer (Custody's token service or a user-facing IdP). */
/** Same shape as pki/src/jwks.ts IssuerKey. */
export interface IssuerKey {
  readonly issuer: string;
  readonly kid: string | undefined;
  readonly alg: LinkAlgorithm;
  readonly key: KeyObject;
  /** When set, a token from this issuer must be addressed (`aud`) to one of these. */
  readonly audiences?: readonly string[] | undefined;
}

export interface ServiceInfo {
  readonly id: string;
  readonly environment: string;
  readonly claims: Readonly<Record<string, string>>;
  readonly edge: boolean;
  /** For an edge: a user's token must name one of these in `aud`. Absent: the service id alone. */
  readonly edgeAudiences?: readonly string[] | undefined;
  /**
   * Client certificates of other CAs that authenticate as this service, as externalSubjectKey
   * (issuer DN and subject DN) values.
   */
  readonly externalSubjects?: ReadonlySet<string> | undefined;
}

/** The audiences a user's token must name (one of them) to be admitted at `edge`, or continued from it. */
export function edgeAudiencesOf(edge: ServiceInfo): readonly string[] {
  return edge.edgeAudiences ?? [edge.id];
}

/**
 * What chain verification needs to know, all of it local (the registry document the operator
 * publishes): verification never makes a network call. A view is immutable: a registry update makes
 * a new view (caches of verified elements are keyed by view, so they never outlive a key).
 */
export interface TrustView {
  /** Issuer (`iss`) of Custody's token service: its tokens name a service in `sub`. */
  readonly tokenServiceIssuer: string;
  serviceKey(kid: string): ServiceKey | undefined;
  /** With no kid, an issuer with exactly one key answers with that key. */
  issuerKey(issuer: string, kid: string | undefined): IssuerKey | undefined;
  service(id: string): ServiceInfo | undefined;
}
