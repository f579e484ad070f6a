/**
 * What the reconcilers read and write, and nothing more: the seam between one reconcile logic and
 * its two homes (Kubernetes through client-node, a local directory of manifests and files).
 *
 * Reads of custom resources and of the operator's own Secrets and ConfigMaps come from a cache that
 * the store keeps current (informers, or re-reading the directory) and announces through
 * `onChange`. Writes go straight to the backing store with optimistic concurrency: a write that
 * names a `resourceVersion` fails with StoreConflictError when the object changed meanwhile, and
 * the reconciler retries with a fresh read. Objects are passed raw (`unknown` spec): validating
 * them is the reconciler's job, so an invalid object gets a status condition instead of vanishing.
 */
import { CustodyError } from "../../../crds/src/errors.js";

export const IDENTITY = "ServiceIdentity";
export const POLICY = "AccessPolicy";
export type ResourceKind = typeof IDENTITY | typeof POLICY;

/** Labels the operator puts on what it writes, and selects its Secrets and ConfigMaps by. */
export const MANAGED_BY_LABEL = "app.kubernetes.io/managed-by";
export const MANAGED_BY = "custody-operator";

export interface ObjectKey {
  readonly namespace: string;
  readonly name: string;
}

/** A ServiceIdentity or AccessPolicy as stored, not yet validated. */
export interface StoredResource {
  readonly kind: ResourceKind;
  readonly namespace: string;
  readonly name: string;
  /** Stable across updates, new after delete + create (owner references point at it). */
  readonly uid: string;
  /** metadata.generation: bumped by spec changes only. */
  readonly generation: number;
  readonly resourceVersion: string;
  /** The whole object as read (apiVersion, kind, metadata, spec, status). */
  readonly object: Readonly<Record<string, unknown>>;
}

export interface OwnerRef {
  readonly kind: ResourceKind;
  readonly name: string;
  readonly uid: string;
}

/** A Secret or ConfigMap the operator manages. `data` is text (PEM, JSON): never base64 here. */
export interface StoredData {
  readonly namespace: string;
  readonly name: string;
  /** Absent on an object not yet written. */
  readonly resourceVersion?: string;
  /** The server's identity of this incarnation of the object; absent before it was written. */
  readonly uid?: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  readonly data: Readonly<Record<string, string>>;
  /** The identity it belongs to: deleting that identity deletes this object. */
  readonly owner?: OwnerRef;
}

/** A Secret: `type` is fixed at creation (kubernetes.io/tls for identities, Opaque otherwise). */
export interface StoredSecret extends StoredData {
  readonly type: string;
}

export type StoredConfigMap = StoredData;

export interface StoreChange {
  readonly kind: ResourceKind | "Secret" | "ConfigMap";
  readonly namespace: string;
  readonly name: string;
}

export type EventType = "Normal" | "Warning";

export interface StoreEvent {
  readonly type: EventType;
  /** CamelCase, e.g. CertificateIssued. */
  readonly reason: string;
  readonly message: string;
}

export interface Store {
  /** Loads the caches; resolves once they reflect the backing store (informers synced). */
  start(): Promise<void>;
  close(): Promise<void>;
  /** Called after the cache changed; the listener must not throw and should only enqueue work. */
  onChange(listener: (change: StoreChange) => void): void;

  resources(kind: ResourceKind): readonly StoredResource[];
  resource(kind: ResourceKind, key: ObjectKey): StoredResource | undefined;

  /** Cached Secrets carrying MANAGED_BY_LABEL. */
  secrets(): readonly StoredSecret[];
  secret(key: ObjectKey): StoredSecret | undefined;
  /** Bypasses the cache: what a retry after a conflict reads. */
  readSecret(key: ObjectKey): Promise<StoredSecret | undefined>;
  /**
   * Creates (no resourceVersion) or replaces (with one) a Secret; returns it as stored.
   * StoreConflictError when it exists already (create) or changed meanwhile (replace).
   */
  writeSecret(secret: StoredSecret): Promise<StoredSecret>;
  deleteSecret(key: ObjectKey): Promise<void>;

  /** Cached ConfigMaps carrying MANAGED_BY_LABEL. */
  configMaps(): readonly StoredConfigMap[];
  configMap(key: ObjectKey): StoredConfigMap | undefined;
  readConfigMap(key: ObjectKey): Promise<StoredConfigMap | undefined>;
  writeConfigMap(configMap: StoredConfigMap): Promise<StoredConfigMap>;
  deleteConfigMap(key: ObjectKey): Promise<void>;

  /**
   * Replaces `status` of a resource (the status subresource in Kubernetes). Resolves quietly
   * when the resource is gone: there is nobody left to tell.
   */
  writeStatus(kind: ResourceKind, key: ObjectKey, status: Readonly<Record<string, unknown>>): Promise<void>;
  /** Best effort: an event that cannot be recorded is logged, never fails a reconcile. */
  recordEvent(kind: ResourceKind, key: ObjectKey, uid: string, event: StoreEvent): void;
}

export class StoreError extends CustodyError {
  declare readonly code: "store_conflict" | "store_unavailable" | "store_invalid";
}

/** The object changed (or appeared) since it was read: read again and retry. */
export class StoreConflictError extends StoreError {
  constructor(message: string) {
    super("store_conflict", message);
  }
}

export function keyOf(object: ObjectKey): string {
  return `${object.namespace}/${object.name}`;
}
