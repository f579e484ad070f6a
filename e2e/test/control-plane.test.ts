/**
 * The real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager built from
 * source by e2e/control-plane/build.sh) driven by the real kubectl: the version Helm would read,
 * the controllers the operator relies on (namespace deletion, service accounts and their tokens,
 * the root CA published into namespaces, Deployments, garbage collection) and RBAC for a client
 * certificate user. Skipped with a visible reason when the binaries are not built.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ControlPlane, requireControlPlane } from "../support/control-plane.js";
import { type Kubectl, type KubectlResult, kubectlFor } from "../support/kubectl.js";
import { requireTool } from "../support/tools.js";

const HAS_KUBECTL = requireTool("kubectl");
const HAS_CONTROL_PLANE = requireControlPlane();
/** Controllers are quick, but two cores may also be building or testing something else. */
const POLL = { timeout: 60_000, interval: 250 } as const;
const TEST_TIMEOUT_MS = 90_000;

interface ObjectMeta {
  readonly name: string;
  readonly uid: string;
  readonly ownerReferences?: readonly { readonly kind: string; readonly name: string }[];
}
interface ListOf<T> {
  readonly items: readonly T[];
}

function succeeded(result: KubectlResult): string {
  if (result.code !== 0) throw new Error(`kubectl failed (${result.code}): ${result.stderr}`);
  return result.stdout;
}

describe.skipIf(!HAS_KUBECTL || !HAS_CONTROL_PLANE)("a real Kubernetes control plane", () => {
  let plane: ControlPlane | undefined;
  let cacheDirectory = "";
  let kubectl: Kubectl;
  const controlPlane = () => plane as ControlPlane;
  /** kubectl as the admin; throws unless it succeeds. */
  const admin = async (args: readonly string[], input?: string) => succeeded(await kubectl(args, input));
  const json = async <T>(args: readonly string[]) => JSON.parse(await admin([...args, "-o", "json"])) as T;
  const createNamespace = async (name: string) => {
    await admin(["create", "namespace", name]);
    return name;
  };

  beforeAll(async () => {
    plane = await ControlPlane.start();
    cacheDirectory = await mkdtemp(join(tmpdir(), "custody-kubectl-cache-"));
    kubectl = kubectlFor(plane.kubeconfigPath, cacheDirectory);
  }, 180_000);

  afterAll(async () => {
    await plane?.stop();
    if (cacheDirectory !== "") await rm(cacheDirectory, { recursive: true, force: true });
  }, 30_000);

  it("reports the version it was built as to kubectl (what Helm checks)", async () => {
    const expected = ControlPlane.binaries();
    if (!expected.available) throw new Error(expected.reason);
    const reported = JSON.parse(await admin(["version", "-o", "json"])) as {
      serverVersion?: { gitVersion?: string; major?: string; minor?: string; gitTreeState?: string };
    };
    expect(reported.serverVersion?.gitVersion).toBe(expected.binaries.kubernetesVersion);
    expect(controlPlane().version).toBe(expected.binaries.kubernetesVersion);
    const [, minor] = expected.binaries.kubernetesVersion.split(".");
    expect(reported.serverVersion).toMatchObject({ major: "1", minor, gitTreeState: "clean" });
  });

  it(
    "deletes a namespace and what is in it (the namespace controller finishes the deletion)",
    async () => {
      const namespace = await createNamespace("cp-deleted");
      await admin(["create", "configmap", "inside", "-n", namespace, "--from-literal=a=b"]);
      await admin(["delete", "namespace", namespace, "--wait=true", "--timeout=60s"]);
      const after = await kubectl(["get", "namespace", namespace]);
      expect(after.code).not.toBe(0);
      expect(after.stderr).toContain("NotFound");
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "gives a ServiceAccount tokens through TokenRequest and publishes the root CA into a new namespace",
    async () => {
      const namespace = await createNamespace("cp-accounts");
      // The serviceaccount controller makes `default`; the root-ca publisher, kube-root-ca.crt.
      await vi.waitFor(() => admin(["get", "serviceaccount", "default", "-n", namespace]), POLL);
      await vi.waitFor(async () => {
        const published = await admin([
          "get",
          "configmap",
          "kube-root-ca.crt",
          "-n",
          namespace,
          "-o",
          "jsonpath={.data.ca\\.crt}",
        ]);
        expect(published.trim()).toBe(controlPlane().caPem.trim());
      }, POLL);

      await admin(["create", "serviceaccount", "robot", "-n", namespace]);
      const token = (
        await admin([
          "create",
          "token",
          "robot",
          "-n",
          namespace,
          "--audience",
          "custody-test",
          "--duration=10m",
        ])
      ).trim();
      const [, payload = ""] = token.split(".");
      const claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as {
        iss?: string;
        sub?: string;
        aud?: readonly string[];
      };
      expect(claims).toMatchObject({
        iss: controlPlane().serviceAccountIssuer,
        sub: `system:serviceaccount:${namespace}:robot`,
        aud: ["custody-test"],
      });

      // A token for the API server's own audience authenticates as the ServiceAccount.
      const apiToken = (await admin(["create", "token", "robot", "-n", namespace])).trim();
      const robot = kubectlFor(await controlPlane().tokenKubeconfig("robot", apiToken), cacheDirectory);
      const review = JSON.parse(succeeded(await robot(["auth", "whoami", "-o", "json"]))) as {
        status?: { userInfo?: { username?: string; groups?: readonly string[] } };
      };
      expect(review.status?.userInfo?.username).toBe(`system:serviceaccount:${namespace}:robot`);
      expect(review.status?.userInfo?.groups).toContain(`system:serviceaccounts:${namespace}`);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "runs a Deployment to a ReplicaSet and Pods, which stay Pending with no node",
    async () => {
      const namespace = await createNamespace("cp-deploy");
      await vi.waitFor(() => admin(["get", "serviceaccount", "default", "-n", namespace]), POLL);
      await admin([
        "create",
        "deployment",
        "web",
        "-n",
        namespace,
        "--image=registry.invalid/custody/web:1",
        "--replicas=2",
      ]);
      const replicaSet = await vi.waitFor(async () => {
        const sets = await json<ListOf<{ metadata: ObjectMeta }>>(["get", "replicasets", "-n", namespace]);
        expect(sets.items).toHaveLength(1);
        return sets.items[0]?.metadata as ObjectMeta;
      }, POLL);
      expect(replicaSet.ownerReferences).toEqual([
        expect.objectContaining({ kind: "Deployment", name: "web" }),
      ]);
      await vi.waitFor(async () => {
        const pods = await json<
          ListOf<{ metadata: ObjectMeta; spec: { nodeName?: string }; status: { phase?: string } }>
        >(["get", "pods", "-n", namespace]);
        expect(pods.items).toHaveLength(2);
        for (const pod of pods.items) {
          expect(pod.status.phase).toBe("Pending");
          expect(pod.spec.nodeName).toBeUndefined();
          expect(pod.metadata.ownerReferences).toEqual([
            expect.objectContaining({ kind: "ReplicaSet", name: replicaSet.name }),
          ]);
        }
      }, POLL);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "garbage-collects a ConfigMap whose owner was deleted",
    async () => {
      const namespace = await createNamespace("cp-gc");
      await admin(["create", "configmap", "owner", "-n", namespace, "--from-literal=role=owner"]);
      const owner = await json<{ metadata: ObjectMeta }>(["get", "configmap", "owner", "-n", namespace]);
      await admin(
        ["create", "-n", namespace, "-f", "-"],
        JSON.stringify({
          apiVersion: "v1",
          kind: "ConfigMap",
          metadata: {
            name: "dependent",
            ownerReferences: [
              { apiVersion: "v1", kind: "ConfigMap", name: "owner", uid: owner.metadata.uid },
            ],
          },
          data: { role: "dependent" },
        }),
      );
      await admin(["create", "configmap", "bystander", "-n", namespace, "--from-literal=role=none"]);
      await admin(["delete", "configmap", "owner", "-n", namespace]);
      await vi.waitFor(async () => {
        const dependent = await kubectl(["get", "configmap", "dependent", "-n", namespace]);
        expect(dependent.stderr).toContain("NotFound");
      }, POLL);
      // Only what the owner owned.
      await admin(["get", "configmap", "bystander", "-n", namespace]);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "forbids a client-certificate user everything until RBAC grants it, through its group",
    async () => {
      const namespace = await createNamespace("cp-rbac");
      const other = await createNamespace("cp-rbac-other");
      const alice = kubectlFor(await controlPlane().mintUser("alice", ["custody-testers"]), cacheDirectory);

      const whoami = JSON.parse(succeeded(await alice(["auth", "whoami", "-o", "json"]))) as {
        status?: { userInfo?: { username?: string; groups?: readonly string[] } };
      };
      expect(whoami.status?.userInfo?.username).toBe("alice");
      expect(whoami.status?.userInfo?.groups).toEqual(
        expect.arrayContaining(["custody-testers", "system:authenticated"]),
      );

      const before = await alice(["auth", "can-i", "list", "pods", "-n", namespace]);
      expect(before.stdout.trim()).toBe("no");
      const forbidden = await alice(["get", "pods", "-n", namespace]);
      expect(forbidden.code).not.toBe(0);
      expect(forbidden.stderr).toMatch(/Forbidden.*User "alice" cannot list resource "pods"/);

      await admin([
        "create",
        "rolebinding",
        "testers-view",
        "-n",
        namespace,
        "--clusterrole=view",
        "--group=custody-testers",
      ]);
      await vi.waitFor(async () => {
        expect((await alice(["auth", "can-i", "list", "pods", "-n", namespace])).stdout.trim()).toBe("yes");
      }, POLL);
      expect(succeeded(await alice(["get", "pods", "-n", namespace]))).toBe("");
      // Only where the binding is, and only what the role allows.
      expect((await alice(["auth", "can-i", "list", "pods", "-n", other])).stdout.trim()).toBe("no");
      expect((await alice(["auth", "can-i", "delete", "pods", "-n", namespace])).stdout.trim()).toBe("no");
    },
    TEST_TIMEOUT_MS,
  );
});
