/**
 * Issuing workload certificates: a new key pair for a service id, or a certificate for a CSR. Both
 * share one leaf profile, built here and nowhere else.
 */
import type { KeyObject } from "node:crypto";
import { isIP } from "node:net";
import type { Name } from "@peculiar/asn1-x509";
import { parseServiceId, spiffeIdFor } from "../../crds/src/names.js";
import { type CertificateAuthority, CLOCK_SKEW_SECONDS } from "./ca.js";
import { EKU_CLIENT_AUTH, EKU_SERVER_AUTH, KEY_USAGE, type ParsedCertificate } from "./certificate.js";
import type { ParsedCsr } from "./csr.js";
import { buildName, nameFromDer, OID_COMMON_NAME } from "./dn.js";
import { CaError, CsrError, IssueError } from "./errors.js";
import { DEFAULT_KEY_ALGORITHM, generateKeyPair, type KeyAlgorithm, publicKeyDer } from "./keys.js";
import {
  authorityKeyIdentifier,
  basicConstraints,
  extendedKeyUsage,
  keyIdentifier,
  keyUsage,
  signCertificate,
  subjectAltName,
  subjectKeyIdentifier,
  wholeSeconds,
} from "./template.js";

export const CERTIFICATE_USAGES = ["client", "server", "both"] as const;
export type CertificateUsage = (typeof CERTIFICATE_USAGES)[number];

export function isCertificateUsage(value: string): value is CertificateUsage {
  return (CERTIFICATE_USAGES as readonly string[]).includes(value);
}

const DAY_SECONDS = 86_400;
/**
 * 30 days: Custody has no revocation (no CRL, no OCSP), so a leaked workload key is only contained
 * by expiry. Long enough for hand rotation; automation can go much shorter.
 */
export const DEFAULT_LEAF_LIFETIME_SECONDS = 30 * DAY_SECONDS;
export const MIN_LEAF_LIFETIME_SECONDS = 60;
/** 398 days, the CA/Browser Forum ceiling for TLS certificates: nothing a workload needs goes beyond. */
export const MAX_LEAF_LIFETIME_SECONDS = 398 * DAY_SECONDS;
export const MAX_SUBJECT_ALT_NAMES = 100;

export interface LeafOptions {
  /** Extended key usage: clientAuth, serverAuth, or both. */
  readonly usage?: CertificateUsage;
  readonly lifetimeSeconds?: number;
  readonly now?: Date;
  /** Start of validity; defaults to `now` minus a minute for clock skew. */
  readonly notBefore?: Date;
}

export interface IssuedCertificate {
  readonly certificate: ParsedCertificate;
  /**
   * True when the requested lifetime would outlive the CA and notAfter was cut to the CA's notAfter.
   * Custody clamps rather than refuses so issuance keeps working until the CA is rotated, and says so.
   */
  readonly notAfterClamped: boolean;
}

export interface IssueOptions extends LeafOptions {
  /** Service id `<name>.<namespace>`: the CN, and the SPIFFE id in the URI SAN. */
  readonly id: string;
  readonly dnsNames?: readonly string[];
  readonly ipAddresses?: readonly string[];
  readonly keyAlgorithm?: KeyAlgorithm;
}

export async function issueCertificate(
  ca: CertificateAuthority,
  options: IssueOptions,
): Promise<IssuedCertificate & { readonly privateKey: KeyObject }> {
  const spiffeId = spiffeIdOf(ca, options.id);
  const dnsNames = normalizeDnsNames(options.dnsNames ?? []);
  const ipAddresses = normalizeIpAddresses(options.ipAddresses ?? []);
  if (1 + dnsNames.length + ipAddresses.length > MAX_SUBJECT_ALT_NAMES) {
    throw new IssueError("too_many_names", `a certificate carries at most ${MAX_SUBJECT_ALT_NAMES} names.`);
  }
  const validity = leafValidity(ca, options);
  const { privateKey, publicKey } = await generateKeyPair(options.keyAlgorithm ?? DEFAULT_KEY_ALGORITHM);
  const certificate = signLeaf(ca, {
    subject: buildName([{ type: OID_COMMON_NAME, value: options.id }]),
    subjectPublicKeyInfo: publicKeyDer(publicKey),
    rsaKey: publicKey.asymmetricKeyType === "rsa",
    names: { uris: [spiffeId], dnsNames, ipAddresses },
    usage: options.usage ?? "both",
    validity,
  });
  return { certificate, privateKey, notAfterClamped: validity.clamped };
}

export interface SignCsrOptions extends LeafOptions {
  /**
   * With an id: CN=<id> and its SPIFFE id, whatever the CSR asked. Without: the CSR's subject DN as is,
   * for partner identities that are mapped by DN; no SAN at all.
   */
  readonly id?: string;
}

/** Signs a CSR already parsed (and so signature-checked) by parseCsr. Defaults to client usage. */
export function signCertificateRequest(
  ca: CertificateAuthority,
  csr: ParsedCsr,
  options: SignCsrOptions = {},
): IssuedCertificate {
  const spiffeId = options.id === undefined ? undefined : spiffeIdOf(ca, options.id);
  const subject =
    options.id === undefined
      ? nameFromDer(csr.subjectName)
      : buildName([{ type: OID_COMMON_NAME, value: options.id }]);
  if (subject.length === 0) {
    throw new CsrError(
      "empty_subject",
      "the request has an empty subject and no --id was given: the certificate would name no one.",
    );
  }
  const validity = leafValidity(ca, options);
  const certificate = signLeaf(ca, {
    subject,
    subjectPublicKeyInfo: csr.subjectPublicKeyInfo,
    rsaKey: csr.publicKey.asymmetricKeyType === "rsa",
    names: { uris: spiffeId === undefined ? [] : [spiffeId] },
    usage: options.usage ?? "client",
    validity,
  });
  return { certificate, notAfterClamped: validity.clamped };
}

function spiffeIdOf(ca: CertificateAuthority, id: string): string {
  if (ca.trustDomain === undefined) {
    throw new CaError(
      "no_trust_domain",
      `"${ca.certificate.subject}" has no spiffe://<trust-domain> URI SAN, so it cannot issue SPIFFE ids ` +
        "(verifiers bind SPIFFE ids to their CA's trust domain). Use a CA made by `custody pki init`.",
    );
  }
  return spiffeIdFor(ca.trustDomain, parseServiceId(id));
}

interface LeafValidity {
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly clamped: boolean;
}

function leafValidity(ca: CertificateAuthority, options: LeafOptions): LeafValidity {
  const lifetime = options.lifetimeSeconds ?? DEFAULT_LEAF_LIFETIME_SECONDS;
  if (
    !Number.isInteger(lifetime) ||
    lifetime < MIN_LEAF_LIFETIME_SECONDS ||
    lifetime > MAX_LEAF_LIFETIME_SECONDS
  ) {
    throw new IssueError(
      "invalid_lifetime",
      `a certificate lifetime must be ${MIN_LEAF_LIFETIME_SECONDS} to ${MAX_LEAF_LIFETIME_SECONDS} seconds (398 days).`,
    );
  }
  const now = options.now ?? new Date();
  const caNotAfter = ca.certificate.notAfter;
  if (caNotAfter.getTime() <= now.getTime()) {
    throw new CaError(
      "ca_expired",
      `the CA "${ca.certificate.subject}" expired at ${caNotAfter.toISOString()}; create or rotate to a new CA.`,
    );
  }
  const start = options.notBefore ?? now;
  const requestedNotBefore = options.notBefore ?? new Date(now.getTime() - CLOCK_SKEW_SECONDS * 1000);
  // Not before the CA itself: some verifiers reject a certificate older than its issuer.
  const notBefore = wholeSeconds(
    new Date(Math.max(requestedNotBefore.getTime(), ca.certificate.notBefore.getTime())),
  );
  const requestedNotAfter = wholeSeconds(new Date(start.getTime() + lifetime * 1000));
  const clamped = requestedNotAfter.getTime() > caNotAfter.getTime();
  const notAfter = clamped ? caNotAfter : requestedNotAfter;
  // Both ends are clamped into the CA's window, so an empty window means the request lies wholly
  // outside it: entirely before the CA begins, or entirely after it ends. The two have different
  // remedies (a clock or a start date vs. a new CA), so they are told apart.
  if (requestedNotAfter.getTime() <= ca.certificate.notBefore.getTime()) {
    throw new IssueError(
      "ends_before_ca_valid",
      `the certificate would end at ${requestedNotAfter.toISOString()}, before the CA "${ca.certificate.subject}" ` +
        `becomes valid at ${ca.certificate.notBefore.toISOString()}; check the clock, or issue with a later start.`,
    );
  }
  if (notAfter.getTime() <= notBefore.getTime()) {
    throw new IssueError(
      "starts_after_ca_expires",
      `the certificate would start at ${notBefore.toISOString()}, after the CA "${ca.certificate.subject}" ` +
        `expires at ${caNotAfter.toISOString()}; issue with an earlier start, or rotate to a new CA.`,
    );
  }
  return { notBefore, notAfter, clamped };
}

interface LeafProfile {
  readonly subject: Name;
  readonly subjectPublicKeyInfo: Uint8Array;
  readonly rsaKey: boolean;
  readonly names: {
    readonly uris: readonly string[];
    readonly dnsNames?: readonly string[];
    readonly ipAddresses?: readonly string[];
  };
  readonly usage: CertificateUsage;
  readonly validity: LeafValidity;
}

function signLeaf(ca: CertificateAuthority, profile: LeafProfile): ParsedCertificate {
  const purposes = {
    client: [EKU_CLIENT_AUTH],
    server: [EKU_SERVER_AUTH],
    both: [EKU_SERVER_AUTH, EKU_CLIENT_AUTH],
  }[profile.usage];
  // keyEncipherment only means something for RSA key transport; ECDSA and Ed25519 keys only sign.
  const usageBits = KEY_USAGE.digitalSignature | (profile.rsaKey ? KEY_USAGE.keyEncipherment : 0);
  const names = subjectAltName(profile.names);
  const caKeyId = ca.certificate.subjectKeyId;
  const certificate = signCertificate(
    {
      issuerName: ca.certificate.subjectName,
      subject: profile.subject,
      subjectPublicKeyInfo: profile.subjectPublicKeyInfo,
      notBefore: profile.validity.notBefore,
      notAfter: profile.validity.notAfter,
      extensions: [
        basicConstraints(false),
        keyUsage(usageBits),
        extendedKeyUsage(purposes),
        subjectKeyIdentifier(keyIdentifier(profile.subjectPublicKeyInfo)),
        ...(caKeyId === undefined ? [] : [authorityKeyIdentifier(Buffer.from(caKeyId, "hex"))]),
        ...(names === undefined ? [] : [names]),
      ],
    },
    ca.privateKey,
  );
  // Never hand out a certificate that does not chain to its CA, whatever went wrong in between.
  if (
    !certificate.x509.checkIssued(ca.certificate.x509) ||
    !certificate.x509.verify(ca.certificate.publicKey)
  ) {
    throw new Error(`issued certificate does not verify against "${ca.certificate.subject}"`);
  }
  return certificate;
}

const DNS_LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** Lower-cased, de-duplicated host names; a leading `*.` wildcard label is allowed. */
export function normalizeDnsNames(names: readonly string[]): string[] {
  const normalized = names.map((name) => {
    const lower = name.toLowerCase();
    const labels = lower.split(".");
    const valid =
      lower.length <= 253 &&
      labels.every(
        (label, index) => DNS_LABEL.test(label) || (index === 0 && label === "*" && labels.length > 2),
      );
    if (!valid) {
      throw new IssueError(
        "invalid_dns_name",
        `"${name}" is not a DNS name: labels of letters, digits and '-', e.g. cart.shop.svc.cluster.local.`,
      );
    }
    return lower;
  });
  return [...new Set(normalized)];
}

export function normalizeIpAddresses(addresses: readonly string[]): string[] {
  for (const address of addresses) {
    if (isIP(address) === 0 || address.includes("%")) {
      throw new IssueError("invalid_ip_address", `"${address}" is not an IPv4 or IPv6 address.`);
    }
  }
  return [...new Set(addresses)];
}
