/**
 * CustomResourceDefinitions: the CRD's own strategy (defaults, validation, the status the real
 * apiextensions controllers publish) and the resource types a CRD makes the server serve.
 */
import type { StatusCause } from "./errors.js";
import { isObject, type JsonObject, type JsonValue, objectAt, stringAt } from "./json.js";
import { compileJsonPath, JsonPathError } from "./jsonpath.js";
import { isDnsLabel, isDnsSubdomain, metadataOf, nameOf } from "./meta.js";
import { AGE_COLUMN, ageCell, type Column, type ResourceType, type Strategy } from "./resources.js";
import { SchemaError, StructuralSchema } from "./schema.js";

export const CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io";

interface CrdNames {
  readonly plural: string;
  readonly singular: string;
  readonly kind: string;
  readonly listKind: string;
  readonly shortNames: string[];
  readonly categories: string[];
}

function strings(value: JsonValue | undefined): string[] {
  return Array.isArray(value) ? value.filter((item): item is string => typeof item === "string") : [];
}

function specOf(crd: JsonObject): JsonObject {
  return isObject(crd.spec) ? crd.spec : {};
}

function namesOf(crd: JsonObject): CrdNames {
  const names = isObject(specOf(crd).names) ? (specOf(crd).names as JsonObject) : {};
  const kind = stringAt(names, "kind") ?? "";
  return {
    plural: stringAt(names, "plural") ?? "",
    singular: stringAt(names, "singular") ?? kind.toLowerCase(),
    kind,
    listKind: stringAt(names, "listKind") ?? `${kind}List`,
    shortNames: strings(names.shortNames),
    categories: strings(names.categories),
  };
}

function versionsOf(crd: JsonObject): JsonObject[] {
  const versions = specOf(crd).versions;
  return Array.isArray(versions) ? versions.filter(isObject) : [];
}

function schemaOf(version: JsonObject): JsonObject | undefined {
  const schema = isObject(version.schema) ? version.schema.openAPIV3Schema : undefined;
  return isObject(schema) ? schema : undefined;
}

function condition(
  type: string,
  reason: string,
  message: string,
  old: JsonObject | undefined,
  now: Date,
): JsonObject {
  const previous = (
    isObject(old?.status) && Array.isArray(old.status.conditions) ? old.status.conditions : []
  )
    .filter(isObject)
    .find((item) => item.type === type && item.status === "True");
  return {
    type,
    status: "True",
    lastTransitionTime:
      stringAt(previous, "lastTransitionTime") ?? now.toISOString().replace(/\.[0-9]+Z$/, "Z"),
    reason,
    message,
  };
}

function validateNames(crd: JsonObject, causes: StatusCause[]): void {
  const spec = specOf(crd);
  const group = stringAt(spec, "group") ?? "";
  const names = namesOf(crd);
  if (!isDnsSubdomain(group) || !group.includes(".")) {
    causes.push({
      reason: "FieldValueInvalid",
      field: "spec.group",
      message: `Invalid value: ${JSON.stringify(group)}: should be a domain with at least one dot`,
    });
  }
  for (const [field, value] of [
    ["plural", names.plural],
    ["singular", names.singular],
  ] as const) {
    if (!isDnsLabel(value)) {
      causes.push({
        reason: value === "" ? "FieldValueRequired" : "FieldValueInvalid",
        field: `spec.names.${field}`,
        message: `Invalid value: ${JSON.stringify(value)}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'`,
      });
    }
  }
  for (const [field, value] of [
    ["kind", names.kind],
    ["listKind", names.listKind],
  ] as const) {
    if (!/^[A-Za-z][A-Za-z0-9]*$/.test(value)) {
      causes.push({
        reason: value === "" ? "FieldValueRequired" : "FieldValueInvalid",
        field: `spec.names.${field}`,
        message: `Invalid value: ${JSON.stringify(value)}: must be a valid kind (CamelCase letters and digits)`,
      });
    }
  }
  names.shortNames.forEach((shortName, index) => {
    if (!isDnsLabel(shortName)) {
      causes.push({
        reason: "FieldValueInvalid",
        field: `spec.names.shortNames[${index}]`,
        message: `Invalid value: ${JSON.stringify(shortName)}: must be a DNS label`,
      });
    }
  });
  const expected = `${names.plural}.${group}`;
  if (nameOf(crd) !== expected) {
    causes.push({
      reason: "FieldValueInvalid",
      field: "metadata.name",
      message: `Invalid value: ${JSON.stringify(nameOf(crd))}: must be spec.names.plural+"."+spec.group`,
    });
  }
  const scope = stringAt(spec, "scope");
  if (scope !== "Namespaced" && scope !== "Cluster") {
    causes.push({
      reason: "FieldValueNotSupported",
      field: "spec.scope",
      message: `Unsupported value: ${JSON.stringify(scope ?? "")}: supported values: "Cluster", "Namespaced"`,
    });
  }
}

function validateVersions(crd: JsonObject, causes: StatusCause[]): void {
  const versions = versionsOf(crd);
  if (versions.length === 0) {
    causes.push({
      reason: "FieldValueRequired",
      field: "spec.versions",
      message: "Required value: must have at least one version",
    });
    return;
  }
  const seen = new Set<string>();
  let storage = 0;
  versions.forEach((version, index) => {
    const field = `spec.versions[${index}]`;
    const name = stringAt(version, "name") ?? "";
    if (!/^v[0-9]+((alpha|beta)[0-9]+)?$/.test(name) && !isDnsLabel(name)) {
      causes.push({
        reason: "FieldValueInvalid",
        field: `${field}.name`,
        message: `Invalid value: ${JSON.stringify(name)}: must be a DNS label`,
      });
    }
    if (seen.has(name))
      causes.push({
        reason: "FieldValueDuplicate",
        field: `${field}.name`,
        message: `Duplicate value: ${JSON.stringify(name)}`,
      });
    seen.add(name);
    if (version.storage === true) storage += 1;
    const schema = schemaOf(version);
    if (schema === undefined) {
      causes.push({
        reason: "FieldValueRequired",
        field: `${field}.schema.openAPIV3Schema`,
        message: "Required value: schemas are required",
      });
    } else {
      try {
        StructuralSchema.compile(schema);
      } catch (error) {
        if (!(error instanceof SchemaError)) throw error;
        causes.push({
          reason: "FieldValueInvalid",
          field: `${field}.schema.openAPIV3Schema`,
          message: `Invalid value: "object": ${error.message}`,
        });
      }
    }
    const columns = Array.isArray(version.additionalPrinterColumns) ? version.additionalPrinterColumns : [];
    columns.forEach((column, columnIndex) => {
      const at = `${field}.additionalPrinterColumns[${columnIndex}]`;
      if (!isObject(column) || typeof column.name !== "string" || typeof column.jsonPath !== "string") {
        causes.push({
          reason: "FieldValueRequired",
          field: at,
          message: "Required value: name and jsonPath are required",
        });
        return;
      }
      try {
        compileJsonPath(column.jsonPath);
      } catch (error) {
        if (!(error instanceof JsonPathError)) throw error;
        causes.push({
          reason: "FieldValueInvalid",
          field: `${at}.jsonPath`,
          message: `Invalid value: ${JSON.stringify(column.jsonPath)}: ${error.message}`,
        });
      }
      if (!["integer", "number", "string", "boolean", "date"].includes(String(column.type))) {
        causes.push({
          reason: "FieldValueNotSupported",
          field: `${at}.type`,
          message: `Unsupported value: ${JSON.stringify(column.type ?? "")}: supported values: "boolean", "date", "integer", "number", "string"`,
        });
      }
    });
  });
  if (storage !== 1) {
    causes.push({
      reason: "FieldValueInvalid",
      field: "spec.versions",
      message: `Invalid value: ${JSON.stringify(versions.map((version) => version.name ?? ""))}: must have exactly one version marked as storage version`,
    });
  }
}

export function crdStrategy(): Strategy {
  return {
    columns: [
      {
        name: "Created At",
        type: "date",
        format: "",
        description: "CreationTimestamp of the CustomResourceDefinition",
        priority: 0,
        cell: (crd) => stringAt(metadataOf(crd), "creationTimestamp") ?? null,
      },
    ],
    selectableFields: [],
    dnsLabelNames: false,
    strategicMerge: false,
    normalize: (crd, old, now) => {
      const spec = objectAt(crd, "spec");
      const names = objectAt(spec, "names");
      const resolved = namesOf(crd);
      names.singular = resolved.singular;
      names.listKind = resolved.listKind;
      spec.conversion ??= { strategy: "None" };
      const storage = versionsOf(crd).find((version) => version.storage === true);
      const previousStored = isObject(old?.status) ? strings(old.status.storedVersions) : [];
      const stored = [
        ...new Set([...previousStored, ...(storage === undefined ? [] : [String(storage.name)])]),
      ];
      const conditions = [
        condition("NamesAccepted", "NoConflicts", "no conflicts found", old, now),
        condition("Established", "InitialNamesAccepted", "the initial names have been accepted", old, now),
      ];
      if (metadataOf(crd).deletionTimestamp !== undefined) {
        conditions.push(
          condition(
            "Terminating",
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
            old,
            now,
          ),
        );
      }
      crd.status = {
        acceptedNames: {
          kind: resolved.kind,
          listKind: resolved.listKind,
          plural: resolved.plural,
          singular: resolved.singular,
          ...(resolved.shortNames.length > 0 ? { shortNames: resolved.shortNames } : {}),
          ...(resolved.categories.length > 0 ? { categories: resolved.categories } : {}),
        },
        conditions,
        storedVersions: stored,
      };
      return [];
    },
    validate: (crd, old) => {
      const causes: StatusCause[] = [];
      validateNames(crd, causes);
      validateVersions(crd, causes);
      if (old !== undefined) {
        for (const field of ["group", "scope"]) {
          if (specOf(old)[field] !== specOf(crd)[field]) {
            causes.push({
              reason: "FieldValueInvalid",
              field: `spec.${field}`,
              message: `Invalid value: ${JSON.stringify(specOf(crd)[field] ?? "")}: field is immutable`,
            });
          }
        }
      }
      return causes;
    },
  };
}

function printerColumn(definition: JsonObject): Column {
  const path = compileJsonPath(String(definition.jsonPath));
  const type = String(definition.type ?? "string");
  return {
    name: String(definition.name),
    type: type === "date" ? "date" : type,
    format: stringAt(definition, "format") ?? "",
    description: stringAt(definition, "description") ?? "",
    priority: typeof definition.priority === "number" ? definition.priority : 0,
    cell: (object, nowMs) => {
      const value = path.find(object)[0];
      if (value === undefined || value === null) return null;
      switch (type) {
        case "date":
          return ageCell(value, nowMs);
        case "integer":
          return typeof value === "number" ? Math.trunc(value) : null;
        case "number":
          return typeof value === "number" ? value : null;
        case "boolean":
          return typeof value === "boolean" ? value : null;
        default:
          return typeof value === "string" ? value : JSON.stringify(value);
      }
    },
  };
}

function customResourceStrategy(schema: StructuralSchema | undefined, version: JsonObject): Strategy {
  const definitions = Array.isArray(version.additionalPrinterColumns)
    ? version.additionalPrinterColumns.filter(isObject)
    : [];
  const selectable = Array.isArray(version.selectableFields) ? version.selectableFields.filter(isObject) : [];
  return {
    columns: definitions.length === 0 ? [AGE_COLUMN] : definitions.map(printerColumn),
    selectableFields: selectable.map((field) => String(field.jsonPath ?? "").replace(/^\./, "")),
    dnsLabelNames: false,
    strategicMerge: false,
    normalize: (object) => {
      if (schema === undefined) return [];
      const unknown = schema.prune(object);
      schema.applyDefaults(object);
      return unknown;
    },
    validate: (object) => (schema === undefined ? [] : schema.validate(object)),
  };
}

/** The resource types a stored CRD serves (one per served version); none while it is invalid. */
export function customResourceTypes(crd: JsonObject): ResourceType[] {
  const spec = specOf(crd);
  const group = stringAt(spec, "group") ?? "";
  const names = namesOf(crd);
  const types: ResourceType[] = [];
  for (const version of versionsOf(crd)) {
    if (version.served !== true) continue;
    const openApi = schemaOf(version);
    const subresources = isObject(version.subresources) ? version.subresources : {};
    types.push({
      group,
      version: String(version.name),
      plural: names.plural,
      singular: names.singular,
      kind: names.kind,
      listKind: names.listKind,
      namespaced: spec.scope !== "Cluster",
      shortNames: names.shortNames,
      categories: names.categories,
      statusSubresource: isObject(subresources.status),
      tracksGeneration: true,
      returnDeletedObject: true,
      crdName: nameOf(crd),
      strategy: customResourceStrategy(
        openApi === undefined ? undefined : StructuralSchema.compile(openApi),
        version,
      ),
    });
  }
  return types;
}
