/**
 * Reading X.509 certificates into the facts Custody decides on. Two parsers must agree before a
 * certificate is accepted: OpenSSL (node:crypto X509Certificate, which later checks signatures) and
 * the ASN.1 schema parser (which exposes every extension with its critical flag).
 */
import { type KeyObject, X509Certificate } from "node:crypto";
import { AsnConvert } from "@peculiar/asn1-schema";
import {
  AuthorityKeyIdentifier,
  BasicConstraints,
  Certificate,
  ExtendedKeyUsage,
  id_ce_authorityKeyIdentifier,
  id_ce_basicConstraints,
  id_ce_extKeyUsage,
  id_ce_issuerAltName,
  id_ce_keyUsage,
  id_ce_subjectAltName,
  id_ce_subjectKeyIdentifier,
  KeyUsage,
  SubjectAlternativeName,
  SubjectKeyIdentifier,
} from "@peculiar/asn1-x509";
import { isTrustDomain } from "../../crds/src/names.js";
import { isSingleDerSequence } from "./der.js";
import { formatName, nameToDer } from "./dn.js";
import { CertificateError } from "./errors.js";
import { encodePem, readPemBlocks } from "./pem.js";

/** KeyUsage bits as the ASN.1 parser numbers them (bit 0 = digitalSignature). */
export const KEY_USAGE = {
  digitalSignature: 1,
  nonRepudiation: 2,
  keyEncipherment: 4,
  dataEncipherment: 8,
  keyAgreement: 16,
  keyCertSign: 32,
  cRLSign: 64,
} as const;

export const EKU_SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
export const EKU_CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";

/** Extensions whose meaning Custody enforces; any other extension marked critical makes a path invalid. */
const HANDLED_EXTENSIONS: ReadonlySet<string> = new Set([
  id_ce_basicConstraints,
  id_ce_keyUsage,
  id_ce_extKeyUsage,
  id_ce_subjectAltName,
  id_ce_subjectKeyIdentifier,
  id_ce_authorityKeyIdentifier,
  id_ce_issuerAltName,
]);

export interface ParsedCertificate {
  readonly der: Uint8Array;
  readonly pem: string;
  /** OpenSSL's view, for signature checks and issuer matching. */
  readonly x509: X509Certificate;
  readonly publicKey: KeyObject;
  /** One line, DER order: `C=US, O=Acme, CN=client`. */
  readonly subject: string;
  readonly issuer: string;
  /** DER of the subject name: the issuer field of certificates this one signs, copied byte for byte. */
  readonly subjectName: Uint8Array;
  readonly serialNumber: string;
  /** OID of the algorithm this certificate was signed with. */
  readonly signatureAlgorithm: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** `AB:CD:…`, as `openssl x509 -fingerprint -sha256` prints it. */
  readonly fingerprint256: string;
  readonly isCa: boolean;
  readonly pathLength: number | undefined;
  /** KEY_USAGE bits; undefined when the extension is absent (any usage). */
  readonly keyUsage: number | undefined;
  /** Purpose OIDs; undefined when the extension is absent (any purpose, RFC 5280 §4.2.1.12). */
  readonly extendedKeyUsage: readonly string[] | undefined;
  readonly uris: readonly string[];
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly subjectKeyId: string | undefined;
  readonly authorityKeyId: string | undefined;
  /** OIDs of critical extensions Custody does not process. */
  readonly unhandledCriticalExtensions: readonly string[];
}

export function parseCertificate(der: Uint8Array, source = "certificate"): ParsedCertificate {
  if (!isSingleDerSequence(der)) {
    throw invalid(source, "it is not a single DER-encoded certificate");
  }
  let x509: X509Certificate;
  let parsed: Certificate;
  try {
    x509 = new X509Certificate(der);
    parsed = AsnConvert.parse(der, Certificate);
  } catch (error) {
    throw invalid(source, "it cannot be parsed", error);
  }
  const tbs = parsed.tbsCertificate;
  const facts = readExtensions(tbs.extensions ?? [], source);
  return {
    der,
    pem: encodePem("CERTIFICATE", der),
    x509,
    publicKey: x509.publicKey,
    subject: formatName(tbs.subject),
    issuer: formatName(tbs.issuer),
    subjectName: nameToDer(tbs.subject),
    serialNumber: x509.serialNumber,
    signatureAlgorithm: parsed.signatureAlgorithm.algorithm,
    notBefore: tbs.validity.notBefore.getTime(),
    notAfter: tbs.validity.notAfter.getTime(),
    fingerprint256: x509.fingerprint256,
    ...facts,
  };
}

type ExtensionFacts = Pick<
  ParsedCertificate,
  | "isCa"
  | "pathLength"
  | "keyUsage"
  | "extendedKeyUsage"
  | "uris"
  | "dnsNames"
  | "ipAddresses"
  | "subjectKeyId"
  | "authorityKeyId"
  | "unhandledCriticalExtensions"
>;

interface RawExtension {
  readonly extnID: string;
  readonly critical: boolean;
  readonly extnValue: { readonly buffer: ArrayBuffer };
}

function readExtensions(extensions: readonly RawExtension[], source: string): ExtensionFacts {
  const seen = new Set<string>();
  const facts: { -readonly [K in keyof ExtensionFacts]: ExtensionFacts[K] } = {
    isCa: false,
    pathLength: undefined,
    keyUsage: undefined,
    extendedKeyUsage: undefined,
    uris: [],
    dnsNames: [],
    ipAddresses: [],
    subjectKeyId: undefined,
    authorityKeyId: undefined,
    unhandledCriticalExtensions: [],
  };
  for (const extension of extensions) {
    const oid = extension.extnID;
    if (seen.has(oid)) throw invalid(source, `extension ${oid} appears twice (RFC 5280 §4.2)`);
    seen.add(oid);
    if (!HANDLED_EXTENSIONS.has(oid)) {
      if (extension.critical) facts.unhandledCriticalExtensions = [...facts.unhandledCriticalExtensions, oid];
      continue;
    }
    try {
      readExtension(oid, extension.extnValue.buffer, facts);
    } catch (error) {
      if (error instanceof CertificateError) throw error;
      throw invalid(source, `extension ${oid} cannot be parsed`, error);
    }
  }
  return facts;
}

function readExtension(
  oid: string,
  value: ArrayBuffer,
  facts: { -readonly [K in keyof ExtensionFacts]: ExtensionFacts[K] },
): void {
  switch (oid) {
    case id_ce_basicConstraints: {
      const constraints = AsnConvert.parse(value, BasicConstraints);
      facts.isCa = constraints.cA;
      facts.pathLength = constraints.cA ? constraints.pathLenConstraint : undefined;
      return;
    }
    case id_ce_keyUsage:
      facts.keyUsage = AsnConvert.parse(value, KeyUsage).toNumber();
      return;
    case id_ce_extKeyUsage:
      facts.extendedKeyUsage = [...AsnConvert.parse(value, ExtendedKeyUsage)];
      return;
    case id_ce_subjectAltName:
      for (const name of AsnConvert.parse(value, SubjectAlternativeName)) {
        if (name.uniformResourceIdentifier !== undefined)
          facts.uris = [...facts.uris, name.uniformResourceIdentifier];
        if (name.dNSName !== undefined) facts.dnsNames = [...facts.dnsNames, name.dNSName];
        if (name.iPAddress !== undefined) facts.ipAddresses = [...facts.ipAddresses, name.iPAddress];
      }
      return;
    case id_ce_subjectKeyIdentifier:
      facts.subjectKeyId = hex(AsnConvert.parse(value, SubjectKeyIdentifier).buffer);
      return;
    case id_ce_authorityKeyIdentifier: {
      const keyId = AsnConvert.parse(value, AuthorityKeyIdentifier).keyIdentifier;
      facts.authorityKeyId = keyId === undefined ? undefined : hex(keyId.buffer);
      return;
    }
    default:
      // Handled but carries nothing Custody decides on (issuerAltName).
      return;
  }
}

function hex(buffer: ArrayBuffer): string {
  return Buffer.from(buffer).toString("hex");
}

function invalid(source: string, reason: string, cause?: unknown): CertificateError {
  return new CertificateError(
    "invalid_certificate",
    `${source} is not a valid X.509 certificate: ${reason}.`,
    {
      cause,
    },
  );
}

export interface CertificateReadOptions {
  readonly source: string;
  readonly maxCertificates: number;
}

/** Every CERTIFICATE block of a PEM text, at least one; other blocks are an error, never echoed. */
export function parseCertificatesPem(text: string, options: CertificateReadOptions): ParsedCertificate[] {
  const blocks = readPemBlocks(text, { maxBlocks: options.maxCertificates, source: options.source });
  if (blocks.length === 0) {
    throw new CertificateError("certificate_not_found", `${options.source} holds no PEM certificate.`);
  }
  return blocks.map((block, index) => {
    const source = blocks.length === 1 ? options.source : `${options.source} (certificate ${index + 1})`;
    if (block.label !== "CERTIFICATE") {
      throw new CertificateError(
        "not_a_certificate",
        `${source} is a "${block.label}" block where a CERTIFICATE was expected.`,
      );
    }
    return parseCertificate(block.der, source);
  });
}

/** The URIs that are SPIFFE ids (`spiffe://…`). */
export function spiffeUris(certificate: ParsedCertificate): readonly string[] {
  return certificate.uris.filter((uri) => uri.startsWith("spiffe://"));
}

/** The trust domain of a SPIFFE id (`spiffe://td` or `spiffe://td/path`), or undefined if it is not one. */
export function trustDomainOf(spiffeId: string): string | undefined {
  const match = /^spiffe:\/\/([^/?#]+)(\/[^?#]*)?$/.exec(spiffeId);
  const trustDomain = match?.[1];
  return trustDomain !== undefined && isTrustDomain(trustDomain) ? trustDomain : undefined;
}

/**
 * The trust domain a CA speaks for: its `spiffe://<td>` URI SAN with no path (the SPIFFE X.509-SVID
 * convention for signing certificates). Undefined for a CA that is not a SPIFFE CA, e.g. a partner's.
 */
export function caTrustDomain(certificate: ParsedCertificate): string | undefined {
  const roots = spiffeUris(certificate).filter((uri) => /^spiffe:\/\/[^/]+$/.test(uri));
  return roots.length === 1 && roots[0] !== undefined ? trustDomainOf(roots[0]) : undefined;
}
