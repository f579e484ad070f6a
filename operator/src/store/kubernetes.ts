/**
 * The Store on a Kubernetes API server. Informers (list + watch, restarted when they fail) keep the
 * caches of ServiceIdentities, AccessPolicies and the operator's own Secrets and ConfigMaps (those
 * with MANAGED_BY_LABEL); writes go straight to the API server with optimistic concurrency and are
 * written through to the cache, so a reconciler reads its own write before the watch brings it.
 * The cache never goes back: an event older than what it holds (by resourceVersion) is ignored.
 */
import {
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  PatchStrategy,
  setHeaderOptions,
  type V1ConfigMap,
  type V1Secret,
} from "@kubernetes/client-node";
import type { Logger } from "pino";
import { callApi, DEFAULT_REQUEST_TIMEOUT_MS, statusOf, storeErrorOf } from "./kubernetes-api.js";
import {
  CUSTODY_GROUP,
  CUSTODY_VERSION,
  compareResourceVersions,
  configMapBodyOf,
  PLURALS,
  secretBodyOf,
  storedConfigMapOf,
  storedResourceOf,
  storedSecretOf,
  supersedes,
} from "./kubernetes-convert.js";
import { EventRecorder } from "./kubernetes-events.js";
import { type Backoff, type RunningInformer, SupervisedInformer } from "./kubernetes-informer.js";
import type { WatchBounds } from "./kubernetes-watch.js";
import {
  IDENTITY,
  keyOf,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  type ObjectKey,
  POLICY,
  type ResourceKind,
  type Store,
  type StoreChange,
  StoreConflictError,
  type StoredConfigMap,
  type StoredResource,
  type StoredSecret,
  StoreError,
  type StoreEvent,
} from "./store.js";

export const DEFAULT_COMPONENT = "custody-operator";
const DEFAULT_START_TIMEOUT_MS = 30_000;
const MANAGED_SELECTOR = `${MANAGED_BY_LABEL}=${MANAGED_BY}`;
/**
 * Updates are server-side applies under this field manager: only the fields Custody sets are
 * Custody's, so labels, annotations, owner references and data keys that other tools add to its
 * Secrets and ConfigMaps stay. (A replace would drop them.) The resourceVersion in each apply is a
 * precondition: a stale write is a conflict, as with a replace.
 */
export const FIELD_MANAGER = "custody-operator";

export interface KubernetesStoreOptions {
  readonly kubeConfig: KubeConfig;
  readonly logger: Logger;
  /** Namespaces to watch; undefined watches all of them (a ClusterRole is needed then). */
  readonly namespaces?: readonly string[];
  /**
   * The one namespace whose Secrets are cached (the operator's own, where it keeps every Secret it
   * writes), so the operator needs no access to Secrets anywhere else. Undefined: Secrets follow
   * `namespaces`.
   */
  readonly secretsNamespace?: string;
  /** `source.component` of recorded Events. */
  readonly component?: string;
  /** How long start() waits for every cache to be loaded before it gives up (default 30 s). */
  readonly startTimeoutMs?: number;
  /** Deadline of each API request (default 30 s). */
  readonly requestTimeoutMs?: number;
  /** Restart delays of a failed informer (default 1 s doubling to 30 s, jittered). */
  readonly informerBackoff?: Backoff;
  /** Each watch's server timeout and the silence after which it is given up (default 300 s, 150 s). */
  readonly watchBounds?: WatchBounds;
  readonly maxEventsInFlight?: number;
  readonly eventDedupeWindowMs?: number;
}

export interface InformerHealth {
  readonly informer: string;
  readonly synced: boolean;
  /** Set while the informer is failing and being restarted. */
  readonly lastError?: string;
}

type CachedKind = StoreChange["kind"];

interface Cached {
  readonly namespace: string;
  readonly name: string;
  readonly resourceVersion?: string;
}

function listOf(value: unknown, what: string): KubernetesListObject<KubernetesObject> {
  if (typeof value === "object" && value !== null && "items" in value && Array.isArray(value.items)) {
    return value as KubernetesListObject<KubernetesObject>;
  }
  throw new Error(`the API server answered the list of ${what} with something that is not a list`);
}

function keyOfObject(object: KubernetesObject): string {
  return `${object.metadata?.namespace ?? ""}/${object.metadata?.name ?? ""}`;
}

export class KubernetesStore implements Store {
  readonly #options: KubernetesStoreOptions;
  readonly #logger: Logger;
  readonly #core: CoreV1Api;
  readonly #custom: CustomObjectsApi;
  readonly #requestTimeoutMs: number;
  readonly #closing = new AbortController();
  readonly #events: EventRecorder;
  readonly #resources: Readonly<Record<ResourceKind, Map<string, StoredResource>>> = {
    [IDENTITY]: new Map(),
    [POLICY]: new Map(),
  };
  readonly #secrets = new Map<string, StoredSecret>();
  readonly #configMaps = new Map<string, StoredConfigMap>();
  readonly #listeners: ((change: StoreChange) => void)[] = [];
  #informers: RunningInformer[] = [];
  #started: Promise<void> | undefined;
  #closed = false;

  constructor(options: KubernetesStoreOptions) {
    this.#options = options;
    this.#logger = options.logger;
    this.#core = options.kubeConfig.makeApiClient(CoreV1Api);
    this.#custom = options.kubeConfig.makeApiClient(CustomObjectsApi);
    this.#requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.#events = new EventRecorder({
      core: this.#core,
      component: options.component ?? DEFAULT_COMPONENT,
      logger: options.logger,
      requestTimeoutMs: this.#requestTimeoutMs,
      cancel: this.#closing.signal,
      ...(options.maxEventsInFlight === undefined ? {} : { maxInFlight: options.maxEventsInFlight }),
      ...(options.eventDedupeWindowMs === undefined ? {} : { dedupeWindowMs: options.eventDedupeWindowMs }),
    });
  }

  /** Events dropped because too many were in flight (see recordEvent). */
  get droppedEvents(): number {
    return this.#events.dropped;
  }

  /** Per informer: synced once, and its latest failure while it is restarting (for readiness and logs). */
  health(): readonly InformerHealth[] {
    return this.#informers.map((informer) => ({
      informer: informer.description,
      synced: informer.isSynced,
      ...(informer.lastError === undefined ? {} : { lastError: informer.lastError }),
    }));
  }

  start(): Promise<void> {
    if (this.#closed) return Promise.reject(new StoreError("store_unavailable", "the store is closed"));
    this.#started ??= this.#start();
    return this.#started;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing.abort();
    await Promise.all(this.#informers.map((informer) => informer.stop()));
    await this.#events.drain();
  }

  onChange(listener: (change: StoreChange) => void): void {
    this.#listeners.push(listener);
  }

  resources(kind: ResourceKind): readonly StoredResource[] {
    return [...this.#resources[kind].values()];
  }

  resource(kind: ResourceKind, key: ObjectKey): StoredResource | undefined {
    return this.#resources[kind].get(keyOf(key));
  }

  secrets(): readonly StoredSecret[] {
    return [...this.#secrets.values()];
  }

  secret(key: ObjectKey): StoredSecret | undefined {
    return this.#secrets.get(keyOf(key));
  }

  async readSecret(key: ObjectKey): Promise<StoredSecret | undefined> {
    try {
      const secret = await this.#call((options) =>
        this.#core.readNamespacedSecret({ name: key.name, namespace: key.namespace }, options),
      );
      return this.#decodeSecret(secret, `Secret ${keyOf(key)}`);
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw storeErrorOf(`reading Secret ${keyOf(key)}`, error);
    }
  }

  async writeSecret(secret: StoredSecret): Promise<StoredSecret> {
    const body = secretBodyOf(secret);
    const what = `Secret ${keyOf(secret)}`;
    const { name, namespace } = secret;
    const written = await this.#writeOwned<V1Secret>(what, secret, this.#secrets.get(keyOf(secret))?.uid, {
      create: (options) =>
        this.#core.createNamespacedSecret({ namespace, body, fieldManager: FIELD_MANAGER }, options),
      apply: (options) =>
        this.#core.patchNamespacedSecret(
          { name, namespace, body, fieldManager: FIELD_MANAGER, force: true },
          setHeaderOptions("Content-Type", PatchStrategy.ServerSideApply, options),
        ),
      patch: (patch, options) =>
        this.#core.patchNamespacedSecret(
          { name, namespace, body: patch },
          setHeaderOptions("Content-Type", PatchStrategy.JsonPatch, options),
        ),
      remove: (uid, options) =>
        this.#core.deleteNamespacedSecret({ name, namespace, body: { preconditions: { uid } } }, options),
    });
    const stored = this.#decodeSecret(written, what);
    if (this.#watchesSecrets(stored.namespace) && !isDeleting(written))
      this.#apply(this.#secrets, "Secret", stored);
    return stored;
  }

  async deleteSecret(key: ObjectKey): Promise<void> {
    await this.#delete(`Secret ${keyOf(key)}`, (options) =>
      this.#core.deleteNamespacedSecret({ name: key.name, namespace: key.namespace }, options),
    );
    this.#forget(this.#secrets, "Secret", key, undefined);
  }

  configMaps(): readonly StoredConfigMap[] {
    return [...this.#configMaps.values()];
  }

  configMap(key: ObjectKey): StoredConfigMap | undefined {
    return this.#configMaps.get(keyOf(key));
  }

  async readConfigMap(key: ObjectKey): Promise<StoredConfigMap | undefined> {
    try {
      const configMap = await this.#call((options) =>
        this.#core.readNamespacedConfigMap({ name: key.name, namespace: key.namespace }, options),
      );
      return this.#convertConfigMap(configMap, `ConfigMap ${keyOf(key)}`);
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw storeErrorOf(`reading ConfigMap ${keyOf(key)}`, error);
    }
  }

  async writeConfigMap(configMap: StoredConfigMap): Promise<StoredConfigMap> {
    const body = configMapBodyOf(configMap);
    const what = `ConfigMap ${keyOf(configMap)}`;
    const { name, namespace } = configMap;
    const cachedUid = this.#configMaps.get(keyOf(configMap))?.uid;
    const written = await this.#writeOwned<V1ConfigMap>(what, configMap, cachedUid, {
      create: (options) =>
        this.#core.createNamespacedConfigMap({ namespace, body, fieldManager: FIELD_MANAGER }, options),
      apply: (options) =>
        this.#core.patchNamespacedConfigMap(
          { name, namespace, body, fieldManager: FIELD_MANAGER, force: true },
          setHeaderOptions("Content-Type", PatchStrategy.ServerSideApply, options),
        ),
      patch: (patch, options) =>
        this.#core.patchNamespacedConfigMap(
          { name, namespace, body: patch },
          setHeaderOptions("Content-Type", PatchStrategy.JsonPatch, options),
        ),
      remove: (uid, options) =>
        this.#core.deleteNamespacedConfigMap({ name, namespace, body: { preconditions: { uid } } }, options),
    });
    const stored = this.#convertConfigMap(written, what);
    if (this.#watches(stored.namespace) && !isDeleting(written))
      this.#apply(this.#configMaps, "ConfigMap", stored);
    return stored;
  }

  async deleteConfigMap(key: ObjectKey): Promise<void> {
    await this.#delete(`ConfigMap ${keyOf(key)}`, (options) =>
      this.#core.deleteNamespacedConfigMap({ name: key.name, namespace: key.namespace }, options),
    );
    this.#forget(this.#configMaps, "ConfigMap", key, undefined);
  }

  async writeStatus(
    kind: ResourceKind,
    key: ObjectKey,
    status: Readonly<Record<string, unknown>>,
  ): Promise<void> {
    // A JSON Patch `add` of /status replaces it whole. A merge patch would merge nested maps, so a
    // field the new status leaves out (a certificate once the spec turned invalid) would survive.
    const patch = [{ op: "add", path: "/status", value: status }];
    let written: unknown;
    try {
      written = await this.#call((options) =>
        this.#custom.patchNamespacedCustomObjectStatus(
          {
            group: CUSTODY_GROUP,
            version: CUSTODY_VERSION,
            namespace: key.namespace,
            plural: PLURALS[kind],
            name: key.name,
            body: patch,
          },
          setHeaderOptions("Content-Type", PatchStrategy.JsonPatch, options),
        ),
      );
    } catch (error) {
      if (statusOf(error) === 404) return;
      throw storeErrorOf(`writing the status of ${kind} ${keyOf(key)}`, error);
    }
    const stored = storedResourceOf(kind, written);
    if (stored !== undefined && this.#watches(stored.namespace))
      this.#apply(this.#resources[kind], kind, stored);
  }

  recordEvent(kind: ResourceKind, key: ObjectKey, uid: string, event: StoreEvent): void {
    this.#events.record({ kind, namespace: key.namespace, name: key.name, uid }, event);
  }

  async #start(): Promise<void> {
    this.#informers = this.#makeInformers();
    for (const informer of this.#informers) informer.start();
    const timeoutMs = this.#options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    let onClose: (() => void) | undefined;
    const outcome = await Promise.race([
      Promise.all(this.#informers.map((informer) => informer.synced)).then(() => "synced" as const),
      new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), timeoutMs);
      }),
      new Promise<"closed">((resolve) => {
        onClose = () => resolve("closed");
        this.#closing.signal.addEventListener("abort", onClose, { once: true });
      }),
    ]);
    clearTimeout(timer);
    if (onClose !== undefined) this.#closing.signal.removeEventListener("abort", onClose);
    if (outcome === "synced") {
      this.#logger.info(
        {
          identities: this.#resources[IDENTITY].size,
          policies: this.#resources[POLICY].size,
          secrets: this.#secrets.size,
          configMaps: this.#configMaps.size,
        },
        "Kubernetes store synced",
      );
      return;
    }
    if (outcome === "closed")
      throw new StoreError("store_unavailable", "the store was closed before it synced");
    const waiting = this.#informers
      .filter((informer) => !informer.isSynced)
      .map((informer) => `${informer.description}: ${informer.lastError ?? "no answer yet"}`);
    await this.close();
    throw new StoreError(
      "store_unavailable",
      `the Kubernetes API server did not serve every cache within ${Math.round(timeoutMs / 1000)} s (${waiting.join("; ")}). ` +
        "Check that the API server is reachable with the operator's kubeconfig or service account, that the " +
        "Custody CRDs are installed, and that RBAC allows list and watch on serviceidentities, accesspolicies, " +
        "secrets and configmaps",
    );
  }

  #makeInformers(): RunningInformer[] {
    const scopes: readonly (string | undefined)[] = this.#options.namespaces ?? [undefined];
    const secretScopes =
      this.#options.secretsNamespace === undefined ? scopes : [this.#options.secretsNamespace];
    return [
      ...scopes.flatMap((namespace) => [
        this.#resourceInformer(IDENTITY, namespace),
        this.#resourceInformer(POLICY, namespace),
        this.#configMapInformer(namespace),
      ]),
      ...secretScopes.map((namespace) => this.#secretInformer(namespace)),
    ];
  }

  #informer<T extends KubernetesObject>(
    description: string,
    path: string,
    labelSelector: string | undefined,
    list: () => Promise<KubernetesListObject<T>>,
    onUpsert: (object: T) => void,
    onRemove: (object: T) => void,
    onListed: (list: KubernetesListObject<T>) => void,
  ): RunningInformer {
    return new SupervisedInformer<T>({
      kubeConfig: this.#options.kubeConfig,
      path,
      ...(labelSelector === undefined ? {} : { labelSelector }),
      list,
      description,
      logger: this.#logger,
      onUpsert,
      onRemove,
      onListed,
      ...(this.#options.informerBackoff === undefined ? {} : { backoff: this.#options.informerBackoff }),
      ...(this.#options.watchBounds === undefined ? {} : { watchBounds: this.#options.watchBounds }),
    });
  }

  #resourceInformer(kind: ResourceKind, namespace: string | undefined): RunningInformer {
    const plural = PLURALS[kind];
    const base = `/apis/${CUSTODY_GROUP}/${CUSTODY_VERSION}`;
    const map = this.#resources[kind];
    return this.#informer<KubernetesObject>(
      `${plural} in ${namespace === undefined ? "all namespaces" : `namespace ${namespace}`}`,
      namespace === undefined ? `${base}/${plural}` : `${base}/namespaces/${namespace}/${plural}`,
      undefined,
      async () => {
        const group = { group: CUSTODY_GROUP, version: CUSTODY_VERSION, plural };
        const answer: unknown = await this.#call((options) =>
          namespace === undefined
            ? this.#custom.listClusterCustomObject(group, options)
            : this.#custom.listNamespacedCustomObject({ ...group, namespace }, options),
        );
        return listOf(answer, plural);
      },
      (object) => {
        if (isDeleting(object)) {
          this.#forgetObject(map, kind, object);
          return;
        }
        const stored = storedResourceOf(kind, object);
        if (stored === undefined) {
          this.#logger.warn(
            { kind, object: keyOfObject(object) },
            "ignoring a custom resource without uid or resourceVersion",
          );
          return;
        }
        this.#apply(map, kind, stored);
      },
      (object) => this.#forgetObject(map, kind, object),
      (list) => this.#prune(map, kind, namespace, list),
    );
  }

  #secretInformer(namespace: string | undefined): RunningInformer {
    return this.#informer<V1Secret>(
      `managed Secrets in ${namespace === undefined ? "all namespaces" : `namespace ${namespace}`}`,
      namespace === undefined ? "/api/v1/secrets" : `/api/v1/namespaces/${namespace}/secrets`,
      MANAGED_SELECTOR,
      () =>
        this.#call((options) =>
          namespace === undefined
            ? this.#core.listSecretForAllNamespaces({ labelSelector: MANAGED_SELECTOR }, options)
            : this.#core.listNamespacedSecret({ namespace, labelSelector: MANAGED_SELECTOR }, options),
        ),
      (object) => {
        if (isDeleting(object)) {
          this.#forgetObject(this.#secrets, "Secret", object);
          return;
        }
        const decoded = this.#tryDecodeSecret(object);
        if (decoded !== undefined) this.#apply(this.#secrets, "Secret", decoded);
      },
      (object) => this.#forgetObject(this.#secrets, "Secret", object),
      (list) => this.#prune(this.#secrets, "Secret", namespace, list),
    );
  }

  #configMapInformer(namespace: string | undefined): RunningInformer {
    return this.#informer<V1ConfigMap>(
      `managed ConfigMaps in ${namespace === undefined ? "all namespaces" : `namespace ${namespace}`}`,
      namespace === undefined ? "/api/v1/configmaps" : `/api/v1/namespaces/${namespace}/configmaps`,
      MANAGED_SELECTOR,
      () =>
        this.#call((options) =>
          namespace === undefined
            ? this.#core.listConfigMapForAllNamespaces({ labelSelector: MANAGED_SELECTOR }, options)
            : this.#core.listNamespacedConfigMap({ namespace, labelSelector: MANAGED_SELECTOR }, options),
        ),
      (object) => {
        if (isDeleting(object)) {
          this.#forgetObject(this.#configMaps, "ConfigMap", object);
          return;
        }
        const stored = storedConfigMapOf(object);
        if (stored !== undefined) this.#apply(this.#configMaps, "ConfigMap", stored);
      },
      (object) => this.#forgetObject(this.#configMaps, "ConfigMap", object),
      (list) => this.#prune(this.#configMaps, "ConfigMap", namespace, list),
    );
  }

  /** Caches `value` unless the cache already holds it or something newer; announces the change. */
  #apply<T extends Cached>(map: Map<string, T>, kind: CachedKind, value: T): void {
    const key = keyOf(value);
    const current = map.get(key);
    if (current !== undefined && !supersedes(value.resourceVersion, current.resourceVersion)) return;
    map.set(key, value);
    this.#notify({ kind, namespace: value.namespace, name: value.name });
  }

  /**
   * Drops `key` from the cache. A deletion whose resourceVersion is older than the cached object
   * is about an earlier incarnation (deleted, then re-created and written through): ignored.
   */
  #forget<T extends Cached>(
    map: Map<string, T>,
    kind: CachedKind,
    key: ObjectKey,
    resourceVersion: string | undefined,
  ): void {
    const current = map.get(keyOf(key));
    if (current === undefined) return;
    const order = compareResourceVersions(resourceVersion, current.resourceVersion);
    if (order !== undefined && order < 0) return;
    map.delete(keyOf(key));
    this.#notify({ kind, namespace: key.namespace, name: key.name });
  }

  #forgetObject<T extends Cached>(map: Map<string, T>, kind: CachedKind, object: KubernetesObject): void {
    const { name, namespace, resourceVersion } = object.metadata ?? {};
    if (name === undefined || namespace === undefined) return;
    this.#forget(map, kind, { namespace, name }, resourceVersion);
  }

  /**
   * A complete list is the truth at its resourceVersion: whatever the cache holds in its scope
   * that the list lacks is gone, unless it was written through after the list was taken. (The
   * informer's own re-list deletions only cover what the informer itself had seen.)
   */
  #prune<T extends Cached>(
    map: Map<string, T>,
    kind: CachedKind,
    namespace: string | undefined,
    list: KubernetesListObject<KubernetesObject>,
  ): void {
    const listed = new Set(list.items.map(keyOfObject));
    const listVersion = list.metadata?.resourceVersion;
    for (const [key, value] of map) {
      if ((namespace !== undefined && value.namespace !== namespace) || listed.has(key)) continue;
      const order = compareResourceVersions(value.resourceVersion, listVersion);
      if (order !== undefined && order > 0) continue;
      map.delete(key);
      this.#notify({ kind, namespace: value.namespace, name: value.name });
    }
  }

  #notify(change: StoreChange): void {
    for (const listener of this.#listeners) {
      try {
        listener(change);
      } catch (error) {
        this.#logger.error(
          { change, error: error instanceof Error ? error.message : String(error) },
          "a store change listener threw",
        );
      }
    }
  }

  #watchesSecrets(namespace: string): boolean {
    const only = this.#options.secretsNamespace;
    return only === undefined ? this.#watches(namespace) : namespace === only;
  }

  #watches(namespace: string): boolean {
    return this.#options.namespaces === undefined || this.#options.namespaces.includes(namespace);
  }

  #call<T>(run: Parameters<typeof callApi<T>>[2]): Promise<T> {
    return callApi(this.#requestTimeoutMs, this.#closing.signal, run);
  }

  /** Create (no resourceVersion) or replace (with it); 409 and a vanished object are conflicts. */
  async #write<T>(
    what: string,
    resourceVersion: string | undefined,
    run: Parameters<typeof callApi<T>>[2],
  ): Promise<T> {
    try {
      return await this.#call(run);
    } catch (error) {
      const status = statusOf(error);
      if (resourceVersion === undefined && status === 409) {
        throw new StoreConflictError(`${what} exists already: read it and replace it instead`);
      }
      if (resourceVersion !== undefined && (status === 409 || status === 404)) {
        throw new StoreConflictError(
          `${what} changed since resourceVersion ${resourceVersion}${status === 404 ? " (it was deleted)" : ""}: read it again`,
        );
      }
      throw storeErrorOf(`${resourceVersion === undefined ? "creating" : "replacing"} ${what}`, error);
    }
  }

  /**
   * Creates the object (no resourceVersion: atomic, a conflict when it exists) or updates it by
   * server-side apply with the resourceVersion as precondition. Two things the API server does not
   * do by itself:
   * - after a create, Custody's fields are recorded as an Update; they are turned into Apply, so
   *   that a later apply that leaves one out (a next key pair, a retired signing key) removes it;
   * - an apply meets no precondition when the object is gone: it creates it again. A write to an
   *   object deleted meanwhile must be a conflict (its owner may be going too), so a different uid
   *   than the one read is undone and reported as one.
   */
  async #writeOwned<T extends KubernetesObject>(
    what: string,
    object: { readonly resourceVersion?: string; readonly uid?: string },
    cachedUid: string | undefined,
    calls: OwnedWriteCalls<T>,
  ): Promise<T> {
    if (object.resourceVersion === undefined) {
      const created = await this.#write(what, undefined, calls.create);
      const entries = created.metadata?.managedFields ?? [];
      const claimed = entries.map((entry) =>
        entry.manager === FIELD_MANAGER && entry.operation === "Update" && !entry.subresource
          ? { ...entry, operation: "Apply" }
          : entry,
      );
      if (!entries.some((entry, index) => entry !== claimed[index])) return created;
      const patch = [
        { op: "test", path: "/metadata/resourceVersion", value: created.metadata?.resourceVersion },
        { op: "replace", path: "/metadata/managedFields", value: claimed },
      ];
      // Should someone have changed it already, Custody's next apply still writes its fields.
      return this.#call((options) => calls.patch(patch, options)).catch(() => created);
    }
    const applied = await this.#write(what, object.resourceVersion, calls.apply);
    const expected = object.uid ?? cachedUid;
    const uid = applied.metadata?.uid;
    if (expected !== undefined && uid !== undefined && uid !== expected) {
      await this.#call((options) => calls.remove(uid, options)).catch(() => undefined);
      throw new StoreConflictError(
        `${what} was deleted since resourceVersion ${object.resourceVersion}: read it again`,
      );
    }
    return applied;
  }

  async #delete(what: string, run: Parameters<typeof callApi<unknown>>[2]): Promise<void> {
    try {
      await this.#call(run);
    } catch (error) {
      if (statusOf(error) === 404) return;
      throw storeErrorOf(`deleting ${what}`, error);
    }
  }

  #tryDecodeSecret(secret: V1Secret): StoredSecret | undefined {
    const decoded = storedSecretOf(secret);
    if (decoded === undefined) return undefined;
    if (decoded.undecodable.length > 0) {
      this.#logger.warn(
        { secret: keyOf(decoded.secret), keys: decoded.undecodable },
        "Secret keys that are not UTF-8 text are left out (the operator writes text only)",
      );
    }
    return decoded.secret;
  }

  #decodeSecret(secret: V1Secret, what: string): StoredSecret {
    const decoded = this.#tryDecodeSecret(secret);
    if (decoded === undefined)
      throw new StoreError("store_unavailable", `the API server returned ${what} without a name`);
    return decoded;
  }

  #convertConfigMap(configMap: V1ConfigMap, what: string): StoredConfigMap {
    const stored = storedConfigMapOf(configMap);
    if (stored === undefined)
      throw new StoreError("store_unavailable", `the API server returned ${what} without a name`);
    return stored;
  }
}

type CallOptions = Parameters<Parameters<typeof callApi<unknown>>[2]>[0];

interface OwnedWriteCalls<T> {
  readonly create: (options: CallOptions) => Promise<T>;
  readonly apply: (options: CallOptions) => Promise<T>;
  readonly patch: (patch: readonly unknown[], options: CallOptions) => Promise<T>;
  readonly remove: (uid: string, options: CallOptions) => Promise<unknown>;
}

/**
 * An object with a deletionTimestamp is on its way out (finalizers, foreground deletion of its
 * dependents): the cache treats it as gone. A ServiceIdentity being deleted is no longer issued
 * for or published, and a Secret or ConfigMap being deleted is neither written to nor taken for
 * current; once it is gone, it is created again if it is still wanted (until then, creating it
 * meets a conflict and is retried).
 */
function isDeleting(object: unknown): boolean {
  const metadata =
    typeof object === "object" && object !== null ? (object as { metadata?: unknown }).metadata : undefined;
  const timestamp =
    typeof metadata === "object" && metadata !== null
      ? (metadata as { deletionTimestamp?: unknown }).deletionTimestamp
      : undefined;
  return timestamp !== undefined && timestamp !== null;
}
