/**
 * Status conditions as Kubernetes tools expect them (metav1.Condition): one per type, a CamelCase
 * reason, a message that says what to do, and a lastTransitionTime that moves only when the status
 * flips, so `kubectl wait --for=condition=Ready` and dashboards see real transitions, not churn.
 */

export type ConditionStatus = "True" | "False" | "Unknown";

export interface Condition {
  readonly type: string;
  readonly status: ConditionStatus;
  readonly observedGeneration?: number;
  readonly lastTransitionTime: string;
  readonly reason: string;
  readonly message: string;
}

export type DesiredCondition = Omit<Condition, "lastTransitionTime">;

/** metav1.Time: RFC 3339 in whole seconds. */
export function kubernetesTime(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(".000Z", "Z");
}

/** `desired`, each keeping its previous lastTransitionTime when its status did not change. */
export function mergeConditions(
  previous: unknown,
  desired: readonly DesiredCondition[],
  nowMs: number,
): Condition[] {
  const before = new Map<string, { status?: unknown; lastTransitionTime?: unknown }>();
  if (Array.isArray(previous)) {
    for (const item of previous) {
      if (typeof item === "object" && item !== null && typeof item.type === "string")
        before.set(item.type, item);
    }
  }
  return desired.map((condition) => {
    const old = before.get(condition.type);
    const kept =
      old?.status === condition.status && typeof old.lastTransitionTime === "string"
        ? old.lastTransitionTime
        : kubernetesTime(nowMs);
    return { ...condition, lastTransitionTime: kept };
  });
}

/** Ready: True when every other condition is True, else False with the first failing one's words. */
export function readyCondition(
  others: readonly DesiredCondition[],
  generation: number,
  readyMessage: string,
): DesiredCondition {
  const failing = others.find((condition) => condition.status !== "True");
  if (failing === undefined) {
    return {
      type: "Ready",
      status: "True",
      observedGeneration: generation,
      reason: "Ready",
      message: readyMessage,
    };
  }
  return {
    type: "Ready",
    status: failing.status === "Unknown" ? "Unknown" : "False",
    observedGeneration: generation,
    reason: failing.reason,
    message: failing.message,
  };
}

/** Whether writing `next` would change what is stored (key order and undefined fields ignored). */
export function sameStatus(stored: unknown, next: unknown): boolean {
  return canonical(stored ?? {}) === canonical(next);
}

function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, inner: unknown) => {
    if (typeof inner !== "object" || inner === null || Array.isArray(inner)) return inner;
    return Object.fromEntries(
      Object.entries(inner)
        .filter(([, field]) => field !== undefined)
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    );
  });
}
