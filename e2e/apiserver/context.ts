/** What request handlers share: the parsed request scope and the server's components. */
import type { Logger } from "pino";
import type { AdmissionChain } from "./admission.js";
import { NAMESPACES } from "./builtins.js";
import { forbidden, notFound } from "./errors.js";
import type { GarbageCollector } from "./gc.js";
import type { JsonObject } from "./json.js";
import { deletionTimestampOf } from "./meta.js";
import type { Registry } from "./registry.js";
import { apiVersionOf, groupResource, type ResourceType, storageKeyOf } from "./resources.js";
import type { Store } from "./store.js";
import type { WatchHub } from "./watch.js";

export interface RequestScope {
  readonly type: ResourceType;
  /** "" for cluster-scoped resources and all-namespaces lists. */
  readonly namespace: string;
  /** "" for collections. */
  readonly name: string;
  /** "" or "status". */
  readonly subresource: string;
  readonly query: URLSearchParams;
}

export interface ServerContext {
  readonly store: Store;
  readonly registry: Registry;
  readonly admission: AdmissionChain;
  readonly gc: GarbageCollector;
  readonly watches: WatchHub;
  readonly logger: Logger;
}

/** A stored object as the client's version shows it (conversion strategy None: apiVersion only). */
export function present(type: ResourceType, object: JsonObject): JsonObject {
  const apiVersion = apiVersionOf(type);
  return object.apiVersion === apiVersion && object.kind === type.kind
    ? object
    : { ...object, apiVersion, kind: type.kind };
}

export function storageKey(scope: RequestScope): string {
  return storageKeyOf(scope.type);
}

/** The namespace an object is written into must exist and not be terminating. */
export function requireWritableNamespace(
  context: ServerContext,
  type: ResourceType,
  namespace: string,
  name: string,
): void {
  const stored = context.store.get(storageKeyOf(NAMESPACES), "", namespace);
  if (stored === undefined) throw notFound(groupResource(NAMESPACES), namespace);
  if (deletionTimestampOf(stored) !== undefined) {
    throw forbidden(
      groupResource(type),
      name,
      `unable to create new content in namespace ${namespace} because it is being terminated`,
    );
  }
}
