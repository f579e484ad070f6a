/**
 * Leader election (operator/src/store/leader.ts) between real electors on the Lease
 * custody-operator of a real control plane, each as the chart's ServiceAccount (whose Role allows
 * that one Lease): one leader at a time, the Lease written the way client-go writes it, a closing
 * leader handing over at once, and a leader cut off from the API server stepping down before the
 * other replica takes over. Durations are short (lease 1.5 s, renew deadline 1 s, retry 200 ms);
 * the tests poll generously instead of timing.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { CoordinationV1Api, KubeConfig, type V1LeaseSpec } from "@kubernetes/client-node";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { LeaderElectionError, LeaderElector } from "../../operator/src/store/leader.js";
import { type Cluster, OPERATOR_NAMESPACE, startCluster } from "../support/cluster.js";
import { requireControlPlane } from "../support/control-plane.js";
import { requireTool } from "../support/tools.js";

const HAS_CLUSTER = requireTool("kubectl") && requireControlPlane();
const NAMESPACE = OPERATOR_NAMESPACE;
/** The one Lease the chart's Role lets the operator get and update. */
const LEASE = "custody-operator";
const TIMINGS = { leaseDurationMs: 1_500, renewDeadlineMs: 1_000, retryPeriodMs: 200 };
const MICRO_TIME = /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$/;
const WAIT = { timeout: 10_000, interval: 20 };

/** Who leads, and whether two ever led at once (the one thing leader election must prevent). */
class Ledger {
  readonly leaders = new Set<string>();
  readonly history: string[] = [];
  overlaps = 0;

  callbacks(identity: string): { onStartedLeading(): void; onStoppedLeading(): void } {
    return {
      onStartedLeading: () => {
        if (this.leaders.size > 0) this.overlaps += 1;
        this.leaders.add(identity);
        this.history.push(`${identity} started`);
      },
      onStoppedLeading: () => {
        this.leaders.delete(identity);
        this.history.push(`${identity} stopped`);
      },
    };
  }
}

describe.skipIf(!HAS_CLUSTER)("leader election on a Lease", () => {
  let cluster: Cluster;
  /** The operator's ServiceAccount, straight to the API server. */
  let kc: KubeConfig;
  /** The admin's, to read and clear the Lease. */
  let leases: CoordinationV1Api;
  const electors: LeaderElector[] = [];
  const cleanups: (() => Promise<void>)[] = [];
  const logger = pino({ level: process.env.CUSTODY_E2E_LOGS === "1" ? "debug" : "silent" });

  function elector(identity: string, name: string, kubeConfig: KubeConfig = kc): LeaderElector {
    const created = new LeaderElector({
      kubeConfig,
      namespace: NAMESPACE,
      name,
      identity,
      logger,
      ...TIMINGS,
    });
    electors.push(created);
    return created;
  }

  function nextLease(): string {
    return LEASE;
  }

  async function leaseSpec(name: string): Promise<V1LeaseSpec> {
    return (await leases.readNamespacedLease({ name, namespace: NAMESPACE })).spec ?? {};
  }

  beforeAll(async () => {
    cluster = await startCluster();
    const token = cluster.operatorKubeConfig.getCurrentUser()?.token ?? "";
    kc = new KubeConfig();
    kc.loadFromFile(await cluster.controlPlane.tokenKubeconfig("custody-operator-direct", token));
    leases = cluster.kubeConfig.makeApiClient(CoordinationV1Api);
  }, 120_000);

  afterEach(async () => {
    await Promise.all(electors.splice(0).map((created) => created.close()));
    for (const cleanup of cleanups.splice(0)) await cleanup();
    // Each test starts without a Lease, as a fresh installation does.
    await leases.deleteNamespacedLease({ name: LEASE, namespace: NAMESPACE }).catch(() => undefined);
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it("lets exactly one of two candidates lead, and writes the Lease like client-go", async () => {
    const name = nextLease();
    const ledger = new Ledger();
    const a = elector("replica-a", name);
    const b = elector("replica-b", name);
    a.start(ledger.callbacks("replica-a"));
    b.start(ledger.callbacks("replica-b"));
    await vi.waitFor(() => expect(ledger.leaders.size).toBe(1), WAIT);
    const [leader] = [...ledger.leaders];
    expect([a, b].filter((candidate) => candidate.isLeader).map((candidate) => candidate.identity)).toEqual([
      leader,
    ]);

    const first = await leaseSpec(name);
    expect(first).toMatchObject({ holderIdentity: leader, leaseDurationSeconds: 2, leaseTransitions: 0 });
    expect(String(first.renewTime)).toMatch(MICRO_TIME);
    expect(String(first.acquireTime)).toMatch(MICRO_TIME);

    // Several renewals later: the same leader, renewTime moving, acquireTime kept.
    await sleep(1_000);
    await vi.waitFor(
      async () => expect(String((await leaseSpec(name)).renewTime)).not.toBe(String(first.renewTime)),
      WAIT,
    );
    const later = await leaseSpec(name);
    expect(later).toMatchObject({ holderIdentity: leader, leaseTransitions: 0 });
    expect(String(later.acquireTime)).toBe(String(first.acquireTime));
    expect(ledger.history).toEqual([`${leader} started`]);
    expect(ledger.overlaps).toBe(0);
  });

  it("hands over at once when the leader closes (it releases the Lease)", async () => {
    const name = nextLease();
    const ledger = new Ledger();
    const a = elector("replica-a", name);
    a.start(ledger.callbacks("replica-a"));
    await vi.waitFor(() => expect(a.isLeader).toBe(true), WAIT);
    const b = elector("replica-b", name);
    b.start(ledger.callbacks("replica-b"));
    await sleep(3 * TIMINGS.retryPeriodMs);
    expect(b.isLeader).toBe(false);

    await a.close();
    expect(a.isLeader).toBe(false);
    expect(ledger.history).toEqual(["replica-a started", "replica-a stopped"]);
    // Released, not left to expire: free (or already taken by b, if it was that quick).
    const released = await leaseSpec(name);
    if (released.holderIdentity === "") expect(released.leaseDurationSeconds).toBe(1);
    else expect(released.holderIdentity).toBe("replica-b");
    await vi.waitFor(() => expect(b.isLeader).toBe(true), WAIT);
    expect(await leaseSpec(name)).toMatchObject({ holderIdentity: "replica-b", leaseTransitions: 1 });
    expect(ledger.overlaps).toBe(0);
  });

  it("leaves the Lease alone when a candidate that does not lead closes", async () => {
    const name = nextLease();
    const ledger = new Ledger();
    const a = elector("replica-a", name);
    a.start(ledger.callbacks("replica-a"));
    await vi.waitFor(() => expect(a.isLeader).toBe(true), WAIT);
    const b = elector("replica-b", name);
    b.start(ledger.callbacks("replica-b"));
    await sleep(3 * TIMINGS.retryPeriodMs);
    await b.close();
    expect(await leaseSpec(name)).toMatchObject({ holderIdentity: "replica-a", leaseDurationSeconds: 2 });
    expect(a.isLeader).toBe(true);
    expect(ledger.history).toEqual(["replica-a started"]);
  });

  it("makes a leader that cannot renew step down before another replica takes the expired Lease", async () => {
    const name = nextLease();
    const ledger = new Ledger();
    const proxy = cluster.operatorProxy;
    cleanups.push(() => proxy.restore());
    const a = elector("replica-a", name, cluster.operatorKubeConfig);
    a.start(ledger.callbacks("replica-a"));
    await vi.waitFor(() => expect(a.isLeader).toBe(true), WAIT);
    const b = elector("replica-b", name);
    b.start(ledger.callbacks("replica-b"));
    await sleep(3 * TIMINGS.retryPeriodMs);
    expect(b.isLeader).toBe(false);

    await proxy.cut();
    await vi.waitFor(() => expect(b.isLeader).toBe(true), WAIT);
    expect(a.isLeader).toBe(false);
    expect(ledger.history).toEqual(["replica-a started", "replica-a stopped", "replica-b started"]);
    expect(ledger.overlaps).toBe(0);
    expect(await leaseSpec(name)).toMatchObject({ holderIdentity: "replica-b", leaseTransitions: 1 });

    // Back in touch, a sees b renewing and stays a candidate.
    await proxy.restore();
    await sleep(5 * TIMINGS.retryPeriodMs);
    expect(a.isLeader).toBe(false);
    expect(b.isLeader).toBe(true);
  });

  it("refuses timings under which two replicas could lead at once", () => {
    expect(
      () =>
        new LeaderElector({
          kubeConfig: kc,
          namespace: NAMESPACE,
          logger,
          leaseDurationMs: 1_000,
          renewDeadlineMs: 1_000,
          retryPeriodMs: 200,
        }),
    ).toThrow(LeaderElectionError);
    expect(
      () =>
        new LeaderElector({
          kubeConfig: kc,
          namespace: NAMESPACE,
          logger,
          leaseDurationMs: 15_000,
          renewDeadlineMs: 1_000,
          retryPeriodMs: 1_000,
        }),
    ).toThrow(expect.objectContaining({ code: "leader_election_invalid" }));
  });
});
