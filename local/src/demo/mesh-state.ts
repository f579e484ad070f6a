/**
 * What the demo reads from the running system, from the outside: the published registry, the
 * identity Secrets (an attacker holding cart's key is one of the scenarios), and readiness. Every
 * wait polls with a deadline and stops at Ctrl-C.
 */
import { connect } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { loadRegistry } from "../../../crds/src/registry.js";
import type { Registry } from "../../../crds/src/registry-schema.js";
import { readBoundedFile } from "../../../pki/src/files.js";
import type { LinkSigner } from "../../../sidecar/src/chain/mint.js";
import { loadIdentityFiles } from "../../../sidecar/src/runtime/identity-files.js";
import { signerFor } from "../../../sidecar/src/runtime/own-keys.js";
import { readRegistryTexts, snapshotOf } from "../../../sidecar/src/runtime/registry-source.js";
import type { RunningLocal, RunningWorkload } from "../running.js";
import { DemoError, type DemoErrorCode } from "./errors.js";

export interface WaitOptions {
  readonly signal?: AbortSignal | undefined;
  readonly timeoutMs?: number;
  readonly intervalMs?: number;
}

/** Polls `probe` until it answers something; its last problem is the error's message. */
export async function waitFor<T>(
  what: string,
  code: DemoErrorCode,
  probe: () => Promise<T | string>,
  options: WaitOptions = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  for (;;) {
    if (options.signal?.aborted) throw new DemoError("demo_aborted", "stopped.");
    const answer = await probe();
    if (typeof answer !== "string") return answer;
    if (Date.now() > deadline) throw new DemoError(code, `${what}: ${answer}`);
    try {
      await sleep(options.intervalMs ?? 100, undefined, { signal: options.signal });
    } catch {
      throw new DemoError("demo_aborted", "stopped.");
    }
  }
}

/** The registry the sidecars of `namespace` read; undefined while there is none (or it is mid-write). */
export async function readRegistry(running: RunningLocal, namespace: string): Promise<Registry | undefined> {
  try {
    return loadRegistry(await readRegistryTexts(running.registryDirectory(namespace)));
  } catch {
    return undefined;
  }
}

/** What `serviceId`'s sidecar signs links with: its certificate key under its registry kid. */
export async function linkSignerOf(running: RunningLocal, serviceId: string): Promise<LinkSigner> {
  const namespace = running.workload(serviceId).namespace;
  const identity = await loadIdentityFiles(running.secretDirectory(serviceId));
  const registry = await readRegistry(running, namespace);
  const signer = registry === undefined ? undefined : signerFor(identity, snapshotOf(registry));
  if (signer === undefined) {
    throw new DemoError("demo_not_ready", `the registry does not publish ${serviceId}'s current key.`);
  }
  return signer;
}

/** `serviceId`'s certificate and key (PEM), for mutual TLS as that workload. */
export async function clientCredentialsOf(
  running: RunningLocal,
  serviceId: string,
): Promise<{ cert: string; key: string }> {
  const directory = running.secretDirectory(serviceId);
  const [cert, key] = await Promise.all([
    readBoundedFile(join(directory, "tls.crt"), 64 * 1024),
    readBoundedFile(join(directory, "tls.key"), 64 * 1024),
  ]);
  return { cert, key };
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.setTimeout(1000);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("timeout", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", () => resolve(false));
  });
}

/** The generation a sidecar serves, or why it is not ready. */
async function sidecarGeneration(workload: RunningWorkload): Promise<number | string> {
  try {
    const answer = await fetch(`${workload.adminUrl}/readyz`, { signal: AbortSignal.timeout(2000) });
    const body = (await answer.json()) as { reason?: unknown; generation?: unknown };
    if (answer.status !== 200) return `${workload.serviceId}'s sidecar is not ready (${String(body.reason)})`;
    return typeof body.generation === "number" ? body.generation : `${workload.serviceId}: no generation`;
  } catch (error) {
    return `${workload.serviceId}'s sidecar does not answer (${error instanceof Error ? error.message : String(error)})`;
  }
}

/** One check of one workload: app listening, sidecar ready, own key published and served. */
async function workloadProblem(
  running: RunningLocal,
  workload: RunningWorkload,
): Promise<string | undefined> {
  if (!(await portOpen(workload.appPort))) return `${workload.serviceId}'s app is not listening yet`;
  const served = await sidecarGeneration(workload);
  if (typeof served === "string") return served;
  const registry = await readRegistry(running, workload.namespace);
  if (registry === undefined) return `no registry for namespace ${workload.namespace} yet`;
  const identity = await loadIdentityFiles(running.secretDirectory(workload.serviceId));
  if (signerFor(identity, snapshotOf(registry)) === undefined) {
    return `the registry does not publish ${workload.serviceId}'s key yet`;
  }
  if (served < registry.generation) {
    return `${workload.serviceId}'s sidecar serves registry generation ${served}, not ${registry.generation}`;
  }
  return undefined;
}

/**
 * Until every workload is ready at once: a workload's key published later makes a new registry
 * generation, which the sidecars ready before it must load too (or they could not call it).
 */
export async function waitForWorkloads(
  running: RunningLocal,
  progress: (line: string) => void,
  options: WaitOptions = {},
): Promise<void> {
  const reported = new Set<string>();
  await waitFor(
    "the workloads did not become ready",
    "demo_not_ready",
    async () => {
      let first: string | undefined;
      for (const workload of running.workloads) {
        const problem = await workloadProblem(running, workload);
        if (problem === undefined && !reported.has(workload.serviceId)) {
          reported.add(workload.serviceId);
          progress(
            `${workload.serviceId} ready (app :${workload.appPort}, sidecar inbound :${workload.inboundPort})`,
          );
        }
        first ??= problem;
      }
      return first ?? true;
    },
    options,
  );
}

/**
 * Until the registry publishes `namespace/name` with `mode`, and every sidecar of the namespace
 * serves that generation: only then does a call see the change.
 */
export async function waitForPolicyMode(
  running: RunningLocal,
  policy: { readonly namespace: string; readonly name: string; readonly mode: "enforce" | "audit" },
  options: WaitOptions = {},
): Promise<number> {
  const generation = await waitFor(
    `AccessPolicy ${policy.namespace}/${policy.name} was not published with mode ${policy.mode}`,
    "demo_policy_not_applied",
    async () => {
      const registry = await readRegistry(running, policy.namespace);
      const published = registry?.policies.find(
        (entry) => entry.namespace === policy.namespace && entry.name === policy.name,
      );
      if (published === undefined) return "not in the registry";
      return published.mode === policy.mode ? (registry?.generation ?? 0) : `still ${published.mode}`;
    },
    options,
  );
  for (const workload of running.workloads.filter((entry) => entry.namespace === policy.namespace)) {
    await waitFor(
      `${workload.serviceId} did not load registry generation ${generation}`,
      "demo_policy_not_applied",
      async () => {
        const served = await sidecarGeneration(workload);
        if (typeof served === "string") return served;
        return served >= generation ? served : `serves generation ${served}`;
      },
      options,
    );
  }
  return generation;
}
