/**
 * Client-certificate verification against a TrustBundle: the check behind `pki verify`, and the one
 * the token service runs on every mTLS client certificate. Pure (the clock is an option) and
 * synchronous; each rejection carries exactly one stable code.
 *
 * Checks run in this order, and the first failure is the answer:
 *   malformed → unknown_issuer / bad_signature → expired / not_yet_valid → is_ca / not_client_auth →
 *   trust_domain_mismatch.
 */
import { signatureAlgorithmByOid } from "./algorithms.js";
import type { TrustBundle } from "./bundle.js";
import {
  caTrustDomain,
  EKU_CLIENT_AUTH,
  KEY_USAGE,
  type ParsedCertificate,
  parseCertificate,
  parseCertificatesPem,
  spiffeUris,
  trustDomainOf,
} from "./certificate.js";
import { printable } from "./dn.js";
import { CertificateVerificationError, PkiError, type VerificationCode } from "./errors.js";

/** The leaf and at most four intermediates; longer chains are refused as malformed. */
export const MAX_CHAIN_CERTIFICATES = 5;

export interface VerifyOptions {
  /** The time to check validity at; defaults to the current time. */
  readonly now?: Date;
}

export interface VerifiedClientCertificate {
  readonly subject: string;
  readonly issuer: string;
  /** The certificate's one `spiffe://` URI SAN, bound to its CA's trust domain; undefined if it has none. */
  readonly spiffeId: string | undefined;
  readonly serialNumber: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly fingerprint256: string;
  readonly leaf: ParsedCertificate;
  /** Leaf first, then intermediates, then the bundle CA that anchors it. */
  readonly path: readonly ParsedCertificate[];
}

/**
 * Verifies a client certificate (PEM text with the leaf first, or DER certificates as a TLS stack
 * hands them over) against `bundle`. Throws CertificateVerificationError on any failure.
 */
export function verifyClientCertificate(
  bundle: TrustBundle,
  chain: string | readonly Uint8Array[],
  options: VerifyOptions = {},
): VerifiedClientCertificate {
  const certificates = readChain(chain);
  const [leaf, ...intermediates] = certificates;
  if (leaf === undefined) throw reject("malformed", "no certificate was presented.");
  for (const certificate of certificates) assertHandledExtensions(certificate);
  const spiffeId = singleSpiffeId(leaf);
  const path = buildPath(bundle, leaf, intermediates);
  const anchor = path[path.length - 1] ?? leaf;
  assertHandledExtensions(anchor);
  assertValidAt(path, options.now ?? new Date());
  assertClientPurpose(path);
  if (spiffeId !== undefined) assertTrustDomain(leaf, spiffeId, anchor);
  return {
    subject: leaf.subject,
    issuer: leaf.issuer,
    spiffeId,
    serialNumber: leaf.serialNumber,
    notBefore: leaf.notBefore,
    notAfter: leaf.notAfter,
    fingerprint256: leaf.fingerprint256,
    leaf,
    path,
  };
}

function reject(code: VerificationCode, message: string): CertificateVerificationError {
  return new CertificateVerificationError(code, message);
}

function readChain(chain: string | readonly Uint8Array[]): ParsedCertificate[] {
  try {
    if (typeof chain === "string") {
      return parseCertificatesPem(chain, {
        source: "the presented chain",
        maxCertificates: MAX_CHAIN_CERTIFICATES,
      });
    }
    if (chain.length > MAX_CHAIN_CERTIFICATES) {
      throw reject("malformed", `a chain has at most ${MAX_CHAIN_CERTIFICATES} certificates.`);
    }
    return chain.map((der, index) => parseCertificate(der, `certificate ${index + 1}`));
  } catch (error) {
    if (error instanceof CertificateVerificationError) throw error;
    if (error instanceof PkiError) {
      const detail =
        error.code === "pem_too_many_blocks"
          ? ` (a chain has at most ${MAX_CHAIN_CERTIFICATES} certificates)`
          : "";
      throw reject("malformed", `${error.message}${detail}`);
    }
    throw error;
  }
}

function assertHandledExtensions(certificate: ParsedCertificate): void {
  const [oid] = certificate.unhandledCriticalExtensions;
  if (oid !== undefined) {
    throw reject(
      "malformed",
      `"${certificate.subject}" has critical extension ${oid}, which Custody does not process (RFC 5280 §4.2).`,
    );
  }
}

/**
 * Walks from the leaf up: at each step a bundle CA that signed the current certificate ends the
 * path; otherwise a presented intermediate that did continues it. Bounded by MAX_CHAIN_CERTIFICATES.
 */
function buildPath(
  bundle: TrustBundle,
  leaf: ParsedCertificate,
  intermediates: readonly ParsedCertificate[],
): ParsedCertificate[] {
  const path = [leaf];
  const unused = [...intermediates];
  let misSigned: ParsedCertificate | undefined;
  for (let depth = 0; depth < MAX_CHAIN_CERTIFICATES; depth += 1) {
    const current = path[path.length - 1] ?? leaf;
    assertAcceptedSignatureAlgorithm(current);
    const anchors = bundle.issuersOf(current).filter((candidate) => mayIssueBelow(candidate, path));
    const anchor = anchors.find((candidate) => signedBy(current, candidate));
    if (anchor !== undefined) return [...path, anchor];
    if (anchors.length > 0) misSigned = current;
    const nameMatches = unused.filter(
      (candidate) =>
        candidate.isCa && current.x509.checkIssued(candidate.x509) && mayIssueBelow(candidate, path),
    );
    const next = nameMatches.find((candidate) => signedBy(current, candidate));
    if (next === undefined) {
      if (nameMatches.length > 0) misSigned = current;
      break;
    }
    path.push(next);
    unused.splice(unused.indexOf(next), 1);
  }
  if (misSigned !== undefined) {
    throw reject(
      "bad_signature",
      `the signature on "${misSigned.subject}" does not verify with the key of the CA named "${misSigned.issuer}" ` +
        "(forged, altered, or issued by a different CA with the same name).",
    );
  }
  throw reject(
    "unknown_issuer",
    `"${leaf.subject}" (issuer "${leaf.issuer}") does not chain to a CA of the bundle.`,
  );
}

/** basicConstraints pathLen: how many intermediate CAs may sit below this one. */
function mayIssueBelow(candidate: ParsedCertificate, pathSoFar: readonly ParsedCertificate[]): boolean {
  const intermediatesBelow = pathSoFar.length - 1;
  return candidate.pathLength === undefined || intermediatesBelow <= candidate.pathLength;
}

function signedBy(certificate: ParsedCertificate, issuer: ParsedCertificate): boolean {
  try {
    return certificate.x509.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

function assertAcceptedSignatureAlgorithm(certificate: ParsedCertificate): void {
  if (signatureAlgorithmByOid(certificate.signatureAlgorithm) === undefined) {
    throw reject(
      "bad_signature",
      `"${certificate.subject}" is signed with algorithm ${certificate.signatureAlgorithm}, which Custody does not ` +
        "accept (SHA-1, MD5 and RSA-PSS are refused).",
    );
  }
}

/** RFC 5280 validity, inclusive at both ends, for every certificate of the path (bundle CA included). */
function assertValidAt(path: readonly ParsedCertificate[], now: Date): void {
  const time = now.getTime();
  for (const certificate of path) {
    if (time < certificate.notBefore.getTime()) {
      throw reject(
        "not_yet_valid",
        `"${certificate.subject}" is not valid before ${certificate.notBefore.toISOString()} (now ${now.toISOString()}).`,
      );
    }
    if (time > certificate.notAfter.getTime()) {
      throw reject(
        "expired",
        `"${certificate.subject}" expired at ${certificate.notAfter.toISOString()} (now ${now.toISOString()}).`,
      );
    }
  }
}

/**
 * The leaf must be an end entity usable for TLS client authentication. As OpenSSL's "sslclient"
 * purpose does: no EKU means any purpose, but an EKU on any certificate of the path must include
 * clientAuth (anyExtendedKeyUsage alone is not enough), and a leaf keyUsage must allow signing.
 */
function assertClientPurpose(path: readonly ParsedCertificate[]): void {
  const [leaf] = path;
  if (leaf === undefined) return;
  if (leaf.isCa) {
    throw reject(
      "is_ca",
      `"${leaf.subject}" is a CA certificate; a client must present an end-entity certificate.`,
    );
  }
  const signing = KEY_USAGE.digitalSignature | KEY_USAGE.keyAgreement;
  if (leaf.keyUsage !== undefined && (leaf.keyUsage & signing) === 0) {
    throw reject("not_client_auth", `"${leaf.subject}" has a keyUsage that does not allow digitalSignature.`);
  }
  for (const certificate of path) {
    const purposes = certificate.extendedKeyUsage;
    if (purposes !== undefined && !purposes.includes(EKU_CLIENT_AUTH)) {
      const owner = certificate === leaf ? "its" : `its CA "${certificate.subject}"'s`;
      throw reject(
        "not_client_auth",
        `"${leaf.subject}": ${owner} extended key usage does not include clientAuth (TLS client authentication).`,
      );
    }
  }
}

/** The leaf's SPIFFE id: none, or exactly one well-formed `spiffe://` URI (X.509-SVID §2). */
function singleSpiffeId(leaf: ParsedCertificate): string | undefined {
  const ids = spiffeUris(leaf);
  if (ids.length > 1) {
    throw reject(
      "malformed",
      `"${leaf.subject}" carries ${ids.length} SPIFFE ids; an X.509-SVID has exactly one.`,
    );
  }
  const [spiffeId] = ids;
  if (spiffeId !== undefined && trustDomainOf(spiffeId) === undefined) {
    throw reject("malformed", `"${leaf.subject}" carries an invalid SPIFFE id, ${printable(spiffeId)}.`);
  }
  return spiffeId;
}

/**
 * A SPIFFE id is only as good as its CA's authority over that trust domain: a partner CA sharing the
 * bundle must not be able to mint `spiffe://custody.local/...` identities.
 */
function assertTrustDomain(leaf: ParsedCertificate, spiffeId: string, anchor: ParsedCertificate): void {
  const caDomain = caTrustDomain(anchor);
  if (caDomain !== trustDomainOf(spiffeId)) {
    const authority = caDomain === undefined ? "is not a SPIFFE CA" : `speaks for trust domain ${caDomain}`;
    throw reject(
      "trust_domain_mismatch",
      `"${leaf.subject}" claims ${printable(spiffeId)}, but its CA "${anchor.subject}" ${authority}.`,
    );
  }
}
