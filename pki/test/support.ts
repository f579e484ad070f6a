/** Shared test helpers: temporary directories, a capturing CommandIO, and hand-built certificates. */
import { execFile } from "node:child_process";
import type { KeyObject } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Extension } from "@peculiar/asn1-x509";
import type { CommandIO } from "../../cli/src/kit.js";
import type { CertificateAuthority } from "../src/ca.js";
import type { ParsedCertificate } from "../src/certificate.js";
import { buildName, nameToDer, OID_COMMON_NAME } from "../src/dn.js";
import { publicKeyDer } from "../src/keys.js";
import {
  authorityKeyIdentifier,
  keyIdentifier,
  signCertificate,
  subjectKeyIdentifier,
} from "../src/template.js";

export const run = promisify(execFile);

/** A fresh directory under the OS temp dir; `cleanup` removes it and everything in it. */
export async function temporaryDirectory(): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), "custody-pki-"));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

export interface CapturedIO {
  readonly io: CommandIO;
  readonly stdout: () => string;
  readonly stderr: () => string;
}

export function captureIO(): CapturedIO {
  const out: string[] = [];
  const err: string[] = [];
  return {
    io: { stdout: (text) => out.push(text), stderr: (text) => err.push(text) },
    stdout: () => out.join(""),
    stderr: () => err.join(""),
  };
}

export const HOUR = 3_600_000;
export const DAY = 24 * HOUR;

export interface HandBuilt {
  readonly issuer:
    | CertificateAuthority
    | { readonly certificate: ParsedCertificate; readonly privateKey: KeyObject };
  readonly subjectKey: KeyObject;
  readonly commonName: string;
  readonly extensions: readonly Extension[];
  readonly notBefore?: Date;
  readonly notAfter?: Date;
  /** Defaults to true: an AKI naming the issuer's SKI. */
  readonly authorityKeyId?: boolean;
}

/**
 * A certificate with exactly the given extensions (plus SKI, and AKI unless disabled), for shapes
 * Custody itself never issues: intermediates, forgeries, unknown critical extensions.
 */
export function handBuilt(options: HandBuilt): ParsedCertificate {
  const spki = publicKeyDer(options.subjectKey);
  const issuerKeyId = options.issuer.certificate.subjectKeyId;
  const aki =
    options.authorityKeyId === false || issuerKeyId === undefined
      ? []
      : [authorityKeyIdentifier(Buffer.from(issuerKeyId, "hex"))];
  return signCertificate(
    {
      issuerName: options.issuer.certificate.subjectName,
      subject: buildName([{ type: OID_COMMON_NAME, value: options.commonName }]),
      subjectPublicKeyInfo: spki,
      notBefore: options.notBefore ?? new Date(Date.now() - HOUR),
      notAfter: options.notAfter ?? new Date(Date.now() + DAY),
      extensions: [...options.extensions, subjectKeyIdentifier(keyIdentifier(spki)), ...aki],
    },
    options.issuer.privateKey,
  );
}

/** A self-signed certificate with exactly the given extensions (plus SKI). */
export function selfSigned(
  key: KeyObject,
  commonName: string,
  extensions: readonly Extension[],
  validity: { readonly notBefore?: Date; readonly notAfter?: Date } = {},
): { readonly certificate: ParsedCertificate; readonly privateKey: KeyObject } {
  const subject = buildName([{ type: OID_COMMON_NAME, value: commonName }]);
  const spki = publicKeyDer(key);
  const certificate = signCertificate(
    {
      issuerName: nameToDer(subject),
      subject,
      subjectPublicKeyInfo: spki,
      notBefore: validity.notBefore ?? new Date(Date.now() - HOUR),
      notAfter: validity.notAfter ?? new Date(Date.now() + DAY),
      extensions: [...extensions, subjectKeyIdentifier(keyIdentifier(spki))],
    },
    key,
  );
  return { certificate, privateKey: key };
}
