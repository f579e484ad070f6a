/**
 * AccessPolicy → compiled policy (for the registry publisher) and status. An invalid policy never
 * reaches sidecars: its condition quotes exactly what to fix (the same words the validating
 * webhook answers `kubectl apply` with), and its last valid version, if it ever had one, stays in
 * force.
 */
import type { Logger } from "pino";
import { keyOf, type ObjectKey, POLICY, type Store, type StoredResource } from "../store/store.js";
import type { Catalog } from "./catalog.js";
import { type DesiredCondition, mergeConditions, readyCondition, sameStatus } from "./conditions.js";
import type { WorkResult } from "./queue.js";

export interface PolicyControllerOptions {
  readonly store: Store;
  readonly catalog: Catalog;
  /** Whether the registry of the policy's namespace carries this version of it. */
  readonly isPolicyPublished: (key: ObjectKey, generation: number) => boolean;
  /** The compiled set changed: the registry must be published again. */
  readonly changed: () => void;
  readonly logger: Logger;
  readonly now: () => number;
}

export class PolicyController {
  /** Namespace/name → fingerprint of what was last handed to the publisher. */
  readonly #handed = new Map<string, string>();

  constructor(private readonly options: PolicyControllerOptions) {}

  async reconcile(key: ObjectKey): Promise<WorkResult> {
    const { store, catalog } = this.options;
    const resource = store.resource(POLICY, key);
    const id = keyOf(key);
    if (resource === undefined) {
      catalog.forget("policy", key);
      if (this.#handed.delete(id)) this.options.changed();
      return {};
    }
    const check = catalog.checkPolicy(resource);
    const effective = catalog.effectivePolicy(resource);
    const fingerprint = effective === undefined ? "" : JSON.stringify(effective);
    if (this.#handed.get(id) !== fingerprint) {
      this.#handed.set(id, fingerprint);
      this.options.changed();
    }
    if (!check.ok) {
      store.recordEvent(POLICY, resource, resource.uid, {
        type: "Warning",
        reason: "InvalidPolicy",
        message: check.message,
      });
      this.options.logger.warn({ event: "policy_invalid", policy: id }, check.message);
    }
    await this.#writeStatus(
      resource,
      this.#conditions(resource, check.ok ? undefined : check.message, effective?.generation),
    );
    return {};
  }

  #conditions(
    resource: StoredResource,
    invalidMessage: string | undefined,
    enforcedGeneration: number | undefined,
  ): DesiredCondition[] {
    const generation = resource.generation;
    const fallback =
      enforcedGeneration === undefined
        ? "Nothing of it is enforced until it is fixed."
        : `Its last valid version (generation ${enforcedGeneration}) stays in force until then.`;
    const accepted: DesiredCondition =
      invalidMessage === undefined
        ? {
            type: "Accepted",
            status: "True",
            observedGeneration: generation,
            reason: "Compiled",
            message: "the policy is valid and compiled",
          }
        : {
            type: "Accepted",
            status: "False",
            observedGeneration: generation,
            reason: "InvalidPolicy",
            message: `${invalidMessage}. ${fallback}`,
          };
    const published: DesiredCondition =
      invalidMessage !== undefined
        ? {
            type: "Published",
            status: "False",
            observedGeneration: generation,
            reason: "InvalidPolicy",
            message: "this generation is not published because it is invalid",
          }
        : this.options.isPolicyPublished(resource, generation)
          ? {
              type: "Published",
              status: "True",
              observedGeneration: generation,
              reason: "Published",
              message: "sidecars of the target service enforce this generation",
            }
          : {
              type: "Published",
              status: "False",
              observedGeneration: generation,
              reason: "PublicationPending",
              message: "waiting for the registry ConfigMap of this namespace to carry this generation",
            };
    return [readyCondition([accepted, published], generation, "the policy is enforced"), accepted, published];
  }

  async #writeStatus(resource: StoredResource, conditions: readonly DesiredCondition[]): Promise<void> {
    const stored = resource.object.status as Record<string, unknown> | undefined;
    const status = {
      observedGeneration: resource.generation,
      conditions: mergeConditions(stored?.conditions, conditions, this.options.now()),
    };
    if (sameStatus(stored, status)) return;
    await this.options.store.writeStatus(POLICY, resource, status);
  }
}
