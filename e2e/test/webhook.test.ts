/**
 * The admission webhooks end to end: the real kubectl against the real kube-apiserver, which calls
 * the operator's webhook server over HTTPS (the configurations of operator/manifests/webhooks.yaml,
 * pointed at https://127.0.0.1:<port> as envtest does), verified with the caBundle that
 * keepCaBundleCurrent — running as the chart's ServiceAccount — wrote into them.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AdmissionregistrationV1Api, CustomObjectsApi, type KubeConfig } from "@kubernetes/client-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { compilePolicy } from "../../crds/src/compiled-policy.js";
import { ValidationError } from "../../crds/src/errors.js";
import { validateServiceIdentity } from "../../crds/src/manifest.js";
import type { ServiceIdentity } from "../../crds/src/service-identity.js";
import { type CaBundleKeeper, keepCaBundleCurrent } from "../../operator/src/webhook/ca-bundle.js";
import { DEFAULT_INJECTION_SETTINGS } from "../../operator/src/webhook/inject.js";
import { type RunningWebhookServer, startWebhookServer } from "../../operator/src/webhook/server.js";
import { type CertificateAuthority, createCertificateAuthority } from "../../pki/src/index.js";
import { type Cluster, startCluster } from "../support/cluster.js";
import { requireControlPlane } from "../support/control-plane.js";
import type { KubectlResult } from "../support/kubectl.js";
import { requireTool } from "../support/tools.js";

const HAS_CLUSTER = requireTool("kubectl") && requireControlPlane();
const SHOP = "shop";
const WEBHOOK_SERVICE = "custody-webhook";
const WEBHOOK_NAMESPACE = "custody-system";
const MUTATING = "custody-sidecar-injector";
const VALIDATING = "custody-accesspolicy-validator";

interface LogLine {
  readonly event?: string;
  readonly [key: string]: unknown;
}

interface PodJson {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: {
    containers: { name: string; env?: { name: string; value?: string }[]; [key: string]: unknown }[];
    initContainers?: { name: string; env?: { name: string; value?: string }[]; [key: string]: unknown }[];
    volumes?: { name: string; [key: string]: unknown }[];
  };
}

function pod(
  name: string,
  options: { annotations?: string; labels?: string; serviceAccount?: string; namespace?: string },
) {
  return `apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: ${options.namespace ?? SHOP}
  annotations: {${options.annotations ?? ""}}
  labels: {${options.labels ?? ""}}
spec:
  serviceAccountName: ${options.serviceAccount ?? "cart"}
  containers:
    - name: app
      image: cart:1.0
      ports: [{containerPort: 8080}]
`;
}

/** The message the operator writes into an invalid policy's status condition. */
function operatorMessage(manifest: string): string {
  try {
    compilePolicy(parseYaml(manifest), { namespace: SHOP });
  } catch (error) {
    if (error instanceof ValidationError) return error.message;
    throw error;
  }
  throw new Error("the policy is valid");
}

describe("the admission webhooks", () => {
  let directory: string;
  let ca: CertificateAuthority;
  let webhook: RunningWebhookServer;
  let cluster: Cluster | undefined;
  /** The operator's credentials: what the caBundle keeper runs with. */
  let kc: KubeConfig;
  let keeper: CaBundleKeeper | undefined;
  const identities = new Map<string, ServiceIdentity>();
  const webhookLogs: LogLine[] = [];
  const keeperLogs: LogLine[] = [];

  function collector(lines: LogLine[]) {
    return pino(
      { level: "debug" },
      { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) },
    );
  }

  const kubectl = (args: readonly string[], input?: string): Promise<KubectlResult> => {
    if (cluster === undefined) throw new Error("no cluster");
    return cluster.kubectl(args, input);
  };

  async function createPod(manifest: string): Promise<KubectlResult> {
    const file = join(directory, "pod.yaml");
    await writeFile(file, manifest);
    return kubectl(["create", "-f", file, "-o", "json"]);
  }

  /** POSTs to the webhook server directly, trusting Custody's CA for the Service's name. */
  function call(
    path: string,
    body: string,
    options: { method?: string; contentType?: string } = {},
  ): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      const request = httpsRequest(
        {
          host: "127.0.0.1",
          port: webhook.port,
          path,
          method: options.method ?? "POST",
          ca: ca.certificate.pem,
          servername: `${WEBHOOK_SERVICE}.${WEBHOOK_NAMESPACE}.svc`,
          headers: { "content-type": options.contentType ?? "application/json" },
        },
        (response) => {
          const chunks: Buffer[] = [];
          response.on("data", (chunk: Buffer) => chunks.push(chunk));
          response.on("end", () =>
            resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }),
          );
          response.on("error", reject);
        },
      );
      request.on("error", reject);
      request.end(body);
    });
  }

  beforeAll(async () => {
    directory = await mkdtemp(join(tmpdir(), "custody-webhook-"));
    ca = await createCertificateAuthority();
    webhook = await startWebhookServer({
      ca,
      listen: { host: "127.0.0.1", port: 0 },
      serviceName: WEBHOOK_SERVICE,
      namespace: WEBHOOK_NAMESPACE,
      lookup: { identity: (namespace, name) => identities.get(`${namespace}/${name}`) },
      settings: DEFAULT_INJECTION_SETTINGS,
      logger: collector(webhookLogs),
    });
    if (HAS_CLUSTER) {
      cluster = await startCluster({ namespaces: [] });
      kc = cluster.operatorKubeConfig;
    }
  }, 120_000);

  afterAll(async () => {
    keeper?.close();
    await cluster?.close();
    await webhook?.close(1_000);
    if (directory !== undefined) await rm(directory, { recursive: true, force: true });
  });

  describe("the HTTPS server", () => {
    it("answers only POST on its two paths, and refuses malformed reviews without detail", async () => {
      expect(await call("/nowhere", "{}")).toEqual({
        status: 404,
        body: JSON.stringify({ error: "not_found", reason: "unknown_path" }),
      });
      expect((await call("/inject", "", { method: "GET" })).status).toBe(405);
      expect((await call("/inject", "{}", { contentType: "text/plain" })).status).toBe(415);
      const malformed = await call("/validate-accesspolicy?timeout=5s", '{"apiVersion": "v1"}');
      expect(malformed).toEqual({
        status: 400,
        body: JSON.stringify({ error: "bad_request", reason: "malformed_admission_review" }),
      });
      const notJson = await call("/inject", "{");
      expect(notJson.status).toBe(400);
      expect(notJson.body).not.toContain("at ");
      const large = await call("/inject", "x".repeat(5 * 1024 * 1024));
      expect(large.status).toBe(413);
    });

    it("answers a review with the same uid", async () => {
      const review = {
        apiVersion: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        request: {
          uid: "e911857d-c318-11e8-bbad-025000000001",
          kind: { group: "", version: "v1", kind: "Pod" },
          resource: { group: "", version: "v1", resource: "pods" },
          namespace: SHOP,
          operation: "CREATE",
          object: { metadata: { name: "plain" }, spec: { containers: [{ name: "app" }] } },
        },
      };
      const answer = await call("/inject", JSON.stringify(review));
      expect(answer.status).toBe(200);
      expect(JSON.parse(answer.body)).toEqual({
        apiVersion: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: { uid: review.request.uid, allowed: true },
      });
    });
  });

  describe.skipIf(!HAS_CLUSTER)("with kubectl", () => {
    it("keeps the configurations' caBundle current, waiting for configurations that do not exist yet", async () => {
      const namespace = await kubectl(
        ["apply", "-f", "-"],
        `apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ${SHOP}\n  labels: {custody.dev/injection: enabled}\n`,
      );
      expect(namespace.stderr).toBe("");
      expect((await kubectl(["create", "serviceaccount", "cart", "-n", SHOP])).code).toBe(0);
      const applied = await kubectl(["apply", "-f", "crds/examples/shop-identities.yaml"]);
      expect(applied.stdout).toContain("serviceidentity.custody.dev/cart created");
      const custom = (cluster as Cluster).kubeConfig.makeApiClient(CustomObjectsApi);
      const listed = (await custom.listNamespacedCustomObject({
        group: "custody.dev",
        version: "v1alpha1",
        namespace: SHOP,
        plural: "serviceidentities",
      })) as { items: unknown[] };
      for (const item of listed.items) {
        const identity = validateServiceIdentity(item);
        identities.set(`${SHOP}/${identity.metadata.name}`, identity);
      }
      expect(identities.has(`${SHOP}/cart`)).toBe(true);

      keeper = keepCaBundleCurrent({
        kubeConfig: kc,
        mutatingName: MUTATING,
        validatingName: VALIDATING,
        caPem: ca.certificate.pem,
        logger: collector(keeperLogs),
        intervalMs: 60_000,
      });
      await keeper.syncNow();
      expect(keeperLogs.filter((line) => line.event === "webhook_configuration_missing")).toHaveLength(2);

      await (cluster as Cluster).applyWebhooks(webhook.port);
      const admission = kc.makeApiClient(AdmissionregistrationV1Api);
      const bundles = async () =>
        [
          ...((await admission.readMutatingWebhookConfiguration({ name: MUTATING })).webhooks ?? []),
          ...((await admission.readValidatingWebhookConfiguration({ name: VALIDATING })).webhooks ?? []),
        ].map((entry) => entry.clientConfig.caBundle);
      expect(await bundles()).toEqual([undefined, undefined]);

      await keeper.syncNow();
      const expected = Buffer.from(ca.certificate.pem).toString("base64");
      expect(await bundles()).toEqual([expected, expected]);
      expect(keeperLogs.filter((line) => line.event === "ca_bundle_updated")).toHaveLength(2);

      // Current already: nothing written. A re-apply of the manifest leaves the caBundle alone.
      await keeper.syncNow();
      expect(keeperLogs.filter((line) => line.event === "ca_bundle_updated")).toHaveLength(2);
      await (cluster as Cluster).applyWebhooks(webhook.port);
      expect(await bundles()).toEqual([expected, expected]);
      expect(keeperLogs.filter((line) => line.event === "ca_bundle_sync_failed")).toEqual([]);
    });

    it("injects the sidecar into an annotated pod", async () => {
      const created = await createPod(
        pod("cart", {
          annotations: '"custody.dev/inject": "true", "custody.dev/no-proxy": ".svc.cluster.local"',
        }),
      );
      expect(created.stderr).toBe("");
      const result = JSON.parse(created.stdout) as PodJson;
      expect(result.spec.containers.map((container) => container.name)).toEqual(["app"]);
      expect(result.spec.initContainers?.map((container) => container.name)).toEqual(["custody-sidecar"]);
      const [app] = result.spec.containers;
      const [sidecar] = result.spec.initContainers ?? [];
      expect(sidecar).toMatchObject({
        image: DEFAULT_INJECTION_SETTINGS.image,
        args: ["sidecar"],
        restartPolicy: "Always",
        securityContext: { runAsNonRoot: true, runAsUser: 65532, readOnlyRootFilesystem: true },
        readinessProbe: { httpGet: { path: "/readyz", port: 15020 } },
      });
      expect(sidecar?.env).toContainEqual({ name: "CUSTODY_APP_PORT", value: "8080" });
      expect(app?.env).toEqual([
        { name: "HTTP_PROXY", value: "http://127.0.0.1:15001" },
        { name: "http_proxy", value: "http://127.0.0.1:15001" },
        { name: "HTTPS_PROXY", value: "http://127.0.0.1:15001" },
        { name: "https_proxy", value: "http://127.0.0.1:15001" },
        {
          name: "NO_PROXY",
          value:
            "localhost,127.0.0.1,::1,169.254.169.254,metadata.google.internal,kubernetes.default.svc,kubernetes.default,.svc.cluster.local",
        },
        {
          name: "no_proxy",
          value:
            "localhost,127.0.0.1,::1,169.254.169.254,metadata.google.internal,kubernetes.default.svc,kubernetes.default,.svc.cluster.local",
        },
      ]);
      expect(result.spec.volumes?.map((volume) => volume.name)).toEqual(
        expect.arrayContaining(["custody-token", "custody-registry", "custody-tmp"]),
      );
      expect(result.spec.volumes?.find((volume) => volume.name === "custody-token")).toMatchObject({
        projected: { sources: [{ serviceAccountToken: { audience: "custody", path: "token" } }] },
      });
      expect(result.metadata.annotations).toMatchObject({
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "15020",
        "prometheus.io/path": "/metrics",
        "custody.dev/injected": "cart",
      });
      expect(webhookLogs).toContainEqual(
        expect.objectContaining({
          event: "admission",
          webhook: "inject",
          namespace: SHOP,
          name: "cart",
          identity: "cart",
          allowed: true,
          reason: "injected",
        }),
      );
    });

    it("with traffic capture, the API server stores the pod as patched: custody-init first, probes through the sidecar", async () => {
      const manifest = `${pod("captured", {
        annotations:
          '"custody.dev/inject": "true", "custody.dev/capture": "true", "custody.dev/capture-exclude-inbound-ports": "9091"',
      })}      readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 3}
      livenessProbe: {tcpSocket: {port: 8080}}
`;
      const created = await createPod(manifest);
      expect(created.stderr).toBe("");
      const result = JSON.parse(created.stdout) as PodJson;
      expect(result.spec.initContainers?.map((container) => container.name)).toEqual([
        "custody-init",
        "custody-sidecar",
      ]);
      expect(result.spec.initContainers?.[0]).toMatchObject({
        image: DEFAULT_INJECTION_SETTINGS.initImage,
        command: ["/bin/sh", "-c", expect.stringContaining("iptables-restore --noflush")],
        securityContext: {
          runAsUser: 0,
          runAsNonRoot: false,
          capabilities: { add: ["NET_ADMIN", "NET_RAW"], drop: ["ALL"] },
        },
      });
      expect(result.spec.containers[0]?.readinessProbe).toMatchObject({
        httpGet: { path: "/app-health/app/readiness", port: 15020, scheme: "HTTP" },
        periodSeconds: 3,
      });
      expect(result.spec.containers[0]?.livenessProbe).toMatchObject({
        httpGet: { path: "/app-health/app/liveness", port: 15020 },
      });
      expect(result.spec.volumes?.map((volume) => volume.name)).toContain("custody-xtables");
    });

    it("refuses a pod whose service account differs from the identity's", async () => {
      const refused = await createPod(
        pod("impostor", {
          annotations: '"custody.dev/inject": "true", "custody.dev/identity": "cart"',
          serviceAccount: "default",
        }),
      );
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toContain(
        'admission webhook "inject.custody.dev" denied the request: ServiceIdentity "cart" may only be used by pods running as service account "cart", but pod shop/impostor runs as service account "default"',
      );
      expect(refused.stderr).toContain("service_account_mismatch");
    });

    it("refuses a pod naming an identity that does not exist", async () => {
      const refused = await createPod(
        pod("ghostly", { annotations: '"custody.dev/inject": "true", "custody.dev/identity": "ghost"' }),
      );
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toContain('admission webhook "inject.custody.dev" denied the request');
      expect(refused.stderr).toContain('ServiceIdentity "ghost"');
      expect(refused.stderr).toContain('does not exist in namespace "shop"');
      expect(webhookLogs).toContainEqual(
        expect.objectContaining({
          event: "admission",
          name: "ghostly",
          allowed: false,
          reason: "identity_not_found",
        }),
      );
    });

    it("refuses a pod in which another mesh's proxy would take the sidecar's ports", async () => {
      // As if Istio's injector had run first: its proxy listens on 15001, 15006, 15020 undeclared.
      const manifest = `${pod("with-istio", { annotations: '"custody.dev/inject": "true"' })}    - name: istio-proxy
      image: istio/proxyv2:1.24
`;
      const refused = await createPod(manifest);
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toContain('container "istio-proxy" (another mesh\'s proxy) listens on port');
      expect(refused.stderr).toContain("mesh_port_conflict");
    });

    it("is not even called for pods that do not ask for a sidecar, nor for opted-out pods or other namespaces", async () => {
      const plain = await createPod(pod("not-asking", {}));
      expect(plain.stderr).toBe("");
      expect((JSON.parse(plain.stdout) as PodJson).spec.containers.map((c) => c.name)).toEqual(["app"]);
      // matchConditions: the API server decided without calling the webhook.
      expect(webhookLogs.map((line) => line.name)).not.toContain("not-asking");

      const optedOut = await createPod(
        pod("opted-out", {
          annotations: '"custody.dev/inject": "true"',
          labels: '"custody.dev/inject": "false"',
        }),
      );
      expect((JSON.parse(optedOut.stdout) as PodJson).spec.containers).toHaveLength(1);
      const elsewhere = await createPod(
        pod("elsewhere", {
          annotations: '"custody.dev/inject": "true"',
          namespace: "default",
          serviceAccount: "default",
        }),
      );
      expect((JSON.parse(elsewhere.stdout) as PodJson).spec.containers).toHaveLength(1);
      const seen = webhookLogs.map((line) => line.name);
      expect(seen).not.toContain("opted-out");
      expect(seen).not.toContain("elsewhere");
    });

    it("refuses invalid AccessPolicies at apply time with the operator's message, and accepts valid ones", async () => {
      const invalid = [
        `apiVersion: custody.dev/v1alpha1
kind: AccessPolicy
metadata: {name: foreign, namespace: ${SHOP}}
spec:
  target: payments.billing
  rules: [{name: all, operation: {path: /.*}, action: allow}]
`,
        `apiVersion: custody.dev/v1alpha1
kind: AccessPolicy
metadata: {name: backreference, namespace: ${SHOP}}
spec:
  target: payments
  rules: [{name: echo, operation: {path: '/(a+)/\\1'}, action: allow}]
`,
      ];
      for (const manifest of invalid) {
        const refused = await kubectl(["apply", "-f", "-"], manifest);
        expect(refused.code).not.toBe(0);
        expect(refused.stderr).toContain(
          `admission webhook "validate-accesspolicy.custody.dev" denied the request: ${operatorMessage(manifest)}`,
        );
        expect(refused.stderr).toContain("invalid_access_policy");
      }
      expect(operatorMessage(invalid[0] ?? "")).toContain(
        "spec.target: must be a service of the policy's own namespace",
      );
      expect(operatorMessage(invalid[1] ?? "")).toContain("backreferences");

      const valid = await kubectl(["apply", "-f", "crds/examples/payments-policy.yaml"]);
      expect(valid.stderr).toBe("");
      expect(valid.stdout).toContain("accesspolicy.custody.dev/payments created");
      // An update is judged too; deletion never is.
      const original = await readFile("crds/examples/payments-policy.yaml", "utf8");
      const broken = await kubectl(
        ["apply", "-f", "-"],
        original.replace("target: payments", "target: payments.billing"),
      );
      expect(broken.code).not.toBe(0);
      expect(broken.stderr).toContain("spec.target: must be a service of the policy's own namespace (shop)");
      expect((await kubectl(["delete", "accesspolicy", "payments", "-n", SHOP])).code).toBe(0);
    });
  });
});
