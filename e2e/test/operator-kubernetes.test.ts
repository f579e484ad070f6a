/**
 * The operator against Kubernetes — the real kube-apiserver, etcd and kube-controller-manager, the
 * operator as the chart's ServiceAccount — driven the way a user drives it: `kubectl apply` of the
 * CRDs and manifests, `kubectl get`, `kubectl delete`. The shared reconcile suite runs here as it
 * runs on the local store; then what only Kubernetes has: kubectl's view of the status, watches
 * dropped and expired (410 Gone after an etcd compaction) while objects change, and two replicas
 * with leader election.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CoreV1Api } from "@kubernetes/client-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { parse as parseYaml, stringify } from "yaml";
import { mergeRegistryShards, parseRegistry } from "../../crds/src/registry.js";
import type { RunningOperator } from "../../operator/src/operator.js";
import { KubernetesStore } from "../../operator/src/store/kubernetes.js";
import { storedSecretOf } from "../../operator/src/store/kubernetes-convert.js";
import { LeaderElector } from "../../operator/src/store/leader.js";
import type { ResourceKind } from "../../operator/src/store/store.js";
import { startTestOperator } from "../../operator/test/support/operator.js";
import {
  conditionOf,
  describeReconcile,
  identity,
  type ReconcileHarness,
} from "../../operator/test/support/reconcile-suite.js";
import { type Cluster, OPERATOR_NAMESPACE, startCluster } from "../support/cluster.js";
import { requireControlPlane } from "../support/control-plane.js";
import { requireTool } from "../support/tools.js";

const HAS_CLUSTER = requireTool("kubectl") && requireControlPlane();
const RESOURCE = { ServiceIdentity: "serviceidentities", AccessPolicy: "accesspolicies" } as const;
const quiet = pino({ level: process.env.LOG_LEVEL ?? "silent" });

function elector(cluster: Cluster, identity: string): LeaderElector {
  return new LeaderElector({
    kubeConfig: cluster.operatorKubeConfig,
    namespace: "custody-system",
    identity,
    leaseDurationMs: 1_500,
    renewDeadlineMs: 1_000,
    retryPeriodMs: 200,
    logger: quiet,
  });
}

async function startReplica(cluster: Cluster, name: string): Promise<RunningOperator> {
  return startTestOperator(
    new KubernetesStore({
      kubeConfig: cluster.operatorKubeConfig,
      logger: quiet,
      // The chart's RBAC: Secrets only in the operator's namespace.
      secretsNamespace: OPERATOR_NAMESPACE,
    }),
    cluster.caDirectory,
    {
      leadership: elector(cluster, name),
    },
  );
}

async function applyWithKubectl(cluster: Cluster, manifest: Record<string, unknown>): Promise<void> {
  const file = join(cluster.directory, `manifest-${Date.now()}-${Math.random().toString(16).slice(2)}.yaml`);
  await writeFile(file, stringify(manifest));
  const applied = await cluster.kubectl(["apply", "-f", file]);
  if (applied.code !== 0) throw new Error(`kubectl apply failed: ${applied.stderr}`);
}

async function statusWithKubectl(
  cluster: Cluster,
  kind: ResourceKind,
  namespace: string,
  name: string,
): Promise<Record<string, unknown> | undefined> {
  const got = await cluster.kubectl(["get", RESOURCE[kind], name, "-n", namespace, "-o", "json"]);
  if (got.code !== 0) return undefined;
  return (JSON.parse(got.stdout) as { status?: Record<string, unknown> }).status;
}

async function registryTexts(cluster: Cluster, namespace: string): Promise<string[]> {
  const core = cluster.kubeConfig.makeApiClient(CoreV1Api);
  const list = await core.listNamespacedConfigMap({
    namespace,
    labelSelector: "app.kubernetes.io/managed-by=custody-operator",
  });
  return list.items
    .filter((configMap) => configMap.metadata?.name?.startsWith("custody-registry") === true)
    .flatMap((configMap) => Object.values(configMap.data ?? {}));
}

describe.skipIf(!HAS_CLUSTER)("operator on Kubernetes", () => {
  describeReconcile("Kubernetes store", async (): Promise<ReconcileHarness> => {
    const cluster = await startCluster();
    let operator = await startReplica(cluster, "replica-a");
    const core = cluster.kubeConfig.makeApiClient(CoreV1Api);
    return {
      operator: () => operator,
      apply: (manifest) => applyWithKubectl(cluster, manifest),
      async remove(kind, namespace, name) {
        const deleted = await cluster.kubectl(["delete", RESOURCE[kind], name, "-n", namespace]);
        if (deleted.code !== 0) throw new Error(deleted.stderr);
      },
      async secret(namespace, name) {
        try {
          return storedSecretOf(await core.readNamespacedSecret({ namespace, name }))?.secret;
        } catch {
          return undefined;
        }
      },
      registryTexts: (namespace) => registryTexts(cluster, namespace),
      status: (kind, namespace, name) => statusWithKubectl(cluster, kind, namespace, name),
      async restart() {
        void operator.close(0);
        operator = await startReplica(cluster, `replica-${Date.now()}`);
      },
      async close() {
        await operator.close(0);
        await cluster.close();
      },
    };
  });

  describe("what only Kubernetes has", () => {
    let cluster: Cluster;
    const replicas: RunningOperator[] = [];
    const registry = async () => {
      const texts = await registryTexts(cluster, "shop");
      return texts.length === 0 ? undefined : mergeRegistryShards(texts.map(parseRegistry));
    };
    const ready = (name: string) =>
      vi.waitFor(
        async () => {
          expect(
            conditionOf(await statusWithKubectl(cluster, "ServiceIdentity", "shop", name), "Ready")?.status,
          ).toBe("True");
        },
        { timeout: 20_000, interval: 100 },
      );

    const leaseHolder = async () => {
      const lease = await cluster.kubectl([
        "get",
        "lease",
        "custody-operator",
        "-n",
        "custody-system",
        "-o",
        "json",
      ]);
      return (JSON.parse(lease.stdout) as { spec: { holderIdentity: string } }).spec.holderIdentity;
    };

    beforeAll(async () => {
      // Watches served from etcd, not the API server's watch cache: a compaction then reaches the
      // operator's informers as 410 Gone, and they must list again.
      cluster = await startCluster({ apiserverFlags: ["--watch-cache=false"] });
    });
    afterAll(async () => {
      await Promise.all(replicas.map((replica) => replica.close(0)));
      await cluster?.close();
    });

    it("two replicas: one leads and reconciles; when it stops the other takes over", async () => {
      replicas.push(await startReplica(cluster, "replica-a"), await startReplica(cluster, "replica-b"));
      await applyWithKubectl(cluster, identity("shop"));
      await ready("shop");
      const holder = await leaseHolder();
      expect(["replica-a", "replica-b"]).toContain(holder);
      // Both replicas serve tokens; only the leader wrote the Secret (one certificate issued).
      const leaderIndex = holder === "replica-a" ? 0 : 1;
      const leader = replicas[leaderIndex] as RunningOperator;
      await leader.close(0);
      replicas.splice(leaderIndex, 1);
      await applyWithKubectl(cluster, identity("cart"));
      await ready("cart");
      expect(await leaseHolder()).not.toBe(holder);
    });

    it("kubectl shows the status: get si,ap and get si NAME -o yaml", async () => {
      const listed = await cluster.kubectl(["get", "si,ap", "-n", "shop"]);
      expect(listed.code).toBe(0);
      expect(listed.stdout).toMatch(/serviceidentity\.custody\.dev\/shop/);
      expect(listed.stdout).toMatch(/serviceidentity\.custody\.dev\/cart/);
      const yaml = await cluster.kubectl(["get", "si", "cart", "-n", "shop", "-o", "yaml"]);
      const object = parseYaml(yaml.stdout) as { status: Record<string, unknown> };
      expect(conditionOf(object.status, "Ready")).toMatchObject({ status: "True", reason: "Ready" });
      expect(object.status.keyId).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(object.status.certificate).toMatchObject({
        fingerprintSHA256: expect.stringMatching(/^[0-9a-f]{64}$/),
      });
      const waited = await cluster.kubectl([
        "wait",
        "--for=condition=Ready",
        "si/cart",
        "-n",
        "shop",
        "--timeout=10s",
      ]);
      expect(waited.code, waited.stderr).toBe(0);
    });

    it("watches dropped and expired (410 Gone) while objects change: nothing is missed", async () => {
      await cluster.compact();
      await cluster.dropOperatorConnections();
      await applyWithKubectl(cluster, identity("payments"));
      await cluster.compact();
      await cluster.dropOperatorConnections();
      await ready("payments");
      await vi.waitFor(
        async () => {
          expect((await registry())?.services.map((service) => service.id).sort()).toEqual([
            "cart.shop",
            "payments.shop",
            "shop.shop",
          ]);
        },
        { timeout: 20_000, interval: 100 },
      );
      // And a deletion during a dropped watch withdraws the key.
      await cluster.dropOperatorConnections();
      const deleted = await cluster.kubectl(["delete", "si", "payments", "-n", "shop"]);
      expect(deleted.code).toBe(0);
      await vi.waitFor(
        async () => {
          expect((await registry())?.services.map((service) => service.id)).not.toContain("payments.shop");
        },
        { timeout: 20_000, interval: 100 },
      );
    });

    it("shards a registry larger than one ConfigMap, and every namespace's shards merge into it", async () => {
      // A second operator on its own control plane, with 3 KiB shards: a handful of identities fill
      // several ConfigMaps, as ~1,800 would fill several of the default 900 KiB.
      const sharded = await startCluster();
      const operator = await startTestOperator(
        new KubernetesStore({
          kubeConfig: sharded.operatorKubeConfig,
          logger: quiet,
          secretsNamespace: OPERATOR_NAMESPACE,
        }),
        sharded.caDirectory,
        { registryShardBytes: 3 * 1024 },
      );
      try {
        const names = Array.from({ length: 8 }, (_, index) => `svc-${index}`);
        for (const name of names) await applyWithKubectl(sharded, identity(name));
        await vi.waitFor(
          async () => {
            const texts = await registryTexts(sharded, "shop");
            expect(texts.length).toBeGreaterThan(1);
            const merged = mergeRegistryShards(texts.map(parseRegistry));
            expect(merged.services.map((service) => service.id).sort()).toEqual(
              names.map((name) => `${name}.shop`).sort(),
            );
          },
          { timeout: 30_000, interval: 200 },
        );
        const configMaps = await sharded.kubectl([
          "get",
          "configmaps",
          "-n",
          "shop",
          "-l",
          "custody.dev/registry-shard",
          "-o",
          "name",
        ]);
        expect(configMaps.stdout).toContain("configmap/custody-registry\n");
        expect(configMaps.stdout).toContain("configmap/custody-registry-1\n");
      } finally {
        await operator.close(0);
        await sharded.close();
      }
    }, 120_000);

    it("records Events for issuance", async () => {
      const events = await cluster.kubectl(["get", "events", "-n", "shop", "-o", "json"]);
      const items = (
        JSON.parse(events.stdout) as { items: { reason: string; involvedObject: { name: string } }[] }
      ).items;
      expect(
        items.some((event) => event.reason === "CertificateIssued" && event.involvedObject.name === "cart"),
      ).toBe(true);
    });
  });
});
