/**
 * The store without Kubernetes: ServiceIdentity and AccessPolicy manifests from a directory in,
 * Secrets, ConfigMaps and statuses out as files under a state directory.
 *
 *   <state>/secrets/<namespace>/<name>/      a Secret, shaped like its volume mount (..data swap)
 *   <state>/configmaps/<namespace>/<name>/   a ConfigMap, the same way
 *   <state>/registry/<namespace>/            every registry shard of the namespace in one
 *                                            directory: the projected volume a pod mounts
 *   <state>/status/<namespace>/<kind>-<name>.yaml   what `kubectl get -o yaml` would show
 *
 * Manifests are read raw and validated by the reconcilers, exactly like objects from the API
 * server, so an invalid one gets a status condition rather than vanishing. A file that is not
 * YAML keeps its previous objects (and is reported). Objects without a namespace go to "default".
 * uids derive from kind, namespace and name, so they survive restarts the way Kubernetes uids do.
 */
import { createHash } from "node:crypto";
import { readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { stringify as toYaml } from "yaml";
import { MAX_MANIFEST_BYTES, parseYamlDocuments } from "../../../crds/src/manifest.js";
import { API_GROUP_VERSION, isDnsLabel, isDnsSubdomain } from "../../../crds/src/names.js";
import { REGISTRY_SHARD_LABEL } from "../../../crds/src/registry.js";
import {
  ensureDirectory,
  MODE_PUBLIC,
  readBoundedFile,
  writeFilesAtomically,
} from "../../../pki/src/files.js";
import { ChangeWatcher } from "../../../pki/src/watch.js";
import { listManifestFiles } from "../manifests/directory.js";
import {
  IDENTITY,
  keyOf,
  type ObjectKey,
  POLICY,
  type ResourceKind,
  type Store,
  type StoreChange,
  StoreConflictError,
  type StoredConfigMap,
  type StoredData,
  type StoredResource,
  type StoredSecret,
  type StoreEvent,
} from "./store.js";
import { readVolume, removeVolume, writeVolume } from "./volume-directory.js";

const DEFAULT_NAMESPACE = "default";
const SECRET_MODES = { directory: 0o700, file: 0o600 };
const CONFIG_MODES = { directory: 0o755, file: 0o644 };
const MAX_EVENTS_KEPT = 1000;

export interface LocalStoreOptions {
  readonly manifestsDirectory: string;
  readonly stateDirectory: string;
  readonly pollIntervalMs: number;
  readonly logger: Logger;
}

interface FileObjects {
  readonly digest: string;
  readonly objects: readonly Record<string, unknown>[];
}

interface StatusRecord {
  readonly specDigest: string;
  readonly generation: number;
  readonly status: Record<string, unknown> | undefined;
}

export class LocalStore implements Store {
  readonly #options: LocalStoreOptions;
  readonly #listeners: ((change: StoreChange) => void)[] = [];
  #files = new Map<string, FileObjects>();
  #resources = new Map<string, StoredResource>();
  readonly #statuses = new Map<string, StatusRecord>();
  /** Resource → digest of the declared object it was built from. */
  readonly #digests = new Map<string, string>();
  readonly #secrets = new Map<string, StoredSecret>();
  readonly #configMaps = new Map<string, StoredConfigMap>();
  readonly #events: (StoreEvent & { readonly object: string })[] = [];
  #version = 0;
  #watcher: ChangeWatcher | undefined;

  constructor(options: LocalStoreOptions) {
    this.#options = options;
  }

  get stateDirectory(): string {
    return this.#options.stateDirectory;
  }

  /** The directory a sidecar of `namespace` reads its registry shards from. */
  registryDirectory(namespace: string): string {
    return join(this.#options.stateDirectory, "registry", namespace);
  }

  /** The directory a sidecar of identity `name` reads its certificate and key from. */
  secretDirectory(key: ObjectKey): string {
    return join(this.#options.stateDirectory, "secrets", key.namespace, key.name);
  }

  /** Events recorded so far (most recent last), for `custody operator --local` users and tests. */
  get events(): readonly (StoreEvent & { readonly object: string })[] {
    return this.#events;
  }

  async start(): Promise<void> {
    const { stateDirectory, manifestsDirectory } = this.#options;
    await ensureDirectory(stateDirectory, 0o700);
    await this.#loadData("secrets", this.#secrets);
    await this.#loadData("configmaps", this.#configMaps);
    await this.#reloadManifests();
    this.#watcher = new ChangeWatcher([manifestsDirectory], () => this.#reloadManifests(), {
      pollIntervalMs: this.#options.pollIntervalMs,
      onError: (error) =>
        this.#options.logger.error(
          { event: "manifests_unreadable", err: error instanceof Error ? error.message : String(error) },
          "cannot read the manifest directory; keeping what was read before",
        ),
    });
  }

  async close(): Promise<void> {
    this.#watcher?.close();
  }

  /**
   * Re-reads the manifest directory now and resolves when done (tests; the watcher does this on
   * change). Goes through the watcher so that two reads never interleave.
   */
  async reload(): Promise<void> {
    if (this.#watcher === undefined) await this.#reloadManifests();
    else await this.#watcher.run();
  }

  onChange(listener: (change: StoreChange) => void): void {
    this.#listeners.push(listener);
  }

  resources(kind: ResourceKind): readonly StoredResource[] {
    return [...this.#resources.values()].filter((resource) => resource.kind === kind);
  }

  resource(kind: ResourceKind, key: ObjectKey): StoredResource | undefined {
    return this.#resources.get(resourceKey(kind, key));
  }

  secrets(): readonly StoredSecret[] {
    return [...this.#secrets.values()];
  }

  secret(key: ObjectKey): StoredSecret | undefined {
    return this.#secrets.get(keyOf(key));
  }

  async readSecret(key: ObjectKey): Promise<StoredSecret | undefined> {
    return this.#secrets.get(keyOf(key));
  }

  async writeSecret(secret: StoredSecret): Promise<StoredSecret> {
    const stored = { ...this.#nextVersion(this.#secrets, secret), type: secret.type };
    await writeVolume(this.#dataDirectory("secrets", secret), volumeOf(stored), SECRET_MODES);
    this.#secrets.set(keyOf(secret), stored);
    this.#emit({ kind: "Secret", namespace: secret.namespace, name: secret.name });
    return stored;
  }

  async deleteSecret(key: ObjectKey): Promise<void> {
    await removeVolume(this.#dataDirectory("secrets", key));
    if (this.#secrets.delete(keyOf(key))) this.#emit({ kind: "Secret", ...key });
  }

  configMaps(): readonly StoredConfigMap[] {
    return [...this.#configMaps.values()];
  }

  configMap(key: ObjectKey): StoredConfigMap | undefined {
    return this.#configMaps.get(keyOf(key));
  }

  async readConfigMap(key: ObjectKey): Promise<StoredConfigMap | undefined> {
    return this.#configMaps.get(keyOf(key));
  }

  async writeConfigMap(configMap: StoredConfigMap): Promise<StoredConfigMap> {
    const stored = this.#nextVersion(this.#configMaps, configMap);
    await writeVolume(this.#dataDirectory("configmaps", configMap), volumeOf(stored), CONFIG_MODES);
    this.#configMaps.set(keyOf(configMap), stored);
    if (stored.labels[REGISTRY_SHARD_LABEL] !== undefined) await this.#project(configMap.namespace);
    this.#emit({ kind: "ConfigMap", namespace: configMap.namespace, name: configMap.name });
    return stored;
  }

  async deleteConfigMap(key: ObjectKey): Promise<void> {
    await removeVolume(this.#dataDirectory("configmaps", key));
    const existed = this.#configMaps.get(keyOf(key));
    this.#configMaps.delete(keyOf(key));
    if (existed?.labels[REGISTRY_SHARD_LABEL] !== undefined) await this.#project(key.namespace);
    if (existed !== undefined) this.#emit({ kind: "ConfigMap", ...key });
  }

  async writeStatus(
    kind: ResourceKind,
    key: ObjectKey,
    status: Readonly<Record<string, unknown>>,
  ): Promise<void> {
    const id = resourceKey(kind, key);
    const resource = this.#resources.get(id);
    if (resource === undefined) return;
    const record = this.#statuses.get(id);
    const updated: StatusRecord = {
      specDigest: record?.specDigest ?? "",
      generation: resource.generation,
      status: { ...status },
    };
    await this.#saveStatus(kind, key, updated, resource.object);
    this.#statuses.set(id, updated);
    this.#resources.set(id, {
      ...resource,
      resourceVersion: String(++this.#version),
      object: { ...resource.object, status: { ...status } },
    });
  }

  recordEvent(kind: ResourceKind, key: ObjectKey, _uid: string, event: StoreEvent): void {
    const object = `${kind} ${keyOf(key)}`;
    this.#events.push({ ...event, object });
    if (this.#events.length > MAX_EVENTS_KEPT) this.#events.splice(0, this.#events.length - MAX_EVENTS_KEPT);
    const level = event.type === "Warning" ? "warn" : "info";
    this.#options.logger[level]({ event: "kubernetes_event", object, reason: event.reason }, event.message);
  }

  async #reloadManifests(): Promise<void> {
    const { manifestsDirectory, logger } = this.#options;
    const files = new Map<string, FileObjects>();
    for (const name of await listManifestFiles(manifestsDirectory)) {
      const source = join(manifestsDirectory, name);
      try {
        const text = await readBoundedFile(source, MAX_MANIFEST_BYTES);
        const digest = sha256(text);
        const previous = this.#files.get(name);
        files.set(
          name,
          previous?.digest === digest ? previous : { digest, objects: objectsOf(text, source, logger) },
        );
      } catch (error) {
        const kept = this.#files.get(name);
        logger.warn(
          { event: "manifest_skipped", source, code: codeOf(error) },
          `${error instanceof Error ? error.message : String(error)}${kept === undefined ? " (file skipped)" : " (keeping its last good version)"}`,
        );
        if (kept !== undefined) files.set(name, kept);
      }
    }
    this.#files = files;
    const next = new Map<string, StoredResource>();
    for (const [name, file] of [...files].sort(([a], [b]) => (a < b ? -1 : 1))) {
      for (const object of file.objects) {
        const resource = await this.#resourceOf(object);
        if (resource === undefined) continue;
        const id = resourceKey(resource.kind, resource);
        if (next.has(id)) {
          logger.warn(
            { event: "manifest_duplicate", source: join(manifestsDirectory, name), object: id },
            `${id} is declared twice; the first declaration (by file name) counts`,
          );
          continue;
        }
        next.set(id, resource);
      }
    }
    const changes: StoreChange[] = [];
    for (const [id, resource] of next) {
      const before = this.#resources.get(id);
      if (before === undefined || before.resourceVersion !== resource.resourceVersion) {
        changes.push({ kind: resource.kind, namespace: resource.namespace, name: resource.name });
      }
    }
    for (const [id, resource] of this.#resources) {
      if (!next.has(id)) {
        changes.push({ kind: resource.kind, namespace: resource.namespace, name: resource.name });
        this.#statuses.delete(id);
        this.#digests.delete(id);
        await rm(this.#statusPath(resource.kind, resource), { force: true });
      }
    }
    this.#resources = next;
    for (const change of changes) this.#emit(change);
  }

  /** A manifest as a stored resource: generation counts spec changes, persisted with the status. */
  async #resourceOf(object: Record<string, unknown>): Promise<StoredResource | undefined> {
    const kind = object.kind;
    const metadata = object.metadata as Record<string, unknown> | undefined;
    if ((kind !== IDENTITY && kind !== POLICY) || object.apiVersion !== API_GROUP_VERSION) return undefined;
    const name = metadata?.name;
    const namespace = metadata?.namespace ?? DEFAULT_NAMESPACE;
    if (
      typeof name !== "string" ||
      !isDnsSubdomain(name) ||
      typeof namespace !== "string" ||
      !isDnsLabel(namespace)
    ) {
      this.#options.logger.warn(
        { event: "manifest_skipped", kind },
        "a manifest without a valid name or namespace is skipped",
      );
      return undefined;
    }
    const key = { namespace, name };
    const id = resourceKey(kind, key);
    const specDigest = sha256(JSON.stringify(object.spec ?? null));
    let record = this.#statuses.get(id) ?? (await this.#loadStatus(kind, key));
    const existing = this.#resources.get(id);
    if (record === undefined || record.specDigest !== specDigest) {
      record = { specDigest, generation: (record?.generation ?? 0) + 1, status: record?.status };
    }
    this.#statuses.set(id, record);
    const { status: _ignored, ...declared } = object;
    // Metadata edits (annotations, labels) are changes too, without bumping the generation.
    const objectDigest = sha256(JSON.stringify(declared));
    if (
      existing !== undefined &&
      this.#digests.get(id) === objectDigest &&
      existing.generation === record.generation
    ) {
      return existing;
    }
    this.#digests.set(id, objectDigest);
    return {
      kind,
      namespace,
      name,
      uid: uidOf(kind, key),
      generation: record.generation,
      resourceVersion: String(++this.#version),
      object: {
        ...declared,
        metadata: { ...metadata, namespace, generation: record.generation, uid: uidOf(kind, key) },
        ...(record.status === undefined ? {} : { status: record.status }),
      },
    };
  }

  async #loadStatus(kind: ResourceKind, key: ObjectKey): Promise<StatusRecord | undefined> {
    try {
      const text = await readBoundedFile(this.#statusPath(kind, key), 1024 * 1024);
      const document = parseYamlDocuments(text, this.#statusPath(kind, key))[0] as
        | {
            metadata?: { generation?: unknown; annotations?: Record<string, unknown> };
            status?: Record<string, unknown>;
          }
        | undefined;
      const generation = document?.metadata?.generation;
      const specDigest = document?.metadata?.annotations?.["custody.dev/spec-digest"];
      if (typeof generation !== "number" || typeof specDigest !== "string") return undefined;
      return { specDigest, generation, status: document?.status };
    } catch {
      return undefined;
    }
  }

  async #saveStatus(
    kind: ResourceKind,
    key: ObjectKey,
    record: StatusRecord,
    object: Readonly<Record<string, unknown>>,
  ): Promise<void> {
    const path = this.#statusPath(kind, key);
    await ensureDirectory(join(this.#options.stateDirectory, "status", key.namespace), 0o755);
    const { status: _old, metadata, ...rest } = object;
    const document = {
      ...rest,
      metadata: {
        ...(metadata as object),
        annotations: { ...annotationsOf(metadata), "custody.dev/spec-digest": record.specDigest },
      },
      status: record.status,
    };
    await writeFilesAtomically([{ path, data: toYaml(document), mode: MODE_PUBLIC }], { overwrite: true });
  }

  #statusPath(kind: ResourceKind, key: ObjectKey): string {
    return join(
      this.#options.stateDirectory,
      "status",
      key.namespace,
      `${kind.toLowerCase()}-${key.name}.yaml`,
    );
  }

  #dataDirectory(kind: "secrets" | "configmaps", key: ObjectKey): string {
    return join(this.#options.stateDirectory, kind, key.namespace, key.name);
  }

  /** Optimistic concurrency: the write names the version it read, or nothing for a create. */
  #nextVersion<T extends StoredData>(map: Map<string, T>, object: T): T {
    const current = map.get(keyOf(object));
    if (object.resourceVersion === undefined && current !== undefined) {
      throw new StoreConflictError(`${keyOf(object)} already exists`);
    }
    if (object.resourceVersion !== undefined && current?.resourceVersion !== object.resourceVersion) {
      throw new StoreConflictError(`${keyOf(object)} changed since it was read`);
    }
    return { ...object, resourceVersion: String(++this.#version) };
  }

  /** The registry shards of a namespace, gathered into one directory like a projected volume. */
  async #project(namespace: string): Promise<void> {
    const files: Record<string, string> = {};
    for (const configMap of this.#configMaps.values()) {
      if (configMap.namespace !== namespace || configMap.labels[REGISTRY_SHARD_LABEL] === undefined) continue;
      Object.assign(files, configMap.data);
    }
    const directory = this.registryDirectory(namespace);
    if (Object.keys(files).length === 0) await removeVolume(directory);
    else await writeVolume(directory, { files, metadata: { projected: true } }, CONFIG_MODES);
  }

  async #loadData<T extends StoredData>(kind: "secrets" | "configmaps", into: Map<string, T>): Promise<void> {
    const root = join(this.#options.stateDirectory, kind);
    for (const namespace of await listDirectory(root)) {
      for (const name of await listDirectory(join(root, namespace))) {
        const volume = await readVolume(join(root, namespace, name));
        if (volume === undefined) continue;
        const metadata = volume.metadata as Omit<T, "data">;
        const version = Number(metadata.resourceVersion ?? 0);
        if (Number.isSafeInteger(version)) this.#version = Math.max(this.#version, version);
        into.set(`${namespace}/${name}`, { ...metadata, namespace, name, data: volume.files } as T);
      }
    }
  }

  #emit(change: StoreChange): void {
    for (const listener of this.#listeners) {
      try {
        listener(change);
      } catch (error) {
        this.#options.logger.error(
          { event: "listener_failed", err: error instanceof Error ? error.message : String(error) },
          "a change listener threw",
        );
      }
    }
  }
}

function volumeOf(object: StoredSecret | StoredConfigMap): {
  files: Record<string, string>;
  metadata: Record<string, unknown>;
} {
  const { data, ...metadata } = object;
  return { files: { ...data }, metadata };
}

function objectsOf(text: string, source: string, logger: Logger): Record<string, unknown>[] {
  return parseYamlDocuments(text, source).flatMap((document, index) => {
    if (typeof document === "object" && document !== null && !Array.isArray(document)) {
      return [document as Record<string, unknown>];
    }
    if (document !== null && document !== undefined) {
      logger.warn(
        { event: "manifest_skipped", source, document: index },
        "a YAML document that is not a mapping is skipped",
      );
    }
    return [];
  });
}

function resourceKey(kind: ResourceKind, key: ObjectKey): string {
  return `${kind}/${keyOf(key)}`;
}

function uidOf(kind: ResourceKind, key: ObjectKey): string {
  const hex = sha256(`${kind}/${key.namespace}/${key.name}`);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

function annotationsOf(metadata: unknown): Record<string, unknown> {
  const annotations = (metadata as { annotations?: unknown } | undefined)?.annotations;
  return typeof annotations === "object" && annotations !== null
    ? (annotations as Record<string, unknown>)
    : {};
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

function codeOf(error: unknown): string {
  return typeof error === "object" && error !== null && "code" in error && typeof error.code === "string"
    ? error.code
    : "unreadable";
}

async function listDirectory(path: string): Promise<string[]> {
  try {
    return (await readdir(path)).filter((name) => !name.startsWith("."));
  } catch {
    return [];
  }
}
