/**
 * A Kubernetes cluster for operator tests, as a user has one: the real control plane
 * (support/control-plane.ts), the CRDs and namespaces applied by the real kubectl, the chart's
 * ServiceAccount and RBAC for the operator (rendered by the real helm), and a Custody CA on disk.
 *
 * The operator never runs as admin: its kubeconfig carries a token of the chart's ServiceAccount
 * `custody-operator` from the TokenRequest API, so a permission the chart does not grant fails the
 * test that needs it. Its connections go through a TCP proxy the test can cut (a flaky network,
 * dropped watches); the tests' own admin connections do not.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { parseAllDocuments, stringify } from "yaml";
import { createCertificateAuthority, writeCertificateAuthority } from "../../pki/src/index.js";
import { ControlPlane } from "./control-plane.js";
import { openHelm } from "./helm.js";
import { type Kubectl, kubectlFor } from "./kubectl.js";
import { startTcpProxy, type TcpProxy } from "./tcp-proxy.js";

export const OPERATOR_NAMESPACE = "custody-system";
export const OPERATOR_SERVICE_ACCOUNT = "custody-operator";

export interface ClusterOptions {
  /** More kube-apiserver flags, e.g. `--watch-cache=false` so that a compaction reaches watchers. */
  readonly apiserverFlags?: readonly string[];
  /** Namespaces to create besides the operator's. Default: shop. */
  readonly namespaces?: readonly string[];
}

export interface Cluster {
  readonly controlPlane: ControlPlane;
  /** The admin's (system:masters): for setting up and looking, never for the operator. */
  readonly kubeConfig: KubeConfig;
  readonly kubeconfigPath: string;
  readonly kubectl: Kubectl;
  /** The operator's: the chart's ServiceAccount, through the proxy. */
  readonly operatorKubeConfig: KubeConfig;
  readonly operatorKubeconfigPath: string;
  readonly directory: string;
  readonly caDirectory: string;
  /** Cuts every connection of the operator (its watches too) and lets it connect again at once. */
  dropOperatorConnections(): Promise<void>;
  /** The proxy the operator's connections go through, for longer outages. */
  readonly operatorProxy: TcpProxy;
  /** etcd compacted to its current revision: a watch resumed from before gets 410 Gone. */
  compact(): Promise<number>;
  /**
   * Applies operator/manifests/webhooks.yaml with each webhook's `clientConfig.service` replaced by
   * `url: https://127.0.0.1:<port><path>`, as envtest does: no cluster network reaches a Service.
   */
  applyWebhooks(port: number): Promise<void>;
  close(): Promise<void>;
}

/** The chart's ServiceAccount and RBAC for the operator, as `helm template` renders them. */
async function chartRbac(): Promise<string> {
  const helm = await openHelm();
  try {
    const rendered = await helm.run([
      "template",
      "custody",
      "charts/custody",
      "--namespace",
      OPERATOR_NAMESPACE,
      "--show-only",
      "templates/rbac.yaml",
    ]);
    if (rendered.code !== 0) throw new Error(`helm template failed: ${rendered.stderr}`);
    return rendered.stdout;
  } finally {
    await helm.close();
  }
}

async function run(kubectl: Kubectl, args: readonly string[], input?: string): Promise<string> {
  const result = await kubectl(args, input);
  if (result.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed: ${result.stderr}`);
  return result.stdout;
}

export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const directory = await mkdtemp(join(tmpdir(), "custody-operator-k8s-"));
  let controlPlane: ControlPlane | undefined;
  let proxy: TcpProxy | undefined;
  try {
    controlPlane = await ControlPlane.start({
      ...(options.apiserverFlags === undefined ? {} : { apiserverFlags: options.apiserverFlags }),
      log: () => undefined,
    });
    const plane = controlPlane;
    const kubectl = kubectlFor(plane.kubeconfigPath, join(directory, "kubectl-cache"));
    await run(kubectl, ["apply", "-f", "crds/"]);
    for (const namespace of [OPERATOR_NAMESPACE, ...(options.namespaces ?? ["shop"])]) {
      await run(kubectl, ["create", "namespace", namespace]);
    }
    await run(kubectl, ["apply", "-f", "-"], await chartRbac());
    const token = (
      await run(kubectl, [
        "create",
        "token",
        OPERATOR_SERVICE_ACCOUNT,
        "-n",
        OPERATOR_NAMESPACE,
        "--duration=12h",
      ])
    ).trim();
    proxy = await startTcpProxy(Number(new URL(plane.server).port));
    const operatorProxy = proxy;
    const operatorKubeconfigPath = await plane.tokenKubeconfig(
      `system:serviceaccount:${OPERATOR_NAMESPACE}:${OPERATOR_SERVICE_ACCOUNT}`,
      token,
      `https://127.0.0.1:${operatorProxy.port}`,
    );
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromFile(plane.kubeconfigPath);
    const operatorKubeConfig = new KubeConfig();
    operatorKubeConfig.loadFromFile(operatorKubeconfigPath);
    const caDirectory = join(directory, "ca");
    await writeCertificateAuthority(
      caDirectory,
      await createCertificateAuthority({ trustDomain: "custody.local" }),
      { force: false },
    );
    return {
      controlPlane: plane,
      kubeConfig,
      kubeconfigPath: plane.kubeconfigPath,
      kubectl,
      operatorKubeConfig,
      operatorKubeconfigPath,
      directory,
      caDirectory,
      operatorProxy,
      async dropOperatorConnections() {
        await operatorProxy.cut();
        await operatorProxy.restore();
      },
      compact: () => plane.compact(),
      async applyWebhooks(port) {
        const documents = parseAllDocuments(await readFile("operator/manifests/webhooks.yaml", "utf8")).map(
          (document) => document.toJS() as { webhooks: { clientConfig: Record<string, unknown> }[] },
        );
        for (const configuration of documents) {
          for (const webhook of configuration.webhooks) {
            const service = webhook.clientConfig.service as { path?: string } | undefined;
            webhook.clientConfig = { url: `https://127.0.0.1:${port}${service?.path ?? "/"}` };
          }
        }
        const file = join(directory, "webhooks.yaml");
        await writeFile(file, documents.map((document) => stringify(document)).join("---\n"));
        await run(kubectl, ["apply", "-f", file]);
      },
      async close() {
        await operatorProxy.close();
        await plane.stop();
        await rm(directory, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await proxy?.close();
    await controlPlane?.stop();
    await rm(directory, { recursive: true, force: true });
    throw error;
  }
}
