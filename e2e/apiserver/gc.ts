/**
 * Deletion and the controllers around it, as kube-controller-manager and the apiextensions
 * controllers run them: finalizers (an object with finalizers is only marked for deletion),
 * owner-reference garbage collection with Background, Foreground and Orphan propagation, namespace
 * termination (contents first, then the namespace) and CRD cleanup (custom resources first).
 * Sweeps run promptly after every write (setImmediate) until nothing changes.
 */
import type { Logger } from "pino";
import { CRDS, NAMESPACES } from "./builtins.js";
import { CRD_CLEANUP_FINALIZER } from "./crd.js";
import { clone, isObject, type JsonObject, objectAt, stringAt } from "./json.js";
import {
  deletionTimestampOf,
  finalizersOf,
  metadataOf,
  nameOf,
  namespaceOf,
  ownerReferencesOf,
  uidOf,
} from "./meta.js";
import { storageKeyOf } from "./resources.js";
import type { Store } from "./store.js";

export type PropagationPolicy = "Background" | "Foreground" | "Orphan";

export const FOREGROUND_FINALIZER = "foregroundDeletion";
export const ORPHAN_FINALIZER = "orphan";
const NAMESPACE_FINALIZER = "kubernetes";
const MAX_PASSES = 1000;

const NAMESPACES_KEY = storageKeyOf(NAMESPACES);
const CRDS_KEY = storageKeyOf(CRDS);

export interface DeleteOutcome {
  /** The object's state after the call: the deleted object, or the one marked for deletion. */
  readonly object: JsonObject;
  /** Removed from storage (rather than waiting for finalizers). */
  readonly gone: boolean;
}

export function timestamp(now: Date): string {
  return now.toISOString().replace(/\.[0-9]+Z$/, "Z");
}

export class GarbageCollector {
  private scheduled: NodeJS.Immediate | undefined;
  private closed = false;

  constructor(
    private readonly store: Store,
    private readonly logger: Logger,
  ) {}

  /**
   * Deletes `object` with `policy`: adds the finalizers the policy needs, then either removes it or
   * marks it for deletion (deletionTimestamp) until its finalizers are gone.
   */
  delete(storageKey: string, object: JsonObject, policy: PropagationPolicy, now: Date): DeleteOutcome {
    const finalizers = finalizersOf(object);
    const wanted = [...finalizers];
    const add = (finalizer: string): void => {
      if (!wanted.includes(finalizer)) wanted.push(finalizer);
    };
    if (policy === "Foreground") add(FOREGROUND_FINALIZER);
    if (policy === "Orphan") add(ORPHAN_FINALIZER);
    if (storageKey === CRDS_KEY) add(CRD_CLEANUP_FINALIZER);
    const terminating = deletionTimestampOf(object) !== undefined;
    const namespace = storageKey === NAMESPACES_KEY;
    if (wanted.length === 0 && !namespace) {
      const deleted = this.store.delete(storageKey, namespaceOf(object), nameOf(object));
      this.schedule();
      return { object: deleted ?? object, gone: true };
    }
    if (terminating && wanted.length === finalizers.length) return { object, gone: false };
    const marked = clone(object);
    const metadata = metadataOf(marked);
    if (!terminating) {
      metadata.deletionTimestamp = timestamp(now);
      metadata.deletionGracePeriodSeconds = 0;
    }
    if (wanted.length > 0) metadata.finalizers = wanted;
    if (namespace) objectAt(marked, "status").phase = "Terminating";
    if (storageKey === CRDS_KEY) this.markCrdTerminating(marked, now);
    const stored = this.store.update(storageKey, marked);
    this.schedule();
    return { object: stored, gone: false };
  }

  /** Queues a sweep on the next turn of the event loop. */
  schedule(): void {
    if (this.scheduled !== undefined || this.closed) return;
    this.scheduled = setImmediate(() => {
      this.scheduled = undefined;
      try {
        this.sweep();
      } catch (error) {
        this.logger.error({ err: error }, "garbage collector sweep failed");
      }
    });
  }

  close(): void {
    this.closed = true;
    if (this.scheduled !== undefined) clearImmediate(this.scheduled);
  }

  /** Runs passes until one changes nothing. */
  sweep(): void {
    for (let pass = 0; pass < MAX_PASSES; pass += 1) {
      if (!this.pass(new Date())) return;
    }
    this.logger.warn("garbage collector did not settle; will retry on the next write");
  }

  private pass(now: Date): boolean {
    let changed = false;
    const entries = [...this.store.entries()];
    const dependents = new Map<string, { storageKey: string; object: JsonObject }[]>();
    for (const entry of entries) {
      for (const reference of ownerReferencesOf(entry.object)) {
        const list = dependents.get(reference.uid) ?? [];
        list.push(entry);
        dependents.set(reference.uid, list);
      }
    }
    for (const { storageKey, object: snapshot } of entries) {
      const object = this.store.get(storageKey, namespaceOf(snapshot), nameOf(snapshot));
      if (object === undefined || uidOf(object) !== uidOf(snapshot)) continue;
      const terminating = deletionTimestampOf(object) !== undefined;
      const finalizers = finalizersOf(object);
      if (terminating && storageKey === NAMESPACES_KEY) {
        changed = this.finishNamespace(object, entries, now) || changed;
      } else if (terminating && storageKey === CRDS_KEY && finalizers.includes(CRD_CLEANUP_FINALIZER)) {
        changed = this.cleanUpCrd(object, now) || changed;
      } else if (terminating && finalizers.includes(FOREGROUND_FINALIZER)) {
        const live = (dependents.get(uidOf(object)) ?? []).filter((entry) =>
          this.exists(entry.storageKey, entry.object),
        );
        for (const dependent of live) {
          if (deletionTimestampOf(dependent.object) === undefined) {
            this.delete(dependent.storageKey, dependent.object, "Foreground", now);
            changed = true;
          }
        }
        if (live.length === 0) {
          this.removeFinalizer(storageKey, object, FOREGROUND_FINALIZER);
          changed = true;
        }
      } else if (terminating && finalizers.includes(ORPHAN_FINALIZER)) {
        for (const dependent of dependents.get(uidOf(object)) ?? [])
          this.orphan(dependent.storageKey, dependent.object, uidOf(object));
        this.removeFinalizer(storageKey, object, ORPHAN_FINALIZER);
        changed = true;
      }
      const owners = ownerReferencesOf(object);
      if (
        !terminating &&
        owners.length > 0 &&
        owners.every((owner) => this.store.byUid(owner.uid) === undefined)
      ) {
        this.logger.debug({ storageKey, name: nameOf(object) }, "deleting an object whose owners are gone");
        this.delete(storageKey, object, "Background", now);
        changed = true;
      }
    }
    return changed;
  }

  private exists(storageKey: string, object: JsonObject): boolean {
    const current = this.store.get(storageKey, namespaceOf(object), nameOf(object));
    return current !== undefined && uidOf(current) === uidOf(object);
  }

  private finishNamespace(
    namespace: JsonObject,
    entries: readonly { storageKey: string; object: JsonObject }[],
    now: Date,
  ): boolean {
    const name = nameOf(namespace);
    const contents = entries.filter(
      (entry) =>
        entry.storageKey !== NAMESPACES_KEY &&
        namespaceOf(entry.object) === name &&
        this.exists(entry.storageKey, entry.object),
    );
    let changed = false;
    for (const entry of contents) {
      if (deletionTimestampOf(entry.object) === undefined) {
        this.delete(entry.storageKey, entry.object, "Background", now);
        changed = true;
      }
    }
    if (contents.length > 0) return changed;
    const spec = isObject(namespace.spec) ? namespace.spec : {};
    const specFinalizers = Array.isArray(spec.finalizers) ? spec.finalizers : [];
    if (specFinalizers.includes(NAMESPACE_FINALIZER)) {
      const updated = clone(namespace);
      objectAt(updated, "spec").finalizers = specFinalizers.filter(
        (finalizer) => finalizer !== NAMESPACE_FINALIZER,
      );
      if (finalizersOf(updated).length === 0) this.store.delete(NAMESPACES_KEY, "", name, updated);
      else this.store.update(NAMESPACES_KEY, updated);
      return true;
    }
    if (finalizersOf(namespace).length === 0) {
      this.store.delete(NAMESPACES_KEY, "", name);
      return true;
    }
    return changed;
  }

  private cleanUpCrd(crd: JsonObject, now: Date): boolean {
    const spec = isObject(crd.spec) ? crd.spec : {};
    const names = isObject(spec.names) ? spec.names : {};
    const storageKey = `${stringAt(spec, "group") ?? ""}/${stringAt(names, "plural") ?? ""}`;
    const remaining = this.store.list(storageKey);
    let changed = false;
    for (const object of remaining) {
      if (deletionTimestampOf(object) === undefined) {
        this.delete(storageKey, object, "Background", now);
        changed = true;
      }
    }
    if (this.store.list(storageKey).length > 0) return changed;
    this.removeFinalizer(CRDS_KEY, crd, CRD_CLEANUP_FINALIZER);
    return true;
  }

  private markCrdTerminating(crd: JsonObject, now: Date): void {
    const status = objectAt(crd, "status");
    const conditions = Array.isArray(status.conditions) ? status.conditions.filter(isObject) : [];
    if (!conditions.some((condition) => condition.type === "Terminating")) {
      conditions.push({
        type: "Terminating",
        status: "True",
        lastTransitionTime: timestamp(now),
        reason: "InstanceDeletionInProgress",
        message: "CustomResource deletion is in progress",
      });
    }
    status.conditions = conditions;
  }

  private orphan(storageKey: string, dependent: JsonObject, ownerUid: string): void {
    const current = this.store.get(storageKey, namespaceOf(dependent), nameOf(dependent));
    if (current === undefined) return;
    const updated = clone(current);
    const metadata = metadataOf(updated);
    const remaining = ownerReferencesOf(current).filter((reference) => reference.uid !== ownerUid);
    if (remaining.length === 0) {
      delete metadata.ownerReferences;
    } else {
      metadata.ownerReferences = (
        Array.isArray(metadata.ownerReferences) ? metadata.ownerReferences : []
      ).filter((reference) => isObject(reference) && reference.uid !== ownerUid);
    }
    this.store.update(storageKey, updated);
  }

  /** Removes one finalizer; the object goes once it has none left and is marked for deletion. */
  removeFinalizer(storageKey: string, object: JsonObject, finalizer: string): void {
    const current = this.store.get(storageKey, namespaceOf(object), nameOf(object));
    if (current === undefined) return;
    const remaining = finalizersOf(current).filter((item) => item !== finalizer);
    const updated = clone(current);
    if (remaining.length === 0) delete metadataOf(updated).finalizers;
    else metadataOf(updated).finalizers = remaining;
    if (
      remaining.length === 0 &&
      deletionTimestampOf(current) !== undefined &&
      storageKey !== NAMESPACES_KEY
    ) {
      this.store.delete(storageKey, namespaceOf(current), nameOf(current), updated);
      return;
    }
    this.store.update(storageKey, updated);
  }
}
