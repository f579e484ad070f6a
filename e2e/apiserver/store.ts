/**
 * The storage layer, in the role etcd plays: one global, monotonically increasing revision (the
 * resourceVersion of every object and list), a bounded history of change events for watches, and
 * the uid index the garbage collector needs. Stored objects are deeply frozen and shared.
 */
import { ApiError, internalError, tooLarge } from "./errors.js";
import { deepFreeze, type JsonObject } from "./json.js";
import { metadataOf, nameOf, namespaceOf, objectKey, uidOf } from "./meta.js";

/** etcd's default request limit: the largest object the real server can store. */
export const MAX_OBJECT_BYTES = 1.5 * 1024 * 1024;

export type EventType = "ADDED" | "MODIFIED" | "DELETED";

export interface StoreEvent {
  readonly revision: number;
  readonly storageKey: string;
  readonly type: EventType;
  readonly object: JsonObject;
  readonly previous: JsonObject | undefined;
}

export type StoreListener = (event: StoreEvent) => void;

export interface StoreOptions {
  readonly historyLimit: number;
  readonly maxObjects: number;
}

export class Store {
  private revisionCounter = 0;
  private compacted = 0;
  private objectCount = 0;
  private readonly buckets = new Map<string, Map<string, JsonObject>>();
  private readonly uids = new Map<string, string>();
  private readonly history: StoreEvent[] = [];
  private readonly listeners = new Set<StoreListener>();

  constructor(private readonly options: StoreOptions) {}

  /** The revision of the last write (the resourceVersion a list taken now reports). */
  get revision(): number {
    return this.revisionCounter;
  }

  /** Watches must start at or after this revision; older ones get 410 Gone. */
  get compactedRevision(): number {
    return this.compacted;
  }

  get(storageKey: string, namespace: string, name: string): JsonObject | undefined {
    return this.buckets.get(storageKey)?.get(objectKey(namespace, name));
  }

  /** Objects of a resource (in one namespace, or all), sorted by namespace/name like etcd keys. */
  list(storageKey: string, namespace?: string): JsonObject[] {
    const bucket = this.buckets.get(storageKey);
    if (bucket === undefined) return [];
    const keys = [...bucket.keys()].sort();
    const objects: JsonObject[] = [];
    for (const key of keys) {
      const object = bucket.get(key);
      if (object !== undefined && (namespace === undefined || namespaceOf(object) === namespace))
        objects.push(object);
    }
    return objects;
  }

  /** Every stored object with its storage key (for the garbage collector). */
  *entries(): Generator<{ readonly storageKey: string; readonly object: JsonObject }> {
    for (const [storageKey, bucket] of this.buckets) {
      for (const object of bucket.values()) yield { storageKey, object };
    }
  }

  /** The object with this uid, if it still exists. */
  byUid(uid: string): { readonly storageKey: string; readonly object: JsonObject } | undefined {
    const location = this.uids.get(uid);
    if (location === undefined) return undefined;
    const [storageKey, key] = splitLocation(location);
    const object = this.buckets.get(storageKey)?.get(key);
    return object === undefined ? undefined : { storageKey, object };
  }

  subscribe(listener: StoreListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Stores a new object; the caller has checked it does not exist. Returns the stored object. */
  create(storageKey: string, object: JsonObject): JsonObject {
    if (this.objectCount >= this.options.maxObjects) {
      throw internalError(`etcdserver: mvcc: database space exceeded (${this.options.maxObjects} objects)`);
    }
    const key = objectKey(namespaceOf(object), nameOf(object));
    const stored = this.commit(storageKey, key, object);
    this.objectCount += 1;
    this.uids.set(uidOf(stored), `${storageKey}\u0000${key}`);
    this.record({
      revision: this.revisionCounter,
      storageKey,
      type: "ADDED",
      object: stored,
      previous: undefined,
    });
    return stored;
  }

  /** Replaces an existing object; the caller has checked preconditions. */
  update(storageKey: string, object: JsonObject): JsonObject {
    const key = objectKey(namespaceOf(object), nameOf(object));
    const previous = this.buckets.get(storageKey)?.get(key);
    if (previous === undefined)
      throw new ApiError(500, "InternalError", `update of missing object ${storageKey} ${key}`);
    const stored = this.commit(storageKey, key, object);
    this.record({ revision: this.revisionCounter, storageKey, type: "MODIFIED", object: stored, previous });
    return stored;
  }

  /**
   * Removes an object; returns its last state (`finalState` when the deletion is the update that
   * removed its last finalizer), stamped with the deletion's revision.
   */
  delete(
    storageKey: string,
    namespace: string,
    name: string,
    finalState?: JsonObject,
  ): JsonObject | undefined {
    const key = objectKey(namespace, name);
    const bucket = this.buckets.get(storageKey);
    const previous = bucket?.get(key);
    if (bucket === undefined || previous === undefined) return undefined;
    bucket.delete(key);
    this.objectCount -= 1;
    this.uids.delete(uidOf(previous));
    this.revisionCounter += 1;
    const last = structuredClone(finalState ?? previous);
    metadataOf(last).resourceVersion = String(this.revisionCounter);
    const stored = deepFreeze(last);
    this.record({ revision: this.revisionCounter, storageKey, type: "DELETED", object: stored, previous });
    return stored;
  }

  /**
   * The events of `storageKey` after `revision`, or undefined when history no longer reaches back
   * that far (the caller answers 410 Gone).
   */
  eventsAfter(storageKey: string, revision: number): StoreEvent[] | undefined {
    if (revision < this.compacted) return undefined;
    return this.history.filter((event) => event.revision > revision && event.storageKey === storageKey);
  }

  /** Forgets all history: every watch from an earlier revision now gets 410 Gone (test hook). */
  compact(): void {
    this.history.length = 0;
    this.compacted = this.revisionCounter;
  }

  private commit(storageKey: string, key: string, object: JsonObject): JsonObject {
    if (Buffer.byteLength(JSON.stringify(object)) > MAX_OBJECT_BYTES)
      throw tooLarge("etcdserver: request is too large");
    this.revisionCounter += 1;
    metadataOf(object).resourceVersion = String(this.revisionCounter);
    const stored = deepFreeze(object);
    let bucket = this.buckets.get(storageKey);
    if (bucket === undefined) {
      bucket = new Map();
      this.buckets.set(storageKey, bucket);
    }
    bucket.set(key, stored);
    return stored;
  }

  private record(event: StoreEvent): void {
    this.history.push(event);
    while (this.history.length > this.options.historyLimit) {
      const dropped = this.history.shift();
      if (dropped !== undefined) this.compacted = dropped.revision;
    }
    for (const listener of [...this.listeners]) listener(event);
  }
}

function splitLocation(location: string): [string, string] {
  const separator = location.indexOf("\u0000");
  return [location.slice(0, separator), location.slice(separator + 1)];
}
