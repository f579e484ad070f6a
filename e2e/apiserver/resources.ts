/** What the server knows about a served resource: names, scope, subresources and its strategy. */
import type { StatusCause } from "./errors.js";
import type { JsonObject, JsonValue } from "./json.js";

/** A Table column (meta.k8s.io/v1 TableColumnDefinition) and how to compute its cell. */
export interface Column {
  readonly name: string;
  readonly type: string;
  readonly format: string;
  readonly description: string;
  readonly priority: number;
  cell(object: JsonObject, nowMs: number): JsonValue;
}

/** Type-specific behaviour, like the real server's per-resource REST strategies. */
export interface Strategy {
  /** Table columns after Name (printed by `kubectl get`). */
  readonly columns: readonly Column[];
  /** Fields usable in fieldSelector besides metadata.name and metadata.namespace. */
  readonly selectableFields: readonly string[];
  /** Names must be DNS labels (namespaces) rather than DNS subdomains. */
  readonly dnsLabelNames: boolean;
  /** Accepts application/strategic-merge-patch+json (built-in types only). */
  readonly strategicMerge: boolean;
  /**
   * Defaults and server-owned fields, in place. `old` is the stored object on update. Returns the
   * paths of fields dropped because the schema does not know them (for fieldValidation).
   */
  normalize(object: JsonObject, old: JsonObject | undefined, now: Date): string[];
  /** Type-specific validation beyond ObjectMeta. */
  validate(object: JsonObject, old: JsonObject | undefined): StatusCause[];
}

export interface ResourceType {
  readonly group: string;
  readonly version: string;
  readonly plural: string;
  readonly singular: string;
  readonly kind: string;
  readonly listKind: string;
  readonly namespaced: boolean;
  readonly shortNames: readonly string[];
  readonly categories: readonly string[];
  /** Has a /status subresource: the main resource ignores status, /status ignores the rest. */
  readonly statusSubresource: boolean;
  /** metadata.generation counts changes outside metadata (and status, with a status subresource). */
  readonly tracksGeneration: boolean;
  /** DELETE answers with the object rather than a Success Status. */
  readonly returnDeletedObject: boolean;
  /** Set for custom resources: the CustomResourceDefinition that serves them. */
  readonly crdName: string | undefined;
  readonly strategy: Strategy;
}

export const NO_CAUSES: readonly StatusCause[] = [];

export function apiVersionOf(type: Pick<ResourceType, "group" | "version">): string {
  return type.group === "" ? type.version : `${type.group}/${type.version}`;
}

/** Objects of every version of a resource share one storage bucket. */
export function storageKeyOf(type: Pick<ResourceType, "group" | "plural">): string {
  return `${type.group}/${type.plural}`;
}

export function groupResource(type: Pick<ResourceType, "group" | "plural">): {
  group: string;
  resource: string;
} {
  return { group: type.group, resource: type.plural };
}

/** duration.HumanDuration of k8s.io/apimachinery, as the Age column shows it. */
export function humanDuration(milliseconds: number): string {
  const seconds = Math.trunc(milliseconds / 1000);
  if (seconds < -1) return "<invalid>";
  if (seconds < 0) return "0s";
  if (seconds < 120) return `${seconds}s`;
  const minutes = Math.trunc(seconds / 60);
  if (minutes < 10) return seconds % 60 === 0 ? `${minutes}m` : `${minutes}m${seconds % 60}s`;
  if (minutes < 180) return `${minutes}m`;
  const hours = Math.trunc(minutes / 60);
  if (hours < 8) return minutes % 60 === 0 ? `${hours}h` : `${hours}h${minutes % 60}m`;
  if (hours < 48) return `${hours}h`;
  if (hours < 24 * 8)
    return hours % 24 === 0 ? `${Math.trunc(hours / 24)}d` : `${Math.trunc(hours / 24)}d${hours % 24}h`;
  if (hours < 24 * 365 * 2) return `${Math.trunc(hours / 24)}d`;
  const years = Math.trunc(hours / 24 / 365);
  if (hours < 24 * 365 * 8) {
    const days = Math.trunc(hours / 24) % 365;
    return days === 0 ? `${years}y` : `${years}y${days}d`;
  }
  return `${years}y`;
}

/** A timestamp cell: the age of `value` ("5m"), `<unknown>` when it is not a timestamp. */
export function ageCell(value: JsonValue | undefined, nowMs: number): string {
  if (typeof value !== "string") return "<unknown>";
  const time = Date.parse(value);
  return Number.isNaN(time) ? "<unknown>" : humanDuration(nowMs - time);
}

export const AGE_COLUMN: Column = {
  name: "Age",
  type: "string",
  format: "",
  description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
  priority: 0,
  cell: (object, nowMs) => ageCell((object.metadata as JsonObject | undefined)?.creationTimestamp, nowMs),
};
