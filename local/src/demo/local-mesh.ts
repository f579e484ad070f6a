/**
 * How `custody demo` reaches the mesh (MeshAccess, scenarios.ts) on a local system: the sidecars'
 * loopback ports from `RunningLocal`, cart's key and certificate from the state directory's
 * Secrets, and policy changes as edits of the working copy that `startLocal` watches.
 */
import type { RunningLocal } from "../running.js";
import { callOutbound } from "./client.js";
import { DemoError } from "./errors.js";
import {
  clientCredentialsOf,
  linkSignerOf,
  readRegistry,
  type WaitOptions,
  waitForPolicyMode,
} from "./mesh-state.js";
import { CART, type InboundService, type MeshAccess, PAYMENTS } from "./scenarios.js";
import { setPolicyMode } from "./workspace.js";

/** The card a compromised cart (or whoever holds its key) would like to see charged instead. */
const ATTACKER_CARD = "4000 0000 0000 0002";

export interface LocalMeshOptions {
  readonly running: RunningLocal;
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

export function localMesh(options: LocalMeshOptions): MeshAccess {
  const { running, workingDirectory, progress } = options;
  const policy = { namespace: "shop", name: "payments" } as const;
  const wait: WaitOptions = { signal: options.signal, timeoutMs: options.policyTimeoutMs ?? 30_000 };
  // Cart's outbound port as cart's app is given it: with the workload's credential.
  const cartOutbound = () => running.workload(CART).appProxyUrl;

  const attackerBody = async (): Promise<string> => {
    const sealed = await callOutbound(cartOutbound(), "/.custody/seal", {
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
  };

  return {
    ca: options.ca,
    trustDomain: options.trustDomain,
    inboundPort: (service: InboundService) => running.workload(service).inboundPort,
    cartCredentials: () => clientCredentialsOf(running, CART),
    cartSigner: () => linkSignerOf(running, CART),
    attackerBody,
    cartCallsPaymentsDirectly: async () =>
      callOutbound(cartOutbound(), `http://${PAYMENTS}/pay-for-order/1`, {
        method: "POST",
        body: await attackerBody(),
      }),
    // Edits the working copy's policy, never the repository's.
    setPaymentsMode: (mode) => setPolicyMode(workingDirectory, { name: policy.name, mode }),
    awaitPaymentsMode: async (mode) => {
      const generation = await waitForPolicyMode(running, { ...policy, mode }, wait);
      progress(
        mode === "audit"
          ? `payments' policy is in audit mode (registry generation ${generation})`
          : `payments' policy is back to enforce (registry generation ${generation})`,
      );
    },
    registry: () => readRegistry(running, policy.namespace),
  };
}
