/**
 * Create, update (PUT), patch and delete, in the real server's order: decode, server-owned
 * fields, strategy defaults (pruning for custom resources), built-in and mutating admission,
 * validation (422 with causes), validating admission, then the write with optimistic concurrency.
 */
import { randomUUID } from "node:crypto";
import type { AdmissionAttributes } from "./admission.js";
import { CRDS, NAMESPACES, PODS, SERVICE_ACCOUNTS } from "./builtins.js";
import {
  present,
  type RequestScope,
  requireWritableNamespace,
  type ServerContext,
  storageKey,
} from "./context.js";
import {
  ApiError,
  alreadyExists,
  badRequest,
  conflict,
  forbidden,
  invalid,
  methodNotAllowed,
  notFound,
  STALE_OBJECT,
  type StatusCause,
  unsupportedMediaType,
} from "./errors.js";
import { timestamp } from "./gc.js";
import { clone, deepEqual, isObject, type JsonObject, type JsonValue, stringAt } from "./json.js";
import {
  deletionTimestampOf,
  finalizersOf,
  metadataOf,
  nameOf,
  namespaceOf,
  resourceVersionOf,
  uidOf,
  validateObjectMeta,
} from "./meta.js";
import {
  APPLY_PATCH,
  JSON_PATCH,
  jsonPatch,
  MERGE_PATCH,
  mergePatch,
  STRATEGIC_MERGE_PATCH,
  strategicMergePatch,
} from "./patch.js";
import { apiVersionOf, groupResource, type ResourceType, storageKeyOf } from "./resources.js";
import type { Operation } from "./webhook-config.js";

export interface WriteResult {
  readonly status: number;
  readonly body: JsonValue;
  readonly warnings: readonly string[];
}

type FieldValidation = "Ignore" | "Warn" | "Strict";

const SERVER_OWNED_METADATA = [
  "uid",
  "resourceVersion",
  "creationTimestamp",
  "deletionTimestamp",
  "deletionGracePeriodSeconds",
  "generation",
  "selfLink",
];
const NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789";
const MAX_CONFLICT_RETRIES = 5;

/** A write lost a race with another write while admission ran; retried when that is safe. */
class RaceLost extends Error {
  override readonly name = "RaceLost";
}

interface WriteOptions {
  readonly dryRun: boolean;
  readonly fieldValidation: FieldValidation;
  readonly warnings: string[];
}

export function writeOptions(query: URLSearchParams): WriteOptions {
  const dryRun = query.getAll("dryRun");
  for (const value of dryRun) {
    if (value !== "All") throw badRequest(`dryRun: Unsupported value: "${value}": supported values: "All"`);
  }
  const fieldValidation = query.get("fieldValidation") ?? "Warn";
  if (fieldValidation !== "Ignore" && fieldValidation !== "Warn" && fieldValidation !== "Strict") {
    throw badRequest(
      `fieldValidation: Unsupported value: "${fieldValidation}": supported values: "Ignore", "Strict", "Warn"`,
    );
  }
  return { dryRun: dryRun.length > 0, fieldValidation, warnings: [] };
}

export function now(): Date {
  return new Date();
}

/** Checks apiVersion/kind of a request body against the URL and fills them in. */
function decodeObject(type: ResourceType, body: JsonValue): JsonObject {
  if (!isObject(body)) throw badRequest("the request body must be a JSON object");
  const object = clone(body);
  const expectedVersion = apiVersionOf(type);
  if (object.apiVersion !== undefined && object.apiVersion !== expectedVersion) {
    throw badRequest(
      `the API version in the data (${String(object.apiVersion)}) does not match the expected API version (${expectedVersion})`,
    );
  }
  if (object.kind !== undefined && object.kind !== type.kind) {
    throw badRequest(
      `the kind in the data (${String(object.kind)}) does not match the expected kind (${type.kind})`,
    );
  }
  if (object.metadata !== undefined && !isObject(object.metadata))
    throw badRequest("metadata must be an object");
  object.apiVersion = expectedVersion;
  object.kind = type.kind;
  return object;
}

function checkNamespace(scope: RequestScope, object: JsonObject): void {
  const metadata = metadataOf(object);
  if (!scope.type.namespaced) {
    delete metadata.namespace;
    return;
  }
  const namespace = stringAt(metadata, "namespace") ?? "";
  if (namespace !== "" && namespace !== scope.namespace) {
    throw badRequest("the namespace of the provided object does not match the namespace sent on the request");
  }
  metadata.namespace = scope.namespace;
}

/** Runs the strategy and applies fieldValidation to the fields the schema does not know. */
function normalize(
  type: ResourceType,
  object: JsonObject,
  old: JsonObject | undefined,
  options: WriteOptions,
  strict: boolean,
): void {
  const unknown = type.strategy.normalize(object, old, now());
  if (unknown.length === 0 || !strict) return;
  if (options.fieldValidation === "Strict") {
    throw badRequest(
      `strict decoding error: ${unknown.map((field) => `unknown field "${field}"`).join(", ")}`,
    );
  }
  if (options.fieldValidation === "Warn")
    options.warnings.push(...unknown.map((field) => `unknown field "${field}"`));
}

function validate(type: ResourceType, object: JsonObject, old: JsonObject | undefined): void {
  const causes: StatusCause[] = [
    ...validateObjectMeta(object, { dnsLabelName: type.strategy.dnsLabelNames }),
    ...type.strategy.validate(object, old),
  ];
  if (old !== undefined) {
    const added = finalizersOf(object).filter((finalizer) => !finalizersOf(old).includes(finalizer));
    if (deletionTimestampOf(old) !== undefined && added.length > 0) {
      causes.push({
        reason: "FieldValueForbidden",
        field: "metadata.finalizers",
        message: `Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers ${JSON.stringify(added)}`,
      });
    }
  }
  if (causes.length > 0) throw invalid(type.kind, type.group, nameOf(object), causes);
}

function generateName(prefix: string): string {
  let suffix = "";
  for (let index = 0; index < 5; index += 1) {
    suffix += NAME_SUFFIX_ALPHABET[Math.floor(Math.random() * NAME_SUFFIX_ALPHABET.length)];
  }
  return `${prefix}${suffix}`;
}

/** What counts for metadata.generation: everything but metadata (and status, with a status subresource). */
function generationRelevant(type: ResourceType, object: JsonObject): JsonObject {
  const relevant: JsonObject = { ...object };
  delete relevant.metadata;
  if (type.statusSubresource || type.crdName === undefined) delete relevant.status;
  return relevant;
}

export function attributes(
  scope: RequestScope,
  operation: Operation,
  object: JsonObject | undefined,
  oldObject: JsonObject | undefined,
  dryRun: boolean,
  optionsKind: string,
): AdmissionAttributes {
  return {
    operation,
    type: scope.type,
    subResource: scope.subresource,
    namespace: scope.namespace,
    name: scope.name !== "" ? scope.name : nameOf(object ?? oldObject ?? {}),
    object,
    oldObject,
    dryRun,
    options: { kind: optionsKind, apiVersion: "meta.k8s.io/v1" },
  };
}

/** The ServiceAccount admission plugin: a pod's service account must exist. */
function admitServiceAccount(context: ServerContext, scope: RequestScope, pod: JsonObject): void {
  if (storageKeyOf(scope.type) !== storageKeyOf(PODS)) return;
  const spec = isObject(pod.spec) ? pod.spec : {};
  const account = stringAt(spec, "serviceAccountName") ?? "default";
  if (context.store.get(storageKeyOf(SERVICE_ACCOUNTS), scope.namespace, account) === undefined) {
    throw forbidden(
      groupResource(PODS),
      nameOf(pod),
      `error looking up service account ${scope.namespace}/${account}: serviceaccount "${account}" not found`,
    );
  }
}

export async function create(
  context: ServerContext,
  scope: RequestScope,
  body: JsonValue,
): Promise<WriteResult> {
  const { type } = scope;
  if (scope.name !== "" || scope.subresource !== "") throw methodNotAllowed();
  const options = writeOptions(scope.query);
  let object = decodeObject(type, body);
  checkNamespace(scope, object);
  const metadata = metadataOf(object);
  for (const key of SERVER_OWNED_METADATA) delete metadata[key];
  delete metadata.managedFields;
  if (type.statusSubresource) delete object.status;
  const requestedName = stringAt(metadata, "name") ?? "";
  if (requestedName === "" && (stringAt(metadata, "generateName") ?? "") === "") {
    throw invalid(type.kind, type.group, "", [
      {
        reason: "FieldValueRequired",
        field: "metadata.name",
        message: "Required value: name or generateName is required",
      },
    ]);
  }
  if (type.crdName !== undefined) {
    const crd = context.store.get(storageKeyOf(CRDS), "", type.crdName);
    if (crd !== undefined && deletionTimestampOf(crd) !== undefined) {
      throw new ApiError(
        405,
        "MethodNotAllowed",
        `create not allowed while custom resource definition is terminating`,
      );
    }
  }
  if (type.namespaced) requireWritableNamespace(context, type, scope.namespace, requestedName);
  normalize(type, object, undefined, options, true);
  admitServiceAccount(context, scope, object);
  const mutated = await context.admission.mutate(
    attributes(scope, "CREATE", object, undefined, options.dryRun, "CreateOptions"),
    options.warnings,
  );
  if (mutated !== undefined && mutated !== object) {
    object = clone(mutated);
    checkNamespace(scope, object);
    normalize(type, object, undefined, options, false);
  }
  const finalMetadata = metadataOf(object);
  if ((stringAt(finalMetadata, "name") ?? "") === "")
    finalMetadata.name = generateName(stringAt(finalMetadata, "generateName") ?? "");
  finalMetadata.uid = randomUUID();
  finalMetadata.creationTimestamp = timestamp(now());
  if (type.tracksGeneration) finalMetadata.generation = 1;
  for (const key of ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"])
    delete finalMetadata[key];
  validate(type, object, undefined);
  await context.admission.validate(
    attributes(scope, "CREATE", object, undefined, options.dryRun, "CreateOptions"),
    options.warnings,
  );

  if (type.namespaced) requireWritableNamespace(context, type, scope.namespace, nameOf(object));
  if (context.store.get(storageKey(scope), namespaceOf(object), nameOf(object)) !== undefined) {
    throw alreadyExists(groupResource(type), nameOf(object));
  }
  if (options.dryRun) return { status: 201, body: present(type, object), warnings: options.warnings };
  const stored = context.store.create(storageKey(scope), object);
  if (storageKeyOf(type) === storageKeyOf(NAMESPACES)) createDefaultServiceAccount(context, nameOf(stored));
  context.gc.schedule();
  return { status: 201, body: present(type, stored), warnings: options.warnings };
}

/** The service-account controller's job: every namespace has a "default" ServiceAccount. */
export function createDefaultServiceAccount(context: ServerContext, namespace: string): void {
  queueMicrotask(() => {
    const key = storageKeyOf(SERVICE_ACCOUNTS);
    if (context.store.get(key, namespace, "default") !== undefined) return;
    const ns = context.store.get(storageKeyOf(NAMESPACES), "", namespace);
    if (ns === undefined || deletionTimestampOf(ns) !== undefined) return;
    context.store.create(key, {
      apiVersion: "v1",
      kind: "ServiceAccount",
      metadata: { name: "default", namespace, uid: randomUUID(), creationTimestamp: timestamp(now()) },
    });
  });
}

/**
 * The update path shared by PUT and PATCH. `build` turns the current object into the requested
 * one; it runs again if another write wins the race while admission webhooks are called.
 */
async function updateWith(
  context: ServerContext,
  scope: RequestScope,
  build: (current: JsonObject) => JsonObject,
  retryable: boolean,
): Promise<WriteResult> {
  for (let attempt = 0; ; attempt += 1) {
    const current = context.store.get(storageKey(scope), scope.namespace, scope.name);
    if (current === undefined) throw notFound(groupResource(scope.type), scope.name);
    try {
      return await updateOnce(context, scope, current, build(current));
    } catch (error) {
      if (error instanceof RaceLost && retryable && attempt < MAX_CONFLICT_RETRIES) continue;
      if (error instanceof RaceLost) throw conflict(groupResource(scope.type), scope.name, STALE_OBJECT);
      throw error;
    }
  }
}

async function updateOnce(
  context: ServerContext,
  scope: RequestScope,
  current: JsonObject,
  requested: JsonObject,
): Promise<WriteResult> {
  const { type } = scope;
  const options = writeOptions(scope.query);
  const candidate = decodeObject(type, requested);
  const candidateMetadata = metadataOf(candidate);
  const name = stringAt(candidateMetadata, "name") ?? "";
  if (name !== scope.name) {
    throw badRequest(`the name of the object (${name}) does not match the name on the URL (${scope.name})`);
  }
  checkNamespace(scope, candidate);
  const requestedVersion = stringAt(candidateMetadata, "resourceVersion") ?? "";
  if (requestedVersion === "" && type.crdName !== undefined) {
    throw invalid(type.kind, type.group, scope.name, [
      {
        reason: "FieldValueInvalid",
        field: "metadata.resourceVersion",
        message: "Invalid value: 0x0: must be specified for an update",
      },
    ]);
  }
  if (requestedVersion !== "" && requestedVersion !== resourceVersionOf(current)) {
    throw conflict(groupResource(type), scope.name, STALE_OBJECT);
  }
  const requestedUid = stringAt(candidateMetadata, "uid") ?? "";
  if (requestedUid !== "" && requestedUid !== uidOf(current)) {
    throw conflict(
      groupResource(type),
      scope.name,
      `Precondition failed: UID in precondition: ${requestedUid}, UID in object meta: ${uidOf(current)}`,
    );
  }

  let object: JsonObject;
  if (scope.subresource === "status") {
    object = clone(current);
    if (candidate.status === undefined) delete object.status;
    else object.status = candidate.status;
  } else {
    object = candidate;
    const metadata = metadataOf(object);
    const currentMetadata = metadataOf(current);
    for (const key of SERVER_OWNED_METADATA) {
      const value = currentMetadata[key];
      if (value === undefined) delete metadata[key];
      else metadata[key] = value;
    }
    delete metadata.managedFields;
    if (type.statusSubresource) {
      if (current.status === undefined) delete object.status;
      else object.status = current.status;
    }
  }
  object = clone(object);
  normalize(type, object, current, options, scope.subresource === "");
  const mutated = await context.admission.mutate(
    attributes(scope, "UPDATE", object, current, options.dryRun, "UpdateOptions"),
    options.warnings,
  );
  if (mutated !== undefined && mutated !== object) {
    object = clone(mutated);
    checkNamespace(scope, object);
    normalize(type, object, current, options, false);
  }
  const metadata = metadataOf(object);
  metadata.resourceVersion = resourceVersionOf(current);
  if (type.tracksGeneration) {
    const generation =
      typeof metadataOf(current).generation === "number" ? (metadataOf(current).generation as number) : 1;
    metadata.generation = deepEqual(generationRelevant(type, object), generationRelevant(type, current))
      ? generation
      : generation + 1;
  }
  validate(type, object, current);
  await context.admission.validate(
    attributes(scope, "UPDATE", object, current, options.dryRun, "UpdateOptions"),
    options.warnings,
  );

  const latest = context.store.get(storageKey(scope), scope.namespace, scope.name);
  if (latest === undefined) throw notFound(groupResource(type), scope.name);
  if (resourceVersionOf(latest) !== resourceVersionOf(current)) throw new RaceLost();
  if (deepEqual(object, current))
    return { status: 200, body: present(type, current), warnings: options.warnings };
  if (options.dryRun) return { status: 200, body: present(type, object), warnings: options.warnings };
  if (
    deletionTimestampOf(current) !== undefined &&
    finalizersOf(object).length === 0 &&
    storageKeyOf(type) !== storageKeyOf(NAMESPACES)
  ) {
    // The update that removes the last finalizer of an object marked for deletion deletes it.
    const deleted = context.store.delete(storageKey(scope), scope.namespace, scope.name, object);
    context.gc.schedule();
    return { status: 200, body: present(type, deleted ?? object), warnings: options.warnings };
  }
  const stored = context.store.update(storageKey(scope), object);
  context.gc.schedule();
  return { status: 200, body: present(type, stored), warnings: options.warnings };
}

export function update(context: ServerContext, scope: RequestScope, body: JsonValue): Promise<WriteResult> {
  if (scope.name === "") throw methodNotAllowed();
  if (!isObject(body)) throw badRequest("the request body must be a JSON object");
  const requested = body;
  const unconditional =
    (stringAt(isObject(requested.metadata) ? requested.metadata : undefined, "resourceVersion") ?? "") === "";
  return updateWith(context, scope, () => clone(requested), unconditional);
}

export const PATCH_TYPES = [JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH];

/** 415 unless the resource accepts this patch type (strategic merge: built-in types only). */
export function checkPatchType(type: ResourceType, contentType: string): void {
  if (contentType === APPLY_PATCH) {
    throw new ApiError(
      415,
      "UnsupportedMediaType",
      "server-side apply (application/apply-patch+yaml) is not supported by this test API server; use client-side apply",
    );
  }
  const accepted = type.strategy.strategicMerge ? PATCH_TYPES : [JSON_PATCH, MERGE_PATCH];
  if (!accepted.includes(contentType)) throw unsupportedMediaType(contentType, accepted);
}

export function patch(
  context: ServerContext,
  scope: RequestScope,
  body: JsonValue,
  contentType: string,
): Promise<WriteResult> {
  if (scope.name === "") throw methodNotAllowed();
  checkPatchType(scope.type, contentType);
  const apply = (current: JsonObject): JsonObject => {
    let result: JsonValue;
    if (contentType === JSON_PATCH) result = jsonPatch(current, body);
    else if (contentType === MERGE_PATCH) result = mergePatch(current, body);
    else result = strategicMergePatch(current, body);
    if (!isObject(result))
      throw new ApiError(422, "Invalid", "the patch turned the object into something that is not an object");
    return result;
  };
  const explicitVersion =
    (contentType !== JSON_PATCH &&
      isObject(body) &&
      isObject(body.metadata) &&
      body.metadata.resourceVersion !== undefined) ||
    (Array.isArray(body) &&
      body.some(
        (operation) => isObject(operation) && String(operation.path).startsWith("/metadata/resourceVersion"),
      ));
  return updateWith(context, scope, apply, !explicitVersion);
}
