/**
 * Reading, merging and sharding registry documents.
 *
 * A ConfigMap holds at most 1 MiB, so the operator splits the registry into shards, one ConfigMap
 * each (custody-registry, custody-registry-1, …), and a sidecar merges what it has mounted. Shards
 * are updated one ConfigMap at a time, so a sidecar can see shards of two generations at once:
 * mergeRegistryShards refuses that (and any missing, repeated or inconsistent shard), and the
 * sidecar keeps its last good registry until a consistent set arrives.
 */
import { CustodyError, ValidationError } from "./errors.js";
import { parseOrThrow } from "./issues.js";
import {
  MAX_POLICIES_PER_SHARD,
  MAX_REGISTRY_SHARDS,
  MAX_SERVICES_PER_SHARD,
  policyKey,
  type Registry,
  type RegistryDocument,
  registryDocumentSchema,
} from "./registry-schema.js";

/** Bytes of one serialized shard that parseRegistry accepts: the ConfigMap limit. */
export const MAX_REGISTRY_SHARD_BYTES = 1024 * 1024;
/** What splitRegistry aims for by default: below the limit, leaving room for the ConfigMap's own fields. */
export const DEFAULT_REGISTRY_SHARD_BYTES = 900 * 1024;
export const REGISTRY_CONFIGMAP_NAME = "custody-registry";
/** Label of a registry ConfigMap: which shard it carries (what a projected volume gathers). */
export const REGISTRY_SHARD_LABEL = "custody.dev/registry-shard";
export const INVALID_REGISTRY = "invalid_registry";

export class RegistryError extends CustodyError {}

/** ConfigMap that carries shard `index`: custody-registry, then custody-registry-1, -2, … */
export function registryConfigMapName(index: number): string {
  return index === 0 ? REGISTRY_CONFIGMAP_NAME : `${REGISTRY_CONFIGMAP_NAME}-${index}`;
}

/** Key of shard `index` inside its ConfigMap; distinct per shard so they can share one projected volume. */
export function registryFileName(index: number): string {
  return `registry-${index}.json`;
}

/** The exact text published for a shard: compact JSON, the form sizes are measured in. */
export function serializeRegistryDocument(document: RegistryDocument): string {
  return JSON.stringify(document);
}

/**
 * One shard from its JSON text, fully validated (keys public and allow-listed, regexes safe,
 * certificates parseable). Throws ValidationError(invalid_registry) naming the field.
 */
export function parseRegistry(text: string): RegistryDocument {
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > MAX_REGISTRY_SHARD_BYTES) {
    throw new ValidationError(INVALID_REGISTRY, "registry shard", [
      { path: "", message: `is ${bytes} bytes; a shard is at most ${MAX_REGISTRY_SHARD_BYTES} bytes` },
    ]);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new ValidationError(INVALID_REGISTRY, "registry shard", [
      { path: "", message: `is not valid JSON: ${reason}` },
    ]);
  }
  return validateRegistryDocument(value);
}

/** A shard already parsed from JSON (or built in memory), validated like parseRegistry. */
export function validateRegistryDocument(value: unknown): RegistryDocument {
  return parseOrThrow(registryDocumentSchema, value, INVALID_REGISTRY, "registry shard");
}

/** Parses every shard text and merges them: what a sidecar does on each reload. */
export function loadRegistry(texts: readonly string[]): Registry {
  return mergeRegistryShards(texts.map(parseRegistry));
}

/**
 * The registry formed by all shards of one generation, in any order. Refuses mixed generations,
 * missing or repeated shards, shards whose headers differ, and a service id or policy that
 * appears in two shards.
 */
export function mergeRegistryShards(documents: readonly RegistryDocument[]): Registry {
  const [first] = documents;
  if (first === undefined) throw new RegistryError("registry_missing_shard", "no registry shards were given");
  const generations = [...new Set(documents.map((document) => document.generation))];
  if (generations.length > 1) {
    throw new RegistryError(
      "registry_mixed_generations",
      `registry shards come from different generations (${generations.sort((a, b) => a - b).join(", ")}); wait for the operator to finish publishing`,
    );
  }
  const count = first.shard.count;
  const byIndex = new Map<number, RegistryDocument>();
  for (const document of documents) {
    if (document.shard.count !== count) {
      throw new RegistryError(
        "registry_shard_mismatch",
        `registry shards disagree on the shard count (${count} and ${document.shard.count})`,
      );
    }
    if (byIndex.has(document.shard.index)) {
      throw new RegistryError(
        "registry_duplicate_shard",
        `registry shard ${document.shard.index} was given twice`,
      );
    }
    byIndex.set(document.shard.index, document);
  }
  const missing = Array.from({ length: count }, (_, index) => index).filter((index) => !byIndex.has(index));
  if (missing.length > 0) {
    throw new RegistryError(
      "registry_missing_shard",
      `registry shard${missing.length > 1 ? "s" : ""} ${missing.join(", ")} of ${count} missing`,
    );
  }
  const ordered = [...byIndex.entries()].sort(([a], [b]) => a - b).map(([, document]) => document);
  const header = canonicalJson(headerOf(first));
  for (const document of ordered) {
    if (canonicalJson(headerOf(document)) !== header) {
      throw new RegistryError(
        "registry_shard_mismatch",
        `registry shard ${document.shard.index} has a different header (trust domain, trust bundles or issuers) than shard ${first.shard.index}`,
      );
    }
  }
  const services = ordered.flatMap((document) => document.services);
  const policies = ordered.flatMap((document) => document.policies);
  refuseDuplicates(services, (service) => service.id, "registry_duplicate_service", "service");
  refuseDuplicates(policies, policyKey, "registry_duplicate_policy", "policy");
  return { ...headerOf(first), services, policies };
}

/**
 * Shards of at most `maxBytes` each (serialized), every one carrying the full header and a slice
 * of the services and policies (sorted, so an unchanged registry yields unchanged ConfigMaps).
 * Throws RegistryError when one entry cannot fit or more than MAX_REGISTRY_SHARDS are needed.
 */
export function splitRegistry(
  registry: Registry,
  maxBytes = DEFAULT_REGISTRY_SHARD_BYTES,
): RegistryDocument[] {
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1 || maxBytes > MAX_REGISTRY_SHARD_BYTES) {
    throw new RegistryError(
      "registry_invalid_shard_size",
      `the shard size must be a whole number of bytes from 1 to ${MAX_REGISTRY_SHARD_BYTES}`,
    );
  }
  const header = headerOf(registry);
  // Measured with the widest shard numbers, so the real (narrower or equal) ones always fit too.
  const emptySize = byteLength(
    assemble(header, { index: MAX_REGISTRY_SHARDS - 1, count: MAX_REGISTRY_SHARDS }, [], []),
  );
  if (emptySize > maxBytes) {
    throw new RegistryError(
      "registry_too_large",
      `the registry header alone (trust bundle and issuers) is ${emptySize} bytes, more than ${maxBytes}`,
    );
  }
  const services = [...registry.services].sort((a, b) => compareStrings(a.id, b.id));
  const policies = [...registry.policies].sort((a, b) => compareStrings(policyKey(a), policyKey(b)));

  interface Slice {
    services: Registry["services"];
    policies: Registry["policies"];
    size: number;
  }
  const slices: Slice[] = [];
  let slice: Slice = { services: [], policies: [], size: emptySize };
  const place = <K extends "services" | "policies">(field: K, item: Slice[K][number], label: string) => {
    const itemSize = byteLength(item);
    if (emptySize + itemSize > maxBytes) {
      throw new RegistryError(
        "registry_entry_too_large",
        `${label} alone needs ${emptySize + itemSize} bytes in a shard, more than ${maxBytes}`,
      );
    }
    const limit = field === "services" ? MAX_SERVICES_PER_SHARD : MAX_POLICIES_PER_SHARD;
    const list = slice[field] as Slice[K][number][];
    const separator = list.length > 0 ? 1 : 0;
    if (slice.size + separator + itemSize > maxBytes || list.length >= limit) {
      slices.push(slice);
      slice = { services: [], policies: [], size: emptySize };
    }
    const target = slice[field] as Slice[K][number][];
    slice.size += (target.length > 0 ? 1 : 0) + itemSize;
    target.push(item);
  };
  for (const service of services) place("services", service, `service ${service.id}`);
  for (const policy of policies) place("policies", policy, `policy ${policyKey(policy)}`);
  slices.push(slice);

  if (slices.length > MAX_REGISTRY_SHARDS) {
    throw new RegistryError(
      "registry_too_large",
      `the registry needs ${slices.length} shards of ${maxBytes} bytes; at most ${MAX_REGISTRY_SHARDS} are allowed`,
    );
  }
  return slices.map((part, index) => {
    const document = assemble(header, { index, count: slices.length }, part.services, part.policies);
    const size = byteLength(document);
    if (size > maxBytes) {
      // Cannot happen if the arithmetic above is right; refusing beats publishing a shard Kubernetes rejects.
      throw new RegistryError(
        "registry_too_large",
        `shard ${index} came out at ${size} bytes, over ${maxBytes}`,
      );
    }
    return document;
  });
}

type Header = Omit<Registry, "services" | "policies">;

function headerOf(registry: Registry): Header {
  return {
    apiVersion: registry.apiVersion,
    kind: registry.kind,
    generation: registry.generation,
    trustDomain: registry.trustDomain,
    trustBundle: registry.trustBundle,
    ...(registry.partnerBundle === undefined ? {} : { partnerBundle: registry.partnerBundle }),
    tokenService: registry.tokenService,
    trustedIssuers: registry.trustedIssuers,
  };
}

/** A shard with its fields in schema order, so published JSON reads top-down. */
function assemble(
  header: Header,
  shard: RegistryDocument["shard"],
  services: Registry["services"],
  policies: Registry["policies"],
): RegistryDocument {
  const { apiVersion, kind, generation, ...rest } = header;
  return { apiVersion, kind, generation, shard, ...rest, services, policies };
}

function refuseDuplicates<T>(
  items: readonly T[],
  keyOf: (item: T) => string,
  code: string,
  what: string,
): void {
  const seen = new Set<string>();
  for (const item of items) {
    const key = keyOf(item);
    if (seen.has(key))
      throw new RegistryError(code, `${what} ${key} appears in more than one registry shard`);
    seen.add(key);
  }
}

function byteLength(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value), "utf8");
}

/** JSON with object keys sorted, so equal values compare equal whatever order they were built in. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, inner: unknown) => {
    if (typeof inner !== "object" || inner === null || Array.isArray(inner)) return inner;
    return Object.fromEntries(Object.entries(inner).sort(([a], [b]) => compareStrings(a, b)));
  });
}

function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
