/**
 * `custody demo` as a function: the talk's shop → cart → payments scenario on a local system, from
 * a working copy of examples/shop, with a throw-away identity provider. Everything it starts is
 * stopped before it returns, whatever happens (errors, Ctrl-C).
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEFAULT_TRUST_DOMAIN } from "../../../crds/src/names.js";
import { readBoundedFile } from "../../../pki/src/files.js";
import type { RunningLocal, StartLocalOptions } from "../running.js";
import { DemoError } from "./errors.js";
import { createDemoIdp, trustedIssuersDocument } from "./idp.js";
import { localMesh } from "./local-mesh.js";
import { readRegistry, waitForWorkloads } from "./mesh-state.js";
import type { CapturedCall } from "./outcomes.js";
import { passed } from "./report.js";
import { runScenarios, type ScenarioResult, untilAborted } from "./scenarios.js";
import { copyExample, findExampleDirectory } from "./workspace.js";

export const TRUSTED_ISSUERS_FILE = "demo-trusted-issuers.json";

export interface DemoOptions {
  /** `startLocal` (local/src/up.ts); injected so the demo can be driven by tests. */
  readonly start: (options: StartLocalOptions) => Promise<RunningLocal>;
  /** Reuse this state directory (CA, identities) instead of a fresh temporary one. */
  readonly stateDirectory?: string | undefined;
  /** Leave the working copy and state on disk afterwards (their paths are reported). */
  readonly keep?: boolean | undefined;
  readonly exampleDirectory?: string | undefined;
  readonly progress: (line: string) => void;
  readonly signal?: AbortSignal | undefined;
  /** How long the workloads may take to become ready. */
  readonly readyTimeoutMs?: number | undefined;
}

export interface DemoReport {
  readonly results: readonly ScenarioResult[];
  readonly captured: CapturedCall | undefined;
  /** The captured chain as `custody token inspect` shows it, verified against the registry. */
  readonly chainTree: string | undefined;
  readonly passed: boolean;
  readonly workingDirectory: string;
  readonly stateDirectory: string;
}

export async function runDemo(options: DemoOptions): Promise<DemoReport> {
  const { progress, signal } = options;
  const example = options.exampleDirectory ?? (await findExampleDirectory());
  const scratch = await mkdtemp(join(tmpdir(), "custody-demo-"));
  const workingDirectory = join(scratch, "shop");
  const stateDirectory = options.stateDirectory ?? join(scratch, "state");
  let running: RunningLocal | undefined;
  try {
    await copyExample(example, workingDirectory);
    await mkdir(stateDirectory, { recursive: true, mode: 0o700 });
    progress(`working copy of ${example}: ${workingDirectory}`);

    // The IdP's key exists only in this process; the sidecars get its public half.
    const idp = createDemoIdp();
    const trustedIssuersPath = join(stateDirectory, TRUSTED_ISSUERS_FILE);
    await writeFile(trustedIssuersPath, `${JSON.stringify(trustedIssuersDocument(idp), null, 2)}\n`);
    progress(`identity provider ${idp.issuer} (key ${idp.kid}, generated for this run)`);

    // startLocal cannot be interrupted half-way: on Ctrl-C its result is closed right after.
    running = await options.start({
      directory: workingDirectory,
      stateDirectory,
      trustedIssuersPath,
      progress,
    });
    if (signal?.aborted) throw new DemoError("demo_aborted", "stopped.");
    const started = running;
    await untilAborted(
      waitForWorkloads(started, progress, { signal, timeoutMs: options.readyTimeoutMs ?? 60_000 }),
      signal,
    );

    const ca = await readBoundedFile(join(started.caDirectory, "ca.crt"), 256 * 1024);
    const trustDomain = (await readRegistry(started, "shop"))?.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    const { results, captured, chainTree } = await runScenarios({
      mesh: localMesh({ running: started, ca, trustDomain, workingDirectory, progress, signal }),
      idp,
      progress,
      signal,
    });
    return { results, captured, chainTree, passed: passed(results), workingDirectory, stateDirectory };
  } finally {
    if (running !== undefined) {
      progress("stopping apps, sidecars and operator");
      await running.close();
    }
    if (options.keep === true) {
      progress(`kept: working copy ${workingDirectory}, state ${stateDirectory}`);
    } else {
      await rm(scratch, { recursive: true, force: true });
    }
  }
}
