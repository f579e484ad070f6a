/** In-memory PKI for operator tests: Custody's CA, a partner CA, and client certificates of each. */
import type { KeyObject } from "node:crypto";
import { type CertificateAuthority, createCertificateAuthority } from "../../../pki/src/ca.js";
import type { ParsedCertificate } from "../../../pki/src/certificate.js";
import { createCertificateRequest, parseCsrPem } from "../../../pki/src/csr.js";
import { issueCertificate, type LeafOptions, signCertificateRequest } from "../../../pki/src/issue.js";
import { generateKeyPair } from "../../../pki/src/keys.js";

export interface ClientCertificate {
  readonly certificate: ParsedCertificate;
  readonly privateKey: KeyObject;
}

/**
 * A CA valid since the day before `nowMs`, so tests can issue certificates that have already expired.
 * A test on a fake clock passes its own `nowMs`: the CA and its leaves must share one clock, or the
 * test starts failing once the calendar moves past the fake clock's date.
 */
export function createCa(trustDomain = "custody.local", nowMs = Date.now()): Promise<CertificateAuthority> {
  return createCertificateAuthority({ trustDomain, now: new Date(nowMs - 86_400_000) });
}

/** A Custody certificate: CN and SPIFFE id of `id`; usage client unless `usage` says otherwise. */
export async function custodyClient(
  ca: CertificateAuthority,
  id: string,
  options: LeafOptions = {},
): Promise<ClientCertificate> {
  const issued = await issueCertificate(ca, { id, usage: "client", ...options });
  return { certificate: issued.certificate, privateKey: issued.privateKey };
}

/** A third-party certificate: subject CN=<commonName>, no SPIFFE id (mapped by subject DN). */
export async function partnerClient(
  ca: CertificateAuthority,
  commonName: string,
  options: LeafOptions = {},
): Promise<ClientCertificate> {
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const csr = parseCsrPem(createCertificateRequest(privateKey, commonName), "test CSR");
  const issued = signCertificateRequest(ca, csr, options);
  return { certificate: issued.certificate, privateKey };
}
