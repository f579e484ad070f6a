/**
 * Which ServiceIdentity a client certificate authenticates as. Custody certificates name their
 * identity in a SPIFFE URI SAN; third-party certificates are mapped by their subject DN *and the CA
 * that issued them* through `spec.externalSubjects` (seed 000: "registering a new service by
 * certificate subject"), so one partner's CA cannot claim another partner's subjects.
 * Ambiguity fails closed: a service id declared twice keeps its first declaration, and an
 * (issuer, subject) pair claimed by two identities maps to neither. Both are reported.
 */
import { parseDuration } from "../../../crds/src/duration.js";
import { parseSpiffeId, serviceId } from "../../../crds/src/names.js";
import {
  edgeAudiencesOf,
  externalSubjectKey,
  type ServiceIdentity,
} from "../../../crds/src/service-identity.js";

/** What the token service needs of one ServiceIdentity. */
export interface IssuerIdentity {
  /** `<name>.<namespace>`: the `sub` of its tokens. */
  readonly id: string;
  readonly environment: string;
  readonly claims: Readonly<Record<string, string>>;
  readonly scopes: readonly string[];
  readonly tokenTtlSeconds: number;
  readonly edge: boolean;
  /** For an edge: the audiences a user's token must name (one of them) for it to act on it. */
  readonly edgeAudiences: readonly string[];
  /** The file it was read from, for messages. */
  readonly source: string;
}

export interface DeclaredIdentity {
  readonly identity: ServiceIdentity;
  readonly source: string;
}

export interface IndexProblem {
  readonly source: string;
  readonly message: string;
}

const DEFAULT_NAMESPACE = "default";

export function issuerIdentityOf(identity: ServiceIdentity, source: string): IssuerIdentity {
  const { spec, metadata } = identity;
  const id = serviceId({ name: metadata.name, namespace: metadata.namespace ?? DEFAULT_NAMESPACE });
  return {
    id,
    environment: spec.environment,
    claims: spec.claims ?? {},
    scopes: spec.scopes ?? [],
    tokenTtlSeconds: Math.floor(parseDuration(spec.tokenTTL) / 1000),
    edge: spec.edge,
    edgeAudiences: edgeAudiencesOf(identity, id) ?? [],
    source,
  };
}

export class IdentityIndex {
  readonly #byId = new Map<string, IssuerIdentity>();
  readonly #bySubject = new Map<string, IssuerIdentity>();
  readonly problems: readonly IndexProblem[];

  /** `declared` in a stable order (file name, then position): that order decides who is first. */
  constructor(
    readonly trustDomain: string,
    declared: readonly DeclaredIdentity[],
  ) {
    const problems: IndexProblem[] = [];
    const claimedSubjects = new Map<string, IssuerIdentity[]>();
    for (const { identity, source } of declared) {
      const entry = issuerIdentityOf(identity, source);
      const earlier = this.#byId.get(entry.id);
      if (earlier !== undefined) {
        problems.push({
          source,
          message: `${entry.id} is already declared in ${earlier.source}; ignored here.`,
        });
        continue;
      }
      this.#byId.set(entry.id, entry);
      for (const subject of identity.spec.externalSubjects ?? []) {
        const key = externalSubjectKey(subject);
        claimedSubjects.set(key, [...(claimedSubjects.get(key) ?? []), entry]);
      }
    }
    for (const [key, claimants] of claimedSubjects) {
      const [only, ...others] = claimants;
      if (only !== undefined && others.length === 0) {
        this.#bySubject.set(key, only);
        continue;
      }
      const ids = claimants.map((claimant) => claimant.id).join(", ");
      const [issuer, subject] = key.split("\n");
      for (const claimant of claimants) {
        problems.push({
          source: claimant.source,
          message: `external subject "${subject}" of issuer "${issuer}" is claimed by ${ids}; it authenticates as none of them until only one claims it.`,
        });
      }
    }
    this.problems = problems;
  }

  get size(): number {
    return this.#byId.size;
  }

  byId(id: string): IssuerIdentity | undefined {
    return this.#byId.get(id);
  }

  /** A `spiffe://` id of this trust domain; ids of other trust domains name no identity here. */
  bySpiffeId(uri: string): IssuerIdentity | undefined {
    const parsed = parseSpiffeId(uri);
    if (parsed === undefined || parsed.trustDomain !== this.trustDomain) return undefined;
    return this.#byId.get(serviceId(parsed.ref));
  }

  /** A certificate's subject DN with the DN of the anchor that issued it. */
  bySubject(subject: { readonly issuer: string; readonly subject: string }): IssuerIdentity | undefined {
    return this.#bySubject.get(externalSubjectKey(subject));
  }
}
