/**
 * The three patch formats kube-apiserver accepts from kubectl and client libraries:
 * JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch (built-in types only;
 * lists merge by the same keys as k8s.io/api's patchMergeKey tags, directives are honoured).
 */
import { ApiError, badRequest } from "./errors.js";
import { clone, deepEqual, isObject, type JsonObject, type JsonValue, put } from "./json.js";

export const MERGE_PATCH = "application/merge-patch+json";
export const JSON_PATCH = "application/json-patch+json";
export const STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json";
export const APPLY_PATCH = "application/apply-patch+yaml";
export const MAX_JSON_PATCH_OPERATIONS = 10_000;

/** A patch that cannot be applied to this object: 422 like the real server. */
function unprocessable(message: string): ApiError {
  return new ApiError(422, "Invalid", message);
}

/** RFC 7386. */
export function mergePatch(target: JsonValue | undefined, patch: JsonValue): JsonValue {
  if (!isObject(patch)) return clone(patch);
  const result: JsonObject = isObject(target) ? clone(target) : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) {
      delete result[key];
    } else {
      put(result, key, mergePatch(result[key], value));
    }
  }
  return result;
}

// --- RFC 6902 ---------------------------------------------------------------------------------

function parsePointer(pointer: string): string[] {
  if (pointer === "") return [];
  if (!pointer.startsWith("/")) throw unprocessable(`invalid JSON pointer "${pointer}"`);
  return pointer
    .slice(1)
    .split("/")
    .map((token) => token.replaceAll("~1", "/").replaceAll("~0", "~"));
}

function arrayIndex(token: string, length: number, forInsert: boolean, pointer: string): number {
  if (forInsert && token === "-") return length;
  if (!/^(0|[1-9][0-9]*)$/.test(token)) throw unprocessable(`invalid array index "${token}" in "${pointer}"`);
  const index = Number(token);
  if (index > length || (!forInsert && index === length)) {
    throw unprocessable(`array index ${index} out of bounds in "${pointer}"`);
  }
  return index;
}

interface Location {
  readonly parent: JsonObject | JsonValue[];
  readonly token: string;
}

function locate(document: JsonValue, pointer: string): Location | undefined {
  const tokens = parsePointer(pointer);
  const last = tokens.pop();
  if (last === undefined) return undefined;
  let current: JsonValue | undefined = document;
  for (const token of tokens) {
    if (Array.isArray(current)) {
      current = current[arrayIndex(token, current.length, false, pointer)];
    } else if (isObject(current) && Object.hasOwn(current, token)) {
      current = current[token];
    } else {
      throw unprocessable(`path "${pointer}" does not exist`);
    }
  }
  if (!Array.isArray(current) && !isObject(current)) throw unprocessable(`path "${pointer}" does not exist`);
  return { parent: current, token: last };
}

function read(document: JsonValue, pointer: string): JsonValue {
  const location = locate(document, pointer);
  if (location === undefined) return document;
  const { parent, token } = location;
  if (Array.isArray(parent)) {
    const value = parent[arrayIndex(token, parent.length, false, pointer)];
    if (value === undefined) throw unprocessable(`path "${pointer}" does not exist`);
    return value;
  }
  if (!Object.hasOwn(parent, token)) throw unprocessable(`path "${pointer}" does not exist`);
  return parent[token] as JsonValue;
}

function add(document: JsonValue, pointer: string, value: JsonValue): JsonValue {
  const location = locate(document, pointer);
  if (location === undefined) return value;
  const { parent, token } = location;
  if (Array.isArray(parent)) parent.splice(arrayIndex(token, parent.length, true, pointer), 0, value);
  else put(parent, token, value);
  return document;
}

function remove(document: JsonValue, pointer: string): JsonValue {
  const location = locate(document, pointer);
  if (location === undefined) throw unprocessable("cannot remove the whole document");
  const { parent, token } = location;
  if (Array.isArray(parent)) parent.splice(arrayIndex(token, parent.length, false, pointer), 1);
  else if (Object.hasOwn(parent, token)) delete parent[token];
  else throw unprocessable(`path "${pointer}" does not exist`);
  return document;
}

function replace(document: JsonValue, pointer: string, value: JsonValue): JsonValue {
  const location = locate(document, pointer);
  if (location === undefined) return value;
  const { parent, token } = location;
  if (Array.isArray(parent)) {
    parent[arrayIndex(token, parent.length, false, pointer)] = value;
  } else {
    if (!Object.hasOwn(parent, token)) throw unprocessable(`path "${pointer}" does not exist`);
    put(parent, token, value);
  }
  return document;
}

/** RFC 6902, all six operations; the document is not modified (a copy is patched). */
export function jsonPatch(target: JsonValue, patch: JsonValue): JsonValue {
  if (!Array.isArray(patch)) throw badRequest("a JSON patch must be an array of operations");
  if (patch.length > MAX_JSON_PATCH_OPERATIONS) {
    throw new ApiError(
      413,
      "RequestEntityTooLarge",
      `the JSON patch has more than ${MAX_JSON_PATCH_OPERATIONS} operations`,
    );
  }
  let document = clone(target);
  for (const operation of patch) {
    if (!isObject(operation) || typeof operation.op !== "string" || typeof operation.path !== "string") {
      throw badRequest('every JSON patch operation needs "op" and "path"');
    }
    const path = operation.path;
    const from = typeof operation.from === "string" ? operation.from : undefined;
    const value = operation.value;
    switch (operation.op) {
      case "add":
        if (value === undefined) throw badRequest(`"add" at "${path}" has no value`);
        document = add(document, path, clone(value));
        break;
      case "remove":
        document = remove(document, path);
        break;
      case "replace":
        if (value === undefined) throw badRequest(`"replace" at "${path}" has no value`);
        document = replace(document, path, clone(value));
        break;
      case "move": {
        if (from === undefined) throw badRequest(`"move" to "${path}" has no "from"`);
        if (path.startsWith(`${from}/`))
          throw unprocessable(`cannot move "${from}" into its own child "${path}"`);
        const moved = read(document, from);
        document = add(remove(document, from), path, moved);
        break;
      }
      case "copy": {
        if (from === undefined) throw badRequest(`"copy" to "${path}" has no "from"`);
        document = add(document, path, clone(read(document, from)));
        break;
      }
      case "test":
        if (!deepEqual(read(document, path), value ?? null)) {
          throw unprocessable(
            `the test operation failed: the value at "${path}" is not ${JSON.stringify(value ?? null)}`,
          );
        }
        break;
      default:
        throw badRequest(`unknown JSON patch operation "${operation.op}"`);
    }
  }
  return document;
}

// --- strategic merge patch -----------------------------------------------------------------------

/** patchMergeKey of the list fields of built-in types that merge instead of being replaced. */
const MERGE_KEYS: Readonly<Record<string, string>> = {
  containers: "name",
  initContainers: "name",
  ephemeralContainers: "name",
  volumes: "name",
  env: "name",
  ports: "containerPort",
  volumeMounts: "mountPath",
  volumeDevices: "devicePath",
  imagePullSecrets: "name",
  ownerReferences: "uid",
  conditions: "type",
  hostAliases: "ip",
  resourceClaims: "name",
  readinessGates: "conditionType",
  schedulingGates: "name",
};

/** Primitive lists with patchStrategy "merge" (their values behave like a set). */
const MERGED_PRIMITIVE_LISTS = new Set(["finalizers"]);

const SET_ELEMENT_ORDER = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList/";

function stripDirectives(value: JsonValue): JsonValue {
  if (Array.isArray(value)) {
    return value
      .filter((item) => !(isObject(item) && item.$patch !== undefined && Object.keys(item).length === 1))
      .map(stripDirectives);
  }
  if (!isObject(value)) return value;
  const result: JsonObject = {};
  for (const [key, item] of Object.entries(value))
    if (!key.startsWith("$")) put(result, key, stripDirectives(item));
  return result;
}

function mergeKeyedList(original: JsonValue[], patch: JsonValue[], mergeKey: string): JsonValue[] {
  if (patch.some((item) => isObject(item) && item.$patch === "replace")) {
    return patch.filter((item) => !(isObject(item) && item.$patch === "replace")).map(stripDirectives);
  }
  const result = original.map((item) => clone(item));
  for (const item of patch) {
    if (!isObject(item) || item[mergeKey] === undefined) {
      result.push(stripDirectives(item));
      continue;
    }
    const index = result.findIndex(
      (existing) => isObject(existing) && deepEqual(existing[mergeKey], item[mergeKey]),
    );
    if (item.$patch === "delete") {
      if (index >= 0) result.splice(index, 1);
    } else if (index >= 0) {
      result[index] = strategicMergeValue(result[index], item);
    } else {
      result.push(stripDirectives(item));
    }
  }
  return result;
}

function orderBy(list: JsonValue[], order: JsonValue, mergeKey: string | undefined): JsonValue[] {
  if (!Array.isArray(order)) return list;
  const keyOf = (item: JsonValue): JsonValue | undefined =>
    mergeKey !== undefined && isObject(item) ? item[mergeKey] : item;
  const position = (item: JsonValue): number => {
    const wanted = keyOf(item);
    const index = order.findIndex((entry) =>
      deepEqual(mergeKey !== undefined && isObject(entry) ? entry[mergeKey] : entry, wanted),
    );
    return index < 0 ? order.length : index;
  };
  return list
    .map((item, index) => ({ item, index }))
    .sort((a, b) => position(a.item) - position(b.item) || a.index - b.index)
    .map((entry) => entry.item);
}

function strategicMergeValue(original: JsonValue | undefined, patch: JsonValue): JsonValue {
  if (!isObject(patch)) return stripDirectives(patch);
  if (patch.$patch === "replace") return stripDirectives(patch);
  if (patch.$patch === "delete") return {};
  return strategicMergeObject(isObject(original) ? original : {}, patch);
}

function strategicMergeObject(original: JsonObject, patch: JsonObject): JsonObject {
  const result = clone(original);
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith(DELETE_FROM_PRIMITIVE_LIST)) {
      const field = key.slice(DELETE_FROM_PRIMITIVE_LIST.length);
      const current = result[field];
      if (Array.isArray(current) && Array.isArray(value)) {
        put(
          result,
          field,
          current.filter((item) => !value.some((removed) => deepEqual(removed, item))),
        );
      }
    }
  }
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith("$")) continue;
    const current = result[key];
    if (value === null) {
      delete result[key];
    } else if (isObject(value) && value.$patch === "delete") {
      delete result[key];
    } else if (Array.isArray(value)) {
      const mergeKey = MERGE_KEYS[key];
      if (mergeKey !== undefined && Array.isArray(current) && value.every((item) => isObject(item))) {
        put(result, key, mergeKeyedList(current, value, mergeKey));
      } else if (MERGED_PRIMITIVE_LISTS.has(key) && Array.isArray(current)) {
        const union = [...current];
        for (const item of value) if (!union.some((existing) => deepEqual(existing, item))) union.push(item);
        put(result, key, union);
      } else {
        put(result, key, stripDirectives(value));
      }
    } else {
      put(result, key, strategicMergeValue(current, value));
    }
  }
  for (const [key, value] of Object.entries(patch)) {
    if (!key.startsWith(SET_ELEMENT_ORDER)) continue;
    const field = key.slice(SET_ELEMENT_ORDER.length);
    const current = result[field];
    if (Array.isArray(current)) put(result, field, orderBy(current, value, MERGE_KEYS[field]));
  }
  const retain = patch.$retainKeys;
  if (Array.isArray(retain)) {
    for (const key of Object.keys(result)) if (!retain.includes(key)) delete result[key];
  }
  return result;
}

/** Strategic merge patch for built-in types, as `kubectl apply` sends it. */
export function strategicMergePatch(target: JsonObject, patch: JsonValue): JsonObject {
  if (!isObject(patch)) throw badRequest("a strategic merge patch must be a JSON object");
  return strategicMergeObject(target, patch);
}
