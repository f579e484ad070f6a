/**
 * The talk's scenarios against the running system. Each one plays a part — the customer, a
 * compromised cart, someone replaying or tampering with a call — and reports the outcome it saw;
 * comparing that with the expectation (expectations.ts) is the caller's job.
 */
import { parseServiceId, spiffeIdFor } from "../../../crds/src/names.js";
import { CHAIN_SEPARATOR } from "../../../sidecar/src/chain/limits.js";
import { mintLink } from "../../../sidecar/src/chain/mint.js";
import { normalizeOperation } from "../../../sidecar/src/chain/normalize.js";
import type { RunningLocal } from "../running.js";
import { callInbound, callOutbound, type InboundTarget, type Reply } from "./client.js";
import { DemoError } from "./errors.js";
import { SCENARIOS, type ScenarioId, type ScenarioSpec } from "./expectations.js";
import { CUSTOMER_SCOPE, type DemoIdp, mintUserToken } from "./idp.js";
import { clientCredentialsOf, linkSignerOf, type WaitOptions, waitForPolicyMode } from "./mesh-state.js";
import {
  auditOutcome,
  type CapturedCall,
  capturedCallOf,
  checkoutOutcome,
  matches,
  type Outcome,
  refusalOutcome,
} from "./outcomes.js";
import { setPolicyMode } from "./workspace.js";

export const SHOP = "shop.shop";
export const CART = "cart.shop";
export const PAYMENTS = "payments.shop";
export const ORDER_ID = "1001";
export const CUSTOMER_CARD = "4242 4242 4242 4242";
/** The card a compromised cart (or whoever holds its key) would like to see charged instead. */
const ATTACKER_CARD = "4000 0000 0000 0002";

export interface DemoSetup {
  readonly running: RunningLocal;
  readonly idp: DemoIdp;
  /** PEM of Custody's CA. */
  readonly ca: string;
  readonly trustDomain: string;
  /** The working copy of examples/shop that startLocal watches. */
  readonly workingDirectory: string;
  readonly progress: (line: string) => void;
  readonly signal?: AbortSignal | undefined;
  /** How long a policy change may take to reach the sidecars. */
  readonly policyTimeoutMs?: number;
}

export interface ScenarioResult {
  readonly spec: ScenarioSpec;
  /** Undefined when the scenario could not be played at all (see `note`). */
  readonly got: Outcome | undefined;
  readonly matched: boolean;
  readonly note?: string | undefined;
}

/** What earlier scenarios leave for later ones. */
interface Memory {
  captured?: CapturedCall;
}

type Play = (setup: DemoSetup, memory: Memory) => Promise<Outcome>;

function inboundOf(setup: DemoSetup, serviceId: string): Omit<InboundTarget, "client"> {
  return {
    port: setup.running.workload(serviceId).inboundPort,
    ca: setup.ca,
    spiffeId: spiffeIdFor(setup.trustDomain, parseServiceId(serviceId)),
  };
}

/** The customer's browser: TLS to shop's inbound port, no client certificate, a bearer token. */
function checkout(setup: DemoSetup, scopes: readonly string[]): Promise<Reply> {
  const token = mintUserToken(setup.idp, { subject: "customer-42", scopes });
  return callInbound(inboundOf(setup, SHOP), {
    method: "POST",
    path: "/checkout",
    headers: { authorization: `Bearer ${token}` },
    body: JSON.stringify({ orderId: ORDER_ID, card: CUSTOMER_CARD }),
  });
}

/** Someone holding cart's certificate and key, talking to payments' inbound port directly. */
async function atPaymentsAsCart(setup: DemoSetup, chain: string, path: string, body: string) {
  return callInbound(
    { ...inboundOf(setup, PAYMENTS), client: await clientCredentialsOf(setup.running, CART) },
    { method: "POST", path, headers: { "custody-chain": chain }, body },
  );
}

/**
 * A compromised cart app's own request body: a card sealed to payments through cart's key service
 * (anyone may seal to payments), so the call would succeed if a policy let it through.
 */
async function attackerBody(setup: DemoSetup): Promise<string> {
  const sealed = await callOutbound(setup.running.workload(CART).outboundUrl, "/.custody/seal", {
    method: "POST",
    body: JSON.stringify({ recipients: [PAYMENTS], plaintext: ATTACKER_CARD }),
  });
  if (sealed.status !== 200) {
    throw new DemoError(
      "demo_bad_reply",
      `cart's key service refused to seal (${sealed.status} ${sealed.body})`,
    );
  }
  return JSON.stringify({ sealedCard: JSON.parse(sealed.body) as unknown });
}

/** What cart's app can do without any key: call payments through its own sidecar, with no chain. */
async function cartCallsPaymentsDirectly(setup: DemoSetup): Promise<Reply> {
  return callOutbound(setup.running.workload(CART).outboundUrl, `http://${PAYMENTS}/pay-for-order/1`, {
    method: "POST",
    body: await attackerBody(setup),
  });
}

function capturedOrFail(memory: Memory): CapturedCall {
  if (memory.captured === undefined) {
    throw new DemoError("demo_bad_reply", "needs the chain of the happy path, which did not complete");
  }
  return memory.captured;
}

/**
 * A fresh head link from cart to payments over the captured chain's prefix, signed with cart's key.
 * This models an attacker who holds cart's key (or sits between cart's sidecar and the network) and
 * so can produce links that are cart's own: what stops them are the checks that follow, not the
 * signature. A head must be fresh for those checks to be reached at all, since the receiver checks
 * the head first, its jti included: the captured head itself is already spent (scenario "replay").
 */
async function freshHeadFromCart(setup: DemoSetup, captured: CapturedCall): Promise<string[]> {
  const prefix = captured.chain.split(CHAIN_SEPARATOR).slice(0, -1);
  const minted = mintLink(await linkSignerOf(setup.running, CART), {
    audience: PAYMENTS,
    operation: normalizeOperation("POST", captured.path),
    body: captured.body,
    previous: prefix,
  });
  return [...minted.elements];
}

const PLAYS: Record<ScenarioId, Play> = {
  checkout: async (setup, memory) => {
    const reply = await checkout(setup, [CUSTOMER_SCOPE]);
    const captured = capturedCallOf(reply.body, Math.floor(Date.now() / 1000));
    if (captured !== undefined) memory.captured = captured;
    return checkoutOutcome(reply.status, reply.body, CUSTOMER_CARD.slice(-4));
  },
  // Replayed immediately after the happy path, so the head has not expired (10 s): the answer is
  // the replay guard's, never a race with the clock.
  replay: async (setup, memory) => {
    const { chain, path, body } = capturedOrFail(memory);
    const reply = await atPaymentsAsCart(setup, chain, path, body);
    return refusalOutcome(reply.status, reply.body);
  },
  "cart-direct": async (setup) => {
    const reply = await cartCallsPaymentsDirectly(setup);
    return refusalOutcome(reply.status, reply.body);
  },
  "no-scope": async (setup) => {
    const reply = await checkout(setup, ["shop.browse"]);
    return refusalOutcome(reply.status, reply.body);
  },
  // The link was signed for the customer's body; another body (the attacker's card) is sent.
  "body-changed": async (setup, memory) => {
    const captured = capturedOrFail(memory);
    const elements = await freshHeadFromCart(setup, captured);
    const reply = await atPaymentsAsCart(
      setup,
      elements.join(CHAIN_SEPARATOR),
      captured.path,
      await attackerBody(setup),
    );
    return refusalOutcome(reply.status, reply.body);
  },
  // e0 ~ e1 ~ e2 without e1 (shop's link): nothing re-signed, so e2.prv still hashes e1.
  "link-removed": async (setup, memory) => {
    const captured = capturedOrFail(memory);
    const elements = await freshHeadFromCart(setup, captured);
    const removed = elements.filter((_, index) => index !== elements.length - 2);
    const reply = await atPaymentsAsCart(setup, removed.join(CHAIN_SEPARATOR), captured.path, captured.body);
    return refusalOutcome(reply.status, reply.body);
  },
  // Edits the working copy's policy (never the repository's), waits until payments' sidecar serves
  // it, plays "cart calls payments directly" again, and always switches back.
  "audit-mode": async (setup) => {
    const wait: WaitOptions = { signal: setup.signal, timeoutMs: setup.policyTimeoutMs ?? 30_000 };
    const policy = { namespace: "shop", name: "payments" } as const;
    await setPolicyMode(setup.workingDirectory, { name: policy.name, mode: "audit" });
    try {
      const generation = await waitForPolicyMode(setup.running, { ...policy, mode: "audit" }, wait);
      setup.progress(`payments' policy is in audit mode (registry generation ${generation})`);
      const reply = await cartCallsPaymentsDirectly(setup);
      return auditOutcome(reply.status, reply.body);
    } finally {
      await setPolicyMode(setup.workingDirectory, { name: policy.name, mode: "enforce" });
      const generation = await waitForPolicyMode(setup.running, { ...policy, mode: "enforce" }, wait);
      setup.progress(`payments' policy is back to enforce (registry generation ${generation})`);
    }
  },
};

/**
 * The order scenarios are played in. The replay comes right after the happy path it replays; the
 * audit-mode one last, as it changes a policy.
 */
export const PLAY_ORDER: readonly ScenarioId[] = [
  "checkout",
  "replay",
  "cart-direct",
  "no-scope",
  "body-changed",
  "link-removed",
  "audit-mode",
];

export interface ScenarioRun {
  /** In the table's order (expectations.ts), whatever order they were played in. */
  readonly results: readonly ScenarioResult[];
  readonly captured: CapturedCall | undefined;
}

/** `work`, or demo_aborted as soon as `signal` fires (whatever `work` does later is ignored). */
export function untilAborted<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return work;
  if (signal.aborted) {
    work.catch(() => undefined);
    return Promise.reject(new DemoError("demo_aborted", "stopped."));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      work.catch(() => undefined);
      reject(new DemoError("demo_aborted", "stopped."));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

export async function runScenarios(setup: DemoSetup): Promise<ScenarioRun> {
  const memory: Memory = {};
  const played = new Map<ScenarioId, ScenarioResult>();
  for (const id of PLAY_ORDER) {
    if (setup.signal?.aborted) throw new DemoError("demo_aborted", "stopped.");
    const spec = SCENARIOS.find((candidate) => candidate.id === id);
    if (spec === undefined) continue;
    setup.progress(`scenario: ${spec.title}`);
    try {
      const got = await untilAborted(PLAYS[id](setup, memory), setup.signal);
      played.set(id, { spec, got, matched: matches(spec.expected, got) });
    } catch (error) {
      if (error instanceof DemoError && error.code === "demo_aborted") throw error;
      const note = error instanceof Error ? error.message : String(error);
      played.set(id, { spec, got: undefined, matched: false, note });
    }
  }
  const results = SCENARIOS.flatMap((spec) => played.get(spec.id) ?? []);
  return { results, captured: memory.captured };
}
