/**
 * The token service under test for bench/issuer.ts: a throw-away CA, one ServiceIdentity and one
 * workload certificate in a temp directory, and `custody issuer` run from source as a real child
 * process on two free ports of 127.0.0.1. The child's pino log goes to a file in the temp directory
 * (not a pipe), so the benchmark process spends no CPU reading it.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { type AddressInfo, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  createCertificateAuthority,
  issueCertificate,
  privateKeyToPem,
  writeCertificateAuthority,
} from "../pki/src/index.js";

export const CLIENT_ID = "cart.shop";
export const CLIENT_SCOPES = "cart.read";
export const CLIENT_CLAIMS = { team: "checkout" } as const;

const MANIFEST = `apiVersion: custody.dev/v1alpha1
kind: ServiceIdentity
metadata: {name: cart, namespace: shop}
spec: {scopes: [${CLIENT_SCOPES}], claims: {team: ${CLIENT_CLAIMS.team}}}
`;
const ENTRY = fileURLToPath(new URL("../cli/src/entry.ts", import.meta.url));
const REPO = fileURLToPath(new URL("../", import.meta.url));
/** Start-up guard only (tsx compiles the CLI on start): never a performance assertion. */
const STARTUP_LIMIT_MS = 60_000;
const HOST = "127.0.0.1";
const STOP_GRACE_MS = 15_000;

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

/** CPU time (user + system) consumed so far, in seconds. */
export type CpuClock = () => number;

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

function clockTicksPerSecond(): number {
  try {
    const ticks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());
    return Number.isInteger(ticks) && ticks > 0 ? ticks : 100;
  } catch {
    return 100;
  }
}

function procCpuClock(pid: number): CpuClock | undefined {
  const path = `/proc/${pid}/stat`;
  const ticks = clockTicksPerSecond();
  const read = () => {
    // Fields after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
    const text = readFileSync(path, "utf8");
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / ticks;
  };
  try {
    return Number.isFinite(read()) ? read : undefined;
  } catch {
    return undefined;
  }
}

/**
 * CPU time (user + system + irq + steal) all cores of this machine have spent so far, in seconds,
 * from /proc/stat; undefined where there is none. Minus the server's and the client's, it is what
 * other processes took during a batch: on a shared machine, the noise.
 */
export function machineCpuClock(): CpuClock | undefined {
  const ticks = clockTicksPerSecond();
  const read = () => {
    const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0] ?? "";
    // cpu user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
    return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / ticks;
  };
  try {
    return Number.isFinite(read()) && read() > 0 ? read : undefined;
  } catch {
    return undefined;
  }
}

/** A port that is free on 127.0.0.1 right now (the OS picks it; the issuer binds it a moment later). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, HOST, () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

/**
 * Waits until the admin server answers /readyz (it starts listening after the token endpoint, so
 * both are up then). Polls rather than reading the "listening" log line, which --log-level warn hides.
 */
async function waitUntilReady(adminUrl: URL, exited: Promise<string>): Promise<void> {
  let gone: string | undefined;
  void exited.then((reason) => {
    gone = reason;
  });
  const deadline = Date.now() + STARTUP_LIMIT_MS;
  while (Date.now() < deadline) {
    if (gone !== undefined) throw new Error(`custody issuer ${gone} before it was ready`);
    try {
      const response = await fetch(new URL("/readyz", adminUrl));
      await response.arrayBuffer();
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`custody issuer was not ready within ${STARTUP_LIMIT_MS / 1000} s`);
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
  let child: ChildProcess | undefined;
  let stderr = "";
  const logFile = join(directory, "issuer.log");
  const removeDirectory = () => rmSync(directory, { recursive: true, force: true });
  // Last resort if the benchmark dies without stopping the child (an uncaught error, process.exit).
  const onExit = () => {
    child?.kill("SIGKILL");
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
    const logFd = openSync(logFile, "w");
    const started = spawn(
      process.execPath,
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
      { cwd: REPO, stdio: ["ignore", logFd, "pipe"] },
    );
    child = started;
    closeSync(logFd);
    started.stderr?.setEncoding("utf8");
    started.stderr?.on("data", (chunk: string) => {
      stderr = `${stderr}${chunk}`.slice(-8_000);
    });
    let stopping = false;
    const exited = new Promise<string>((resolve) => {
      started.once("exit", (code, signal) => {
        if (!stopping) resolve(signal === null ? `exited with code ${code}` : `was killed by ${signal}`);
      });
      started.once("error", (error) => resolve(`could not start: ${error.message}`));
    });
    const pid = started.pid;
    if (pid === undefined) throw new Error(`custody issuer ${await exited}`);

    const tail = (lines = 20) => {
      let log = "";
      try {
        log = readFileSync(logFile, "utf8");
      } catch {}
      const last = (text: string) =>
        text
          .trimEnd()
          .split("\n")
          .filter((line) => !line.includes('"event":"token_issued"'))
          .slice(-lines)
          .join("\n");
      return (
        `--- issuer log (last ${lines} lines but token_issued) ---\n${last(log)}\n` +
        `--- issuer stderr ---\n${last(stderr)}`
      );
    };
    try {
      await waitUntilReady(adminUrl, exited);
    } catch (error) {
      throw new Error(`${error instanceof Error ? error.message : String(error)}\n${tail()}`);
    }
    const target: Target = {
      host: HOST,
      port,
      tokenUrl: new URL(`https://${HOST}:${port}/oauth2/token`),
      adminUrl,
      cert: client.certificate.pem,
      key: privateKeyToPem(client.privateKey),
      ca: ca.certificate.pem,
    };
    return {
      target,
      pid,
      logFile,
      cpu: procCpuClock(pid),
      exited,
      tail,
      async stop() {
        stopping = true;
        if (started.exitCode === null && started.signalCode === null) {
          const gone = new Promise((resolve) => started.once("exit", resolve));
          started.kill("SIGTERM");
          const force = setTimeout(() => started.kill("SIGKILL"), STOP_GRACE_MS);
          await gone;
          clearTimeout(force);
        }
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
