/**
 * Secret `custody-identity.<namespace>.<name>` in the operator's own namespace: the whole state of
 * one identity's credentials, so that the operator keeps nothing in memory it could lose —
 * `tls.crt`, `tls.key`, `ca.crt` (type kubernetes.io/tls), plus, during a rotation, the next key
 * pair (`next.crt`, `next.key`) and, in annotations, when that next key was seen published and the
 * previous public key that stays published until its certificate expires.
 *
 * Not in the workload's namespace: Kubernetes lets any pod there mount any Secret of its
 * namespace, and anyone who may read Secrets there read it, so a private key kept there is the
 * namespace's, not the identity's. Sidecars obtain it from the operator instead (identity
 * delivery, authenticated by the pod's own service-account token). A Secret cannot be owned
 * across namespaces, so the operator deletes it itself when the identity goes; the identity's
 * uid in an annotation tells its Secret from one left by a deleted identity of the same name.
 */
import { createHash, type KeyObject } from "node:crypto";
import type { PublicJwk } from "../../../crds/src/jwk.js";
import { parseSpiffeId } from "../../../crds/src/names.js";
import { type ParsedCertificate, parseCertificatesPem } from "../../../pki/src/certificate.js";
import { privateKeyFromPem, privateKeyToPem, sameKey } from "../../../pki/src/keys.js";
import { publishedKeyOf } from "../../../pki/src/thumbprint.js";
import {
  MANAGED_BY,
  MANAGED_BY_LABEL,
  type ObjectKey,
  type Store,
  type StoredResource,
  type StoredSecret,
} from "../store/store.js";

export const IDENTITY_SECRET_PREFIX = "custody-identity.";
export const IDENTITY_SECRET_TYPE = "kubernetes.io/tls";
export const CERTIFICATE_KEY = "tls.crt";
export const PRIVATE_KEY_KEY = "tls.key";
export const CA_KEY = "ca.crt";
export const NEXT_CERTIFICATE_KEY = "next.crt";
export const NEXT_PRIVATE_KEY_KEY = "next.key";
export const IDENTITY_LABEL = "custody.dev/identity";
export const IDENTITY_NAMESPACE_LABEL = "custody.dev/identity-namespace";
export const IDENTITY_UID_ANNOTATION = "custody.dev/identity-uid";
export const PROFILE_ANNOTATION = "custody.dev/certificate-profile";
export const NEXT_PROFILE_ANNOTATION = "custody.dev/next-certificate-profile";
export const NEXT_PUBLISHED_AT_ANNOTATION = "custody.dev/next-published-at";
export const PREVIOUS_KEY_ANNOTATION = "custody.dev/previous-key";

/**
 * Where the state of identity `identity` lives: namespaces and identity names are DNS labels (no
 * dots), so `<prefix><namespace>.<name>` names one identity and can be read back.
 */
export function identitySecretKey(stateNamespace: string, identity: ObjectKey): ObjectKey {
  return {
    namespace: stateNamespace,
    name: `${IDENTITY_SECRET_PREFIX}${identity.namespace}.${identity.name}`,
  };
}

/** The identity a Secret of the state namespace belongs to, from its labels, else its name. */
export function identityOfSecret(secret: {
  readonly name: string;
  readonly labels?: Readonly<Record<string, string>>;
}): ObjectKey | undefined {
  const name = secret.labels?.[IDENTITY_LABEL];
  const namespace = secret.labels?.[IDENTITY_NAMESPACE_LABEL];
  if (name !== undefined && namespace !== undefined) return { namespace, name };
  if (!secret.name.startsWith(IDENTITY_SECRET_PREFIX)) return undefined;
  const parts = secret.name.slice(IDENTITY_SECRET_PREFIX.length).split(".");
  return parts.length === 2 && parts[0] && parts[1] ? { namespace: parts[0], name: parts[1] } : undefined;
}

/**
 * The Secret of identity object `resource` as the store has it, or undefined when there is none or
 * it was left by a deleted namesake: what the registry publishes and identity delivery hands out.
 */
export function issuedIdentitySecret(
  store: Pick<Store, "secret">,
  stateNamespace: string,
  resource: StoredResource,
): StoredSecret | undefined {
  const secret = store.secret(identitySecretKey(stateNamespace, resource));
  return secret !== undefined && secretBelongsTo(secret, resource) ? secret : undefined;
}

/** Whether `secret` was written for this very identity object (not a deleted namesake). */
export function secretBelongsTo(
  secret: { readonly annotations: Readonly<Record<string, string>> },
  identity: { readonly uid: string },
): boolean {
  // Strict: a Secret without the uid was not written for this object by this operator.
  return secret.annotations[IDENTITY_UID_ANNOTATION] === identity.uid;
}

/** One key pair with its certificate, and how the registry names its public key. */
export interface KeyMaterial {
  readonly certificate: ParsedCertificate;
  readonly privateKey: KeyObject;
  readonly kid: string;
  readonly jwk: PublicJwk;
  /** What the certificate was issued for (key algorithm and duration): a spec change re-issues. */
  readonly profile: string;
}

/** A public key no longer used to sign, published until its certificate expires. */
export interface RetiredKey {
  readonly kid: string;
  readonly jwk: PublicJwk;
  readonly notAfterMs: number;
}

export interface IdentityMaterial {
  readonly current: KeyMaterial;
  readonly next?: KeyMaterial;
  /** When the registry was first seen carrying `next`: the propagation delay counts from here. */
  readonly nextPublishedAtMs?: number;
  readonly previous?: RetiredKey;
  readonly caPem: string;
}

/**
 * The material of a Secret, or why it cannot be used (then the identity is issued afresh). A
 * broken `next` pair is dropped rather than failing the whole Secret: it was never used to sign.
 */
export function readIdentityMaterial(
  secret: StoredSecret,
  expected: { readonly trustDomain: string; readonly serviceId: string },
): { readonly material: IdentityMaterial } | { readonly problem: string } {
  const { data, annotations } = secret;
  const current = readKeyPair(
    data[CERTIFICATE_KEY],
    data[PRIVATE_KEY_KEY],
    annotations[PROFILE_ANNOTATION],
    expected,
  );
  if ("problem" in current) return current;
  const next =
    data[NEXT_CERTIFICATE_KEY] === undefined
      ? undefined
      : readKeyPair(
          data[NEXT_CERTIFICATE_KEY],
          data[NEXT_PRIVATE_KEY_KEY],
          annotations[NEXT_PROFILE_ANNOTATION],
          expected,
        );
  const usableNext = next !== undefined && "material" in next ? next.material : undefined;
  const publishedAt = Date.parse(annotations[NEXT_PUBLISHED_AT_ANNOTATION] ?? "");
  return {
    material: {
      current: current.material,
      ...(usableNext === undefined ? {} : { next: usableNext }),
      ...(usableNext !== undefined && Number.isFinite(publishedAt) ? { nextPublishedAtMs: publishedAt } : {}),
      ...optionalPrevious(annotations[PREVIOUS_KEY_ANNOTATION]),
      caPem: data[CA_KEY] ?? "",
    },
  };
}

/** The Secret in `stateNamespace` that holds `material` for identity `base`. */
export function identitySecretOf(
  stateNamespace: string,
  base: { readonly namespace: string; readonly name: string; readonly uid: string },
  material: IdentityMaterial,
  resourceVersion: string | undefined,
): StoredSecret {
  const data: Record<string, string> = {
    [CERTIFICATE_KEY]: material.current.certificate.pem,
    [PRIVATE_KEY_KEY]: privateKeyToPem(material.current.privateKey),
    [CA_KEY]: material.caPem,
  };
  const annotations: Record<string, string> = {
    [PROFILE_ANNOTATION]: material.current.profile,
    [IDENTITY_UID_ANNOTATION]: base.uid,
  };
  if (material.next !== undefined) {
    data[NEXT_CERTIFICATE_KEY] = material.next.certificate.pem;
    data[NEXT_PRIVATE_KEY_KEY] = privateKeyToPem(material.next.privateKey);
    annotations[NEXT_PROFILE_ANNOTATION] = material.next.profile;
    if (material.nextPublishedAtMs !== undefined) {
      annotations[NEXT_PUBLISHED_AT_ANNOTATION] = new Date(material.nextPublishedAtMs).toISOString();
    }
  }
  if (material.previous !== undefined) {
    annotations[PREVIOUS_KEY_ANNOTATION] = JSON.stringify({
      kid: material.previous.kid,
      notAfter: new Date(material.previous.notAfterMs).toISOString(),
      jwk: material.previous.jwk,
    });
  }
  return {
    ...identitySecretKey(stateNamespace, base),
    ...(resourceVersion === undefined ? {} : { resourceVersion }),
    type: IDENTITY_SECRET_TYPE,
    labels: {
      [MANAGED_BY_LABEL]: MANAGED_BY,
      [IDENTITY_LABEL]: base.name,
      [IDENTITY_NAMESPACE_LABEL]: base.namespace,
    },
    annotations,
    data,
  };
}

export function keyMaterialOf(
  certificate: ParsedCertificate,
  privateKey: KeyObject,
  profile: string,
): KeyMaterial {
  const { kid, jwk } = publishedKeyOf(certificate.publicKey);
  return { certificate, privateKey, kid, jwk, profile };
}

/** Lower-case hex of the DER's SHA-256, as the status reports it. */
export function fingerprintOf(certificate: ParsedCertificate): string {
  return createHash("sha256").update(certificate.der).digest("hex");
}

/** The serial number as lower-case hex without separators or leading zero bytes. */
export function serialOf(certificate: ParsedCertificate): string {
  const hex = certificate.serialNumber.replaceAll(":", "").toLowerCase();
  return hex.replace(/^(00)+(?=.)/, "") || "0";
}

function readKeyPair(
  certificatePem: string | undefined,
  keyPem: string | undefined,
  profile: string | undefined,
  expected: { readonly trustDomain: string; readonly serviceId: string },
): { readonly material: KeyMaterial } | { readonly problem: string } {
  if (certificatePem === undefined || keyPem === undefined) {
    return { problem: "the Secret lacks a certificate or its key" };
  }
  let certificate: ParsedCertificate | undefined;
  let privateKey: KeyObject;
  try {
    [certificate] = parseCertificatesPem(certificatePem, { source: CERTIFICATE_KEY, maxCertificates: 4 });
    privateKey = privateKeyFromPem(keyPem, PRIVATE_KEY_KEY);
  } catch (error) {
    return { problem: `the Secret's certificate or key does not parse (${messageOf(error)})` };
  }
  if (certificate === undefined) return { problem: "the Secret holds no certificate" };
  if (!sameKey(privateKey, certificate.publicKey)) {
    return { problem: "the Secret's key does not belong to its certificate" };
  }
  const named = certificate.uris
    .map(parseSpiffeId)
    .some(
      (parsed) =>
        parsed !== undefined &&
        parsed.trustDomain === expected.trustDomain &&
        `${parsed.ref.name}.${parsed.ref.namespace}` === expected.serviceId,
    );
  if (!named) return { problem: `the Secret's certificate is not for ${expected.serviceId}` };
  try {
    return { material: keyMaterialOf(certificate, privateKey, profile ?? "") };
  } catch (error) {
    return { problem: `the Secret's key cannot be published (${messageOf(error)})` };
  }
}

function optionalPrevious(text: string | undefined): { previous?: RetiredKey } {
  if (text === undefined || text.length > 8192) return {};
  try {
    const value = JSON.parse(text) as { kid?: unknown; notAfter?: unknown; jwk?: unknown };
    const notAfterMs = typeof value.notAfter === "string" ? Date.parse(value.notAfter) : Number.NaN;
    if (typeof value.kid !== "string" || !Number.isFinite(notAfterMs) || typeof value.jwk !== "object") {
      return {};
    }
    // Re-validated as a registry key by the publisher before it is published anywhere.
    return { previous: { kid: value.kid, jwk: value.jwk as PublicJwk, notAfterMs } };
  } catch {
    return {};
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
