/**
 * DELETE and deletecollection: preconditions, validating admission, then the garbage collector's
 * deletion (finalizers and propagation policy). Answers with the object or a Success Status.
 */
import { present, type RequestScope, type ServerContext, storageKey } from "./context.js";
import { ApiError, badRequest, conflict, methodNotAllowed, notFound } from "./errors.js";
import type { PropagationPolicy } from "./gc.js";
import { isObject, type JsonObject, type JsonValue, stringAt } from "./json.js";
import { nameOf, namespaceOf, resourceVersionOf, uidOf } from "./meta.js";
import { apiVersionOf, groupResource, type ResourceType } from "./resources.js";
import { attributes, now, type WriteResult, writeOptions } from "./writes.js";

function parsePropagation(value: JsonValue | undefined): PropagationPolicy {
  if (value === undefined || value === null || value === "") return "Background";
  if (value === "Background" || value === "Foreground" || value === "Orphan") return value;
  throw badRequest(
    `propagationPolicy: Unsupported value: ${JSON.stringify(value)}: supported values: "Foreground", "Background", "Orphan"`,
  );
}

interface DeleteOptions {
  readonly policy: PropagationPolicy;
  readonly uid: string | undefined;
  readonly resourceVersion: string | undefined;
}

function deleteOptions(scope: RequestScope, body: JsonValue | undefined): DeleteOptions {
  const options = isObject(body) ? body : {};
  let policy = parsePropagation(
    options.propagationPolicy ?? scope.query.get("propagationPolicy") ?? undefined,
  );
  const orphan = options.orphanDependents ?? scope.query.get("orphanDependents");
  if (options.propagationPolicy === undefined && (orphan === true || orphan === "true")) policy = "Orphan";
  const preconditions = isObject(options.preconditions) ? options.preconditions : {};
  return {
    policy,
    uid: stringAt(preconditions, "uid"),
    resourceVersion: stringAt(preconditions, "resourceVersion"),
  };
}

function successStatus(type: ResourceType, object: JsonObject): JsonObject {
  return {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Success",
    details: { name: nameOf(object), group: type.group, kind: type.plural, uid: uidOf(object) },
  };
}

export async function remove(
  context: ServerContext,
  scope: RequestScope,
  body: JsonValue | undefined,
): Promise<WriteResult> {
  const { type } = scope;
  if (scope.subresource !== "") throw methodNotAllowed();
  const writeOpts = writeOptions(scope.query);
  const options = deleteOptions(scope, body);
  const current = context.store.get(storageKey(scope), scope.namespace, scope.name);
  if (current === undefined) throw notFound(groupResource(type), scope.name);
  if (options.uid !== undefined && options.uid !== uidOf(current)) {
    throw conflict(
      groupResource(type),
      scope.name,
      `Precondition failed: UID in precondition: ${options.uid}, UID in object meta: ${uidOf(current)}`,
    );
  }
  if (options.resourceVersion !== undefined && options.resourceVersion !== resourceVersionOf(current)) {
    throw conflict(
      groupResource(type),
      scope.name,
      `Precondition failed: ResourceVersion in precondition: ${options.resourceVersion}, ResourceVersion in object meta: ${resourceVersionOf(current)}`,
    );
  }
  await context.admission.validate(
    attributes(scope, "DELETE", undefined, current, writeOpts.dryRun, "DeleteOptions"),
    writeOpts.warnings,
  );
  if (writeOpts.dryRun) return { status: 200, body: present(type, current), warnings: writeOpts.warnings };
  const latest = context.store.get(storageKey(scope), scope.namespace, scope.name);
  if (latest === undefined) throw notFound(groupResource(type), scope.name);
  const outcome = context.gc.delete(storageKey(scope), latest, options.policy, now());
  const answer =
    outcome.gone && !type.returnDeletedObject
      ? successStatus(type, outcome.object)
      : present(type, outcome.object);
  return { status: 200, body: answer, warnings: writeOpts.warnings };
}

export async function removeCollection(
  context: ServerContext,
  scope: RequestScope,
  body: JsonValue | undefined,
  items: readonly JsonObject[],
): Promise<WriteResult> {
  const deleted: JsonObject[] = [];
  const warnings: string[] = [];
  for (const item of items) {
    try {
      const result = await remove(
        context,
        { ...scope, namespace: namespaceOf(item), name: nameOf(item) },
        body,
      );
      warnings.push(...result.warnings);
      deleted.push(present(scope.type, item));
    } catch (error) {
      if (!(error instanceof ApiError && error.code === 404)) throw error;
    }
  }
  return {
    status: 200,
    body: {
      kind: scope.type.listKind,
      apiVersion: apiVersionOf(scope.type),
      metadata: { resourceVersion: String(context.store.revision) },
      items: deleted,
    },
    warnings,
  };
}
