/**
 * The inbound decision as a whole, before any body is read: attacks that need more than one step of
 * it — several policies' quotas, a caller allowed nowhere filling the replay store, a partner's
 * certificate posing as a workload — each refused with its reason.
 */
import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import { type CompiledPolicy, compilePolicy } from "../../crds/src/compiled-policy.js";
import {
  type CertificateAuthority,
  createCertificateAuthority,
  issueCertificate,
} from "../../pki/src/index.js";
import { VerifiedCertificateCache } from "../../pki/src/peer.js";
import { DEFAULT_LIMITS } from "../src/chain/limits.js";
import { mintLink } from "../src/chain/mint.js";
import { normalizeOperation } from "../src/chain/normalize.js";
import { QuotaLimiter } from "../src/quota/limiter.js";
import { MemoryReplayGuard } from "../src/replay/memory.js";
import { decideInbound, type InboundOutcome } from "../src/runtime/inbound-decision.js";
import { snapshotOf } from "../src/runtime/registry-source.js";
import { makeService, TestIssuer, TOKEN_SERVICE } from "./support/mesh.js";
import { testRegistry } from "./support/registry.js";

const cart = makeService("cart.shop");
const payments = makeService("payments.shop");
const tokenService = new TestIssuer(TOKEN_SERVICE);

function policy(name: string, rule: Record<string, unknown>): CompiledPolicy {
  return compilePolicy({
    apiVersion: "custody.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: { name, namespace: "shop" },
    spec: { target: "payments", defaultAction: "deny", rules: [{ name: "rule", action: "allow", ...rule }] },
  });
}

let mesh: CertificateAuthority;
let partner: CertificateAuthority;
let cartCertificate: Uint8Array;

beforeAll(async () => {
  [mesh, partner] = await Promise.all([
    createCertificateAuthority(),
    // `custody pki init`'s defaults: it claims Custody's own trust domain.
    createCertificateAuthority({ trustDomain: "custody.local" }),
  ]);
  cartCertificate = (await issueCertificate(mesh, { id: "cart.shop", usage: "client" })).certificate.der;
});

describe("the inbound decision", () => {
  let replay: MemoryReplayGuard;
  let quota: QuotaLimiter;
  beforeEach(() => {
    replay = new MemoryReplayGuard();
    quota = new QuotaLimiter();
  });

  const decide = (
    policies: readonly CompiledPolicy[],
    options: { peerChain?: Uint8Array[]; path?: string } = {},
  ): Promise<InboundOutcome> => {
    const registry = testRegistry(
      { trustBundle: mesh.certificate.pem, tokenService, services: [cart, payments] },
      { policies, partnerBundle: partner.certificate.pem },
    );
    const path = options.path ?? "/pay";
    return decideInbound(
      {
        self: "payments.shop",
        snapshot: snapshotOf(registry),
        replay,
        quota,
        limits: DEFAULT_LIMITS,
        whenNoPolicy: "deny",
        certificates: new VerifiedCertificateCache(),
      },
      {
        method: "GET",
        target: path,
        chainHeader: mintLink(cart.signer, {
          audience: "payments.shop",
          operation: normalizeOperation("GET", path),
        }).header,
        authorization: undefined,
        declaresBody: false,
        peerChain: options.peerChain ?? [cartCertificate],
        nowMs: Date.now(),
      },
    );
  };
  const reasonOf = (outcome: InboundOutcome) => (outcome.allowed ? "allowed" : outcome.reason);

  it("64. two policies allow a call: each one's quota is charged, and the tighter one holds", async () => {
    const policies = [
      policy("generous", { quota: { requestsPerSecond: 1, burst: 10 } }),
      policy("strict", { quota: { requestsPerSecond: 1, burst: 2 } }),
    ];
    const reasons = [];
    for (let call = 0; call < 10; call++) reasons.push(reasonOf(await decide(policies)));
    expect(reasons.filter((reason) => reason === "allowed")).toHaveLength(2);
    expect(reasons.slice(2)).toEqual(Array(8).fill("quota_exceeded"));
  });

  it("65. a refused call costs no quota of the other policies (all or nothing)", async () => {
    const policies = [
      policy("one", { quota: { requestsPerSecond: 1, burst: 3 } }),
      policy("two", { quota: { requestsPerSecond: 1, burst: 1 } }),
    ];
    expect(reasonOf(await decide(policies))).toBe("allowed");
    expect(reasonOf(await decide(policies))).toBe("quota_exceeded");
    // "one" still has 2 calls left: only the exhausted bucket refused, nothing was taken from "one".
    const alone = [policies[0] as CompiledPolicy];
    expect(reasonOf(await decide(alone))).toBe("allowed");
    expect(reasonOf(await decide(alone))).toBe("allowed");
    expect(reasonOf(await decide(alone))).toBe("quota_exceeded");
  });

  it("66. a caller allowed nowhere spends no jti: it cannot fill the replay store for everyone", async () => {
    const policies = [policy("elsewhere", { operation: { path: "/other" } })];
    for (let call = 0; call < 20; call++) expect(reasonOf(await decide(policies))).toBe("default_action");
    expect(replay.size).toBe(0);
    expect(reasonOf(await decide([policy("open", {})]))).toBe("allowed");
    expect(replay.size).toBe(1);
  });

  it("67. a caller over its quota spends no jti either", async () => {
    const policies = [policy("strict", { quota: { requestsPerSecond: 1, burst: 1 } })];
    expect(reasonOf(await decide(policies))).toBe("allowed");
    for (let call = 0; call < 5; call++) expect(reasonOf(await decide(policies))).toBe("quota_exceeded");
    expect(replay.size).toBe(1);
  });

  it("68. a partner CA's certificate naming a workload's SPIFFE id is not that workload", async () => {
    const forged = (await issueCertificate(partner, { id: "cart.shop", usage: "client" })).certificate.der;
    const outcome = await decide([policy("open", {})], { peerChain: [forged] });
    expect(reasonOf(outcome)).toBe("peer_spiffe_id_not_mesh_issued");
    expect(replay.size).toBe(0);
  });
});
