/**
 * Building and signing certificates from a template. Only the extensions built here ever reach a
 * certificate: nothing is copied from a request, so a CSR cannot ask its way to CA:true.
 */
import { createHash, type KeyObject, randomBytes } from "node:crypto";
import { isIP } from "node:net";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import {
  AuthorityKeyIdentifier,
  BasicConstraints,
  Certificate,
  ExtendedKeyUsage,
  Extension,
  Extensions,
  GeneralName,
  id_ce_authorityKeyIdentifier,
  id_ce_basicConstraints,
  id_ce_extKeyUsage,
  id_ce_keyUsage,
  id_ce_subjectAltName,
  id_ce_subjectKeyIdentifier,
  KeyIdentifier,
  KeyUsage,
  type Name,
  SubjectAlternativeName,
  SubjectKeyIdentifier,
  SubjectPublicKeyInfo,
  TBSCertificate,
  Validity,
  Version,
} from "@peculiar/asn1-x509";
import { algorithmIdentifier, signBytes, signingAlgorithmFor } from "./algorithms.js";
import { type ParsedCertificate, parseCertificate } from "./certificate.js";
import { nameFromDer } from "./dn.js";

export interface CertificateTemplate {
  /** DER of the issuer's subject name, copied so issuer matching never depends on re-encoding. */
  readonly issuerName: Uint8Array;
  readonly subject: Name;
  /** DER SubjectPublicKeyInfo of the key being certified. */
  readonly subjectPublicKeyInfo: Uint8Array;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly extensions: readonly Extension[];
}

export function signCertificate(template: CertificateTemplate, issuerKey: KeyObject): ParsedCertificate {
  const signatureAlgorithm = algorithmIdentifier(signingAlgorithmFor(issuerKey));
  const tbsCertificate = new TBSCertificate({
    version: Version.v3,
    serialNumber: randomSerialNumber(),
    signature: signatureAlgorithm,
    issuer: nameFromDer(template.issuerName),
    validity: new Validity({
      notBefore: wholeSeconds(template.notBefore),
      notAfter: wholeSeconds(template.notAfter),
    }),
    subject: template.subject,
    subjectPublicKeyInfo: AsnConvert.parse(template.subjectPublicKeyInfo, SubjectPublicKeyInfo),
    extensions: new Extensions([...template.extensions]),
  });
  const signatureValue = signBytes(issuerKey, new Uint8Array(AsnConvert.serialize(tbsCertificate)));
  const der = AsnConvert.serialize(
    new Certificate({ tbsCertificate, signatureAlgorithm, signatureValue: toArrayBuffer(signatureValue) }),
  );
  return parseCertificate(new Uint8Array(der), "issued certificate");
}

/** Certificate times have one-second resolution; truncating here keeps notAfter ≤ any bound it was clamped to. */
export function wholeSeconds(date: Date): Date {
  return new Date(Math.floor(date.getTime() / 1000) * 1000);
}

/**
 * 128 random bits as a positive INTEGER (RFC 5280 §4.1.2.2: at most 20 octets). DER needs a leading
 * zero octet when the top bit is set, and none when the next octet would not need it.
 */
export function randomSerialNumber(): ArrayBuffer {
  for (;;) {
    let bytes = [...randomBytes(16)];
    while (bytes.length > 1 && bytes[0] === 0 && ((bytes[1] ?? 0) & 0x80) === 0) bytes = bytes.slice(1);
    if (bytes.every((byte) => byte === 0)) continue;
    if (((bytes[0] ?? 0) & 0x80) !== 0) bytes = [0, ...bytes];
    return new Uint8Array(bytes).buffer;
  }
}

function extension(extnID: string, critical: boolean, value: unknown): Extension {
  return new Extension({ extnID, critical, extnValue: new OctetString(AsnConvert.serialize(value)) });
}

export function basicConstraints(ca: boolean, pathLength?: number): Extension {
  const value =
    ca && pathLength !== undefined
      ? new BasicConstraints({ cA: true, pathLenConstraint: pathLength })
      : new BasicConstraints({ cA: ca });
  return extension(id_ce_basicConstraints, true, value);
}

export function keyUsage(bits: number): Extension {
  return extension(id_ce_keyUsage, true, new KeyUsage(bits));
}

export function extendedKeyUsage(purposes: readonly string[]): Extension {
  return extension(id_ce_extKeyUsage, false, new ExtendedKeyUsage([...purposes]));
}

export interface SubjectAltNames {
  readonly uris?: readonly string[];
  readonly dnsNames?: readonly string[];
  readonly ipAddresses?: readonly string[];
}

/** Undefined when there is no name to put in it: an empty SAN extension is invalid (RFC 5280 §4.2.1.6). */
export function subjectAltName(names: SubjectAltNames): Extension | undefined {
  const entries = [
    ...(names.uris ?? []).map((uri) => new GeneralName({ uniformResourceIdentifier: uri })),
    ...(names.dnsNames ?? []).map((dns) => new GeneralName({ dNSName: dns })),
    ...(names.ipAddresses ?? []).map((ip) => {
      if (isIP(ip) === 0) throw new TypeError(`not an IP address: ${ip}`);
      return new GeneralName({ iPAddress: ip });
    }),
  ];
  return entries.length === 0
    ? undefined
    : extension(id_ce_subjectAltName, false, new SubjectAlternativeName(entries));
}

/** RFC 5280 §4.2.1.2 method 1 (SHA-1 of the key bits), as OpenSSL computes it, so key ids match across tools. */
export function keyIdentifier(subjectPublicKeyInfo: Uint8Array): Uint8Array {
  const info = AsnConvert.parse(subjectPublicKeyInfo, SubjectPublicKeyInfo);
  return new Uint8Array(createHash("sha1").update(new Uint8Array(info.subjectPublicKey)).digest());
}

export function subjectKeyIdentifier(keyId: Uint8Array): Extension {
  return extension(id_ce_subjectKeyIdentifier, false, new SubjectKeyIdentifier(keyId));
}

export function authorityKeyIdentifier(keyId: Uint8Array): Extension {
  return extension(
    id_ce_authorityKeyIdentifier,
    false,
    new AuthorityKeyIdentifier({ keyIdentifier: new KeyIdentifier(keyId) }),
  );
}

function toArrayBuffer(bytes: Uint8Array): ArrayBuffer {
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  return copy.buffer;
}
