/**
 * Builds the registry from every identity's Secret and every policy, and writes it as ConfigMaps
 * `custody-registry[-i]` into each namespace that has ServiceIdentities. Every namespace gets every
 * service (calls cross namespaces) and the policies of its own services (only they are enforced
 * there). A namespace's ConfigMaps are written only when their content changes, so a steady state
 * makes no writes at all.
 *
 * Generations only grow: each publication takes max(last + 1, the current Unix second), so even
 * after the ConfigMaps are deleted and the operator restarts, sidecars (which refuse an older
 * generation) accept what comes next.
 */
import type { Logger } from "pino";
import type { CompiledPolicy } from "../../../crds/src/compiled-policy.js";
import { normalizeDistinguishedName } from "../../../crds/src/distinguished-name.js";
import { jwkSchema } from "../../../crds/src/jwk.js";
import { serviceId } from "../../../crds/src/names.js";
import {
  parseRegistry,
  REGISTRY_CONFIGMAP_NAME,
  REGISTRY_SHARD_LABEL,
  registryConfigMapName,
  registryFileName,
  serializeRegistryDocument,
  splitRegistry,
} from "../../../crds/src/registry.js";
import {
  locationSchema,
  type Registry,
  type RegistryDocument,
  type RegistryService,
  type RegistryServiceKey,
} from "../../../crds/src/registry-schema.js";
import { edgeAudiencesOf } from "../../../crds/src/service-identity.js";
import {
  IDENTITY,
  keyOf,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  type ObjectKey,
  POLICY,
  type Store,
  StoreConflictError,
  type StoredConfigMap,
} from "../store/store.js";
import type { Catalog } from "./catalog.js";
import { kubernetesTime } from "./conditions.js";
import { type IdentityMaterial, issuedIdentitySecret } from "./identity-secret.js";

export const LOCATION_ANNOTATION = "custody.dev/location";
export const GENERATION_ANNOTATION = "custody.dev/registry-generation";
/** Where sidecars are reached by default: the Kubernetes Service named like the identity. */
export const DEFAULT_LOCATION_TEMPLATE = "{name}.{namespace}.svc:15006";

/** What every shard carries besides services and policies. */
export type RegistryHeader = Pick<
  Registry,
  "trustDomain" | "trustBundle" | "partnerBundle" | "tokenService" | "trustedIssuers"
>;

export interface RegistryPublisherOptions {
  readonly store: Store;
  readonly catalog: Catalog;
  /** Where the identities' Secrets live (the operator's namespace). */
  readonly stateNamespace: string;
  readonly header: () => RegistryHeader;
  readonly locationTemplate: string;
  /** Where a service's sidecar listens when something other than the template knows (local mode). */
  readonly locationOverride?: (serviceId: string) => string | undefined;
  readonly shardBytes?: number;
  readonly logger: Logger;
  readonly now: () => number;
  /** Identities and policies that this publication brought into the registry (their status can move). */
  readonly published: (identities: readonly ObjectKey[], policies: readonly ObjectKey[]) => void;
}

export interface PublicationSummary {
  readonly generation: number;
  readonly namespaces: number;
  readonly written: number;
  readonly largestShardBytes: number;
}

export class RegistryPublisher {
  #generation = 0;
  /** Namespace → kids its registry carries now. */
  readonly #publishedKids = new Map<string, ReadonlySet<string>>();
  /** "namespace/name" of a policy → the generation its namespace's registry carries. */
  readonly #publishedPolicies = new Map<string, number | undefined>();
  #last: PublicationSummary = { generation: 0, namespaces: 0, written: 0, largestShardBytes: 0 };

  constructor(private readonly options: RegistryPublisherOptions) {}

  get lastPublication(): PublicationSummary {
    return this.#last;
  }

  /**
   * Learns what is already published: the generation to continue from, which kids are live, and
   * each policy's last compiled version (so an invalid policy after a restart keeps its old rules).
   */
  seed(): void {
    for (const configMap of this.#registryConfigMaps()) {
      for (const text of Object.values(configMap.data)) {
        let document: RegistryDocument;
        try {
          document = parseRegistry(text);
        } catch {
          continue;
        }
        this.#generation = Math.max(this.#generation, document.generation);
        if (configMap.name === REGISTRY_CONFIGMAP_NAME || document.shard.index === 0) {
          for (const policy of document.policies) this.options.catalog.rememberPolicy(policy);
        }
        for (const policy of document.policies) {
          this.#publishedPolicies.set(`${policy.namespace}/${policy.name}`, policy.generation);
        }
        const kids = new Set(this.#publishedKids.get(configMap.namespace) ?? []);
        for (const service of document.services) for (const key of service.keys) kids.add(key.kid);
        this.#publishedKids.set(configMap.namespace, kids);
      }
    }
  }

  /** Whether the registry of every namespace that has one carries `kid`. */
  isPublished(kid: string): boolean {
    if (this.#publishedKids.size === 0) return false;
    for (const kids of this.#publishedKids.values()) if (!kids.has(kid)) return false;
    return true;
  }

  /** Whether the registry carries generation `generation` of a policy. */
  isPolicyPublished(key: ObjectKey, generation: number): boolean {
    const id = keyOf(key);
    return this.#publishedPolicies.has(id) && (this.#publishedPolicies.get(id) ?? 0) === generation;
  }

  async publish(): Promise<PublicationSummary> {
    const { store, logger } = this.options;
    const { services, owners } = this.#services();
    const policies = this.#policies();
    const namespaces = [...new Set(store.resources(IDENTITY).map((resource) => resource.namespace))].sort();
    const header = this.options.header();
    let generation: number | undefined;
    let written = 0;
    let largest = 0;
    const newlyPublished = new Set<string>();
    // Every namespace carries every service, so the kids it publishes are the same everywhere.
    const kids: ReadonlySet<string> = new Set(
      services.flatMap((service) => service.keys.map((key) => key.kid)),
    );
    for (const namespace of namespaces) {
      const registry: Omit<Registry, "generation"> = {
        apiVersion: "custody.dev/v1alpha1",
        kind: "Registry",
        ...header,
        services,
        policies: policies.filter((policy) => policy.namespace === namespace),
      };
      const existing = this.#existingShards(namespace);
      const unchanged = sameContent(existing, registry, this.options.shardBytes);
      let shards = unchanged;
      if (shards === undefined) {
        generation ??= Math.max(this.#generation + 1, Math.floor(this.options.now() / 1000));
        shards = splitRegistry({ ...registry, generation }, this.options.shardBytes);
        await this.#write(namespace, shards, existing);
        written++;
      }
      largest = Math.max(
        largest,
        ...shards.map((shard) => Buffer.byteLength(serializeRegistryDocument(shard))),
      );
      const before = this.#publishedKids.get(namespace) ?? new Set<string>();
      for (const kid of kids) if (!before.has(kid)) newlyPublished.add(kid);
      this.#publishedKids.set(namespace, kids);
    }
    for (const namespace of [...this.#publishedKids.keys()]) {
      if (!namespaces.includes(namespace)) this.#publishedKids.delete(namespace);
    }
    await this.#removeStale(new Set(namespaces));
    if (generation !== undefined) {
      this.#generation = generation;
      logger.info(
        {
          event: "registry_published",
          generation,
          namespaces: written,
          services: services.length,
          policies: policies.length,
        },
        "registry published",
      );
    }
    this.#last = {
      generation: this.#generation,
      namespaces: namespaces.length,
      written,
      largestShardBytes: largest,
    };
    const movedPolicies: ObjectKey[] = [];
    const live = new Set<string>();
    for (const policy of policies) {
      const id = keyOf(policy);
      live.add(id);
      if (!namespaces.includes(policy.namespace)) continue;
      if (!this.#publishedPolicies.has(id) || this.#publishedPolicies.get(id) !== policy.generation) {
        this.#publishedPolicies.set(id, policy.generation);
        movedPolicies.push(policy);
      }
    }
    for (const id of [...this.#publishedPolicies.keys()])
      if (!live.has(id)) this.#publishedPolicies.delete(id);
    const moved = [...newlyPublished].flatMap((kid) => owners.get(kid) ?? []);
    if (moved.length > 0 || movedPolicies.length > 0) this.options.published(moved, movedPolicies);
    return this.#last;
  }

  /** Every identity with a usable Secret, as a registry entry, and which identity owns each kid. */
  #services(): { services: RegistryService[]; owners: Map<string, ObjectKey[]> } {
    const { store, catalog } = this.options;
    const services: RegistryService[] = [];
    const owners = new Map<string, ObjectKey[]>();
    const nowMs = this.options.now();
    for (const resource of store.resources(IDENTITY)) {
      const identity = catalog.effectiveIdentity(resource);
      if (identity === undefined) continue;
      const secret = issuedIdentitySecret(store, this.options.stateNamespace, resource);
      if (secret === undefined) continue;
      const read = catalog.material(secret);
      if (!("material" in read)) continue;
      const keys = registryKeys(read.material, nowMs);
      for (const key of keys) owners.set(key.kid, [...(owners.get(key.kid) ?? []), resource]);
      const id = serviceId(resource);
      const edgeAudiences = edgeAudiencesOf(identity, id);
      const externalSubjects = identity.spec.externalSubjects?.map((entry) => ({
        issuer: normalizeDistinguishedName(entry.issuer),
        subject: normalizeDistinguishedName(entry.subject),
      }));
      services.push({
        id,
        environment: identity.spec.environment,
        claims: identity.spec.claims ?? {},
        scopes: identity.spec.scopes ?? [],
        edge: identity.spec.edge,
        ...(edgeAudiences === undefined ? {} : { edgeAudiences: [...edgeAudiences] }),
        ...(externalSubjects === undefined ? {} : { externalSubjects }),
        location: this.#locationOf(resource.object, resource),
        keys,
      });
    }
    // A kid claimed by two services would let one sign as the other: neither gets it published.
    const duplicated = new Set([...owners].filter(([, list]) => list.length > 1).map(([kid]) => kid));
    if (duplicated.size > 0) {
      this.options.logger.error(
        { event: "duplicate_kid", kids: [...duplicated] },
        "two identities share a key",
      );
      return {
        services: services.filter((service) => !service.keys.some((key) => duplicated.has(key.kid))),
        owners,
      };
    }
    return { services, owners };
  }

  #policies(): CompiledPolicy[] {
    const { store, catalog } = this.options;
    return store.resources(POLICY).flatMap((resource) => {
      const policy = catalog.effectivePolicy(resource);
      return policy === undefined ? [] : [policy];
    });
  }

  #locationOf(object: Readonly<Record<string, unknown>>, key: ObjectKey): string {
    const annotations = (object.metadata as { annotations?: Record<string, unknown> } | undefined)
      ?.annotations;
    const annotated = annotations?.[LOCATION_ANNOTATION];
    if (typeof annotated === "string") {
      if (locationSchema.safeParse(annotated).success) return annotated;
      this.options.logger.warn(
        { event: "invalid_location", identity: keyOf(key), location: annotated.slice(0, 300) },
        `${LOCATION_ANNOTATION} must be host:port; using the default location`,
      );
    }
    const override = this.options.locationOverride?.(serviceId(key));
    if (override !== undefined) return override;
    return this.options.locationTemplate
      .replaceAll("{name}", key.name)
      .replaceAll("{namespace}", key.namespace);
  }

  #registryConfigMaps(): StoredConfigMap[] {
    return this.options.store
      .configMaps()
      .filter(
        (configMap) =>
          configMap.name === REGISTRY_CONFIGMAP_NAME || configMap.labels[REGISTRY_SHARD_LABEL] !== undefined,
      );
  }

  #existingShards(namespace: string): StoredConfigMap[] {
    return this.#registryConfigMaps().filter((configMap) => configMap.namespace === namespace);
  }

  async #write(
    namespace: string,
    shards: RegistryDocument[],
    existing: readonly StoredConfigMap[],
  ): Promise<void> {
    const { store } = this.options;
    for (const shard of shards) {
      const name = registryConfigMapName(shard.shard.index);
      const current = existing.find((configMap) => configMap.name === name);
      const content = (resourceVersion: string | undefined): StoredConfigMap => ({
        namespace,
        name,
        ...(resourceVersion === undefined ? {} : { resourceVersion }),
        labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [REGISTRY_SHARD_LABEL]: String(shard.shard.index) },
        annotations: {
          [GENERATION_ANNOTATION]: String(shard.generation),
          "custody.dev/published-at": kubernetesTime(this.options.now()),
        },
        data: { [registryFileName(shard.shard.index)]: serializeRegistryDocument(shard) },
      });
      try {
        await store.writeConfigMap(content(current?.resourceVersion));
      } catch (error) {
        if (!(error instanceof StoreConflictError)) throw error;
        // Someone else wrote it (a kubectl edit, a former leader): ours replaces it, read fresh.
        const fresh = await store.readConfigMap({ namespace, name });
        await store.writeConfigMap(content(fresh?.resourceVersion));
      }
    }
    // Shards beyond the new count go last: until then sidecars see a mixed set and keep the old one.
    for (const configMap of existing) {
      const index = Number(configMap.labels[REGISTRY_SHARD_LABEL] ?? 0);
      if (index >= shards.length) await store.deleteConfigMap(configMap);
    }
  }

  async #removeStale(namespaces: ReadonlySet<string>): Promise<void> {
    for (const configMap of this.#registryConfigMaps()) {
      if (!namespaces.has(configMap.namespace)) await this.options.store.deleteConfigMap(configMap);
    }
  }
}

/** The current, next and (until it expires) previous key of one identity. */
export function registryKeys(material: IdentityMaterial, nowMs: number): RegistryServiceKey[] {
  const keys: RegistryServiceKey[] = [
    {
      kid: material.current.kid,
      status: "current",
      notAfter: kubernetesTime(material.current.certificate.notAfter.getTime()),
      jwk: material.current.jwk,
    },
  ];
  if (material.next !== undefined && material.next.kid !== material.current.kid) {
    keys.push({
      kid: material.next.kid,
      status: "next",
      notAfter: kubernetesTime(material.next.certificate.notAfter.getTime()),
      jwk: material.next.jwk,
    });
  }
  const previous = material.previous;
  if (
    previous !== undefined &&
    previous.notAfterMs > nowMs &&
    !keys.some((key) => key.kid === previous.kid) &&
    jwkSchema.safeParse(previous.jwk).success
  ) {
    keys.push({
      kid: previous.kid,
      status: "previous",
      notAfter: kubernetesTime(previous.notAfterMs),
      jwk: previous.jwk,
    });
  }
  return keys;
}

/**
 * The shards already published, when their text is exactly what `registry` gives at their
 * generation; undefined when anything differs or cannot be read.
 */
function sameContent(
  existing: readonly StoredConfigMap[],
  registry: Omit<Registry, "generation">,
  shardBytes: number | undefined,
): RegistryDocument[] | undefined {
  if (existing.length === 0) return undefined;
  const texts = new Map<number, string>();
  let documents: RegistryDocument[];
  try {
    documents = existing.map((configMap) => {
      const index = Number(configMap.labels[REGISTRY_SHARD_LABEL] ?? 0);
      const text = configMap.data[registryFileName(index)] ?? "";
      texts.set(index, text);
      return parseRegistry(text);
    });
  } catch {
    return undefined;
  }
  const generation = documents[0]?.generation ?? 0;
  let wanted: RegistryDocument[];
  try {
    wanted = splitRegistry({ ...registry, generation }, shardBytes);
  } catch {
    return undefined;
  }
  if (wanted.length !== documents.length) return undefined;
  for (const shard of wanted) {
    if (texts.get(shard.shard.index) !== serializeRegistryDocument(shard)) return undefined;
  }
  return documents;
}
