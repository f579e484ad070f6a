/** The resources the server serves right now: the built-ins plus whatever established CRDs add. */
import { customResourceTypes } from "./crd.js";
import type { JsonObject } from "./json.js";
import { nameOf } from "./meta.js";
import { apiVersionOf, type ResourceType, storageKeyOf } from "./resources.js";

export interface GroupVersions {
  readonly group: string;
  readonly versions: readonly string[];
}

function typeKey(group: string, version: string, plural: string): string {
  return `${group}/${version}/${plural}`;
}

/** Kubernetes version priority: GA > beta > alpha, higher numbers first (v2 > v1 > v1beta2 > v1beta1). */
export function compareVersions(a: string, b: string): number {
  const parse = (version: string): [number, number, number] => {
    const match = /^v([0-9]+)(?:(alpha|beta)([0-9]+))?$/.exec(version);
    if (match === null) return [-1, 0, 0];
    const stability = match[2] === undefined ? 2 : match[2] === "beta" ? 1 : 0;
    return [stability, Number(match[1]), Number(match[3] ?? 0)];
  };
  const [sa, ma, na] = parse(a);
  const [sb, mb, nb] = parse(b);
  if (sa === -1 && sb === -1) return a.localeCompare(b);
  return sb - sa || mb - ma || nb - na;
}

export class Registry {
  private readonly types = new Map<string, ResourceType>();

  constructor(builtins: readonly ResourceType[]) {
    for (const type of builtins) this.types.set(typeKey(type.group, type.version, type.plural), type);
  }

  lookup(group: string, version: string, plural: string): ResourceType | undefined {
    return this.types.get(typeKey(group, version, plural));
  }

  all(): ResourceType[] {
    return [...this.types.values()];
  }

  /** Every served version of the resource stored under `storageKey`, preferred version first. */
  versionsOf(storageKey: string): ResourceType[] {
    return this.all()
      .filter((type) => storageKeyOf(type) === storageKey)
      .sort((a, b) => compareVersions(a.version, b.version));
  }

  /** The resource a `apiVersion`/`kind` pair (as in an owner reference) names. */
  byKind(apiVersion: string, kind: string): ResourceType | undefined {
    return this.all().find((type) => apiVersionOf(type) === apiVersion && type.kind === kind);
  }

  /** Serves what `crd` defines now, replacing what it defined before. */
  syncCrd(crd: JsonObject): void {
    this.removeCrd(nameOf(crd));
    for (const type of customResourceTypes(crd)) {
      const key = typeKey(type.group, type.version, type.plural);
      const existing = this.types.get(key);
      if (existing === undefined || existing.crdName !== undefined) this.types.set(key, type);
    }
  }

  /** Stops serving what the CRD named `crdName` defined; returns the storage keys it used. */
  removeCrd(crdName: string): string[] {
    const removed = new Set<string>();
    for (const [key, type] of this.types) {
      if (type.crdName === crdName) {
        this.types.delete(key);
        removed.add(storageKeyOf(type));
      }
    }
    return [...removed];
  }

  /** Groups and their versions, preferred version first, core ("") first then alphabetical. */
  groups(): GroupVersions[] {
    const byGroup = new Map<string, Set<string>>();
    for (const type of this.types.values()) {
      const versions = byGroup.get(type.group) ?? new Set<string>();
      versions.add(type.version);
      byGroup.set(type.group, versions);
    }
    return [...byGroup.entries()]
      .sort(([a], [b]) => (a === "" ? -1 : b === "" ? 1 : a.localeCompare(b)))
      .map(([group, versions]) => ({ group, versions: [...versions].sort(compareVersions) }));
  }

  /** The resources of one group version, for discovery. */
  resourcesOf(group: string, version: string): ResourceType[] {
    return this.all()
      .filter((type) => type.group === group && type.version === version)
      .sort((a, b) => a.plural.localeCompare(b.plural));
  }
}
