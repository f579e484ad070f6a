/**
 * The certificate authority: creating a self-signed SPIFFE CA, and loading one (Custody's or one
 * made with openssl) from a directory holding ca.crt and ca.key.
 */
import type { KeyObject } from "node:crypto";
import { lstat } from "node:fs/promises";
import { join } from "node:path";
import { DEFAULT_TRUST_DOMAIN, isTrustDomain, NameError } from "../../crds/src/names.js";
import { caTrustDomain, KEY_USAGE, type ParsedCertificate, parseCertificatesPem } from "./certificate.js";
import { buildName, nameToDer, OID_COMMON_NAME, OID_ORGANIZATION } from "./dn.js";
import { CaError, FileError, IssueError } from "./errors.js";
import {
  ensureDirectory,
  MAX_PKI_FILE_BYTES,
  MODE_PRIVATE,
  MODE_PUBLIC,
  readBoundedFile,
  writeFilesAtomically,
} from "./files.js";
import {
  assertSigningKey,
  DEFAULT_KEY_ALGORITHM,
  generateKeyPair,
  type KeyAlgorithm,
  privateKeyFromPem,
  privateKeyToPem,
  publicKeyDer,
  sameKey,
} from "./keys.js";
import {
  basicConstraints,
  keyIdentifier,
  keyUsage,
  signCertificate,
  subjectAltName,
  subjectKeyIdentifier,
} from "./template.js";

export const CA_CERTIFICATE_FILE = "ca.crt";
export const CA_KEY_FILE = "ca.key";

const DAY_SECONDS = 86_400;
export const DEFAULT_CA_LIFETIME_SECONDS = 365 * DAY_SECONDS;
export const MIN_CA_LIFETIME_SECONDS = 3_600;
export const MAX_CA_LIFETIME_SECONDS = 3_650 * DAY_SECONDS;
/** Backdating absorbs clock skew between the CA host and verifiers (a common cause of "not yet valid"). */
export const CLOCK_SKEW_SECONDS = 60;

export interface CertificateAuthority {
  readonly certificate: ParsedCertificate;
  readonly privateKey: KeyObject;
  /** From the CA's `spiffe://<td>` URI SAN; undefined for a CA that is not a SPIFFE CA. */
  readonly trustDomain: string | undefined;
}

export interface CreateCaOptions {
  readonly trustDomain?: string;
  readonly keyAlgorithm?: KeyAlgorithm;
  readonly lifetimeSeconds?: number;
  readonly now?: Date;
}

export async function createCertificateAuthority(
  options: CreateCaOptions = {},
): Promise<CertificateAuthority> {
  const trustDomain = options.trustDomain ?? DEFAULT_TRUST_DOMAIN;
  if (!isTrustDomain(trustDomain)) {
    throw new NameError(
      "invalid_trust_domain",
      `"${trustDomain}" is not a trust domain: use lower-case letters, digits, '.', '-' and '_' (e.g. custody.local).`,
    );
  }
  const lifetime = options.lifetimeSeconds ?? DEFAULT_CA_LIFETIME_SECONDS;
  if (
    !Number.isInteger(lifetime) ||
    lifetime < MIN_CA_LIFETIME_SECONDS ||
    lifetime > MAX_CA_LIFETIME_SECONDS
  ) {
    throw new IssueError(
      "invalid_lifetime",
      `a CA lifetime must be ${MIN_CA_LIFETIME_SECONDS} to ${MAX_CA_LIFETIME_SECONDS} seconds (1 hour to 3650 days).`,
    );
  }
  const now = options.now ?? new Date();
  const { privateKey, publicKey } = await generateKeyPair(options.keyAlgorithm ?? DEFAULT_KEY_ALGORITHM);
  const spki = publicKeyDer(publicKey);
  const subject = buildName([
    { type: OID_ORGANIZATION, value: "Custody" },
    { type: OID_COMMON_NAME, value: `Custody CA ${trustDomain}` },
  ]);
  const names = subjectAltName({ uris: [`spiffe://${trustDomain}`] });
  const certificate = signCertificate(
    {
      issuerName: nameToDer(subject),
      subject,
      subjectPublicKeyInfo: spki,
      notBefore: new Date(now.getTime() - CLOCK_SKEW_SECONDS * 1000),
      notAfter: new Date(now.getTime() + lifetime * 1000),
      // pathLen 0: the CA signs workloads directly; an intermediate would need a deliberate new CA.
      extensions: [
        basicConstraints(true, 0),
        keyUsage(KEY_USAGE.keyCertSign | KEY_USAGE.cRLSign),
        subjectKeyIdentifier(keyIdentifier(spki)),
        ...(names === undefined ? [] : [names]),
      ],
    },
    privateKey,
  );
  return { certificate, privateKey, trustDomain };
}

/** Checks a certificate and key can act as a CA together; throws CaError otherwise. */
export function certificateAuthorityFrom(
  certificate: ParsedCertificate,
  privateKey: KeyObject,
  source: string,
): CertificateAuthority {
  if (!certificate.isCa) {
    throw new CaError(
      "not_a_ca",
      `${source}: "${certificate.subject}" is not a CA certificate (basicConstraints CA is absent or false).`,
    );
  }
  if (certificate.keyUsage !== undefined && (certificate.keyUsage & KEY_USAGE.keyCertSign) === 0) {
    throw new CaError("not_a_ca", `${source}: "${certificate.subject}" has keyUsage without keyCertSign.`);
  }
  if (!sameKey(certificate.publicKey, privateKey)) {
    throw new CaError(
      "ca_key_mismatch",
      `${source}: the private key does not belong to "${certificate.subject}".`,
    );
  }
  assertSigningKey(privateKey, source);
  return { certificate, privateKey, trustDomain: caTrustDomain(certificate) };
}

export function caPaths(directory: string): { readonly certificate: string; readonly key: string } {
  return { certificate: join(directory, CA_CERTIFICATE_FILE), key: join(directory, CA_KEY_FILE) };
}

/** Loads DIR/ca.crt (exactly one certificate) and DIR/ca.key (unencrypted). */
export async function loadCertificateAuthority(directory: string): Promise<CertificateAuthority> {
  const paths = caPaths(directory);
  const [certificate] = parseCertificatesPem(await readBoundedFile(paths.certificate, MAX_PKI_FILE_BYTES), {
    source: paths.certificate,
    maxCertificates: 1,
  });
  if (certificate === undefined) throw new Error("parseCertificatesPem returned no certificate");
  const privateKey = privateKeyFromPem(await readBoundedFile(paths.key, MAX_PKI_FILE_BYTES), paths.key);
  return certificateAuthorityFrom(certificate, privateKey, directory);
}

/**
 * Writes DIR/ca.crt and DIR/ca.key (mode 0600), creating DIR (mode 0700) if needed. An existing CA
 * is never replaced unless `force`: a lost CA key cannot be recovered, and every certificate it
 * signed stops being renewable.
 */
export async function writeCertificateAuthority(
  directory: string,
  ca: CertificateAuthority,
  options: { readonly force: boolean },
): Promise<void> {
  const paths = caPaths(directory);
  if (!options.force) {
    const existing = await existingPaths([paths.key, paths.certificate]);
    if (existing.length > 0) throw caExists(existing);
  }
  await ensureDirectory(directory, 0o700);
  try {
    await writeFilesAtomically(
      [
        { path: paths.key, data: privateKeyToPem(ca.privateKey), mode: MODE_PRIVATE },
        { path: paths.certificate, data: ca.certificate.pem, mode: MODE_PUBLIC },
      ],
      { overwrite: options.force },
    );
  } catch (error) {
    // Lost a race with another writer after the check above: same answer, still nothing replaced.
    if (error instanceof FileError && error.code === "file_exists") throw caExists([paths.key]);
    throw error;
  }
}

function caExists(paths: readonly string[]): CaError {
  return new CaError(
    "ca_exists",
    `${paths.join(" and ")} already exist${paths.length === 1 ? "s" : ""}; refusing to overwrite a CA ` +
      "(a lost CA key is unrecoverable: certificates it issued could no longer be renewed). Move it away " +
      "or pass --force to replace it.",
  );
}

async function existingPaths(paths: readonly string[]): Promise<string[]> {
  const found: string[] = [];
  for (const path of paths) {
    try {
      await lstat(path);
      found.push(path);
    } catch {
      // Missing is what we want; any other problem surfaces when writing.
    }
  }
  return found;
}
