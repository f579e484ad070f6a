/**
 * Identity delivery's checks against the real API server, with the chart's RBAC for the operator:
 * real TokenReviews of real projected tokens (audience, pod binding, a deleted pod), real pods.
 * Only the key material is a stand-in — what is on trial is who gets it. (On the test node, the
 * cluster suite shows injected sidecars obtaining their identity this way, and pods that may not
 * being refused.)
 */
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { validateServiceIdentity } from "../../crds/src/manifest.js";
import type { ServiceIdentity } from "../../crds/src/service-identity.js";
import type { StoredSecret } from "../../operator/src/store/store.js";
import { IdentityDelivery } from "../../operator/src/webhook/identity-delivery.js";
import { kubernetesPodReader, kubernetesTokenReviewer } from "../../operator/src/webhook/token-review.js";
import { type Cluster, startCluster } from "../support/cluster.js";
import { requireControlPlane } from "../support/control-plane.js";
import { requireTool } from "../support/tools.js";

const HAS_CLUSTER = requireTool("kubectl") && requireControlPlane();
const NS = "shop";
const quiet = pino({ level: process.env.LOG_LEVEL ?? "silent" });

const CART: ServiceIdentity = validateServiceIdentity({
  apiVersion: "custody.dev/v1alpha1",
  kind: "ServiceIdentity",
  metadata: { name: "cart", namespace: NS },
  spec: { environment: "prod" },
});
const SECRET: StoredSecret = {
  namespace: "custody-system",
  name: "custody-identity.shop.cart",
  type: "kubernetes.io/tls",
  labels: {},
  annotations: {},
  data: { "tls.crt": "CERT", "tls.key": "KEY", "ca.crt": "CA" },
};

const SIDECAR_IMAGE = "registry.example/custody-sidecar:test";

/** A pod as the injection webhook would leave it (this control plane runs no webhook). */
function pod(name: string, serviceAccount: string, annotations: Record<string, string>) {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: NS, annotations: { "custody.dev/injected": "cart", ...annotations } },
    spec: {
      serviceAccountName: serviceAccount,
      initContainers: [
        {
          name: "custody-sidecar",
          image: SIDECAR_IMAGE,
          args: ["sidecar"],
          restartPolicy: "Always",
          volumeMounts: [{ name: "custody-token", mountPath: "/var/run/secrets/custody", readOnly: true }],
        },
      ],
      containers: [{ name: "app", image: "registry.example/app:1" }],
      volumes: [
        {
          name: "custody-token",
          projected: {
            sources: [
              { serviceAccountToken: { audience: "custody", expirationSeconds: 3600, path: "token" } },
            ],
          },
        },
      ],
    },
  });
}

describe.skipIf(!HAS_CLUSTER)("identity delivery against the real API server", () => {
  let cluster: Cluster;
  const uids = new Map<string, string>();

  const kubectl = async (args: readonly string[], input?: string) => {
    const result = await cluster.kubectl(args, input);
    if (result.code !== 0) throw new Error(`kubectl ${args.join(" ")}: ${result.stderr}`);
    return result.stdout.trim();
  };
  /** A projected-style token of `serviceAccount`, bound to pod `boundTo` unless it is undefined. */
  const token = (serviceAccount: string, audience: string | undefined, boundTo?: string) =>
    kubectl([
      "-n",
      NS,
      "create",
      "token",
      serviceAccount,
      "--duration",
      "10m",
      ...(audience === undefined ? [] : ["--audience", audience]),
      ...(boundTo === undefined
        ? []
        : [
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            boundTo,
            "--bound-object-uid",
            uids.get(boundTo) ?? "",
          ]),
    ]);
  const createPod = async (name: string, serviceAccount: string, annotations: Record<string, string>) => {
    await kubectl(["apply", "-f", "-"], pod(name, serviceAccount, annotations));
    uids.set(name, await kubectl(["-n", NS, "get", "pod", name, "-o", "jsonpath={.metadata.uid}"]));
  };
  /** A fresh delivery each time: no cached review carries over between cases. */
  const delivery = () =>
    new IdentityDelivery({
      reviewer: kubernetesTokenReviewer(cluster.operatorKubeConfig),
      pods: kubernetesPodReader(cluster.operatorKubeConfig),
      lookup: { identity: (namespace, name) => (namespace === NS && name === "cart" ? CART : undefined) },
      secretOf: (identity) => (identity.namespace === NS && identity.name === "cart" ? SECRET : undefined),
      sidecarImage: SIDECAR_IMAGE,
      logger: quiet,
    });
  const outcomeOf = async (bearer: string) => {
    const outcome = await delivery().decide(bearer);
    return outcome.ok
      ? { status: 200, reason: "delivered" }
      : { status: outcome.status, reason: outcome.reason };
  };

  beforeAll(async () => {
    cluster = await startCluster({ namespaces: [NS] });
    for (const account of ["cart", "other"]) await kubectl(["-n", NS, "create", "serviceaccount", account]);
    await createPod("cart-1", "cart", { "custody.dev/inject": "true" });
    await createPod("other-1", "other", { "custody.dev/inject": "true", "custody.dev/identity": "cart" });
    await createPod("opted-out", "cart", { "custody.dev/inject": "false" });
    await createPod("cart-gone", "cart", { "custody.dev/inject": "true" });
  }, 180_000);
  afterAll(async () => {
    await cluster?.close();
  });

  it("hands the identity to a pod of its service account that asked for injection", async () => {
    const outcome = await delivery().decide(await token("cart", "custody", "cart-1"));
    expect(outcome).toMatchObject({
      ok: true,
      identity: "shop/cart",
      body: { certificate: "CERT", key: "KEY", ca: "CA" },
    });
  });

  it("refuses the pod's API-server token (wrong audience) and a token bound to no pod", async () => {
    expect(await outcomeOf(await token("cart", undefined, "cart-1"))).toEqual({
      status: 401,
      reason: "token_invalid",
    });
    expect(await outcomeOf(await token("cart", "custody"))).toEqual({ status: 401, reason: "token_invalid" });
    expect(await outcomeOf("not.a.token")).toEqual({ status: 401, reason: "token_invalid" });
  });

  it("refuses a pod of another service account that names the identity", async () => {
    expect(await outcomeOf(await token("other", "custody", "other-1"))).toEqual({
      status: 403,
      reason: "service_account_mismatch",
    });
  });

  it("refuses a pod of the right service account that opted out of injection, even with a token for custody", async () => {
    expect(await outcomeOf(await token("cart", "custody", "opted-out"))).toEqual({
      status: 403,
      reason: "injection_disabled",
    });
  });

  it("refuses the token of a deleted pod, also when a new pod takes its name", async () => {
    const bearer = await token("cart", "custody", "cart-gone");
    expect(await outcomeOf(bearer)).toEqual({ status: 200, reason: "delivered" });
    await kubectl(["-n", NS, "delete", "pod", "cart-gone", "--wait=true", "--grace-period=0", "--force"]);
    // The API server refuses a token whose pod is gone once its cache knows; until then the pod
    // lookup does.
    expect(["token_invalid", "pod_not_found"]).toContain((await outcomeOf(bearer)).reason);
    await createPod("cart-gone", "cart", { "custody.dev/inject": "true" });
    expect(["token_invalid", "pod_mismatch"]).toContain((await outcomeOf(bearer)).reason);
  });
});
