/**
 * The token service under test for bench/issuer.ts: a throw-away CA, one ServiceIdentity and one
 * workload certificate in a temp directory, and `custody issuer` run from source as a real child
 * process on two free ports of 127.0.0.1. The child's pino log goes to a file in the temp directory
 * (not a pipe), so the benchmark process spends no CPU reading it.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "../e2e/support/net.js";
import {
  createCertificateAuthority,
  issueCertificate,
  privateKeyToPem,
  writeCertificateAuthority,
} from "../pki/src/index.js";
import { type Child, type CpuClock, processCpuSeconds, REPO, startChild, waitUntilReady } from "./proc.js";

export const CLIENT_ID = "cart.shop";
export const CLIENT_SCOPES = "cart.read";
export const CLIENT_CLAIMS = { team: "checkout" } as const;

const MANIFEST = `apiVersion: custody.dev/v1alpha1
kind: ServiceIdentity
metadata: {name: cart, namespace: shop}
spec: {scopes: [${CLIENT_SCOPES}], claims: {team: ${CLIENT_CLAIMS.team}}}
`;
const ENTRY = join(REPO, "cli/src/entry.ts");
const HOST = "127.0.0.1";

/** What a client needs to reach the token service with the workload's certificate. */
export interface Target {
  readonly host: string;
  readonly port: number;
  readonly tokenUrl: URL;
  readonly adminUrl: URL;
  /** Client certificate (PEM), its private key (PEM) and the CA certificate the server chains to. */
  readonly cert: string;
  readonly key: string;
  readonly ca: string;
}

export type { CpuClock } from "./proc.js";

export interface IssuerProcess {
  readonly target: Target;
  readonly pid: number;
  readonly logFile: string;
  /** The child's CPU time from /proc/PID/stat; undefined where there is no /proc (not Linux). */
  readonly cpu: CpuClock | undefined;
  /** Resolves with the reason if the child exits before stop() is called. */
  readonly exited: Promise<string>;
  /** The last lines of the child's log (without the token_issued lines) and stderr, for error messages. */
  tail(lines?: number): string;
  /** SIGTERM (the issuer drains and exits), SIGKILL if it takes too long; removes the temp directory. */
  stop(): Promise<void>;
}

/**
 * Creates the CA, the manifest and the client certificate in a new temp directory, starts
 * `custody issuer` on two free ports of 127.0.0.1 and waits until it answers /readyz. On any failure
 * the child is killed and the directory removed before the error is thrown. `nodeArgs` go to the
 * child's node before the script (e.g. --cpu-prof --cpu-prof-dir=DIR to profile the issuer).
 */
export async function startIssuerProcess(
  logLevel: string,
  nodeArgs: readonly string[] = [],
): Promise<IssuerProcess> {
  const directory = mkdtempSync(join(tmpdir(), "custody-bench-issuer-"));
  let child: Child | undefined;
  const removeDirectory = () => rmSync(directory, { recursive: true, force: true });
  // Last resort if the benchmark dies without stopping the child (an uncaught error, process.exit).
  const onExit = () => {
    if (child !== undefined && child.pid > 0) {
      try {
        process.kill(child.pid, "SIGKILL");
      } catch {}
    }
    removeDirectory();
  };
  process.once("exit", onExit);
  try {
    const ca = await createCertificateAuthority();
    const caDirectory = join(directory, "ca");
    await writeCertificateAuthority(caDirectory, ca, { force: false });
    const manifests = join(directory, "manifests");
    await mkdir(manifests);
    writeFileSync(join(manifests, "cart.yaml"), MANIFEST);
    const client = await issueCertificate(ca, { id: CLIENT_ID });

    const port = await freePort();
    const adminPort = await freePort();
    const adminUrl = new URL(`http://${HOST}:${adminPort}`);
    const started = startChild(
      "custody issuer",
      [
        ...nodeArgs,
        "--import",
        "tsx",
        ENTRY,
        "issuer",
        "--ca",
        caDirectory,
        "--manifests",
        manifests,
        "--listen",
        `${HOST}:${port}`,
        "--admin",
        `${HOST}:${adminPort}`,
        "--log-level",
        logLevel,
      ],
      join(directory, "issuer.log"),
      // One line per token would bury the lines that say why the issuer failed.
      { hideLogLines: (line) => line.includes('"event":"token_issued"') },
    );
    child = started;
    if (started.pid < 0) throw new Error(`custody issuer ${await started.exited}`);
    // The admin server starts listening after the token endpoint, so both are up then.
    await waitUntilReady(started, new URL("/readyz", adminUrl).href);
    const target: Target = {
      host: HOST,
      port,
      tokenUrl: new URL(`https://${HOST}:${port}/oauth2/token`),
      adminUrl,
      cert: client.certificate.pem,
      key: privateKeyToPem(client.privateKey),
      ca: ca.certificate.pem,
    };
    const { pid } = started;
    return {
      target,
      pid,
      logFile: started.logFile,
      cpu: Number.isFinite(processCpuSeconds(pid)) ? () => processCpuSeconds(pid) : undefined,
      exited: started.exited,
      tail: (lines = 20) => started.tail(lines),
      async stop() {
        await started.stop();
        removeDirectory();
        process.off("exit", onExit);
      },
    };
  } catch (error) {
    onExit();
    process.off("exit", onExit);
    throw error;
  }
}
