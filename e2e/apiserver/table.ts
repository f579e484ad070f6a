/** meta.k8s.io Table output for `kubectl get`: Name, the resource's columns, and row objects. */
import { badRequest } from "./errors.js";
import type { JsonObject, JsonValue } from "./json.js";
import { metadataOf, nameOf } from "./meta.js";
import type { ResourceType } from "./resources.js";

export type IncludeObject = "None" | "Metadata" | "Object";

export function parseIncludeObject(value: string | null): IncludeObject {
  if (value === null || value === "" || value === "Metadata") return "Metadata";
  if (value === "None" || value === "Object") return value;
  throw badRequest(
    `includeObject: Unsupported value: "${value}": supported values: "None", "Metadata", "Object"`,
  );
}

export function partialObjectMetadata(object: JsonObject, metaVersion: string): JsonObject {
  return {
    kind: "PartialObjectMetadata",
    apiVersion: `meta.k8s.io/${metaVersion}`,
    metadata: metadataOf(object),
  };
}

export function toTable(
  type: ResourceType,
  objects: readonly JsonObject[],
  listMetadata: JsonObject,
  metaVersion: string,
  includeObject: IncludeObject,
  nowMs: number,
): JsonObject {
  const columns = type.strategy.columns;
  const columnDefinitions: JsonValue[] = [
    {
      name: "Name",
      type: "string",
      format: "name",
      description:
        "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically.",
      priority: 0,
    },
    ...columns.map((column) => ({
      name: column.name,
      type: column.type,
      format: column.format,
      description: column.description,
      priority: column.priority,
    })),
  ];
  const rows = objects.map((object) => {
    const row: JsonObject = {
      cells: [nameOf(object), ...columns.map((column) => column.cell(object, nowMs))],
    };
    if (includeObject === "Object") row.object = object;
    if (includeObject === "Metadata") row.object = partialObjectMetadata(object, metaVersion);
    return row;
  });
  return {
    kind: "Table",
    apiVersion: `meta.k8s.io/${metaVersion}`,
    metadata: listMetadata,
    columnDefinitions,
    rows,
  };
}
