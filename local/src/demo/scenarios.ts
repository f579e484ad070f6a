/**
 * The talk's scenarios against a running system. Each one plays a part — the customer, a
 * compromised cart, someone replaying or tampering with a call — and reports the outcome it saw;
 * comparing that with the expectation (expectations.ts) is the caller's job.
 *
 * The scenarios are written once, against `MeshAccess`: how the demo reaches the mesh. `custody
 * demo` reaches a local system (local-mesh.ts); e2e/kind/scenarios.ts a kind cluster.
 */
import { parseServiceId, spiffeIdFor } from "../../../crds/src/names.js";
import type { Registry } from "../../../crds/src/registry-schema.js";
import { CHAIN_SEPARATOR } from "../../../sidecar/src/chain/limits.js";
import { type LinkSigner, mintLink } from "../../../sidecar/src/chain/mint.js";
import { normalizeOperation } from "../../../sidecar/src/chain/normalize.js";
import { renderCapturedChain } from "./chain-view.js";
import { callInbound, type InboundTarget, type Reply } from "./client.js";
import { DemoError } from "./errors.js";
import { SCENARIOS, type ScenarioId, type ScenarioSpec } from "./expectations.js";
import { CUSTOMER_SCOPE, type DemoIdp, mintUserToken } from "./idp.js";
import {
  auditOutcome,
  type CapturedCall,
  capturedCallOf,
  checkoutOutcome,
  matches,
  type Outcome,
  refusalOutcome,
} from "./outcomes.js";

export const SHOP = "shop.shop";
export const CART = "cart.shop";
export const PAYMENTS = "payments.shop";
export const ORDER_ID = "1001";
export const CUSTOMER_CARD = "4242 4242 4242 4242";

/** The services the demo calls at their sidecar's inbound port from the outside. */
export type InboundService = typeof SHOP | typeof PAYMENTS;

/**
 * How the scenarios reach the mesh: all that differs between a local system and a cluster. Cart's
 * key and certificate stand for an attacker holding them; cart's app for a compromised app.
 */
export interface MeshAccess {
  /** PEM of Custody's CA. */
  readonly ca: string;
  readonly trustDomain: string;
  /** The loopback port that reaches `service`'s sidecar inbound port. */
  inboundPort(service: InboundService): number;
  /** Cart's certificate and key (PEM), for mutual TLS as cart. */
  cartCredentials(): Promise<{ readonly cert: string; readonly key: string }>;
  /** What cart's sidecar signs links with: its certificate key under its registry kid. */
  cartSigner(): Promise<LinkSigner>;
  /**
   * A compromised cart app's own request body: a card sealed to payments through cart's key service
   * (anyone may seal to payments), so the call would succeed if a policy let it through.
   */
  attackerBody(): Promise<string>;
  /** What cart's app can do without any key: call payments through its own sidecar, with no chain. */
  cartCallsPaymentsDirectly(): Promise<Pick<Reply, "status" | "body">>;
  /** Changes the mode of payments' AccessPolicy (the change itself, not waiting for it). */
  setPaymentsMode(mode: "enforce" | "audit"): Promise<void>;
  /** Until payments' policy is published with `mode` and the sidecars serve it; reports that. */
  awaitPaymentsMode(mode: "enforce" | "audit"): Promise<void>;
  /** The registry the captured chain is verified against; undefined when there is none. */
  registry(): Promise<Registry | undefined>;
}

export interface DemoSetup {
  readonly mesh: MeshAccess;
  readonly idp: DemoIdp;
  readonly progress: (line: string) => void;
  readonly signal?: AbortSignal | undefined;
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

function inboundOf(mesh: MeshAccess, service: InboundService): Omit<InboundTarget, "client"> {
  return {
    port: mesh.inboundPort(service),
    ca: mesh.ca,
    spiffeId: spiffeIdFor(mesh.trustDomain, parseServiceId(service)),
  };
}

/** The customer's browser: TLS to shop's inbound port, no client certificate, a bearer token. */
async function checkout(
  mesh: MeshAccess,
  idp: DemoIdp,
  scopes: readonly string[],
): Promise<{ readonly reply: Reply; readonly token: string }> {
  const token = mintUserToken(idp, { subject: "customer-42", scopes });
  const reply = await callInbound(inboundOf(mesh, SHOP), {
    method: "POST",
    path: "/checkout",
    headers: { authorization: `Bearer ${token}` },
    body: JSON.stringify({ orderId: ORDER_ID, card: CUSTOMER_CARD }),
  });
  return { reply, token };
}

/** Someone holding cart's certificate and key, talking to payments' inbound port directly. */
async function atPaymentsAsCart(mesh: MeshAccess, chain: string, path: string, body: string) {
  return callInbound(
    { ...inboundOf(mesh, PAYMENTS), client: await mesh.cartCredentials() },
    { method: "POST", path, headers: { "custody-chain": chain }, body },
  );
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
async function freshHeadFromCart(mesh: MeshAccess, captured: CapturedCall): Promise<string[]> {
  const prefix = captured.chain.split(CHAIN_SEPARATOR).slice(0, -1);
  const minted = mintLink(await mesh.cartSigner(), {
    audience: PAYMENTS,
    operation: normalizeOperation("POST", captured.path),
    body: captured.body,
    previous: prefix,
  });
  return [...minted.elements];
}

const PLAYS: Record<ScenarioId, Play> = {
  checkout: async ({ mesh, idp }, memory) => {
    const { reply, token } = await checkout(mesh, idp, [CUSTOMER_SCOPE]);
    const captured = capturedCallOf(reply.body, Math.floor(Date.now() / 1000), token);
    if (captured !== undefined) memory.captured = captured;
    return checkoutOutcome(reply.status, reply.body, CUSTOMER_CARD.slice(-4));
  },
  // Replayed immediately after the happy path, so the head has not expired (10 s): the answer is
  // the replay guard's, never a race with the clock.
  replay: async ({ mesh }, memory) => {
    const { chain, path, body } = capturedOrFail(memory);
    const reply = await atPaymentsAsCart(mesh, chain, path, body);
    return refusalOutcome(reply.status, reply.body);
  },
  "cart-direct": async ({ mesh }) => {
    const reply = await mesh.cartCallsPaymentsDirectly();
    return refusalOutcome(reply.status, reply.body);
  },
  "no-scope": async ({ mesh, idp }) => {
    const { reply } = await checkout(mesh, idp, ["shop.browse"]);
    return refusalOutcome(reply.status, reply.body);
  },
  // The link was signed for the customer's body; another body (the attacker's card) is sent.
  "body-changed": async ({ mesh }, memory) => {
    const captured = capturedOrFail(memory);
    const elements = await freshHeadFromCart(mesh, captured);
    const reply = await atPaymentsAsCart(
      mesh,
      elements.join(CHAIN_SEPARATOR),
      captured.path,
      await mesh.attackerBody(),
    );
    return refusalOutcome(reply.status, reply.body);
  },
  // e0 ~ e1 ~ e2 without e1 (shop's link): nothing re-signed, so e2.prv still hashes e1.
  "link-removed": async ({ mesh }, memory) => {
    const captured = capturedOrFail(memory);
    const elements = await freshHeadFromCart(mesh, captured);
    const removed = elements.filter((_, index) => index !== elements.length - 2);
    const reply = await atPaymentsAsCart(mesh, removed.join(CHAIN_SEPARATOR), captured.path, captured.body);
    return refusalOutcome(reply.status, reply.body);
  },
  // Switches payments' policy to audit (locally in the working copy, never the repository's),
  // waits until the sidecars serve it, plays "cart calls payments directly" again, and always
  // switches back.
  "audit-mode": async ({ mesh }) => {
    await mesh.setPaymentsMode("audit");
    try {
      await mesh.awaitPaymentsMode("audit");
      const reply = await mesh.cartCallsPaymentsDirectly();
      return auditOutcome(reply.status, reply.body);
    } finally {
      await mesh.setPaymentsMode("enforce");
      await mesh.awaitPaymentsMode("enforce");
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
  /** The captured chain as `custody token inspect` shows it, verified against the registry. */
  readonly chainTree: string | undefined;
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
  const { captured } = memory;
  // Rendered now: the registry it is verified against may go away with the system (locally, with
  // the state directory).
  const chainTree =
    captured === undefined
      ? undefined
      : await renderCapturedChain(captured, PAYMENTS, await setup.mesh.registry());
  return { results, captured, chainTree };
}
