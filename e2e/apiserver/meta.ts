/** ObjectMeta: accessors over plain JSON objects, and the validation every resource shares. */
import type { StatusCause } from "./errors.js";
import { isObject, type JsonObject, type JsonValue, stringAt } from "./json.js";

export const MAX_ANNOTATIONS_BYTES = 256 * 1024;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const QUALIFIED_NAME =
  /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

export function metadataOf(object: JsonObject): JsonObject {
  const metadata = object.metadata;
  if (isObject(metadata)) return metadata;
  const created: JsonObject = {};
  object.metadata = created;
  return created;
}

export function nameOf(object: JsonObject): string {
  return stringAt(isObject(object.metadata) ? object.metadata : undefined, "name") ?? "";
}

export function namespaceOf(object: JsonObject): string {
  return stringAt(isObject(object.metadata) ? object.metadata : undefined, "namespace") ?? "";
}

export function uidOf(object: JsonObject): string {
  return stringAt(isObject(object.metadata) ? object.metadata : undefined, "uid") ?? "";
}

export function resourceVersionOf(object: JsonObject): string {
  return stringAt(isObject(object.metadata) ? object.metadata : undefined, "resourceVersion") ?? "";
}

export function deletionTimestampOf(object: JsonObject): string | undefined {
  return stringAt(isObject(object.metadata) ? object.metadata : undefined, "deletionTimestamp");
}

export function finalizersOf(object: JsonObject): string[] {
  const finalizers = isObject(object.metadata) ? object.metadata.finalizers : undefined;
  return Array.isArray(finalizers)
    ? finalizers.filter((item): item is string => typeof item === "string")
    : [];
}

export interface OwnerReference {
  readonly apiVersion: string;
  readonly kind: string;
  readonly name: string;
  readonly uid: string;
  readonly controller: boolean;
  readonly blockOwnerDeletion: boolean;
}

export function ownerReferencesOf(object: JsonObject): OwnerReference[] {
  const references = isObject(object.metadata) ? object.metadata.ownerReferences : undefined;
  if (!Array.isArray(references)) return [];
  return references.filter(isObject).map((reference) => ({
    apiVersion: stringAt(reference, "apiVersion") ?? "",
    kind: stringAt(reference, "kind") ?? "",
    name: stringAt(reference, "name") ?? "",
    uid: stringAt(reference, "uid") ?? "",
    controller: reference.controller === true,
    blockOwnerDeletion: reference.blockOwnerDeletion === true,
  }));
}

/** `key`/`namespace/name`: the storage key of an object within its resource. */
export function objectKey(namespace: string, name: string): string {
  return namespace === "" ? name : `${namespace}/${name}`;
}

export function isDnsSubdomain(value: string): boolean {
  return value.length <= 253 && DNS_SUBDOMAIN.test(value);
}

export function isDnsLabel(value: string): boolean {
  return value.length <= 63 && DNS_LABEL.test(value);
}

export function isQualifiedName(value: string): boolean {
  const slash = value.lastIndexOf("/");
  const name = slash < 0 ? value : value.slice(slash + 1);
  const prefix = slash < 0 ? "" : value.slice(0, slash);
  return QUALIFIED_NAME.test(value) && name.length <= 63 && prefix.length <= 253;
}

function nameCause(field: string, value: string, label: boolean): StatusCause {
  const what = label
    ? "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    : "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
  return { reason: "FieldValueInvalid", field, message: `Invalid value: ${JSON.stringify(value)}: ${what}` };
}

function stringMap(value: JsonValue | undefined): [string, JsonValue][] {
  return isObject(value) ? Object.entries(value) : [];
}

/** ValidateObjectMeta: name, labels, annotations, finalizers, owner references. */
export function validateObjectMeta(
  object: JsonObject,
  options: { readonly dnsLabelName: boolean },
): StatusCause[] {
  const causes: StatusCause[] = [];
  const metadata = metadataOf(object);
  const name = stringAt(metadata, "name") ?? "";
  if (name === "") {
    causes.push({
      reason: "FieldValueRequired",
      field: "metadata.name",
      message: "Required value: name or generateName is required",
    });
  } else if (options.dnsLabelName ? !isDnsLabel(name) : !isDnsSubdomain(name)) {
    causes.push(nameCause("metadata.name", name, options.dnsLabelName));
  }
  for (const [key, value] of stringMap(metadata.labels)) {
    if (!isQualifiedName(key)) {
      causes.push({
        reason: "FieldValueInvalid",
        field: "metadata.labels",
        message: `Invalid value: ${JSON.stringify(key)}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character`,
      });
    }
    if (typeof value !== "string" || value.length > 63 || !LABEL_VALUE.test(value)) {
      causes.push({
        reason: "FieldValueInvalid",
        field: `metadata.labels`,
        message: `Invalid value: ${JSON.stringify(value)}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character`,
      });
    }
  }
  let annotationBytes = 0;
  for (const [key, value] of stringMap(metadata.annotations)) {
    if (!isQualifiedName(key.toLowerCase())) {
      causes.push({
        reason: "FieldValueInvalid",
        field: "metadata.annotations",
        message: `Invalid value: ${JSON.stringify(key)}: name part must consist of alphanumeric characters, '-', '_' or '.'`,
      });
    }
    if (typeof value !== "string") {
      causes.push({
        reason: "FieldValueTypeInvalid",
        field: `metadata.annotations`,
        message: "Invalid value: annotation values must be strings",
      });
    } else {
      annotationBytes += Buffer.byteLength(key) + Buffer.byteLength(value);
    }
  }
  if (annotationBytes > MAX_ANNOTATIONS_BYTES) {
    causes.push({
      reason: "FieldValueTooLong",
      field: "metadata.annotations",
      message: `Too long: must have at most ${MAX_ANNOTATIONS_BYTES} bytes`,
    });
  }
  const finalizers = metadata.finalizers;
  if (finalizers !== undefined) {
    if (!Array.isArray(finalizers)) {
      causes.push({
        reason: "FieldValueTypeInvalid",
        field: "metadata.finalizers",
        message: "Invalid value: must be a list of strings",
      });
    } else {
      finalizers.forEach((finalizer, index) => {
        if (typeof finalizer !== "string" || !isQualifiedName(finalizer)) {
          causes.push({
            reason: "FieldValueInvalid",
            field: `metadata.finalizers[${index}]`,
            message: `Invalid value: ${JSON.stringify(finalizer)}: name part must consist of alphanumeric characters, '-', '_' or '.'`,
          });
        }
      });
    }
  }
  const owners = metadata.ownerReferences;
  if (owners !== undefined) {
    if (!Array.isArray(owners)) {
      causes.push({
        reason: "FieldValueTypeInvalid",
        field: "metadata.ownerReferences",
        message: "Invalid value: must be a list",
      });
    } else {
      let controllers = 0;
      owners.forEach((owner, index) => {
        const field = `metadata.ownerReferences[${index}]`;
        if (!isObject(owner)) {
          causes.push({
            reason: "FieldValueTypeInvalid",
            field,
            message: "Invalid value: must be an object",
          });
          return;
        }
        for (const key of ["apiVersion", "kind", "name", "uid"]) {
          if (typeof owner[key] !== "string" || owner[key] === "") {
            causes.push({
              reason: "FieldValueRequired",
              field: `${field}.${key}`,
              message: `Invalid value: "": ${key} must not be empty`,
            });
          }
        }
        if (owner.controller === true) controllers += 1;
      });
      if (controllers > 1) {
        causes.push({
          reason: "FieldValueInvalid",
          field: "metadata.ownerReferences",
          message: "Invalid value: Only one reference can have Controller set to true",
        });
      }
    }
  }
  return causes;
}
