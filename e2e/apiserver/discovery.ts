/**
 * Discovery (/version, /api, /apis, per group-version resource lists) and the OpenAPI documents
 * kubectl needs before it sends anything: /openapi/v3 declares, per served kind, a PATCH operation
 * with the fieldValidation parameter (so kubectl validates server-side, with ?fieldValidation=Strict)
 * and no schemas; /openapi/v2 is an empty protobuf document (kubectl then computes strategic merge
 * patches of built-in types from its compiled-in types, and JSON merge patches for custom resources).
 */
import { createHash } from "node:crypto";
import type { JsonObject, JsonValue } from "./json.js";
import type { Registry } from "./registry.js";
import type { ResourceType } from "./resources.js";

export const KUBERNETES_VERSION = { major: "1", minor: "32", gitVersion: "v1.32.0-custody-e2e" };
const VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

export function versionInfo(): JsonObject {
  return {
    ...KUBERNETES_VERSION,
    gitCommit: "0000000000000000000000000000000000000000",
    gitTreeState: "clean",
    buildDate: "2025-01-01T00:00:00Z",
    goVersion: "n/a (custody e2e API server, Node.js)",
    compiler: "n/a",
    platform: `${process.platform}/${process.arch}`,
  };
}

export function apiVersions(address: string): JsonObject {
  return {
    kind: "APIVersions",
    versions: ["v1"],
    serverAddressByClientCIDRs: [{ clientCIDR: "0.0.0.0/0", serverAddress: address }],
  };
}

function groupEntry(group: string, versions: readonly string[]): JsonObject {
  const entries = versions.map((version) => ({ groupVersion: `${group}/${version}`, version }));
  return { name: group, versions: entries, preferredVersion: entries[0] ?? null };
}

export function apiGroupList(registry: Registry): JsonObject {
  const groups = registry.groups().filter((entry) => entry.group !== "");
  return {
    kind: "APIGroupList",
    apiVersion: "v1",
    groups: groups.map((entry) => groupEntry(entry.group, entry.versions)),
  };
}

export function apiGroup(registry: Registry, group: string): JsonObject | undefined {
  const entry = registry.groups().find((candidate) => candidate.group === group && group !== "");
  return entry === undefined
    ? undefined
    : { kind: "APIGroup", apiVersion: "v1", ...groupEntry(entry.group, entry.versions) };
}

function resourceEntries(type: ResourceType): JsonObject[] {
  const main: JsonObject = {
    name: type.plural,
    singularName: type.singular,
    namespaced: type.namespaced,
    kind: type.kind,
    verbs: VERBS,
  };
  if (type.shortNames.length > 0) main.shortNames = [...type.shortNames];
  if (type.categories.length > 0) main.categories = [...type.categories];
  main.storageVersionHash = createHash("sha256")
    .update(`${type.group}/${type.plural}`)
    .digest("base64")
    .slice(0, 11);
  const entries = [main];
  if (type.statusSubresource) {
    entries.push({
      name: `${type.plural}/status`,
      singularName: "",
      namespaced: type.namespaced,
      kind: type.kind,
      verbs: ["get", "patch", "update"],
    });
  }
  return entries;
}

export function apiResourceList(registry: Registry, group: string, version: string): JsonObject | undefined {
  const types = registry.resourcesOf(group, version);
  if (types.length === 0) return undefined;
  return {
    kind: "APIResourceList",
    apiVersion: "v1",
    groupVersion: group === "" ? version : `${group}/${version}`,
    resources: types.flatMap(resourceEntries),
  };
}

const FIELD_VALIDATION_PARAMETER: JsonObject = {
  name: "fieldValidation",
  in: "query",
  description: "Ignore, Warn (default) or Strict: how the server treats fields the schema does not know.",
  schema: { type: "string", uniqueItems: true },
};

function pathOf(type: ResourceType): string {
  const prefix = type.group === "" ? `/api/${type.version}` : `/apis/${type.group}/${type.version}`;
  return type.namespaced
    ? `${prefix}/namespaces/{namespace}/${type.plural}/{name}`
    : `${prefix}/${type.plural}/{name}`;
}

/** The per-group-version OpenAPI v3 document (paths only; see the module comment). */
export function openApiV3Document(
  registry: Registry,
  group: string,
  version: string,
): JsonObject | undefined {
  const types = registry.resourcesOf(group, version);
  if (types.length === 0) return undefined;
  const paths: JsonObject = {};
  for (const type of types) {
    const gvk: JsonValue = { group: type.group, version: type.version, kind: type.kind };
    paths[pathOf(type)] = {
      patch: {
        description: `partially update the specified ${type.kind}`,
        operationId: `patch${type.kind}`,
        parameters: [FIELD_VALIDATION_PARAMETER],
        responses: { "200": { description: "OK" } },
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": gvk,
      },
    };
  }
  return {
    openapi: "3.0.0",
    info: { title: "Kubernetes", version: KUBERNETES_VERSION.gitVersion },
    paths,
    components: { schemas: {} },
  };
}

function documentPath(group: string, version: string): string {
  return group === "" ? `api/${version}` : `apis/${group}/${version}`;
}

/** /openapi/v3: one entry per served group-version, with a content hash so clients re-fetch on change. */
export function openApiV3Index(registry: Registry): JsonObject {
  const paths: JsonObject = {};
  for (const { group, versions } of registry.groups()) {
    for (const version of versions) {
      const document = openApiV3Document(registry, group, version);
      const hash = createHash("sha512").update(JSON.stringify(document)).digest("hex").toUpperCase();
      paths[documentPath(group, version)] = {
        serverRelativeURL: `/openapi/v3/${documentPath(group, version)}?hash=${hash}`,
      };
    }
  }
  return { paths };
}

/** openapi_v2.Document{swagger: "2.0"} in protobuf: field 1, wire type 2, length 3. */
export const OPENAPI_V2_PROTOBUF = Buffer.from([0x0a, 0x03, 0x32, 0x2e, 0x30]);
