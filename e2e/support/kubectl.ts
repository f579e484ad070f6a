/** The real kubectl against the test API server, as a user would run it. */
import { spawn } from "node:child_process";
import { once } from "node:events";

export interface KubectlResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export type Kubectl = (args: readonly string[], input?: string) => Promise<KubectlResult>;

/** kubectl with this kubeconfig and its own discovery cache (so runs never share one). */
export function kubectlFor(kubeconfigPath: string, cacheDirectory: string): Kubectl {
  return async (args, input) => {
    const child = spawn("kubectl", ["--kubeconfig", kubeconfigPath, "--cache-dir", cacheDirectory, ...args], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString();
    });
    child.stderr.on("data", (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    child.stdin.end(input ?? "");
    const [code] = (await once(child, "close")) as [number];
    return { code, stdout, stderr };
  };
}
