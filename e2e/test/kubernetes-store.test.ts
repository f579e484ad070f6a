/**
 * The operator's Kubernetes store (operator/src/store/kubernetes.ts) against the real control plane
 * (kube-apiserver, etcd, kube-controller-manager), as the chart's ServiceAccount: informer caches
 * and their change announcements, optimistic-concurrency writes written through to the cache,
 * owner-reference garbage collection (the real garbage collector), the status subresource, Events,
 * 410 Gone re-lists after an etcd compaction, an outage of the API server, and start() failing
 * clearly.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type CoreV1Api,
  CoreV1Api as CoreV1ApiClass,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
} from "@kubernetes/client-node";
import { type Logger, pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { KubernetesStore, type KubernetesStoreOptions } from "../../operator/src/store/kubernetes.js";
import { EventRecorder } from "../../operator/src/store/kubernetes-events.js";
import {
  IDENTITY,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  POLICY,
  type StoreChange,
  StoreConflictError,
  type StoredSecret,
} from "../../operator/src/store/store.js";
import {
  type Cluster,
  OPERATOR_NAMESPACE,
  OPERATOR_SERVICE_ACCOUNT,
  startCluster,
} from "../support/cluster.js";
import { ControlPlane, requireControlPlane } from "../support/control-plane.js";
import { freePort } from "../support/net.js";
import { requireTool } from "../support/tools.js";

const GROUP = "custody.dev";
const VERSION = "v1alpha1";
const MANAGED = { [MANAGED_BY_LABEL]: MANAGED_BY };
const WAIT = { timeout: 10_000, interval: 20 };
const GC_WAIT = { timeout: 45_000, interval: 200 };

interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly [field: string]: unknown;
}

const HAS_CLUSTER = requireTool("kubectl") && requireControlPlane();

/** The operator's credentials, pointed at another server (nothing listening, another control plane). */
function kubeConfigAt(server: string, like: KubeConfig): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: "elsewhere", server, skipTLSVerify: true }],
    users: [{ name: "operator", token: like.getCurrentUser()?.token ?? "" }],
    contexts: [{ name: "elsewhere", cluster: "elsewhere", user: "operator" }],
    currentContext: "elsewhere",
  });
  return kc;
}

function base64(text: string): string {
  return Buffer.from(text, "utf8").toString("base64");
}

function condition(status: "True" | "False", reason: string): Record<string, unknown> {
  return {
    type: "Ready",
    status,
    observedGeneration: 1,
    lastTransitionTime: "2026-01-01T00:00:00Z",
    reason,
    message: `test ${reason}`,
  };
}

describe.skipIf(!HAS_CLUSTER)("the Kubernetes store against a real control plane", () => {
  let directory: string;
  let cluster: Cluster;
  /** The operator's: the chart's ServiceAccount, through a proxy the test can cut. */
  let kc: KubeConfig;
  let core: CoreV1Api;
  let custom: CustomObjectsApi;
  let namespaces = 0;
  const stores: KubernetesStore[] = [];
  const cleanups: (() => Promise<void>)[] = [];

  function capturingLogger(): { logger: Logger; lines: LogLine[] } {
    const lines: LogLine[] = [];
    const logger = pino(
      { level: "debug" },
      { write: (line: string) => lines.push(JSON.parse(line) as LogLine) },
    );
    return { logger, lines };
  }

  /** A started store (closed after the test) and the changes it announced, as "Kind ns/name". */
  async function startedStore(
    options: Partial<KubernetesStoreOptions> = {},
  ): Promise<{ store: KubernetesStore; changes: string[]; lines: LogLine[] }> {
    const { logger, lines } = capturingLogger();
    const store = new KubernetesStore({ kubeConfig: kc, logger, ...options });
    stores.push(store);
    const changes: string[] = [];
    store.onChange((change: StoreChange) =>
      changes.push(`${change.kind} ${change.namespace}/${change.name}`),
    );
    await store.start();
    return { store, changes, lines };
  }

  async function namespace(prefix: string): Promise<string> {
    namespaces += 1;
    const name = `${prefix}-${namespaces}`;
    await core.createNamespace({ body: { metadata: { name } } });
    return name;
  }

  async function createIdentity(
    ns: string,
    name: string,
    spec: Record<string, unknown> = {},
  ): Promise<{ uid: string; resourceVersion: string }> {
    const created = (await custom.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: "serviceidentities",
      body: { apiVersion: `${GROUP}/${VERSION}`, kind: "ServiceIdentity", metadata: { name }, spec },
    })) as { metadata: { uid: string; resourceVersion: string } };
    return created.metadata;
  }

  async function createPolicy(ns: string, name: string, target: string): Promise<void> {
    await custom.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: "accesspolicies",
      body: { apiVersion: `${GROUP}/${VERSION}`, kind: "AccessPolicy", metadata: { name }, spec: { target } },
    });
  }

  async function deleteIdentity(ns: string, name: string): Promise<void> {
    await custom.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: "serviceidentities",
      name,
    });
  }

  async function createSecret(
    ns: string,
    name: string,
    data: Record<string, string>,
    labels: Record<string, string> = MANAGED,
  ): Promise<void> {
    const encoded = Object.fromEntries(Object.entries(data).map(([key, value]) => [key, base64(value)]));
    await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name, labels }, data: encoded } });
  }

  beforeAll(async () => {
    directory = await mkdtemp(join(tmpdir(), "custody-kubernetes-store-"));
    // Watches served from etcd, not the API server's watch cache: a compaction then reaches the
    // informers as 410 Gone.
    cluster = await startCluster({ apiserverFlags: ["--watch-cache=false"] });
    kc = cluster.operatorKubeConfig;
    // The store is generic over Secrets in any namespace; the chart lets the operator touch only
    // those of its own namespace (e2e/test/operator-kubernetes.test.ts runs under exactly that).
    // These tests exercise the store's Secret handling in namespaces of their own, so the
    // operator's ServiceAccount gets, here only, what that needs on top of the chart's RBAC.
    const grant = await cluster.kubectl(
      ["apply", "-f", "-"],
      JSON.stringify({
        apiVersion: "v1",
        kind: "List",
        items: [
          {
            apiVersion: "rbac.authorization.k8s.io/v1",
            kind: "ClusterRole",
            metadata: { name: "custody-store-test-secrets" },
            rules: [
              {
                apiGroups: [""],
                resources: ["secrets"],
                verbs: ["get", "list", "watch", "create", "patch", "delete"],
              },
            ],
          },
          {
            apiVersion: "rbac.authorization.k8s.io/v1",
            kind: "ClusterRoleBinding",
            metadata: { name: "custody-store-test-secrets" },
            roleRef: {
              apiGroup: "rbac.authorization.k8s.io",
              kind: "ClusterRole",
              name: "custody-store-test-secrets",
            },
            subjects: [
              { kind: "ServiceAccount", name: OPERATOR_SERVICE_ACCOUNT, namespace: OPERATOR_NAMESPACE },
            ],
          },
        ],
      }),
    );
    if (grant.code !== 0) throw new Error(`kubectl apply of the test's grant: ${grant.stderr}`);
    // The test's own reads and writes, as the admin.
    core = cluster.kubeConfig.makeApiClient(CoreV1ApiClass);
    custom = cluster.kubeConfig.makeApiClient(CustomObjectsApi);
  }, 120_000);

  afterEach(async () => {
    await Promise.all(stores.splice(0).map((store) => store.close()));
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  afterAll(async () => {
    await cluster?.close();
    if (directory !== undefined) await rm(directory, { recursive: true, force: true });
  });

  it("loads what exists on start and announces every change of what it caches", async () => {
    const ns = await namespace("sync");
    const a = await createIdentity(ns, "a", { environment: "dev" });
    await createPolicy(ns, "p", "a");
    await createSecret(ns, "s1", { "ca.crt": "one" });
    await core.createNamespacedConfigMap({
      namespace: ns,
      body: { metadata: { name: "c1", labels: MANAGED }, data: { "registry.json": "{}" } },
    });
    await createSecret(ns, "unlabelled", { k: "v" }, {});

    const { store, changes } = await startedStore();
    expect(store.resource(IDENTITY, { namespace: ns, name: "a" })).toMatchObject({
      kind: IDENTITY,
      namespace: ns,
      name: "a",
      uid: a.uid,
      generation: 1,
      resourceVersion: a.resourceVersion,
      object: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "ServiceIdentity",
        spec: expect.objectContaining({ environment: "dev" }),
      },
    });
    expect(store.resources(POLICY).filter((policy) => policy.namespace === ns)).toEqual([
      expect.objectContaining({ kind: POLICY, name: "p", generation: 1 }),
    ]);
    expect(store.secret({ namespace: ns, name: "s1" })).toMatchObject({
      data: { "ca.crt": "one" },
      labels: MANAGED,
      type: "Opaque",
    });
    expect(store.secret({ namespace: ns, name: "unlabelled" })).toBeUndefined();
    expect(store.configMap({ namespace: ns, name: "c1" })?.data).toEqual({ "registry.json": "{}" });
    expect(changes).toEqual(
      expect.arrayContaining([
        `ServiceIdentity ${ns}/a`,
        `AccessPolicy ${ns}/p`,
        `Secret ${ns}/s1`,
        `ConfigMap ${ns}/c1`,
      ]),
    );
    expect(changes).not.toContain(`Secret ${ns}/unlabelled`);

    changes.length = 0;
    await createIdentity(ns, "b");
    await custom.patchNamespacedCustomObject(
      {
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: "serviceidentities",
        name: "a",
        body: { spec: { environment: "prod" } },
      },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    await custom.deleteNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: "accesspolicies",
      name: "p",
    });
    await createSecret(ns, "unlabelled-2", { k: "v" }, {});
    await core.patchNamespacedSecret(
      { name: "s1", namespace: ns, body: { data: { "ca.crt": base64("two") } } },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    await core.deleteNamespacedConfigMap({ name: "c1", namespace: ns });
    // Secrets arrive in order on one watch: once the marker is here, the unlabelled one had its chance.
    await createSecret(ns, "marker", {});

    await vi.waitFor(
      () =>
        expect(changes).toEqual(
          expect.arrayContaining([
            `ServiceIdentity ${ns}/b`,
            `ServiceIdentity ${ns}/a`,
            `AccessPolicy ${ns}/p`,
            `Secret ${ns}/s1`,
            `ConfigMap ${ns}/c1`,
            `Secret ${ns}/marker`,
          ]),
        ),
      WAIT,
    );
    expect(changes).not.toContain(`Secret ${ns}/unlabelled-2`);
    expect(store.resource(IDENTITY, { namespace: ns, name: "a" })).toMatchObject({
      generation: 2,
      object: { spec: expect.objectContaining({ environment: "prod" }) },
    });
    expect(store.resource(POLICY, { namespace: ns, name: "p" })).toBeUndefined();
    expect(store.secret({ namespace: ns, name: "s1" })?.data).toEqual({ "ca.crt": "two" });
    expect(store.configMap({ namespace: ns, name: "c1" })).toBeUndefined();

    // A label removed is an object no longer managed: it leaves the cache.
    await core.patchNamespacedSecret(
      { name: "s1", namespace: ns, body: { metadata: { labels: { [MANAGED_BY_LABEL]: null } } } },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    await vi.waitFor(() => expect(store.secret({ namespace: ns, name: "s1" })).toBeUndefined(), WAIT);
  });

  it("creates, replaces and deletes Secrets with optimistic concurrency, reading its own writes", async () => {
    const ns = await namespace("secrets");
    const { store } = await startedStore();
    const key = { namespace: ns, name: "custody-identity-shop" };
    const wanted: StoredSecret = {
      ...key,
      type: "kubernetes.io/tls",
      labels: { "custody.dev/identity": "shop" },
      annotations: { "custody.dev/rotated-at": "2026-01-01T00:00:00Z" },
      data: { "tls.crt": "-----BEGIN CERTIFICATE-----\n", "tls.key": "key", "ca.crt": "Zürich ✓" },
    };

    const created = await store.writeSecret(wanted);
    expect(created).toMatchObject({
      ...wanted,
      labels: { "custody.dev/identity": "shop", ...MANAGED },
      resourceVersion: expect.stringMatching(/^[0-9]+$/),
    });
    expect(created.owner).toBeUndefined();
    // Written through: readable at once, before the watch event can have arrived.
    expect(store.secret(key)).toEqual(created);
    expect(await store.readSecret(key)).toEqual(created);
    const raw = await core.readNamespacedSecret(key);
    expect(raw.type).toBe("kubernetes.io/tls");
    expect(raw.data?.["ca.crt"]).toBe(base64("Zürich ✓"));
    expect(raw.metadata?.labels?.[MANAGED_BY_LABEL]).toBe(MANAGED_BY);

    const again = store.writeSecret(wanted);
    await expect(again).rejects.toBeInstanceOf(StoreConflictError);
    await expect(again).rejects.toMatchObject({ code: "store_conflict" });

    const replaced = await store.writeSecret({ ...created, data: { ...created.data, "tls.key": "next" } });
    expect(replaced.data["tls.key"]).toBe("next");
    expect(BigInt(replaced.resourceVersion ?? "0")).toBeGreaterThan(BigInt(created.resourceVersion ?? "0"));
    expect(store.secret(key)).toEqual(replaced);
    await expect(
      store.writeSecret({ ...created, data: { ...created.data, stale: "yes" } }),
    ).rejects.toBeInstanceOf(StoreConflictError);

    // The watch event for the write arrives later and must not take the cache back.
    await core.patchNamespacedSecret(
      { name: key.name, namespace: ns, body: { metadata: { annotations: { touched: "by-someone" } } } },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    await vi.waitFor(() => expect(store.secret(key)?.annotations.touched).toBe("by-someone"), WAIT);
    const latest = store.secret(key);
    await expect(store.writeSecret({ ...replaced, annotations: {} })).rejects.toBeInstanceOf(
      StoreConflictError,
    );

    await store.deleteSecret(key);
    expect(store.secret(key)).toBeUndefined();
    expect(await store.readSecret(key)).toBeUndefined();
    await store.deleteSecret(key);
    // Replacing what someone deleted meanwhile is a conflict too: read again (nothing) and create.
    await expect(store.writeSecret({ ...(latest as StoredSecret) })).rejects.toBeInstanceOf(
      StoreConflictError,
    );
  });

  it("writes only what is Custody's: labels, annotations, owners and data keys other tools add stay", async () => {
    const ns = await namespace("shared");
    const { store } = await startedStore();
    const key = { namespace: ns, name: "custody-identity-cart" };
    const created = await store.writeSecret({
      ...key,
      type: "Opaque",
      labels: { "custody.dev/identity": "cart" },
      annotations: { "custody.dev/profile": "a" },
      data: { "tls.crt": "one", "next.key": "rotating" },
    });
    // Another tool (a backup operator, a policy engine, kubectl) adds its own.
    const holder = await core.createNamespacedConfigMap({
      namespace: ns,
      body: { metadata: { name: "holder" } },
    });
    await core.patchNamespacedSecret(
      {
        name: key.name,
        namespace: ns,
        body: {
          metadata: {
            labels: { "backup.example/include": "true" },
            annotations: { "policy.example/checked": "yes" },
            ownerReferences: [
              { apiVersion: "v1", kind: "ConfigMap", name: "holder", uid: holder.metadata?.uid ?? "" },
            ],
          },
          data: { "extra.bin": Buffer.from([0xff, 0x00, 0xfe]).toString("base64") },
        },
      },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    await vi.waitFor(() => expect(store.secret(key)?.labels["backup.example/include"]).toBe("true"), WAIT);
    const current = store.secret(key) as StoredSecret;
    // What the controllers write: Custody's own labels, annotations and data, built afresh.
    await store.writeSecret({
      ...key,
      resourceVersion: current.resourceVersion,
      type: "Opaque",
      labels: { "custody.dev/identity": "cart" },
      annotations: { "custody.dev/profile": "b" },
      data: { "tls.crt": "two" },
    });
    const raw = await core.readNamespacedSecret(key);
    expect(raw.metadata?.labels).toMatchObject({
      "backup.example/include": "true",
      "custody.dev/identity": "cart",
    });
    expect(raw.metadata?.annotations).toMatchObject({
      "policy.example/checked": "yes",
      "custody.dev/profile": "b",
    });
    expect(raw.metadata?.ownerReferences?.map((owner) => owner.name)).toEqual(["holder"]);
    expect(raw.data?.["extra.bin"]).toBe(Buffer.from([0xff, 0x00, 0xfe]).toString("base64"));
    expect(raw.data?.["tls.crt"]).toBe(base64("two"));
    // A key Custody wrote and no longer writes is Custody's to remove.
    expect(raw.data?.["next.key"]).toBeUndefined();
    expect(raw.metadata?.managedFields?.map((entry) => entry.manager)).toContain("custody-operator");
    expect(created.resourceVersion).not.toBe(raw.metadata?.resourceVersion);
  });

  it("treats what is being deleted as gone: no writes to it, and it is created again only once it is gone", async () => {
    const ns = await namespace("deleting");
    const { store } = await startedStore();
    const hold = ["example.com/hold"];
    await custom.createNamespacedCustomObject({
      group: GROUP,
      version: VERSION,
      namespace: ns,
      plural: "serviceidentities",
      body: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "ServiceIdentity",
        metadata: { name: "held", finalizers: hold },
        spec: {},
      },
    });
    await core.createNamespacedSecret({
      namespace: ns,
      body: { metadata: { name: "held", labels: MANAGED, finalizers: hold }, data: { k: base64("v") } },
    });
    const identity = { namespace: ns, name: "held" };
    await vi.waitFor(() => {
      expect(store.resource(IDENTITY, identity)).toBeDefined();
      expect(store.secret(identity)).toBeDefined();
    }, WAIT);
    const stale = store.secret(identity) as StoredSecret;

    await deleteIdentity(ns, "held");
    await core.deleteNamespacedSecret({ name: "held", namespace: ns });
    // Both still exist, with a deletionTimestamp, until the finalizer goes: the cache drops them.
    await vi.waitFor(() => {
      expect(store.resource(IDENTITY, identity)).toBeUndefined();
      expect(store.secret(identity)).toBeUndefined();
    }, WAIT);
    expect(
      (await core.readNamespacedSecret({ name: "held", namespace: ns })).metadata?.deletionTimestamp,
    ).toBeDefined();
    // Neither updated nor created while it is being deleted.
    await expect(store.writeSecret({ ...stale, data: { k: "again" } })).rejects.toBeInstanceOf(
      StoreConflictError,
    );
    const fresh = { ...stale, resourceVersion: undefined, data: { k: "new" } } as StoredSecret;
    await expect(store.writeSecret(fresh)).rejects.toBeInstanceOf(StoreConflictError);

    const release = { metadata: { finalizers: null } };
    await core.patchNamespacedSecret(
      { name: "held", namespace: ns, body: release },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    await custom.patchNamespacedCustomObject(
      {
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural: "serviceidentities",
        name: "held",
        body: release,
      },
      setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
    );
    await vi.waitFor(async () => expect(await store.readSecret(identity)).toBeUndefined(), WAIT);
    expect((await store.writeSecret(fresh)).data).toEqual({ k: "new" });
  });

  it("refuses a Secret whose type or content the API server rejects as invalid", async () => {
    const ns = await namespace("invalid");
    const { store } = await startedStore();
    const created = await store.writeSecret({
      namespace: ns,
      name: "typed",
      type: "Opaque",
      labels: {},
      annotations: {},
      data: { a: "1" },
    });
    await expect(store.writeSecret({ ...created, type: "kubernetes.io/tls" })).rejects.toMatchObject({
      code: "store_invalid",
    });
  });

  it("leaves out Secret keys that are not UTF-8 text", async () => {
    const ns = await namespace("binary");
    const { store, lines } = await startedStore();
    await core.createNamespacedSecret({
      namespace: ns,
      body: {
        metadata: { name: "mixed", labels: MANAGED },
        data: { text: base64("fine"), binary: Buffer.from([0xff, 0xfe, 0x00, 0xc3]).toString("base64") },
      },
    });
    await vi.waitFor(
      () => expect(store.secret({ namespace: ns, name: "mixed" })?.data).toEqual({ text: "fine" }),
      WAIT,
    );
    expect(lines).toContainEqual(expect.objectContaining({ level: 40, keys: ["binary"] }));
  });

  it("sets the owner reference, so deleting the ServiceIdentity garbage-collects its Secret", async () => {
    const ns = await namespace("owned");
    const { store, changes } = await startedStore();
    const identity = await createIdentity(ns, "cart");
    const key = { namespace: ns, name: "custody-identity-cart" };
    const owner = { kind: IDENTITY, name: "cart", uid: identity.uid } as const;
    const written = await store.writeSecret({
      ...key,
      type: "Opaque",
      labels: {},
      annotations: {},
      data: { "ca.crt": "pem" },
      owner,
    });
    expect(written.owner).toEqual(owner);
    expect((await core.readNamespacedSecret(key)).metadata?.ownerReferences).toEqual([
      {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "ServiceIdentity",
        name: "cart",
        uid: identity.uid,
        controller: true,
        blockOwnerDeletion: true,
      },
    ]);
    await vi.waitFor(
      () => expect(store.resource(IDENTITY, { namespace: ns, name: "cart" })).toBeDefined(),
      WAIT,
    );

    changes.length = 0;
    await deleteIdentity(ns, "cart");
    // The real garbage collector watches a custom resource only once its discovery (every 30 s)
    // has seen the CRD: right after the CRDs are installed, the dependents wait for that.
    await vi.waitFor(async () => expect(await store.readSecret(key)).toBeUndefined(), GC_WAIT);
    await vi.waitFor(() => {
      expect(store.secret(key)).toBeUndefined();
      expect(store.resource(IDENTITY, { namespace: ns, name: "cart" })).toBeUndefined();
    }, WAIT);
    expect(changes).toEqual(
      expect.arrayContaining([`ServiceIdentity ${ns}/cart`, `Secret ${ns}/custody-identity-cart`]),
    );
  }, 60_000);

  it("writes ConfigMaps the same way", async () => {
    const ns = await namespace("configmaps");
    const { store } = await startedStore();
    const key = { namespace: ns, name: "custody-registry" };
    const created = await store.writeConfigMap({
      ...key,
      labels: { "custody.dev/shard": "0" },
      annotations: {},
      data: { "registry.json": '{"services":[]}' },
    });
    expect(created.labels).toEqual({ "custody.dev/shard": "0", ...MANAGED });
    expect(store.configMap(key)).toEqual(created);
    expect(await store.readConfigMap(key)).toEqual(created);
    await expect(store.writeConfigMap({ ...created, resourceVersion: undefined })).rejects.toBeInstanceOf(
      StoreConflictError,
    );
    const replaced = await store.writeConfigMap({ ...created, data: { "registry.json": "{}" } });
    await expect(store.writeConfigMap(created)).rejects.toBeInstanceOf(StoreConflictError);
    expect((await core.readNamespacedConfigMap(key)).data).toEqual({ "registry.json": "{}" });
    expect(store.configMaps().filter((configMap) => configMap.namespace === ns)).toEqual([replaced]);

    await store.deleteConfigMap(key);
    expect(store.configMap(key)).toBeUndefined();
    expect(await store.readConfigMap(key)).toBeUndefined();
    await store.deleteConfigMap(key);
  });

  it("replaces the status through the status subresource, quietly for an object that is gone", async () => {
    const ns = await namespace("status");
    const { store } = await startedStore();
    await createIdentity(ns, "pay");
    await createPolicy(ns, "pay", "pay");
    const key = { namespace: ns, name: "pay" };
    await vi.waitFor(() => expect(store.resource(POLICY, key)).toBeDefined(), WAIT);
    const read = async (plural: string): Promise<{ status?: unknown; metadata: { generation: number } }> =>
      (await custom.getNamespacedCustomObjectStatus({
        group: GROUP,
        version: VERSION,
        namespace: ns,
        plural,
        name: "pay",
      })) as {
        status?: unknown;
        metadata: { generation: number };
      };

    const first = { observedGeneration: 1, keyId: "kid-1", conditions: [condition("True", "Issued")] };
    await store.writeStatus(IDENTITY, key, first);
    expect((await read("serviceidentities")).status).toEqual(first);
    expect(store.resource(IDENTITY, key)?.object.status).toEqual(first);

    // Replaced whole: keyId, absent from the new status, is gone (a merge patch would keep it).
    const second = { observedGeneration: 1, conditions: [condition("False", "InvalidSpec")] };
    await store.writeStatus(IDENTITY, key, second);
    const after = await read("serviceidentities");
    expect(after.status).toEqual(second);
    expect(after.metadata.generation).toBe(1);
    expect(store.resource(IDENTITY, key)?.generation).toBe(1);

    const policyStatus = { observedGeneration: 1, conditions: [condition("True", "Accepted")] };
    await store.writeStatus(POLICY, key, policyStatus);
    expect((await read("accesspolicies")).status).toEqual(policyStatus);

    await store.writeStatus(IDENTITY, { namespace: ns, name: "gone" }, first);
    await store.writeStatus(POLICY, { namespace: "no-such-namespace", name: "gone" }, first);
  });

  it("misses nothing when a resumed watch gets 410 Gone and the informers re-list", async () => {
    const ns = await namespace("relist");
    const { store } = await startedStore();
    await createIdentity(ns, "first");
    await createSecret(ns, "kept", { v: "1" });
    await vi.waitFor(() => expect(store.secret({ namespace: ns, name: "kept" })).toBeDefined(), WAIT);

    await cluster.compact();
    await cluster.dropOperatorConnections();
    await createIdentity(ns, "second");
    await deleteIdentity(ns, "first");
    await core.deleteNamespacedSecret({ name: "kept", namespace: ns });
    await createSecret(ns, "new", { v: "2" });
    await vi.waitFor(() => {
      expect(store.resource(IDENTITY, { namespace: ns, name: "second" })).toBeDefined();
      expect(store.resource(IDENTITY, { namespace: ns, name: "first" })).toBeUndefined();
      expect(store.secret({ namespace: ns, name: "kept" })).toBeUndefined();
      expect(store.secret({ namespace: ns, name: "new" })?.data).toEqual({ v: "2" });
    }, WAIT);

    // Again, with writes elsewhere moving the revision on before the history is dropped.
    await core.createNamespacedConfigMap({ namespace: ns, body: { metadata: { name: "elsewhere" } } });
    await cluster.compact();
    await cluster.dropOperatorConnections();
    await createIdentity(ns, "third");
    await vi.waitFor(
      () => expect(store.resource(IDENTITY, { namespace: ns, name: "third" })).toBeDefined(),
      WAIT,
    );
  });

  it("notices a half-open watch (no FIN, no RST, nothing more) and watches again, missing nothing", async () => {
    const ns = await namespace("half-open");
    const { logger, lines } = capturingLogger();
    // A short idle bound: the real default (150 s) is above the API server's bookmark interval.
    const store = new KubernetesStore({
      kubeConfig: kc,
      logger,
      watchBounds: { timeoutSeconds: 60, idleMs: 3_000 },
    });
    stores.push(store);
    await store.start();
    await createSecret(ns, "before", { v: "1" });
    await vi.waitFor(() => expect(store.secret({ namespace: ns, name: "before" })).toBeDefined(), WAIT);

    cluster.operatorProxy.strand();
    // Made while the operator's watches hang on dead connections: only a new watch can see it.
    await createSecret(ns, "during", { v: "2" });
    await createIdentity(ns, "during");
    await vi.waitFor(() => {
      expect(store.secret({ namespace: ns, name: "during" })?.data).toEqual({ v: "2" });
      expect(store.resource(IDENTITY, { namespace: ns, name: "during" })).toBeDefined();
    }, WAIT);
    expect(lines.some((line) => line.msg?.includes("half-open"))).toBe(true);
    // Resumed, not re-listed from scratch into a failure: no informer reported an error.
    expect(lines.filter((line) => line.msg === "informer failed; restarting it")).toEqual([]);
  });

  it("rides out an API server outage and re-lists what changed meanwhile", async () => {
    const ns = await namespace("outage");
    const proxy = cluster.operatorProxy;
    cleanups.push(() => proxy.restore());
    const { logger, lines } = capturingLogger();
    const store = new KubernetesStore({
      kubeConfig: kc,
      logger,
      informerBackoff: { initialMs: 50, maxMs: 400 },
      requestTimeoutMs: 2_000,
    });
    stores.push(store);
    const changes: string[] = [];
    store.onChange((change) => changes.push(`${change.kind} ${change.namespace}/${change.name}`));
    await createIdentity(ns, "before");
    await createSecret(ns, "doomed", {});
    await store.start();
    expect(store.resource(IDENTITY, { namespace: ns, name: "before" })).toBeDefined();

    await proxy.cut();
    await expect(
      store.writeSecret({ namespace: ns, name: "x", type: "Opaque", labels: {}, annotations: {}, data: {} }),
    ).rejects.toMatchObject({ code: "store_unavailable" });
    await createIdentity(ns, "during");
    await deleteIdentity(ns, "before");
    await core.deleteNamespacedSecret({ name: "doomed", namespace: ns });
    await cluster.compact();
    await vi.waitFor(
      () => expect(lines).toContainEqual(expect.objectContaining({ msg: "informer failed; restarting it" })),
      WAIT,
    );

    // First the cut watch (premature close), then the restarts that find nobody listening.
    await vi.waitFor(
      () =>
        expect(store.health().some((informer) => informer.lastError?.includes("ECONNREFUSED"))).toBe(true),
      WAIT,
    );

    changes.length = 0;
    await proxy.restore();
    await vi.waitFor(() => {
      expect(store.resource(IDENTITY, { namespace: ns, name: "during" })).toBeDefined();
      expect(store.resource(IDENTITY, { namespace: ns, name: "before" })).toBeUndefined();
      expect(store.secret({ namespace: ns, name: "doomed" })).toBeUndefined();
    }, WAIT);
    expect(changes).toEqual(
      expect.arrayContaining([
        `ServiceIdentity ${ns}/during`,
        `ServiceIdentity ${ns}/before`,
        `Secret ${ns}/doomed`,
      ]),
    );
    await vi.waitFor(
      () => expect(store.health().filter((informer) => informer.lastError !== undefined)).toEqual([]),
      WAIT,
    );
    expect(store.health().every((informer) => informer.synced)).toBe(true);
    // And the watches are live again.
    await createIdentity(ns, "after");
    await vi.waitFor(
      () => expect(store.resource(IDENTITY, { namespace: ns, name: "after" })).toBeDefined(),
      WAIT,
    );
  });

  it("records Events on the object, once per repeat window, with messages cut to 1 KiB", async () => {
    const ns = await namespace("events");
    const { store } = await startedStore({ component: "custody-test" });
    const identity = await createIdentity(ns, "shop");
    const key = { namespace: ns, name: "shop" };
    const eventsOf = async (): Promise<{ reason?: string; message?: string }[]> =>
      (await core.listNamespacedEvent({ namespace: ns, fieldSelector: "involvedObject.name=shop" })).items;

    store.recordEvent(IDENTITY, key, identity.uid, {
      type: "Normal",
      reason: "CertificateIssued",
      message: "certificate 01 issued",
    });
    await vi.waitFor(async () => expect(await eventsOf()).toHaveLength(1), WAIT);
    const [event] = (await core.listNamespacedEvent({ namespace: ns })).items;
    expect(event).toMatchObject({
      involvedObject: {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: "ServiceIdentity",
        name: "shop",
        namespace: ns,
        uid: identity.uid,
      },
      reason: "CertificateIssued",
      message: "certificate 01 issued",
      type: "Normal",
      source: { component: "custody-test" },
      count: 1,
    });
    expect(event?.metadata?.name).toMatch(/^shop\.[0-9a-f]{16}$/);
    expect(event?.firstTimestamp).toBeDefined();

    store.recordEvent(IDENTITY, key, identity.uid, {
      type: "Normal",
      reason: "CertificateIssued",
      message: "certificate 01 issued",
    });
    store.recordEvent(IDENTITY, key, identity.uid, {
      type: "Warning",
      reason: "Long",
      message: "é".repeat(3_000),
    });
    await vi.waitFor(async () => expect(await eventsOf()).toHaveLength(2), WAIT);
    const events = await eventsOf();
    expect(events.filter((recorded) => recorded.reason === "CertificateIssued")).toHaveLength(1);
    const long = events.find((recorded) => recorded.reason === "Long")?.message ?? "";
    expect(Buffer.byteLength(long, "utf8")).toBeLessThanOrEqual(1024);
    expect(long.endsWith("…")).toBe(true);

    // Best effort: an Event for a namespace that does not exist is logged, not thrown.
    expect(() =>
      store.recordEvent(IDENTITY, { namespace: "missing", name: "x" }, "uid", {
        type: "Warning",
        reason: "Nowhere",
        message: "m",
      }),
    ).not.toThrow();
  });

  it("watches only the namespaces it is given", async () => {
    const inside = await namespace("inside");
    const outside = await namespace("outside");
    const { store } = await startedStore({ namespaces: [inside] });
    await createIdentity(inside, "seen");
    await createIdentity(outside, "unseen");
    await createSecret(outside, "unseen", {});
    await createSecret(inside, "seen", {});
    await vi.waitFor(() => expect(store.secret({ namespace: inside, name: "seen" })).toBeDefined(), WAIT);
    await vi.waitFor(
      () => expect(store.resource(IDENTITY, { namespace: inside, name: "seen" })).toBeDefined(),
      WAIT,
    );
    expect(store.resource(IDENTITY, { namespace: outside, name: "unseen" })).toBeUndefined();
    expect(store.secret({ namespace: outside, name: "unseen" })).toBeUndefined();
    const written = await store.writeConfigMap({
      namespace: outside,
      name: "c",
      labels: {},
      annotations: {},
      data: {},
    });
    expect(written.resourceVersion).toBeDefined();
    expect(store.configMap({ namespace: outside, name: "c" })).toBeUndefined();
  });

  it("keeps announcing changes when a listener throws, and logs the throw", async () => {
    const ns = await namespace("listeners");
    const { store, changes, lines } = await startedStore();
    store.onChange(() => {
      throw new Error("listener bug");
    });
    const later: string[] = [];
    store.onChange((change) => later.push(change.name));
    await createIdentity(ns, "one");
    await vi.waitFor(() => expect(later).toContain("one"), WAIT);
    expect(changes).toContain(`ServiceIdentity ${ns}/one`);
    expect(lines).toContainEqual(
      expect.objectContaining({ level: 50, msg: "a store change listener threw" }),
    );
  });

  it("fails start() with store_unavailable when the API server cannot be reached", async () => {
    const port = await freePort();
    const { logger } = capturingLogger();
    const store = new KubernetesStore({
      kubeConfig: kubeConfigAt(`https://127.0.0.1:${port}`, kc),
      logger,
      startTimeoutMs: 800,
      informerBackoff: { initialMs: 50, maxMs: 100 },
    });
    stores.push(store);
    const started = store.start();
    await expect(started).rejects.toMatchObject({ code: "store_unavailable" });
    await expect(started).rejects.toThrow(/ECONNREFUSED.*Check that the API server is reachable/s);
  });

  it("fails start() naming the missing CRDs when the API server does not serve them", async () => {
    // Another control plane, where nobody installed the CRDs (its admin, to see only that).
    const bare = await ControlPlane.start({ log: () => undefined });
    cleanups.push(() => bare.stop());
    const admin = new KubeConfig();
    admin.loadFromFile(bare.kubeconfigPath);
    const { logger } = capturingLogger();
    const store = new KubernetesStore({
      kubeConfig: admin,
      logger,
      startTimeoutMs: 800,
      informerBackoff: { initialMs: 50, maxMs: 100 },
    });
    stores.push(store);
    const started = store.start();
    await expect(started).rejects.toMatchObject({ code: "store_unavailable" });
    await expect(started).rejects.toThrow(/serviceidentities in all namespaces: HTTP 404.*CRDs installed/);
    // Secrets and ConfigMaps were served: only the custom resources are named.
    await expect(started).rejects.not.toThrow(/managed Secrets in all namespaces:/);
  });
});

describe("the Event recorder's bound", () => {
  it("drops Events beyond the in-flight limit instead of queueing them", async () => {
    const pending: (() => void)[] = [];
    const core = {
      createNamespacedEvent: () =>
        new Promise<void>((resolve) => {
          pending.push(resolve);
        }),
    } as unknown as CoreV1Api;
    const cancel = new AbortController();
    const recorder = new EventRecorder({
      core,
      component: "test",
      logger: pino({ level: "silent" }),
      requestTimeoutMs: 5_000,
      cancel: cancel.signal,
      maxInFlight: 3,
    });
    const subject = { kind: IDENTITY, namespace: "ns", name: "a", uid: "u" } as const;
    for (let index = 0; index < 5; index++) {
      recorder.record(subject, { type: "Normal", reason: "R", message: `m${index}` });
    }
    recorder.record(subject, { type: "Normal", reason: "R", message: "m0" });
    expect(pending).toHaveLength(3);
    expect(recorder.dropped).toBe(2);
    expect(recorder.suppressed).toBe(1);
    for (const resolve of pending) resolve();
    await recorder.drain();
    recorder.record(subject, { type: "Normal", reason: "R", message: "m9" });
    expect(pending).toHaveLength(4);
    pending[3]?.();
    await recorder.drain();
  });
});
