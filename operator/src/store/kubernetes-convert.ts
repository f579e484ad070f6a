/**
 * Kubernetes objects ⇄ the store's shapes. Reads accept both forms client-node hands out: typed
 * model instances (from the generated list/read calls) and plain JSON (from watches); only field
 * names they share are read. Custom resources stay the plain JSON they arrived as.
 */
import type { V1ConfigMap, V1ObjectMeta, V1OwnerReference, V1Secret } from "@kubernetes/client-node";
import {
  IDENTITY,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  type OwnerRef,
  POLICY,
  type ResourceKind,
  type StoredConfigMap,
  type StoredResource,
  type StoredSecret,
} from "./store.js";

export const CUSTODY_GROUP = "custody.dev";
export const CUSTODY_VERSION = "v1alpha1";
export const CUSTODY_API_VERSION = `${CUSTODY_GROUP}/${CUSTODY_VERSION}`;
export const PLURALS: Readonly<Record<ResourceKind, string>> = {
  [IDENTITY]: "serviceidentities",
  [POLICY]: "accesspolicies",
};

const INTEGER = /^[0-9]{1,30}$/;

/**
 * Orders two resourceVersions when both are integers (etcd revisions, what every real API server
 * hands out); undefined otherwise, since Kubernetes declares them opaque.
 */
export function compareResourceVersions(a: string | undefined, b: string | undefined): number | undefined {
  if (a === undefined || b === undefined || !INTEGER.test(a) || !INTEGER.test(b)) return undefined;
  const left = BigInt(a);
  const right = BigInt(b);
  return left < right ? -1 : left > right ? 1 : 0;
}

/**
 * Whether `candidate` should replace `current` in a cache: it is newer, or the two cannot be
 * ordered and differ (then the latest news wins).
 */
export function supersedes(candidate: string | undefined, current: string | undefined): boolean {
  if (current === undefined) return true;
  const order = compareResourceVersions(candidate, current);
  return order === undefined ? candidate !== current : order > 0;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function stringMap(value: unknown): Record<string, string> {
  const result: Record<string, string> = {};
  if (!isRecord(value)) return result;
  for (const [key, entry] of Object.entries(value)) if (typeof entry === "string") result[key] = entry;
  return result;
}

/** A ServiceIdentity or AccessPolicy as cached; undefined when it lacks what every stored object has. */
export function storedResourceOf(kind: ResourceKind, object: unknown): StoredResource | undefined {
  if (!isRecord(object) || !isRecord(object.metadata)) return undefined;
  const { name, namespace, uid, resourceVersion, generation } = object.metadata;
  if (typeof name !== "string" || typeof namespace !== "string" || typeof uid !== "string") return undefined;
  if (typeof resourceVersion !== "string") return undefined;
  return {
    kind,
    namespace,
    name,
    uid,
    generation: typeof generation === "number" ? generation : 0,
    resourceVersion,
    object,
  };
}

function isOurKind(kind: string | undefined): kind is ResourceKind {
  return kind === IDENTITY || kind === POLICY;
}

/** The ServiceIdentity (or AccessPolicy) that controls the object, preferring the controller reference. */
function ownerOf(references: readonly V1OwnerReference[] | undefined): OwnerRef | undefined {
  const ours = (references ?? []).filter(
    (reference) => isOurKind(reference.kind) && reference.apiVersion?.startsWith(`${CUSTODY_GROUP}/`),
  );
  const chosen = ours.find((reference) => reference.controller === true) ?? ours[0];
  if (chosen === undefined || !isOurKind(chosen.kind)) return undefined;
  return { kind: chosen.kind, name: chosen.name, uid: chosen.uid };
}

interface CommonFields {
  readonly namespace: string;
  readonly name: string;
  readonly resourceVersion?: string;
  readonly uid?: string;
  readonly labels: Record<string, string>;
  readonly annotations: Record<string, string>;
  readonly owner?: OwnerRef;
}

function commonFieldsOf(metadata: V1ObjectMeta | undefined): CommonFields | undefined {
  const { name, namespace } = metadata ?? {};
  if (name === undefined || namespace === undefined) return undefined;
  const owner = ownerOf(metadata?.ownerReferences);
  return {
    namespace,
    name,
    ...(metadata?.resourceVersion === undefined ? {} : { resourceVersion: metadata.resourceVersion }),
    ...(metadata?.uid === undefined ? {} : { uid: metadata.uid }),
    labels: stringMap(metadata?.labels),
    annotations: stringMap(metadata?.annotations),
    ...(owner === undefined ? {} : { owner }),
  };
}

const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export interface DecodedSecret {
  readonly secret: StoredSecret;
  /** Keys left out because their value is not UTF-8 text (not something the operator wrote). */
  readonly undecodable: readonly string[];
}

export function storedSecretOf(secret: V1Secret): DecodedSecret | undefined {
  const common = commonFieldsOf(secret.metadata);
  if (common === undefined) return undefined;
  const data: Record<string, string> = {};
  const undecodable: string[] = [];
  for (const [key, encoded] of Object.entries(stringMap(secret.data))) {
    try {
      data[key] = UTF8.decode(Buffer.from(encoded, "base64"));
    } catch {
      undecodable.push(key);
    }
  }
  return { secret: { ...common, type: secret.type ?? "Opaque", data }, undecodable };
}

export function storedConfigMapOf(configMap: V1ConfigMap): StoredConfigMap | undefined {
  const common = commonFieldsOf(configMap.metadata);
  if (common === undefined) return undefined;
  return { ...common, data: stringMap(configMap.data) };
}

function metadataOf(object: StoredSecret | StoredConfigMap): V1ObjectMeta {
  return {
    name: object.name,
    namespace: object.namespace,
    ...(object.resourceVersion === undefined ? {} : { resourceVersion: object.resourceVersion }),
    // What the informers select on: without it, the operator would lose sight of its own write.
    labels: { ...object.labels, [MANAGED_BY_LABEL]: MANAGED_BY },
    annotations: { ...object.annotations },
    ...(object.owner === undefined
      ? {}
      : {
          ownerReferences: [
            {
              apiVersion: CUSTODY_API_VERSION,
              kind: object.owner.kind,
              name: object.owner.name,
              uid: object.owner.uid,
              controller: true,
              blockOwnerDeletion: true,
            },
          ],
        }),
  };
}

export function secretBodyOf(secret: StoredSecret): V1Secret {
  const data: Record<string, string> = {};
  for (const [key, text] of Object.entries(secret.data))
    data[key] = Buffer.from(text, "utf8").toString("base64");
  return { apiVersion: "v1", kind: "Secret", metadata: metadataOf(secret), type: secret.type, data };
}

export function configMapBodyOf(configMap: StoredConfigMap): V1ConfigMap {
  return {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: metadataOf(configMap),
    data: { ...configMap.data },
  };
}
