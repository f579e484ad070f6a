/**
 * The test Kubernetes API server (e2e/apiserver) driven by the real clients the operator and its
 * users rely on: kubectl v1.32 (apply, get, create, delete, with its discovery, OpenAPI and
 * strategic-merge paths) and @kubernetes/client-node 1.4 (typed APIs, patch content types,
 * informers through 410 Gone re-lists, raw watches with bookmarks), plus HTTPS admission webhooks.
 */
import { once } from "node:events";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  AdmissionregistrationV1Api,
  ApiException,
  ApiextensionsV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  type KubernetesObject,
  loadYaml,
  makeInformer,
  PatchStrategy,
  setHeaderOptions,
  type V1ConfigMap,
  type V1CustomResourceDefinition,
  Watch,
} from "@kubernetes/client-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { parse as parseYaml } from "yaml";
import { createCertificateAuthority, issueCertificate, privateKeyToPem } from "../../pki/src/index.js";
import { type RunningApiServer, startApiServer } from "../apiserver/server.js";
import { type KubectlResult, kubectlFor } from "../support/kubectl.js";
import { freePort } from "../support/net.js";
import { requireTool } from "../support/tools.js";

const HAS_KUBECTL = requireTool("kubectl");
const GROUP = "custody.dev";
const VERSION = "v1alpha1";
const SHOP = "shop";

interface Review {
  readonly operation: string;
  readonly kind: string;
  readonly namespace: string;
  readonly labels: Record<string, string>;
}

interface Webhook {
  readonly port: number;
  readonly caBundle: string;
  readonly reviews: Review[];
  close(): Promise<void>;
}

/**
 * An HTTPS admission webhook like the operator's: /mutate injects a sidecar container into pods
 * labelled custody.dev/inject=true; /validate refuses pods labelled custody.dev/deny=true and
 * AccessPolicies whose target is "forbidden".
 */
async function startWebhook(): Promise<Webhook> {
  const ca = await createCertificateAuthority();
  const issued = await issueCertificate(ca, {
    id: "custody-webhook.custody-system",
    dnsNames: ["custody-webhook.custody-system.svc"],
    ipAddresses: ["127.0.0.1"],
  });
  const reviews: Review[] = [];
  const server: HttpsServer = createHttpsServer(
    { cert: issued.certificate.pem, key: privateKeyToPem(issued.privateKey) },
    (request, response) => {
      const chunks: Buffer[] = [];
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.on("end", () => {
        const review = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
          request: {
            uid: string;
            operation: string;
            namespace?: string;
            kind: { kind: string };
            object: { metadata?: { labels?: Record<string, string> }; spec?: { target?: string } };
          };
        };
        const { uid, operation, kind, object } = review.request;
        const labels = object.metadata?.labels ?? {};
        reviews.push({ operation, kind: kind.kind, namespace: review.request.namespace ?? "", labels });
        const answer: Record<string, unknown> = { uid, allowed: true };
        const path = new URL(request.url ?? "/", "https://localhost").pathname;
        if (path === "/mutate" && labels["custody.dev/inject"] === "true") {
          const patch = [
            {
              op: "add",
              path: "/spec/containers/-",
              value: { name: "custody-sidecar", image: "custody/sidecar:test" },
            },
            { op: "add", path: "/metadata/annotations", value: { "custody.dev/injected": "true" } },
          ];
          answer.patchType = "JSONPatch";
          answer.patch = Buffer.from(JSON.stringify(patch)).toString("base64");
        }
        if (
          path === "/validate" &&
          (labels["custody.dev/deny"] === "true" || object.spec?.target === "forbidden")
        ) {
          answer.allowed = false;
          answer.status = {
            code: 403,
            reason: "Forbidden",
            message: "Custody refuses this object (test policy)",
          };
        }
        response.writeHead(200, { "Content-Type": "application/json" });
        response.end(
          JSON.stringify({ apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview", response: answer }),
        );
      });
    },
  );
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as AddressInfo).port,
    caBundle: Buffer.from(ca.certificate.pem).toString("base64"),
    reviews,
    close: async () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

function isConflict(error: unknown, code: number): boolean {
  return error instanceof ApiException && error.code === code;
}

async function statusCode(promise: Promise<unknown>): Promise<number> {
  try {
    await promise;
    return 200;
  } catch (error) {
    if (error instanceof ApiException) return error.code;
    throw error;
  }
}

describe("the test Kubernetes API server", () => {
  let directory: string;
  let server: RunningApiServer;
  let kubeconfigPath: string;
  let webhook: Webhook;
  let kc: KubeConfig;
  let core: CoreV1Api;
  let custom: CustomObjectsApi;

  const kubectl = (args: readonly string[], input?: string): Promise<KubectlResult> =>
    kubectlFor(kubeconfigPath, join(directory, "kubectl-cache"))(args, input);

  async function ensureCrds(): Promise<void> {
    const extensions = kc.makeApiClient(ApiextensionsV1Api);
    for (const file of ["custody.dev_serviceidentities.yaml", "custody.dev_accesspolicies.yaml"]) {
      // loadYaml maps `default` and `x-kubernetes-*` onto client-node's model fields; a plain YAML
      // parse would have the typed API drop them silently.
      const crd = loadYaml<V1CustomResourceDefinition>(await readFile(join("crds", file), "utf8"));
      try {
        await extensions.createCustomResourceDefinition({ body: crd });
      } catch (error) {
        if (!isConflict(error, 409)) throw error;
      }
    }
  }

  function serviceIdentity(
    name: string,
    spec: Record<string, unknown> = {},
  ): KubernetesObject & { spec: unknown } {
    return {
      apiVersion: `${GROUP}/${VERSION}`,
      kind: "ServiceIdentity",
      metadata: { name, namespace: SHOP },
      spec,
    };
  }

  beforeAll(async () => {
    directory = await mkdtemp(join(tmpdir(), "custody-apiserver-"));
    server = await startApiServer({
      bookmarkIntervalMs: 200,
      logger: pino({ level: process.env.CUSTODY_E2E_LOGS === "1" ? "debug" : "silent" }),
    });
    kubeconfigPath = join(directory, "kubeconfig");
    await server.kubeconfig(kubeconfigPath);
    webhook = await startWebhook();
    kc = new KubeConfig();
    kc.loadFromFile(kubeconfigPath);
    core = kc.makeApiClient(CoreV1Api);
    custom = kc.makeApiClient(CustomObjectsApi);
    await core.createNamespace({ body: { metadata: { name: SHOP, labels: { team: "shop" } } } });
  });

  afterAll(async () => {
    await webhook?.close();
    await server?.close();
    if (directory !== undefined) await rm(directory, { recursive: true, force: true });
  });

  describe.skipIf(!HAS_KUBECTL)("with kubectl", () => {
    it("applies the CRDs and serves their resources with short names and printer columns", async () => {
      const crds = await kubectl(["apply", "--validate=false", "-f", "crds/"]);
      expect(crds.stderr).toBe("");
      expect(crds.stdout).toContain(
        "customresourcedefinition.apiextensions.k8s.io/serviceidentities.custody.dev created",
      );
      expect(crds.stdout).toContain(
        "customresourcedefinition.apiextensions.k8s.io/accesspolicies.custody.dev created",
      );

      const examples = await kubectl(["apply", "-f", "crds/examples/"]);
      expect(examples.stderr).toBe("");
      for (const created of [
        "serviceidentity.custody.dev/shop created",
        "serviceidentity.custody.dev/partner-settlement created",
        "accesspolicy.custody.dev/payments created",
        "accesspolicy.custody.dev/cart created",
      ]) {
        expect(examples.stdout).toContain(created);
      }

      const listed = await kubectl(["get", "si,ap", "-n", SHOP]);
      expect(listed.code).toBe(0);
      expect(listed.stdout).toMatch(/NAME\s+ENVIRONMENT\s+READY\s+EXPIRES\s+AGE/);
      expect(listed.stdout).toMatch(/serviceidentity\.custody\.dev\/payments\s+prod/);
      expect(listed.stdout).toMatch(/NAME\s+TARGET\s+MODE\s+READY\s+AGE/);
      expect(listed.stdout).toMatch(/accesspolicy\.custody\.dev\/cart\s+cart\.shop\s+audit/);
    });

    it("shows the status the operator writes through the /status subresource", async () => {
      const notAfter = new Date(Date.now() + 24 * 3600_000).toISOString().replace(/\.[0-9]+Z$/, "Z");
      await custom.patchNamespacedCustomObjectStatus(
        {
          group: GROUP,
          version: VERSION,
          namespace: SHOP,
          plural: "serviceidentities",
          name: "shop",
          body: {
            status: {
              observedGeneration: 1,
              conditions: [
                {
                  type: "Ready",
                  status: "True",
                  reason: "Issued",
                  message: "certificate issued",
                  lastTransitionTime: "2025-01-01T00:00:00Z",
                },
              ],
              certificate: {
                serialNumber: "0a1b",
                notBefore: "2025-01-01T00:00:00Z",
                notAfter,
                fingerprintSHA256: "a".repeat(64),
              },
            },
          },
        },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
      );
      const yaml = await kubectl(["get", "si", "shop", "-n", SHOP, "-o", "yaml"]);
      const object = parseYaml(yaml.stdout) as { status: { conditions: { type: string; status: string }[] } };
      expect(object.status.conditions).toEqual([expect.objectContaining({ type: "Ready", status: "True" })]);

      // Like the real server, a `date` column is an age: a future notAfter prints as <invalid>.
      const table = await kubectl(["get", "si", "shop", "-n", SHOP]);
      expect(table.stdout).toMatch(/shop\s+prod\s+True\s+<invalid>\s+[0-9]+s/);
    });

    it("patches on a second apply and bumps the generation only for spec changes", async () => {
      const original = await readFile("crds/examples/shop-identities.yaml", "utf8");
      const changed = await kubectl(["apply", "-f", "-"], original.replace("tokenTTL: 15m", "tokenTTL: 20m"));
      expect(changed.stdout).toContain("serviceidentity.custody.dev/shop configured");
      expect(changed.stdout).toContain("serviceidentity.custody.dev/cart unchanged");
      const shop = (await custom.getNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: SHOP,
        plural: "serviceidentities",
        name: "shop",
      })) as { metadata: { generation: number }; spec: { tokenTTL: string }; status: unknown };
      expect(shop.metadata.generation).toBe(2);
      expect(shop.spec.tokenTTL).toBe("20m");
      expect(shop.status).toBeDefined();
    });

    it("applies a ConfigMap twice through strategic merge patch (three-way: removed keys go)", async () => {
      const manifest = (data: string): string =>
        `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: ${SHOP}\n  labels: {app: demo}\ndata:\n${data}`;
      expect((await kubectl(["apply", "-f", "-"], manifest('  a: "1"\n  b: "2"\n'))).stdout).toContain(
        "configmap/settings created",
      );
      const second = await kubectl(["apply", "-f", "-"], manifest('  a: "10"\n  c: "3"\n'));
      expect(second.stderr).toBe("");
      expect(second.stdout).toContain("configmap/settings configured");
      const configMap = await core.readNamespacedConfigMap({ name: "settings", namespace: SHOP });
      expect(configMap.data).toEqual({ a: "10", c: "3" });
      expect((await kubectl(["apply", "-f", "-"], manifest('  a: "10"\n  c: "3"\n'))).stdout).toContain(
        "configmap/settings unchanged",
      );
    });

    it("applies a Pod twice: containers merge by name, server defaults survive", async () => {
      const pod = (image: string, env: string): string => `apiVersion: v1
kind: Pod
metadata: {name: web, namespace: ${SHOP}}
spec:
  containers:
    - name: app
      image: ${image}
      ports: [{containerPort: 8080}]
      env: [{name: MODE, value: "${env}"}]
    - {name: helper, image: busybox:1}
`;
      expect((await kubectl(["apply", "-f", "-"], pod("app:1", "a"))).stdout).toContain("pod/web created");
      const second = await kubectl(["apply", "-f", "-"], pod("app:2", "b"));
      expect(second.stderr).toBe("");
      expect(second.stdout).toContain("pod/web configured");
      const web = await core.readNamespacedPod({ name: "web", namespace: SHOP });
      expect(web.spec?.containers.map((container) => [container.name, container.image])).toEqual([
        ["app", "app:2"],
        ["helper", "busybox:1"],
      ]);
      expect(web.spec?.containers[0]?.env).toEqual([{ name: "MODE", value: "b" }]);
      expect(web.spec?.containers[0]?.ports).toEqual([{ containerPort: 8080, protocol: "TCP" }]);
      expect(web.spec?.containers[0]?.terminationMessagePath).toBe("/dev/termination-log");
      expect((await kubectl(["delete", "pod", "web", "-n", SHOP])).stdout).toContain('pod "web" deleted');
    });

    it("creates a pod through the mutating webhook and reports a validating webhook's denial", async () => {
      const configurations = `apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: custody-injector
webhooks:
  - name: inject.custody.dev
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Fail
    clientConfig:
      service: {namespace: custody-system, name: custody-webhook, port: ${webhook.port}, path: /mutate}
      caBundle: ${webhook.caBundle}
    rules:
      - {operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}
    namespaceSelector:
      matchExpressions: [{key: team, operator: In, values: [shop]}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: custody-validator
webhooks:
  - name: validate.custody.dev
    admissionReviewVersions: [v1]
    sideEffects: None
    clientConfig:
      url: https://127.0.0.1:${webhook.port}/validate
      caBundle: ${webhook.caBundle}
    rules:
      - {operations: [CREATE, UPDATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}
      - {operations: [CREATE, UPDATE], apiGroups: [custody.dev], apiVersions: ["*"], resources: [accesspolicies]}
`;
      const applied = await kubectl(["apply", "-f", "-"], configurations);
      expect(applied.stderr).toBe("");
      const pod = (labels: string): string =>
        `apiVersion: v1\nkind: Pod\nmetadata:\n  generateName: cart-\n  namespace: ${SHOP}\n  labels: {${labels}}\nspec:\n  containers:\n    - {name: app, image: cart:1.0}\n`;
      const podFile = join(directory, "pod.yaml");
      await writeFile(podFile, pod('"custody.dev/inject": "true"'));
      const created = await kubectl(["create", "-f", podFile, "-o", "json"]);
      expect(created.stderr).toBe("");
      const injected = JSON.parse(created.stdout) as {
        metadata: { name: string; annotations: Record<string, string> };
        spec: { containers: { name: string }[]; serviceAccountName: string };
      };
      expect(injected.spec.containers.map((container) => container.name)).toEqual(["app", "custody-sidecar"]);
      expect(injected.metadata.annotations["custody.dev/injected"]).toBe("true");
      expect(injected.spec.serviceAccountName).toBe("default");
      expect(webhook.reviews).toContainEqual(
        expect.objectContaining({ operation: "CREATE", kind: "Pod", namespace: SHOP }),
      );

      await writeFile(podFile, pod('"custody.dev/deny": "true"'));
      const denied = await kubectl(["create", "-f", podFile]);
      expect(denied.code).not.toBe(0);
      expect(denied.stderr).toContain(
        'admission webhook "validate.custody.dev" denied the request: Custody refuses this object (test policy)',
      );

      const policy = await kubectl(
        ["apply", "-f", "-"],
        `apiVersion: custody.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: refused, namespace: ${SHOP}}\nspec: {target: forbidden}\n`,
      );
      expect(policy.stderr).toContain('admission webhook "validate.custody.dev" denied the request');
    });

    it("refuses an invalid ServiceIdentity with the field in the message", async () => {
      const result = await kubectl(
        ["apply", "-f", "-"],
        `apiVersion: custody.dev/v1alpha1\nkind: ServiceIdentity\nmetadata: {name: broken, namespace: ${SHOP}}\nspec:\n  environment: Prod!\n  certificate: {keyAlgorithm: DSA}\n`,
      );
      expect(result.code).not.toBe(0);
      expect(result.stderr).toContain('The ServiceIdentity "broken" is invalid');
      expect(result.stderr).toContain('spec.environment: Invalid value: "Prod!"');
      expect(result.stderr).toContain('spec.certificate.keyAlgorithm: Unsupported value: "DSA"');
      const unknown = await kubectl(
        ["apply", "-f", "-"],
        `apiVersion: custody.dev/v1alpha1\nkind: ServiceIdentity\nmetadata: {name: broken, namespace: ${SHOP}}\nspec: {colour: blue}\n`,
      );
      expect(unknown.stderr).toContain('strict decoding error: unknown field "spec.colour"');
    });

    it("deletes a custom resource and a namespaced built-in, and creates namespaces imperatively", async () => {
      expect((await kubectl(["delete", "si", "cart", "-n", SHOP])).stdout).toContain(
        'serviceidentity.custody.dev "cart" deleted',
      );
      expect((await kubectl(["delete", "configmap", "settings", "-n", SHOP])).stdout).toContain(
        'configmap "settings" deleted',
      );
      const left = await kubectl(["get", "si", "-n", SHOP, "-o", "name"]);
      expect(left.stdout).not.toContain("serviceidentity.custody.dev/cart\n");
      expect(await statusCode(core.readNamespacedConfigMap({ name: "settings", namespace: SHOP }))).toBe(404);

      // kubectl's generators POST protobuf.
      expect((await kubectl(["create", "namespace", "scratch"])).stdout).toContain(
        "namespace/scratch created",
      );
      expect(
        (await kubectl(["create", "secret", "generic", "token", "-n", "scratch", "--from-literal=k=v"]))
          .stdout,
      ).toContain("secret/token created");
      expect((await kubectl(["delete", "namespace", "scratch"])).stdout).toContain(
        'namespace "scratch" deleted',
      );
      expect(await statusCode(core.readNamespacedSecret({ name: "token", namespace: "scratch" }))).toBe(404);
    });
  });

  describe("with @kubernetes/client-node", () => {
    beforeAll(ensureCrds);

    it("creates, reads, updates and refuses a stale resourceVersion with 409", async () => {
      const created = await core.createNamespacedSecret({
        namespace: SHOP,
        body: { metadata: { name: "crud", labels: { suite: "crud" } }, stringData: { password: "hunter2" } },
      });
      expect(created.metadata?.uid).toMatch(/^[0-9a-f-]{36}$/);
      expect(created.data).toEqual({ password: Buffer.from("hunter2").toString("base64") });
      expect(
        await statusCode(
          core.createNamespacedSecret({ namespace: SHOP, body: { metadata: { name: "crud" } } }),
        ),
      ).toBe(409);

      const updated = await core.replaceNamespacedSecret({
        name: "crud",
        namespace: SHOP,
        body: { ...created, data: { password: Buffer.from("changed").toString("base64") } },
      });
      expect(Number(updated.metadata?.resourceVersion)).toBeGreaterThan(
        Number(created.metadata?.resourceVersion),
      );
      const stale = core.replaceNamespacedSecret({ name: "crud", namespace: SHOP, body: created });
      await expect(stale).rejects.toSatisfy((error: unknown) => isConflict(error, 409));
      try {
        await core.replaceNamespacedSecret({ name: "crud", namespace: SHOP, body: created });
      } catch (error) {
        const status = JSON.parse(String((error as ApiException<string>).body)) as {
          reason: string;
          code: number;
        };
        expect(status).toMatchObject({ reason: "Conflict", code: 409 });
      }
      expect(await statusCode(core.readNamespacedSecret({ name: "crud", namespace: "missing" }))).toBe(404);
      expect(
        await statusCode(
          core.createNamespacedConfigMap({ namespace: "missing", body: { metadata: { name: "x" } } }),
        ),
      ).toBe(404);

      const leases = kc.makeApiClient(CoordinationV1Api);
      const lease = await leases.createNamespacedLease({
        namespace: SHOP,
        body: {
          metadata: { name: "custody-operator" },
          spec: { holderIdentity: "pod-a", leaseDurationSeconds: 15 },
        },
      });
      expect(lease.spec?.holderIdentity).toBe("pod-a");
    });

    it("keeps spec and status apart with the status subresource", async () => {
      const base = { group: GROUP, version: VERSION, namespace: SHOP, plural: "serviceidentities" };
      const created = (await custom.createNamespacedCustomObject({
        ...base,
        body: { ...serviceIdentity("status-split", { environment: "dev" }), status: { keyId: "ignored" } },
      })) as {
        metadata: { generation: number; resourceVersion: string };
        spec: Record<string, unknown>;
        status?: unknown;
      };
      expect(created.status).toBeUndefined();
      expect(created.metadata.generation).toBe(1);
      expect(created.spec).toMatchObject({
        environment: "dev",
        tokenTTL: "15m",
        certificate: { keyAlgorithm: "ECDSA-P256" },
      });

      const mainUpdate = (await custom.replaceNamespacedCustomObject({
        ...base,
        name: "status-split",
        body: {
          ...created,
          spec: { ...created.spec, environment: "staging" },
          status: { keyId: "from-main" },
        },
      })) as typeof created;
      expect(mainUpdate.spec.environment).toBe("staging");
      expect(mainUpdate.status).toBeUndefined();
      expect(mainUpdate.metadata.generation).toBe(2);

      const statusUpdate = (await custom.replaceNamespacedCustomObjectStatus({
        ...base,
        name: "status-split",
        body: {
          ...mainUpdate,
          spec: { ...mainUpdate.spec, environment: "prod" },
          status: { keyId: "from-status" },
        },
      })) as typeof created;
      expect(statusUpdate.spec.environment).toBe("staging");
      expect(statusUpdate.status).toEqual({ keyId: "from-status" });
      expect(statusUpdate.metadata.generation).toBe(2);

      const invalidStatus = custom.patchNamespacedCustomObjectStatus(
        { ...base, name: "status-split", body: { status: { keyId: "not valid!" } } },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
      );
      expect(await statusCode(invalidStatus)).toBe(422);
    });

    it("applies merge patches and JSON patches (with test), and refuses unknown patch types", async () => {
      await core.createNamespacedConfigMap({
        namespace: SHOP,
        body: { metadata: { name: "patched" }, data: { a: "1", b: "2" } },
      });
      const merged = await core.patchNamespacedConfigMap(
        { name: "patched", namespace: SHOP, body: { data: { a: "10", b: null, c: "3" } } },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
      );
      expect(merged.data).toEqual({ a: "10", c: "3" });
      const jsonPatched = await core.patchNamespacedConfigMap(
        {
          name: "patched",
          namespace: SHOP,
          body: [
            { op: "test", path: "/data/a", value: "10" },
            { op: "replace", path: "/data/a", value: "11" },
            { op: "add", path: "/metadata/labels", value: { patched: "yes" } },
          ],
        },
        setHeaderOptions("Content-Type", PatchStrategy.JsonPatch),
      );
      expect(jsonPatched.data?.a).toBe("11");
      expect(jsonPatched.metadata?.labels).toEqual({ patched: "yes" });
      const failedTest = core.patchNamespacedConfigMap(
        { name: "patched", namespace: SHOP, body: [{ op: "test", path: "/data/a", value: "10" }] },
        setHeaderOptions("Content-Type", PatchStrategy.JsonPatch),
      );
      expect(await statusCode(failedTest)).toBe(422);
      const stalePatch = core.patchNamespacedConfigMap(
        { name: "patched", namespace: SHOP, body: { metadata: { resourceVersion: "1" }, data: { a: "x" } } },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
      );
      expect(await statusCode(stalePatch)).toBe(409);

      const response = await fetch(`${server.url}/api/v1/namespaces/${SHOP}/configmaps/patched`, {
        method: "PATCH",
        headers: { "Content-Type": "application/apply-patch+cbor" },
        body: "{}",
      });
      expect(response.status).toBe(415);
      const tooLarge = await fetch(`${server.url}/api/v1/namespaces/${SHOP}/configmaps`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ metadata: { name: "huge" }, data: { blob: "x".repeat(3 * 1024 * 1024) } }),
      });
      expect(tooLarge.status).toBe(413);
      expect(await tooLarge.json()).toMatchObject({
        kind: "Status",
        reason: "RequestEntityTooLarge",
        code: 413,
      });
    });

    it("lists with label selectors and pages with limit and continue", async () => {
      for (const [index, tier] of ["gold", "gold", "silver", "bronze", "gold"].entries()) {
        await core.createNamespacedConfigMap({
          namespace: SHOP,
          body: { metadata: { name: `tier-${index}`, labels: { suite: "list", tier } } },
        });
      }
      const gold = await core.listNamespacedConfigMap({
        namespace: SHOP,
        labelSelector: "suite=list,tier=gold",
      });
      expect(gold.items.map((item) => item.metadata?.name)).toEqual(["tier-0", "tier-1", "tier-4"]);
      const notGold = await core.listNamespacedConfigMap({
        namespace: SHOP,
        labelSelector: "suite=list,tier notin (gold)",
      });
      expect(notGold.items.map((item) => item.metadata?.name)).toEqual(["tier-2", "tier-3"]);
      const byName = await core.listConfigMapForAllNamespaces({
        fieldSelector: `metadata.name=tier-3,metadata.namespace=${SHOP}`,
      });
      expect(byName.items).toHaveLength(1);

      const names: string[] = [];
      let token: string | undefined;
      let pages = 0;
      do {
        const page = await core.listNamespacedConfigMap({
          namespace: SHOP,
          labelSelector: "suite=list",
          limit: 2,
          _continue: token,
        });
        names.push(...page.items.map((item) => item.metadata?.name ?? ""));
        token = page.metadata?._continue;
        pages += 1;
      } while (token !== undefined && token !== "");
      expect(pages).toBe(3);
      expect(names).toEqual(["tier-0", "tier-1", "tier-2", "tier-3", "tier-4"]);
    });

    it("feeds an informer that re-lists after 410 Gone and misses nothing", async () => {
      const namespace = "informed";
      await core.createNamespace({ body: { metadata: { name: namespace } } });
      let lists = 0;
      const informer = makeInformer<V1ConfigMap>(kc, `/api/v1/namespaces/${namespace}/configmaps`, () => {
        lists += 1;
        return core.listNamespacedConfigMap({ namespace });
      });
      const seen: string[] = [];
      const errors: unknown[] = [];
      informer.on("add", (object) => seen.push(`add ${object.metadata?.name}`));
      informer.on("update", (object) => seen.push(`update ${object.metadata?.name}`));
      informer.on("delete", (object) => seen.push(`delete ${object.metadata?.name}`));
      // client-node reports its own abort of the watch on stop() as an error; anything else is not expected.
      informer.on("error", (error) => {
        if (!(error instanceof Error && error.name === "AbortError")) errors.push(error);
      });
      await informer.start();
      try {
        await core.createNamespacedConfigMap({
          namespace,
          body: { metadata: { name: "a" }, data: { v: "1" } },
        });
        await core.createNamespacedConfigMap({ namespace, body: { metadata: { name: "c" } } });
        await core.patchNamespacedConfigMap(
          { name: "a", namespace, body: { data: { v: "2" } } },
          setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
        );
        await core.deleteNamespacedConfigMap({ name: "c", namespace });
        await vi.waitFor(() => expect(seen).toEqual(["add a", "add c", "update a", "delete c"]), {
          timeout: 5_000,
        });

        // The watch is down while the world changes, and the history it would resume from is gone.
        await informer.stop();
        await core.createNamespacedConfigMap({ namespace, body: { metadata: { name: "b" } } });
        await core.patchNamespacedConfigMap(
          { name: "a", namespace, body: { data: { v: "3" } } },
          setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
        );
        await core.deleteNamespacedConfigMap({ name: "a", namespace });
        await core.createNamespacedConfigMap({ namespace, body: { metadata: { name: "d" } } });
        server.compact();
        const listsBefore = lists;
        await informer.start();
        await vi.waitFor(
          () => {
            expect(lists).toBeGreaterThan(listsBefore);
            expect(
              informer
                .list(namespace)
                .map((object) => object.metadata?.name)
                .sort(),
            ).toEqual(["b", "d"]);
          },
          { timeout: 5_000 },
        );
        expect(seen).toContain("delete a");

        // Writes elsewhere move the global resourceVersion on; after compaction, a dropped watch
        // resumes from a revision that is gone: 410, re-list, and events keep flowing.
        await core.createNamespacedSecret({ namespace, body: { metadata: { name: "elsewhere" } } });
        server.compact();
        const listsBeforeDrop = lists;
        expect(server.dropWatches()).toBeGreaterThan(0);
        await vi.waitFor(() => expect(lists).toBeGreaterThan(listsBeforeDrop), { timeout: 5_000 });
        await core.createNamespacedConfigMap({ namespace, body: { metadata: { name: "e" } } });
        await vi.waitFor(() => expect(informer.get("e", namespace)).toBeDefined(), { timeout: 5_000 });
        expect(errors).toEqual([]);
      } finally {
        await informer.stop();
      }
    });

    it("sends bookmarks and answers a watch from a compacted revision with 410 Expired", async () => {
      const watch = new Watch(kc);
      const types: string[] = [];
      const controller = await watch.watch(
        `/api/v1/namespaces/${SHOP}/configmaps`,
        { allowWatchBookmarks: true, resourceVersion: "0" },
        (type) => types.push(type),
        () => undefined,
      );
      try {
        await vi.waitFor(() => expect(types).toContain("BOOKMARK"), { timeout: 3_000 });
        expect(types[0]).toBe("ADDED");
      } finally {
        controller.abort();
      }

      const before =
        (await core.listNamespacedConfigMap({ namespace: SHOP })).metadata?.resourceVersion ?? "";
      await core.createNamespacedConfigMap({ namespace: SHOP, body: { metadata: { name: "after-list" } } });
      server.compact();
      const errors: { code?: number; reason?: string }[] = [];
      let ended = false;
      await watch.watch(
        `/api/v1/namespaces/${SHOP}/configmaps`,
        { resourceVersion: before },
        (type, object: { code?: number; reason?: string }) => {
          if (type === "ERROR") errors.push(object);
        },
        () => {
          ended = true;
        },
      );
      await vi.waitFor(() => expect(ended).toBe(true), { timeout: 3_000 });
      expect(errors).toEqual([expect.objectContaining({ code: 410, reason: "Expired" })]);
    });

    it("garbage-collects a Secret owned by a deleted ServiceIdentity", async () => {
      const owner = (await custom.createNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: SHOP,
        plural: "serviceidentities",
        body: serviceIdentity("owner"),
      })) as { metadata: { uid: string } };
      await core.createNamespacedSecret({
        namespace: SHOP,
        body: {
          metadata: {
            name: "custody-identity-owner",
            ownerReferences: [
              {
                apiVersion: `${GROUP}/${VERSION}`,
                kind: "ServiceIdentity",
                name: "owner",
                uid: owner.metadata.uid,
                controller: true,
                blockOwnerDeletion: true,
              },
            ],
          },
        },
      });
      await custom.deleteNamespacedCustomObject({
        group: GROUP,
        version: VERSION,
        namespace: SHOP,
        plural: "serviceidentities",
        name: "owner",
      });
      await vi.waitFor(
        async () =>
          expect(
            await statusCode(core.readNamespacedSecret({ name: "custody-identity-owner", namespace: SHOP })),
          ).toBe(404),
        { timeout: 3_000 },
      );

      // Orphan propagation keeps the dependent and drops its owner reference.
      const parent = await core.createNamespacedConfigMap({
        namespace: SHOP,
        body: { metadata: { name: "parent" } },
      });
      await core.createNamespacedConfigMap({
        namespace: SHOP,
        body: {
          metadata: {
            name: "child",
            ownerReferences: [
              { apiVersion: "v1", kind: "ConfigMap", name: "parent", uid: parent.metadata?.uid ?? "" },
            ],
          },
        },
      });
      await core.deleteNamespacedConfigMap({ name: "parent", namespace: SHOP, propagationPolicy: "Orphan" });
      await vi.waitFor(async () =>
        expect(await statusCode(core.readNamespacedConfigMap({ name: "parent", namespace: SHOP }))).toBe(404),
      );
      const child = await core.readNamespacedConfigMap({ name: "child", namespace: SHOP });
      expect(child.metadata?.ownerReferences).toBeUndefined();
    });

    it("keeps an object with finalizers until they are removed", async () => {
      const guarded = { name: "guarded", namespace: SHOP };
      await core.createNamespacedConfigMap({
        namespace: SHOP,
        body: { metadata: { name: "guarded", finalizers: ["custody.dev/cleanup"] } },
      });
      await core.deleteNamespacedConfigMap(guarded);
      const terminating = await core.readNamespacedConfigMap(guarded);
      expect(terminating.metadata?.deletionTimestamp).toBeDefined();
      const addFinalizer = core.patchNamespacedConfigMap(
        { ...guarded, body: { metadata: { finalizers: ["custody.dev/cleanup", "custody.dev/other"] } } },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
      );
      expect(await statusCode(addFinalizer)).toBe(422);
      await core.patchNamespacedConfigMap(
        { ...guarded, body: [{ op: "remove", path: "/metadata/finalizers" }] },
        setHeaderOptions("Content-Type", PatchStrategy.JsonPatch),
      );
      expect(await statusCode(core.readNamespacedConfigMap(guarded))).toBe(404);
    });

    it("applies failurePolicy when a webhook cannot be reached", async () => {
      const admission = kc.makeApiClient(AdmissionregistrationV1Api);
      const closedPort = await freePort();
      const configuration = (failurePolicy: string) => ({
        metadata: { name: "unreachable" },
        webhooks: [
          {
            name: "unreachable.custody.dev",
            admissionReviewVersions: ["v1"],
            sideEffects: "None",
            failurePolicy,
            timeoutSeconds: 2,
            clientConfig: { url: `https://127.0.0.1:${closedPort}/mutate`, caBundle: webhook.caBundle },
            rules: [
              { operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["configmaps"] },
            ],
            objectSelector: { matchLabels: { "custody.dev/unreachable": "true" } },
          },
        ],
      });
      const created = await admission.createMutatingWebhookConfiguration({ body: configuration("Fail") });
      expect(created.webhooks?.[0]?.namespaceSelector).toEqual({});
      const body = { metadata: { name: "via-webhook", labels: { "custody.dev/unreachable": "true" } } };
      try {
        await core.createNamespacedConfigMap({ namespace: SHOP, body });
        expect.unreachable("the webhook is down and failurePolicy is Fail");
      } catch (error) {
        expect(error).toBeInstanceOf(ApiException);
        const status = JSON.parse(String((error as ApiException<string>).body)) as {
          code: number;
          message: string;
        };
        expect(status.code).toBe(500);
        expect(status.message).toContain('failed calling webhook "unreachable.custody.dev"');
      }
      await admission.replaceMutatingWebhookConfiguration({
        name: "unreachable",
        body: {
          ...configuration("Ignore"),
          metadata: { name: "unreachable", resourceVersion: created.metadata?.resourceVersion },
        },
      });
      expect((await core.createNamespacedConfigMap({ namespace: SHOP, body })).metadata?.name).toBe(
        "via-webhook",
      );
      await admission.deleteMutatingWebhookConfiguration({ name: "unreachable" });
    });
  });
});
