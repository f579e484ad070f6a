/**
 * The demo's scenarios as data: what each one does and the outcome the design promises. The
 * reasons are the sidecar's own codes (sidecar/src/chain/errors.ts for 401s, the policy engine's
 * for 403s), so a renamed code shows up as a failed expectation here, not as a silent change.
 */

export const SCENARIO_IDS = [
  "checkout",
  "cart-direct",
  "no-scope",
  "replay",
  "body-changed",
  "link-removed",
  "audit-mode",
] as const;
export type ScenarioId = (typeof SCENARIO_IDS)[number];

export interface Expected {
  readonly status: number;
  readonly reason: string;
}

export interface ScenarioSpec {
  readonly id: ScenarioId;
  /** What happens, in the words of the talk. */
  readonly title: string;
  readonly expected: Expected;
  /** Why that is the outcome: which check, whose policy. */
  readonly why: string;
}

export const SCENARIOS: readonly ScenarioSpec[] = [
  {
    id: "checkout",
    title: "checkout: shop → cart → payments",
    expected: { status: 200, reason: "paid" },
    why: "allowed at every hop; card sealed (JWE): cart can't read it",
  },
  {
    id: "cart-direct",
    title: "cart calls payments directly",
    expected: { status: 403, reason: "scope_missing" },
    why: "e0 is cart's own token (cart.write), not a customer's",
  },
  {
    id: "no-scope",
    title: "customer without shop.customer",
    expected: { status: 403, reason: "scope_missing" },
    why: "shop's policy wants the scope shop.customer",
  },
  {
    id: "replay",
    title: "replayed call (cart's certificate)",
    expected: { status: 401, reason: "replayed" },
    why: "payments has already seen the head link's jti",
  },
  {
    id: "body-changed",
    title: "body changed in flight",
    expected: { status: 401, reason: "body_mismatch" },
    why: "the head link binds (bdh) the hash of another body",
  },
  {
    id: "link-removed",
    title: "shop's link removed from the chain",
    expected: { status: 401, reason: "hash_link_broken" },
    why: "cart's link points (prv) at shop's, which is gone",
  },
  {
    id: "audit-mode",
    title: "cart calls payments, policy in audit mode",
    expected: { status: 200, reason: "audited=deny" },
    why: "the denial is logged and counted, the call let through",
  },
];

export function scenarioSpec(id: ScenarioId): ScenarioSpec {
  const spec = SCENARIOS.find((candidate) => candidate.id === id);
  if (spec === undefined) throw new Error(`no scenario ${id}`);
  return spec;
}
