/**
 * The names fixed by the contract (ARCHITECTURE.md, "Names"). Everything that builds or parses a
 * service id or a SPIFFE id goes through here, so the operator, the sidecar and the PKI agree.
 */
import { CustodyError } from "./errors.js";

export const API_GROUP = "custody.dev";
export const API_VERSION = "v1alpha1";
export const API_GROUP_VERSION = `${API_GROUP}/${API_VERSION}`;

export const ANNOTATION_INJECT = "custody.dev/inject";
export const ANNOTATION_IDENTITY = "custody.dev/identity";
export const ANNOTATION_APP_PORT = "custody.dev/app-port";
/**
 * Traffic capture, per pod (`"true"` or `"false"`, over the operator's `--sidecar-capture`): an init
 * container makes the pod's network namespace send inbound TCP for the app port to the sidecar and
 * refuse every other port, so no other pod can call the app without the sidecar.
 */
export const ANNOTATION_CAPTURE = "custody.dev/capture";
/** With capture: inbound ports other pods may still reach directly (`"9090,9091"`), e.g. a metrics port. */
export const ANNOTATION_CAPTURE_EXCLUDE_INBOUND_PORTS = "custody.dev/capture-exclude-inbound-ports";

/**
 * What a sidecar does with calls for hosts that are not mesh services: the operator injects one of
 * these (CUSTODY_OUTBOUND_POLICY), the sidecar enforces it (sidecar/src/runtime/passthrough.ts).
 */
export const OUTBOUND_POLICIES = ["passthrough", "registry-only"] as const;
export type OutboundPolicy = (typeof OUTBOUND_POLICIES)[number];

/** JWS `typ` of a call-chain link (contract "Call-chain tokens"); nothing else may carry it. */
export const CHAIN_LINK_TYPE = "custody+jwt";

export const DEFAULT_TRUST_DOMAIN = "custody.local";

/** RFC 1123 label, as Kubernetes requires for namespaces (and Custody for ServiceIdentity names). */
export const DNS_LABEL_PATTERN = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
const dnsLabel = new RegExp(DNS_LABEL_PATTERN);

/**
 * `<name>.<namespace>`: exactly one dot, because both parts are DNS labels. That keeps the id
 * unambiguous, which a ServiceIdentity name with dots in it would not be.
 */
export const SERVICE_ID_PATTERN = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
const serviceIdRegex = new RegExp(SERVICE_ID_PATTERN);

/**
 * What an AccessPolicy may write where it names a service: a ServiceIdentity name (same namespace
 * as the policy) or a full service id. At most one dot, so the two forms cannot be confused.
 */
export const SERVICE_REF_PATTERN =
  "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$";
const serviceRefRegex = new RegExp(SERVICE_REF_PATTERN);

/** RFC 1123 subdomain, what Kubernetes requires for most object names (service accounts included). */
export const DNS_SUBDOMAIN_PATTERN =
  "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
export const DNS_SUBDOMAIN_MAX_LENGTH = 253;
const dnsSubdomainRegex = new RegExp(DNS_SUBDOMAIN_PATTERN);

/** A SPIFFE trust domain: lower-case letters, digits, dots, dashes, underscores (SPIFFE-ID spec §2.1). */
export const TRUST_DOMAIN_PATTERN = "^[a-z0-9._-]{1,255}$";
const trustDomainRegex = new RegExp(TRUST_DOMAIN_PATTERN);

export interface ServiceRef {
  readonly name: string;
  readonly namespace: string;
}

export class NameError extends CustodyError {}

export function isDnsLabel(value: string): boolean {
  return dnsLabel.test(value);
}

export function isServiceId(value: string): boolean {
  return serviceIdRegex.test(value);
}

export function isTrustDomain(value: string): boolean {
  return trustDomainRegex.test(value) && !value.startsWith(".") && !value.endsWith(".");
}

export function isServiceRef(value: string): boolean {
  return serviceRefRegex.test(value);
}

export function isDnsSubdomain(value: string): boolean {
  return value.length <= DNS_SUBDOMAIN_MAX_LENGTH && dnsSubdomainRegex.test(value);
}

/**
 * The full service id a policy means by `ref`: a bare name lives in the policy's own namespace.
 * Resolved once, when the policy is compiled, so the sidecar only ever compares full ids.
 */
export function resolveServiceRef(ref: string, namespace: string): string {
  if (isServiceId(ref)) return ref;
  if (!isDnsLabel(ref)) {
    throw new NameError(
      "invalid_service_ref",
      `"${ref}" is not a service reference: write a ServiceIdentity name (cart) or a service id (cart.shop).`,
    );
  }
  return serviceId({ name: ref, namespace });
}

export function serviceId(ref: ServiceRef): string {
  const id = `${ref.name}.${ref.namespace}`;
  if (!isServiceId(id)) {
    throw new NameError(
      "invalid_service_id",
      `"${id}" is not a service id: name and namespace must each be a DNS label (lower-case letters, digits, '-', at most 63 characters).`,
    );
  }
  return id;
}

export function parseServiceId(id: string): ServiceRef {
  if (!isServiceId(id)) {
    throw new NameError(
      "invalid_service_id",
      `"${id}" is not a service id: expected <name>.<namespace>, e.g. cart.shop, each part a DNS label.`,
    );
  }
  const dot = id.indexOf(".");
  return { name: id.slice(0, dot), namespace: id.slice(dot + 1) };
}

export function spiffeIdFor(trustDomain: string, ref: ServiceRef): string {
  if (!isTrustDomain(trustDomain)) {
    throw new NameError(
      "invalid_trust_domain",
      `"${trustDomain}" is not a trust domain: use lower-case letters, digits, '.', '-' and '_' (e.g. custody.local).`,
    );
  }
  serviceId(ref);
  return `spiffe://${trustDomain}/ns/${ref.namespace}/si/${ref.name}`;
}

const spiffeIdRegex =
  /^spiffe:\/\/([a-z0-9._-]{1,255})\/ns\/([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)\/si\/([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$/;

/** The trust domain and service of a Custody SPIFFE id, or undefined for any other URI. */
export function parseSpiffeId(uri: string): { trustDomain: string; ref: ServiceRef } | undefined {
  const match = spiffeIdRegex.exec(uri);
  if (match === null) return undefined;
  const [, trustDomain, namespace, , name] = match;
  if (trustDomain === undefined || namespace === undefined || name === undefined) return undefined;
  if (!isTrustDomain(trustDomain)) return undefined;
  return { trustDomain, ref: { name, namespace } };
}
