/**
 * Trust anchors with roles. A verifier that merges every trusted CA into one bundle lets any of them
 * vouch for anything: a partner CA could issue `spiffe://<our trust domain>/ns/shop/si/payments` and
 * become payments, or copy another partner's subject DN and become that partner. So:
 *
 * - Custody's own CA (the *mesh* anchors) is the only anchor for mesh identities: a certificate that
 *   names a SPIFFE id of the configured trust domain is accepted only when it chains to it. The
 *   trust domain is configuration, never read from a root that a partner controls.
 * - Every anchor — a partner's CA, or Custody's CA for the partner CSRs it signed — vouches for
 *   subject DNs, but a subject is only ever matched together with the subject DN of the anchor that
 *   issued it (`externalSubjects: [{issuer, subject}]`). Two anchors with the same subject DN and
 *   different keys make that issuer name ambiguous, and nothing is matched under it.
 *
 * The token service and every sidecar decide with this one function, from the same two bundles (the
 * registry carries both), so they agree offline.
 */
import { parseSpiffeId, serviceId } from "../../crds/src/names.js";
import { type BundleSource, TrustBundle } from "./bundle.js";
import { type ParsedCertificate, trustDomainOf } from "./certificate.js";
import { normalizedDistinguishedName } from "./dn.js";
import { CertificateVerificationError } from "./errors.js";
import type { VerifiedCertificateCache } from "./peer.js";
import { type VerifiedClientCertificate, verifyClientCertificate } from "./verify.js";

/** A workload of the mesh: a Custody certificate naming `spiffe://<trust domain>/ns/<ns>/si/<name>`. */
export interface MeshPeer {
  readonly role: "mesh";
  readonly certificate: VerifiedClientCertificate;
  readonly spiffeId: string;
  /** `<name>.<namespace>`. */
  readonly serviceId: string;
}

/** Anyone else a trusted CA vouches for: known only as (issuing anchor's DN, subject DN). */
export interface ExternalPeer {
  readonly role: "external";
  readonly certificate: VerifiedClientCertificate;
  /** Normalized subject DN of the trust anchor the certificate chains to. */
  readonly issuer: string;
  /** Normalized subject DN of the certificate. */
  readonly subject: string;
}

export type AuthenticatedPeer = MeshPeer | ExternalPeer;

export interface TrustAnchorSources {
  readonly trustDomain: string;
  /** Custody's CA(s). */
  readonly mesh: readonly BundleSource[];
  /** Partner CAs; Custody's own CA among them is ignored (the seed's recipe concatenates every CA). */
  readonly partners: readonly BundleSource[];
}

export class TrustAnchors {
  readonly #meshFingerprints: ReadonlySet<string>;
  readonly #ambiguousIssuers: ReadonlySet<string>;

  private constructor(
    readonly trustDomain: string,
    /** The only anchors of mesh identities; what workloads' TLS trusts for each other. */
    readonly mesh: TrustBundle,
    /** Partner CAs alone, or undefined when there are none. */
    readonly partners: TrustBundle | undefined,
    /** Mesh and partner anchors together: what DN-mapped subjects may chain to. */
    readonly all: TrustBundle,
  ) {
    this.#meshFingerprints = new Set(mesh.certificates.map((certificate) => certificate.fingerprint256));
    this.#ambiguousIssuers = ambiguousNames(all.certificates);
  }

  /** Throws BundleError/CertificateError/PemError for a bundle that cannot be used at all. */
  static fromPem(sources: TrustAnchorSources): TrustAnchors {
    const mesh = TrustBundle.fromPem(sources.mesh);
    const meshFingerprints = new Set(mesh.certificates.map((certificate) => certificate.fingerprint256));
    const partnerCertificates =
      sources.partners.length === 0
        ? []
        : TrustBundle.fromPem(sources.partners).certificates.filter(
            (certificate) => !meshFingerprints.has(certificate.fingerprint256),
          );
    const partners =
      partnerCertificates.length === 0
        ? undefined
        : TrustBundle.fromPem([{ name: "partner CAs", pem: pemOf(partnerCertificates) }]);
    const all =
      partners === undefined
        ? mesh
        : TrustBundle.fromPem([
            { name: "Custody's CA", pem: mesh.toPem() },
            { name: "partner CAs", pem: partners.toPem() },
          ]);
    return new TrustAnchors(sources.trustDomain, mesh, partners, all);
  }

  /** Issuer DNs (normalized) that two anchors with different keys share: nothing is matched under them. */
  get ambiguousIssuers(): readonly string[] {
    return [...this.#ambiguousIssuers];
  }

  /**
   * Who a TLS client is: a mesh workload (its SPIFFE id, from Custody's CA only) or an external
   * subject (with the anchor that vouches for it). Throws CertificateVerificationError.
   */
  authenticate(chain: readonly Uint8Array[], now: Date, cache?: VerifiedCertificateCache): AuthenticatedPeer {
    const certificate =
      cache === undefined
        ? verifyClientCertificate(this.all, chain, { now })
        : cache.verify(this.all, chain, now);
    const anchor = certificate.path[certificate.path.length - 1] ?? certificate.leaf;
    const parsed = certificate.spiffeId === undefined ? undefined : parseSpiffeId(certificate.spiffeId);
    if (parsed !== undefined && parsed.trustDomain === this.trustDomain) {
      if (!this.#meshFingerprints.has(anchor.fingerprint256)) {
        throw new CertificateVerificationError(
          "spiffe_id_not_mesh_issued",
          `"${certificate.subject}" names ${certificate.spiffeId}, a mesh identity, but was issued by "${anchor.subject}": ` +
            "only Custody's CA vouches for mesh identities; a partner CA vouches only for the subjects mapped to it.",
        );
      }
      return {
        role: "mesh",
        certificate,
        spiffeId: certificate.spiffeId ?? "",
        serviceId: serviceId(parsed.ref),
      };
    }
    if (certificate.spiffeId !== undefined && trustDomainOf(certificate.spiffeId) === this.trustDomain) {
      // A SPIFFE id of this trust domain that is not a workload's (another path shape): never a mesh
      // identity, and not an external subject either, since it claims to be ours.
      throw new CertificateVerificationError(
        "spiffe_id_not_mesh_issued",
        `"${certificate.subject}" names ${certificate.spiffeId}, which is not a workload of this trust domain.`,
      );
    }
    const issuer = normalizedDistinguishedName(anchor.subjectName);
    if (this.#ambiguousIssuers.has(issuer)) {
      throw new CertificateVerificationError(
        "ambiguous_issuer",
        `the trust anchor "${anchor.subject}" shares its subject DN with another trusted CA of a different key, so it cannot vouch for subjects by name; give the CAs distinct names.`,
      );
    }
    return {
      role: "external",
      certificate,
      issuer,
      subject: normalizedDistinguishedName(certificate.leaf.subjectName),
    };
  }

  /** Whether `certificate` is one of the mesh anchors (Custody's CA). */
  isMeshAnchor(certificate: ParsedCertificate): boolean {
    return this.#meshFingerprints.has(certificate.fingerprint256);
  }
}

function pemOf(certificates: readonly ParsedCertificate[]): string {
  return certificates.map((certificate) => certificate.pem).join("");
}

/** Normalized subject DNs held by anchors with different public keys. */
function ambiguousNames(certificates: readonly ParsedCertificate[]): Set<string> {
  const keysByName = new Map<string, Set<string>>();
  for (const certificate of certificates) {
    const name = normalizedDistinguishedName(certificate.subjectName);
    const key = certificate.publicKey.export({ type: "spki", format: "der" }).toString("base64");
    keysByName.set(name, (keysByName.get(name) ?? new Set()).add(key));
  }
  return new Set([...keysByName].filter(([, keys]) => keys.size > 1).map(([name]) => name));
}
