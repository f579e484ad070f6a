/**
 * `custody operator --kubeconfig …` as a real process against the real control plane, as the
 * chart's ServiceAccount (never admin), set up the way
 * the docs tell a user to: CRDs and webhook configurations applied with kubectl, a namespace
 * labelled for injection, a ServiceIdentity. The operator fills in the webhooks' caBundle, makes
 * the identity Ready, and `kubectl create` of an annotated pod returns it with the sidecar; a pod
 * under the wrong service account is refused; SIGTERM stops it cleanly.
 */
import { X509Certificate } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { stringify } from "yaml";
import { type Cluster, startCluster } from "../support/cluster.js";
import { requireControlPlane } from "../support/control-plane.js";
import { freePort } from "../support/net.js";
import { type CliProcess, killAll, parseLogLines, startCliProcess } from "../support/process.js";
import { requireTool } from "../support/tools.js";

const HAS_CLUSTER = requireTool("kubectl") && requireControlPlane();

describe.skipIf(!HAS_CLUSTER)("custody operator on Kubernetes, as a process", () => {
  let cluster: Cluster;
  let operator: CliProcess;
  let webhookPort: number;

  const create = async (manifest: Record<string, unknown>) => {
    const file = join(cluster.directory, `${String((manifest.metadata as { name: string }).name)}.yaml`);
    await writeFile(file, stringify(manifest));
    return cluster.kubectl(["create", "-f", file, "-o", "json"]);
  };
  const pod = (name: string, serviceAccountName: string) => ({
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name,
      namespace: "shop",
      annotations: {
        "custody.dev/inject": "true",
        "custody.dev/identity": "cart",
        "custody.dev/app-port": "8080",
      },
    },
    spec: {
      serviceAccountName,
      containers: [{ name: "app", image: "shop/cart:1", ports: [{ containerPort: 8080 }] }],
    },
  });

  const startOperator = () =>
    startCliProcess(
      [
        "operator",
        "--ca",
        cluster.caDirectory,
        "--kubeconfig",
        cluster.operatorKubeconfigPath,
        "--namespace",
        "custody-system",
        "--token-listen",
        "127.0.0.1:0",
        "--token-admin",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--webhook-listen",
        `127.0.0.1:${webhookPort}`,
        "--sidecar-image",
        "registry.example/custody-sidecar:test",
        // A SIGKILLed leader's Lease runs out quickly, so its successor starts soon.
        "--leader-elect-lease-duration",
        "2s",
        "--leader-elect-renew-deadline",
        "1500ms",
        "--leader-elect-retry-period",
        "300ms",
      ],
      "operator_started",
      "operator",
    );

  /** kubectl wait until every ServiceIdentity of shop is Ready, within `timeout` (e.g. "30s"). */
  const expectIdentitiesReady = async (timeout: string) => {
    const waited = await cluster.kubectl([
      "wait",
      "--for=condition=Ready",
      "si",
      "--all",
      "-n",
      "shop",
      `--timeout=${timeout}`,
    ]);
    expect(waited.code, waited.stderr).toBe(0);
  };

  beforeAll(async () => {
    webhookPort = await freePort();
    cluster = await startCluster();
    await cluster.applyWebhooks(webhookPort);
    for (const args of [
      ["label", "namespace", "shop", "custody.dev/injection=enabled"],
      ["create", "serviceaccount", "cart", "-n", "shop"],
      ["apply", "-f", "crds/examples/shop-identities.yaml"],
    ]) {
      const result = await cluster.kubectl(args);
      if (result.code !== 0) throw new Error(`kubectl ${args.join(" ")}: ${result.stderr}`);
    }
    operator = await startOperator();
  }, 60_000);
  afterAll(async () => {
    await killAll();
    await cluster?.close();
  });

  it("fills the webhooks' caBundle and makes the identities Ready", async () => {
    await vi.waitFor(
      async () => {
        const got = await cluster.kubectl([
          "get",
          "mutatingwebhookconfiguration",
          "custody-sidecar-injector",
          "-o",
          "json",
        ]);
        const bundle = (JSON.parse(got.stdout) as { webhooks: { clientConfig: { caBundle?: string } }[] })
          .webhooks[0]?.clientConfig.caBundle;
        expect(Buffer.from(bundle ?? "", "base64").toString()).toContain("BEGIN CERTIFICATE");
      },
      { timeout: 20_000, interval: 200 },
    );
    await expectIdentitiesReady("30s");
  });

  it("kubectl create of an annotated pod returns it with the sidecar", async () => {
    const created = await create(pod("cart-1", "cart"));
    expect(created.code, created.stderr).toBe(0);
    const injected = JSON.parse(created.stdout) as {
      metadata: { annotations: Record<string, string> };
      spec: {
        containers: { name: string; image: string; env?: { name: string; value?: string }[] }[];
        initContainers?: { name: string; image: string; env?: { name: string; value?: string }[] }[];
        volumes: { name: string; secret?: { secretName: string } }[];
      };
    };
    // A native sidecar: the real API server keeps an init container with restartPolicy Always.
    const sidecar = injected.spec.initContainers?.find((container) => container.name === "custody-sidecar");
    expect(sidecar?.image).toBe("registry.example/custody-sidecar:test");
    expect(sidecar?.env).toContainEqual({
      name: "CUSTODY_TOKEN_URL",
      value: "https://custody-issuer.custody-system.svc:8443/oauth2/token",
    });
    expect(sidecar?.env).toContainEqual({
      name: "CUSTODY_IDENTITY_URL",
      value: "https://custody-webhook.custody-system.svc/v1/identity",
    });
    // No Secret of the workload's namespace is mounted: the key comes from the operator.
    expect(injected.spec.volumes.map((volume) => volume.secret?.secretName ?? null)).toEqual(
      injected.spec.volumes.map(() => null),
    );
    const app = injected.spec.containers.find((container) => container.name === "app");
    expect(app?.env).toContainEqual({ name: "HTTP_PROXY", value: "http://127.0.0.1:15001" });
    expect(injected.metadata.annotations["prometheus.io/scrape"]).toBe("true");
  });

  it("refuses a pod whose service account is not the identity's", async () => {
    const refused = await create(pod("impostor", "default"));
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/service_account_mismatch/);
    expect(refused.stderr).toMatch(/"cart"/);
  });

  it("refuses an invalid AccessPolicy at kubectl apply time", async () => {
    const refused = await create({
      apiVersion: "custody.dev/v1alpha1",
      kind: "AccessPolicy",
      metadata: { name: "foreign", namespace: "shop" },
      spec: { target: "payments.other", rules: [] },
    });
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/spec\.target: must be a service of the policy's own namespace/);
  });

  it("SIGKILLed while issuing, a new process converges: one certificate per identity, status and Secret agree", async () => {
    const count = 30;
    const manifest = Array.from({ length: count }, (_, index) =>
      stringify({
        apiVersion: "custody.dev/v1alpha1",
        kind: "ServiceIdentity",
        metadata: { name: `bulk-${index}`, namespace: "shop" },
        // RSA keys take long enough to generate that the kill lands mid-issuance.
        spec: { certificate: { keyAlgorithm: "RSA-2048" } },
      }),
    ).join("---\n");
    await writeFile(join(cluster.directory, "bulk.yaml"), manifest);
    expect((await cluster.kubectl(["apply", "-f", join(cluster.directory, "bulk.yaml")])).code).toBe(0);
    await vi.waitFor(
      async () => {
        const secrets = await cluster.kubectl(["get", "secrets", "-n", "custody-system", "-o", "name"]);
        expect(
          secrets.stdout.split("\n").filter((line) => line.includes("custody-identity.shop.bulk-")).length,
        ).toBeGreaterThan(2);
      },
      { timeout: 30_000, interval: 50 },
    );
    await operator.kill();
    operator = await startOperator();
    await expectIdentitiesReady("60s");

    const identities = JSON.parse(
      (await cluster.kubectl(["get", "si", "-n", "shop", "-o", "json"])).stdout,
    ) as {
      items: { metadata: { name: string }; status: { certificate: { serialNumber: string } } }[];
    };
    const secrets = JSON.parse(
      (await cluster.kubectl(["get", "secrets", "-n", "custody-system", "-o", "json"])).stdout,
    ) as {
      items: { metadata: { name: string }; data: Record<string, string> }[];
    };
    const events = JSON.parse(
      (await cluster.kubectl(["get", "events", "-n", "shop", "-o", "json"])).stdout,
    ) as {
      items: { reason: string; involvedObject: { name: string } }[];
    };
    for (let index = 0; index < count; index++) {
      const name = `bulk-${index}`;
      const secret = secrets.items.find((item) => item.metadata.name === `custody-identity.shop.${name}`);
      const pem = Buffer.from(secret?.data["tls.crt"] ?? "", "base64").toString();
      const serial = new X509Certificate(pem).serialNumber.toLowerCase().replace(/^(00)+/, "");
      const status = identities.items.find((item) => item.metadata.name === name)?.status;
      expect(status?.certificate.serialNumber, name).toBe(serial);
      // Issuance is recorded only after its Secret is written: never twice for one identity.
      const issued = events.items.filter(
        (event) => event.reason === "CertificateIssued" && event.involvedObject.name === name,
      );
      expect(issued.length, name).toBeLessThanOrEqual(1);
    }
  }, 120_000);

  it("on SIGTERM keeps admitting, not ready, for --shutdown-delay (endpoints still route to it), then stops cleanly", async () => {
    const started = parseLogLines(operator.lines).find((line) => line.event === "operator_started");
    const adminUrl = String(started?.adminUrl);
    process.kill(operator.pid, "SIGTERM");
    await vi.waitFor(
      () => expect(operator.lines.some((line) => line.includes('"event":"draining"'))).toBe(true),
      {
        timeout: 5_000,
      },
    );
    const readyz = await fetch(`${adminUrl}/readyz`);
    expect(readyz.status).toBe(503);
    expect(readyz.headers.get("connection")).toBe("close");
    expect(((await readyz.json()) as { status: string }).status).toBe("draining");
    // The API server's webhook call still gets an answer: a Pod is admitted, with its sidecar.
    const file = join(cluster.directory, "during-drain.yaml");
    await writeFile(file, stringify(pod("during-drain", "cart")));
    const admitted = await cluster.kubectl(["create", "--dry-run=server", "-f", file, "-o", "json"]);
    expect(admitted.code, admitted.stderr).toBe(0);
    expect(admitted.stdout).toContain("custody-sidecar");
    expect(await operator.exited).toEqual({ code: 0, signal: null });
  });
});
