/** A kubeconfig for kubectl and @kubernetes/client-node pointing at the plain-HTTP test server. */
import { writeFile } from "node:fs/promises";
import { stringify } from "yaml";

export const CONTEXT_NAME = "custody-e2e";

/**
 * `insecure-skip-tls-verify: true` is required by client-node 1.x for an http:// server (it refuses
 * plain HTTP otherwise); kubectl ignores it for http://. No credentials: the server has no auth.
 */
export function kubeconfigYaml(url: string, namespace = "default"): string {
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: CONTEXT_NAME, cluster: { server: url, "insecure-skip-tls-verify": true } }],
    users: [{ name: CONTEXT_NAME, user: {} }],
    contexts: [{ name: CONTEXT_NAME, context: { cluster: CONTEXT_NAME, user: CONTEXT_NAME, namespace } }],
    "current-context": CONTEXT_NAME,
  });
}

export async function writeKubeconfig(path: string, url: string): Promise<void> {
  await writeFile(path, kubeconfigYaml(url), { mode: 0o600 });
}
