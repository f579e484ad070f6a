/**
 * Reading what came back into a comparable outcome (`status` + one reason word), free of I/O so it
 * is tested on its own. Refusals are the sidecar's `{error, reason}`; the shop apps wrap what the
 * next hop answered as `{step, downstream}`, so a refusal deep in the chain is found by walking
 * `downstream`.
 */
import { CHAIN_SEPARATOR } from "../../../sidecar/src/chain/limits.js";
import type { Expected } from "./expectations.js";

export interface Outcome {
  readonly status: number;
  readonly reason: string;
}

/** Nesting the apps produce: shop → cart → payments. */
const MAX_DEPTH = 4;

export function matches(expected: Expected, got: Outcome): boolean {
  return expected.status === got.status && expected.reason === got.reason;
}

export function describeOutcome(outcome: Outcome): string {
  return `${outcome.status} ${outcome.reason}`;
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function field(value: unknown, name: string): unknown {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)[name]
    : undefined;
}

/** The first `reason` (sidecar refusal) or app `error`, from the outside in. */
export function reasonOf(value: unknown): string | undefined {
  let current = value;
  for (let depth = 0; depth <= MAX_DEPTH && current !== undefined; depth++) {
    const reason = field(current, "reason");
    if (typeof reason === "string") return reason;
    const error = field(current, "error");
    if (typeof error === "string") return error;
    current = field(current, "downstream");
  }
  return undefined;
}

/** The answer of the app at `step` (shop, cart or payments), wherever it sits in the nesting. */
export function stepOf(value: unknown, step: string): Record<string, unknown> | undefined {
  let current = value;
  for (let depth = 0; depth <= MAX_DEPTH && current !== undefined; depth++) {
    if (field(current, "step") === step) return current as Record<string, unknown>;
    current = field(current, "downstream");
  }
  return undefined;
}

/** A refusal, or — if it was let through — what let it through. */
export function refusalOutcome(status: number, text: string): Outcome {
  const json = parseJson(text);
  if (status === 200) return { status, reason: stepOf(json, "payments")?.paid === true ? "paid" : "ok" };
  return { status, reason: reasonOf(json) ?? "no_reason_given" };
}

/** The happy path: paid, with the right card, which cart could not read. */
export function checkoutOutcome(status: number, text: string, expectedLast4: string): Outcome {
  const json = parseJson(text);
  if (status !== 200) return { status, reason: reasonOf(json) ?? "no_reason_given" };
  const payments = stepOf(json, "payments");
  const cart = stepOf(json, "cart");
  if (payments?.paid !== true) return { status, reason: "not_paid" };
  if (payments.last4 !== expectedLast4) return { status, reason: "wrong_card" };
  if (cart?.cartCouldRead !== false) return { status, reason: "cart_could_read" };
  return { status, reason: "paid" };
}

/** Audit mode: let through, and the sidecar's decision header says an audit policy denied it. */
export function auditOutcome(status: number, text: string): Outcome {
  const json = parseJson(text);
  if (status !== 200) return { status, reason: reasonOf(json) ?? "no_reason_given" };
  const decision = stepOf(json, "payments")?.decision;
  if (typeof decision !== "string") return { status, reason: "no_decision_header" };
  return {
    status,
    reason: /(^| )audited=deny( |$)/.test(decision) ? "audited=deny" : `decision: ${decision}`,
  };
}

/** What the happy path leaves for the attacks: the chain payments received, and the body. */
export interface CapturedCall {
  readonly chain: string;
  readonly body: string;
  readonly path: string;
  readonly decision: string | undefined;
  readonly caller: string | undefined;
  /** When payments answered (seconds since the epoch): the chain is inspected as of then. */
  readonly receivedAt: number;
}

/**
 * What payments' app was told about the call, with the chain whole again. Apps receive the chain's
 * initial token sealed by their sidecar (nobody who reads the app's headers can use the customer's
 * token); the demo, which minted that token as the customer's IdP, puts it back in place so the
 * attacks below replay and tamper with exactly the chain payments' sidecar accepted.
 */
export function capturedCallOf(
  text: string,
  receivedAt: number,
  initialToken: string,
): CapturedCall | undefined {
  const payments = stepOf(parseJson(text), "payments");
  const { chain, body, orderId, decision, caller } = payments ?? {};
  if (typeof chain !== "string" || typeof body !== "string" || typeof orderId !== "string") return undefined;
  const [, ...links] = chain.split(CHAIN_SEPARATOR);
  return {
    chain: [initialToken, ...links].join(CHAIN_SEPARATOR),
    body,
    path: `/pay-for-order/${orderId}`,
    decision: typeof decision === "string" ? decision : undefined,
    caller: typeof caller === "string" ? caller : undefined,
    receivedAt,
  };
}
