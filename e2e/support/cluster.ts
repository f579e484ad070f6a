/**
 * A Kubernetes cluster for operator tests: the test API server with the CRDs and namespaces
 * applied by the real kubectl, a client-node KubeConfig, and a Custody CA on disk.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { pino } from "pino";
import { createCertificateAuthority, writeCertificateAuthority } from "../../pki/src/index.js";
import type { ServiceResolver } from "../apiserver/admission.js";
import { type RunningApiServer, startApiServer } from "../apiserver/server.js";
import { type Kubectl, kubectlFor } from "./kubectl.js";

export interface Cluster {
  readonly apiserver: RunningApiServer;
  readonly kubeConfig: KubeConfig;
  readonly kubectl: Kubectl;
  readonly directory: string;
  readonly caDirectory: string;
  readonly kubeconfigPath: string;
  close(): Promise<void>;
}

/** An API server with the CRDs and the namespaces applied by kubectl, and a CA on disk. */
export async function startCluster(options: { serviceResolver?: ServiceResolver } = {}): Promise<Cluster> {
  const directory = await mkdtemp(join(tmpdir(), "custody-operator-k8s-"));
  const apiserver = await startApiServer({
    port: 0,
    bookmarkIntervalMs: 1_000,
    logger: pino({ level: process.env.LOG_LEVEL ?? "silent" }),
    ...(options.serviceResolver === undefined ? {} : { serviceResolver: options.serviceResolver }),
  });
  const kubeconfigPath = join(directory, "kubeconfig");
  await apiserver.kubeconfig(kubeconfigPath);
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(kubeconfigPath);
  const kubectl = kubectlFor(kubeconfigPath, join(directory, "kubectl-cache"));
  const crds = await kubectl(["apply", "--validate=false", "-f", "crds/"]);
  if (crds.code !== 0) throw new Error(`kubectl apply of the CRDs failed: ${crds.stderr}`);
  for (const namespace of ["shop", "custody-system"]) {
    const created = await kubectl(["create", "namespace", namespace]);
    if (created.code !== 0) throw new Error(created.stderr);
  }
  const caDirectory = join(directory, "ca");
  await writeCertificateAuthority(
    caDirectory,
    await createCertificateAuthority({ trustDomain: "custody.local" }),
    {
      force: false,
    },
  );
  return {
    apiserver,
    kubeConfig,
    kubectl,
    directory,
    caDirectory,
    kubeconfigPath,
    async close() {
      await apiserver.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}
