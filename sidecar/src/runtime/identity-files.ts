/**
 * The workload's identity as files: a directory with `tls.crt` (leaf first), `tls.key` and
 * `ca.crt`, shaped like a mounted kubernetes.io/tls Secret (what `custody local up` gives each
 * sidecar; on Kubernetes the sidecar obtains the same parts from the operator instead,
 * identity-delivery.ts). Kubernetes replaces all three at
 * once by swapping a `..data` symlink, so the three are read together and checked against each
 * other: a reader never pairs a new certificate with an old key.
 */
import type { KeyObject } from "node:crypto";
import { join } from "node:path";
import { CustodyError } from "../../../crds/src/errors.js";
import { parseSpiffeId, serviceId } from "../../../crds/src/names.js";
import { type ParsedCertificate, parseCertificatesPem } from "../../../pki/src/certificate.js";
import { readBoundedFile } from "../../../pki/src/files.js";
import { privateKeyFromPem, sameKey } from "../../../pki/src/keys.js";

export const CERTIFICATE_FILE = "tls.crt";
export const KEY_FILE = "tls.key";
export const CA_FILE = "ca.crt";
/** Present only during a rotation: the key the workload switches to once the registry has it. */
export const NEXT_KEY_FILE = "next.key";
const MAX_IDENTITY_FILE_BYTES = 64 * 1024;

export class IdentityFilesError extends CustodyError {
  declare readonly code: "identity_invalid";
  constructor(message: string) {
    super("identity_invalid", message);
  }
}

export interface WorkloadIdentity {
  /** `<name>.<namespace>`, from the certificate's SPIFFE id. */
  readonly serviceId: string;
  readonly trustDomain: string;
  readonly leaf: ParsedCertificate;
  readonly privateKey: KeyObject;
  /** PEM for TLS: the certificate chain, the key, and the CA(s) to trust. */
  readonly certificatePem: string;
  readonly keyPem: string;
  readonly caPem: string;
  readonly notAfterMs: number;
  /**
   * The next key while a rotation is under way: messages sealed (JWE) to it during the switch can
   * be opened. Undefined otherwise, or when the file does not hold a usable key.
   */
  readonly nextPrivateKey: KeyObject | undefined;
}

export async function loadIdentityFiles(directory: string): Promise<WorkloadIdentity> {
  const [certificatePem, keyPem, caPem] = await Promise.all(
    [CERTIFICATE_FILE, KEY_FILE, CA_FILE].map((name) =>
      readBoundedFile(join(directory, name), MAX_IDENTITY_FILE_BYTES),
    ),
  );
  if (certificatePem === undefined || keyPem === undefined || caPem === undefined) {
    throw new IdentityFilesError(`${directory} must hold ${CERTIFICATE_FILE}, ${KEY_FILE} and ${CA_FILE}.`);
  }
  return identityFromPem({
    certificatePem,
    keyPem,
    caPem,
    nextPrivateKey: await readNextKey(directory),
    source: directory,
  });
}

/**
 * A workload identity from its PEM parts, wherever they came from (the files above, or the
 * operator's identity delivery): the key must belong to the leaf, and the leaf must carry exactly
 * one SPIFFE id of the mesh's form.
 */
export function identityFromPem(parts: {
  readonly certificatePem: string;
  readonly keyPem: string;
  readonly caPem: string;
  readonly nextPrivateKey: KeyObject | undefined;
  /** Where the parts came from, for messages. */
  readonly source: string;
}): WorkloadIdentity {
  const { certificatePem, keyPem, caPem, source } = parts;
  const [leaf] = parseCertificatesPem(certificatePem, {
    source: `${source} ${CERTIFICATE_FILE}`,
    maxCertificates: 8,
  });
  if (leaf === undefined)
    throw new IdentityFilesError(`${source}: ${CERTIFICATE_FILE} holds no certificate.`);
  const privateKey = privateKeyFromPem(keyPem, `${source} ${KEY_FILE}`);
  if (!sameKey(privateKey, leaf.publicKey)) {
    throw new IdentityFilesError(
      `${source}: ${KEY_FILE} does not belong to ${CERTIFICATE_FILE} (a rotation caught half-way?); keeping the previous identity.`,
    );
  }
  parseCertificatesPem(caPem, { source: `${source} ${CA_FILE}`, maxCertificates: 64 });
  const spiffeIds = leaf.uris.filter((uri) => uri.startsWith("spiffe://"));
  const parsed =
    spiffeIds.length === 1 && spiffeIds[0] !== undefined ? parseSpiffeId(spiffeIds[0]) : undefined;
  if (parsed === undefined) {
    throw new IdentityFilesError(
      `${source}: the certificate must carry exactly one spiffe://<trust-domain>/ns/<ns>/si/<name> URI.`,
    );
  }
  return {
    serviceId: serviceId(parsed.ref),
    trustDomain: parsed.trustDomain,
    leaf,
    privateKey,
    certificatePem,
    keyPem,
    caPem,
    notAfterMs: leaf.notAfter.getTime(),
    nextPrivateKey: parts.nextPrivateKey,
  };
}

/** The next key if there is a readable one: it is an extra, so any problem with it means none. */
async function readNextKey(directory: string): Promise<KeyObject | undefined> {
  try {
    const path = join(directory, NEXT_KEY_FILE);
    return privateKeyFromPem(await readBoundedFile(path, MAX_IDENTITY_FILE_BYTES), path);
  } catch {
    return undefined;
  }
}
