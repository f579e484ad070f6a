/**
 * The chart installed the way its README tells a user to, into a real control plane (kube-apiserver
 * v1.36, etcd, kube-controller-manager) with the real helm and kubectl: the CA made by `custody pki
 * init` and stored as a Secret, `helm install`, then `helm upgrade` and `helm uninstall`. The API
 * server accepts every object (CRDs, RBAC, webhooks, Services, the Deployment, the PDB), and the
 * Deployment's controller makes a ReplicaSet and Pods — which stay Pending: this cluster has no
 * node yet.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ControlPlane, requireControlPlane } from "../support/control-plane.js";
import { type Helm, openHelm } from "../support/helm.js";
import { type Kubectl, kubectlFor } from "../support/kubectl.js";
import { requireTool } from "../support/tools.js";

const HAS_CLUSTER = requireTool("kubectl") && requireTool("unzip") && requireControlPlane();
const NAMESPACE = "custody-system";
const WAIT = { timeout: 60_000, interval: 250 };

function custody(args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile("node", ["bin/custody.mjs", ...args], (error, stdout, stderr) =>
      resolve({ code: typeof error?.code === "number" ? error.code : 0, stdout, stderr }),
    );
  });
}

interface Listed {
  readonly items: {
    readonly metadata: { readonly name: string; readonly ownerReferences?: { kind: string; name: string }[] };
    readonly spec?: { readonly replicas?: number };
    readonly status?: { readonly phase?: string };
  }[];
}

describe.skipIf(!HAS_CLUSTER)("helm install of charts/custody into a real control plane", () => {
  let plane: ControlPlane;
  let directory: string;
  let helm: Helm;
  let kubectl: Kubectl;

  const ok = async (args: readonly string[], input?: string) => {
    const result = await kubectl(args, input);
    expect(result.code, `kubectl ${args.join(" ")}: ${result.stderr}`).toBe(0);
    return result.stdout;
  };
  const list = async (kind: string, namespace = NAMESPACE) =>
    JSON.parse(await ok(["get", kind, "-n", namespace, "-o", "json"])) as Listed;
  const runHelm = async (args: readonly string[]) => {
    const result = await helm.run([...args, "--kubeconfig", plane.kubeconfigPath]);
    expect(result.code, `helm ${args.join(" ")}: ${result.stderr}`).toBe(0);
    return result.stdout;
  };

  beforeAll(async () => {
    plane = await ControlPlane.start({ log: () => undefined });
    directory = await mkdtemp(join(tmpdir(), "custody-helm-install-"));
    helm = await openHelm();
    kubectl = kubectlFor(plane.kubeconfigPath, join(directory, "kubectl-cache"));
  }, 120_000);
  afterAll(async () => {
    await helm?.close();
    await plane?.stop();
    if (directory !== undefined) await rm(directory, { recursive: true, force: true });
  });

  it("README step 1: the CA from `custody pki init`, as a Secret in a new namespace", async () => {
    const ca = join(directory, "ca");
    const init = await custody(["pki", "init", "--out", ca, "--trust-domain", "cluster.example"]);
    expect(init.code, init.stderr).toBe(0);
    await ok(["create", "namespace", NAMESPACE]);
    await ok([
      "-n",
      NAMESPACE,
      "create",
      "secret",
      "generic",
      "custody-ca",
      `--from-file=ca.crt=${join(ca, "ca.crt")}`,
      `--from-file=ca.key=${join(ca, "ca.key")}`,
    ]);
  });

  it("README step 3: helm install — every object accepted, the Deployment's Pods created (Pending)", async () => {
    const installed = await runHelm(["install", "custody", "charts/custody", "--namespace", NAMESPACE]);
    expect(installed).toContain("STATUS: deployed");
    // Helm checks the chart's kubeVersion against the server's /version: the real one.
    expect(await runHelm(["status", "custody", "-n", NAMESPACE])).toContain("STATUS: deployed");

    const crds = await ok(["get", "crd", "-o", "name"]);
    expect(crds).toContain("serviceidentities.custody.dev");
    expect(crds).toContain("accesspolicies.custody.dev");
    expect(
      await ok(["get", "mutatingwebhookconfiguration", "custody-sidecar-injector", "-o", "name"]),
    ).toContain("custody-sidecar-injector");
    expect(
      await ok(["get", "validatingwebhookconfiguration", "custody-accesspolicy-validator", "-o", "name"]),
    ).toContain("custody-accesspolicy-validator");
    expect((await list("services")).items.map((item) => item.metadata.name).sort()).toEqual(
      expect.arrayContaining(["custody-issuer", "custody-webhook"]),
    );
    expect(
      await ok([
        "auth",
        "can-i",
        "list",
        "serviceidentities.custody.dev",
        "--as",
        `system:serviceaccount:${NAMESPACE}:custody-operator`,
        "-A",
      ]),
    ).toContain("yes");

    await vi.waitFor(async () => {
      const pods = (await list("pods")).items;
      expect(pods).toHaveLength(2);
      for (const pod of pods) expect(pod.status?.phase).toBe("Pending");
      expect(pods[0]?.metadata.ownerReferences?.[0]?.kind).toBe("ReplicaSet");
    }, WAIT);
  });

  it("Kubernetes' view and edit roles cover ServiceIdentities and AccessPolicies, through aggregation", async () => {
    await ok(["create", "namespace", "team"]);
    await ok(["-n", "team", "create", "rolebinding", "viewers", "--clusterrole=view", "--user=vera"]);
    await ok(["-n", "team", "create", "rolebinding", "editors", "--clusterrole=edit", "--user=eddie"]);
    const can = async (user: string, verb: string, resource: string, subresource?: string) =>
      (
        await kubectl([
          "-n",
          "team",
          "auth",
          "can-i",
          verb,
          resource,
          "--as",
          user,
          ...(subresource === undefined ? [] : ["--subresource", subresource]),
        ])
      ).stdout.trim();
    // The controller-manager's aggregation controller fills view and edit from the chart's roles.
    await vi.waitFor(
      async () => expect(await can("vera", "list", "serviceidentities.custody.dev")).toBe("yes"),
      WAIT,
    );
    expect(await can("vera", "get", "accesspolicies.custody.dev")).toBe("yes");
    expect(await can("vera", "create", "serviceidentities.custody.dev")).toBe("no");
    await vi.waitFor(
      async () => expect(await can("eddie", "create", "serviceidentities.custody.dev")).toBe("yes"),
      WAIT,
    );
    expect(await can("eddie", "delete", "accesspolicies.custody.dev")).toBe("yes");
    // Status stays the operator's.
    expect(await can("eddie", "patch", "serviceidentities.custody.dev", "status")).toBe("no");
    expect(await can("eddie", "list", "serviceidentities.custody.dev")).toBe("yes");
  });

  it("helm upgrade to 3 replicas: the Deployment scales, the release moves to revision 2", async () => {
    await runHelm([
      "upgrade",
      "custody",
      "charts/custody",
      "--namespace",
      NAMESPACE,
      "--set",
      "replicaCount=3",
    ]);
    expect((await list("deployments")).items[0]?.spec?.replicas).toBe(3);
    await vi.waitFor(async () => expect((await list("pods")).items).toHaveLength(3), WAIT);
    expect(await runHelm(["history", "custody", "-n", NAMESPACE])).toMatch(/^2\s/m);
  });

  it("helm uninstall: the operator and the webhooks go; the CRDs and the CA Secret stay", async () => {
    await runHelm(["uninstall", "custody", "--namespace", NAMESPACE, "--wait"]);
    await vi.waitFor(async () => expect((await list("deployments")).items).toEqual([]), WAIT);
    const webhooks = await kubectl(["get", "mutatingwebhookconfiguration", "custody-sidecar-injector"]);
    expect(webhooks.code).not.toBe(0);
    expect(await ok(["get", "crd", "-o", "name"])).toContain("serviceidentities.custody.dev");
    expect(await ok(["get", "secret", "custody-ca", "-n", NAMESPACE, "-o", "name"])).toContain("custody-ca");
    // The controllers clean up behind the Deployment: no ReplicaSet, no Pod is left.
    await vi.waitFor(async () => expect((await list("pods")).items).toEqual([]), WAIT);
  });
});
