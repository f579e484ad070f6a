/**
 * `custody local up` as a function: the whole system on one machine, as processes. The operator
 * (local store, with its token service) turns the directory's ServiceIdentities and AccessPolicies
 * into Secrets and a registry under the state directory; each LocalWorkload gets a sidecar reading
 * exactly those files, and its app behind it. The directory is watched: manifests apply through
 * the operator, LocalWorkload changes start, restart or stop workloads here.
 */
import { randomBytes } from "node:crypto";
import { access, chmod, rm } from "node:fs/promises";
import { connect } from "node:net";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { identitySecretKey } from "../../operator/src/controllers/identity-secret.js";
import { keyOf } from "../../operator/src/store/store.js";
import { caPaths, createCertificateAuthority, writeCertificateAuthority } from "../../pki/src/ca.js";
import { ensureDirectory, MODE_PRIVATE, writeFilesAtomically } from "../../pki/src/files.js";
import { ChangeWatcher } from "../../pki/src/watch.js";
import { PortBook } from "./ports.js";
import { ManagedProcess, ProcessError } from "./processes.js";
import type { RunningLocal, RunningWorkload, StartLocalOptions } from "./running.js";
import { custodyCommand } from "./self.js";
import { type LocalWorkload, readWorkloads } from "./workloads.js";

/**
 * The local operator's own namespace: where it keeps every identity's Secret (as files under its
 * state directory), as on Kubernetes, where no workload namespace holds a private key.
 */
const OPERATOR_NAMESPACE = "custody-system";
const REPO = fileURLToPath(new URL("../..", import.meta.url).href.replace(/dist\/$/, ""));
const TRUST_DOMAIN = "custody.local";
const DEFAULT_PROPAGATION_DELAY_MS = 2_000;
/** How long a workload waits for the operator to issue its identity before it is reported. */
const IDENTITY_WAIT_MS = 30_000;

interface Started {
  readonly workload: LocalWorkload;
  readonly running: RunningWorkload;
  readonly sidecar: ManagedProcess;
  readonly app: ManagedProcess;
}

export async function startLocal(options: StartLocalOptions): Promise<RunningLocal> {
  const directory = resolve(options.directory);
  const state = resolve(options.stateDirectory);
  const { progress } = options;
  if (options.reset === true) {
    progress(`--reset: removing ${state}`);
    await rm(state, { recursive: true, force: true });
  }
  await ensureDirectory(state, 0o700);
  // Private to this user even when it already existed: it holds the CA key and every workload key.
  await chmod(state, 0o700);
  const logs = join(state, "logs");
  await ensureDirectory(logs, 0o700);
  const caDirectory = join(state, "ca");
  if (!(await exists(caPaths(caDirectory).key))) {
    progress(`creating the CA (trust domain ${TRUST_DOMAIN}) in ${caDirectory}`);
    await writeCertificateAuthority(
      caDirectory,
      await createCertificateAuthority({ trustDomain: TRUST_DOMAIN }),
      {
        force: false,
      },
    );
  } else {
    progress(`reusing the CA in ${caDirectory}`);
  }
  const operatorState = join(state, "operator");
  const locationsPath = join(state, "locations.json");
  const book = await PortBook.open(state);
  const self = custodyCommand();
  const childEnv = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith("CUSTODY_")),
  );
  const tokenUrl = `https://127.0.0.1:${book.token}/oauth2/token`;
  const started = new Map<string, Started>();

  const writeLocations = async (workloads: readonly LocalWorkload[]) => {
    const locations: Record<string, string> = {};
    for (const workload of workloads) {
      locations[workload.serviceId] = `127.0.0.1:${(await book.workload(keyOf(workload))).inbound}`;
    }
    await writeFilesAtomically(
      [{ path: locationsPath, data: `${JSON.stringify(locations, null, 2)}\n`, mode: MODE_PRIVATE }],
      {
        overwrite: true,
      },
    );
  };

  const startOperatorProcess = () => {
    progress(`starting the operator and token service (https://127.0.0.1:${book.token})`);
    return ManagedProcess.start({
      name: "operator",
      command: self.command,
      args: [
        ...self.args,
        "operator",
        "--ca",
        caDirectory,
        "--local",
        directory,
        "--namespace",
        OPERATOR_NAMESPACE,
        "--state",
        operatorState,
        "--token-listen",
        `127.0.0.1:${book.token}`,
        "--token-admin",
        `127.0.0.1:${book.tokenAdmin}`,
        "--admin",
        `127.0.0.1:${book.operatorAdmin}`,
        "--locations",
        locationsPath,
        "--propagation-delay",
        `${options.propagationDelayMs ?? DEFAULT_PROPAGATION_DELAY_MS}ms`,
        "--poll-interval",
        "500ms",
        ...(options.trustedIssuersPath === undefined
          ? []
          : ["--trusted-issuers", resolve(options.trustedIssuersPath)]),
        ...(options.trustBundlePath === undefined
          ? []
          : ["--trust-bundle", resolve(options.trustBundlePath)]),
      ],
      cwd: REPO,
      env: childEnv,
      logFile: join(logs, "operator.log"),
      readyWhen: '"event":"operator_started"',
    });
  };

  const secretDirectory = (workload: { readonly namespace: string; readonly identity: string }) => {
    const key = identitySecretKey(OPERATOR_NAMESPACE, {
      namespace: workload.namespace,
      name: workload.identity,
    });
    return join(operatorState, "secrets", key.namespace, key.name);
  };
  const registryDirectory = (namespace: string) => join(operatorState, "registry", namespace);

  /**
   * Fresh credentials for one workload start: the one its app presents on the sidecar's outbound
   * port and key service (every process of this machine reaches 127.0.0.1), and the one its sidecar
   * presents to the app (Custody-Sidecar-Token), for apps that check where a request came from.
   */
  const workloadSecrets = async (slug: string) => {
    const directory = join(state, "clients", slug);
    await ensureDirectory(directory, 0o700);
    const client = randomBytes(32).toString("base64url");
    const app = randomBytes(32).toString("base64url");
    const clientFile = join(directory, "client-secret");
    const appFile = join(directory, "app-secret");
    await writeFilesAtomically(
      [
        { path: clientFile, data: client, mode: MODE_PRIVATE },
        { path: appFile, data: app, mode: MODE_PRIVATE },
      ],
      { overwrite: true },
    );
    return { client, clientFile, app, appFile };
  };

  const startWorkload = async (workload: LocalWorkload): Promise<Started> => {
    const ports = await book.workload(keyOf(workload));
    const identityDirectory = secretDirectory(workload);
    const registry = registryDirectory(workload.namespace);
    progress(`waiting for the identity of ${workload.serviceId}`);
    await waitForFiles(
      [join(identityDirectory, "tls.crt"), join(registry, "registry-0.json")],
      IDENTITY_WAIT_MS,
      `LocalWorkload ${keyOf(workload)} (${workload.source}) runs as ServiceIdentity ${workload.namespace}/${workload.identity}, which has no certificate after ${IDENTITY_WAIT_MS / 1000} s: declare that ServiceIdentity in ${directory} (see ${join(operatorState, "status", workload.namespace)} and ${join(logs, "operator.log")})`,
    );
    const slug = `${workload.namespace}-${workload.name}`;
    const secrets = await workloadSecrets(slug);
    progress(`starting the sidecar of ${workload.serviceId} (inbound 127.0.0.1:${ports.inbound})`);
    const sidecar = await ManagedProcess.start({
      name: `sidecar ${workload.serviceId}`,
      command: self.command,
      args: [
        ...self.args,
        "sidecar",
        "--identity",
        identityDirectory,
        "--registry",
        registry,
        "--app-port",
        String(ports.app),
        "--token-url",
        tokenUrl,
        "--inbound",
        `127.0.0.1:${ports.inbound}`,
        "--outbound",
        `127.0.0.1:${ports.outbound}`,
        "--admin",
        `127.0.0.1:${ports.admin}`,
        "--client-secret-file",
        secrets.clientFile,
        "--app-secret-file",
        secrets.appFile,
        "--poll-interval",
        "1s",
      ],
      cwd: REPO,
      env: childEnv,
      logFile: join(logs, `sidecar-${slug}.log`),
      readyWhen: '"event":"listening"',
    });
    const outboundUrl = `http://127.0.0.1:${ports.outbound}`;
    // What the app is given: the proxy and key service with its credential in the URL's userinfo.
    const appOutboundUrl = `http://custody:${secrets.client}@127.0.0.1:${ports.outbound}`;
    const [program, ...args] = workload.command;
    progress(`starting the app of ${workload.serviceId}: ${workload.command.join(" ")} (port ${ports.app})`);
    let app: ManagedProcess;
    try {
      app = await ManagedProcess.start({
        name: `app ${workload.serviceId}`,
        command: program ?? "",
        args,
        cwd: directory,
        env: {
          ...childEnv,
          ...workload.env,
          PORT: String(ports.app),
          HTTP_PROXY: appOutboundUrl,
          http_proxy: appOutboundUrl,
          CUSTODY_KEYS_URL: `${appOutboundUrl}/.custody`,
          CUSTODY_SIDECAR_TOKEN: secrets.app,
          CUSTODY_SERVICE_ID: workload.serviceId,
        },
        logFile: join(logs, `app-${slug}.log`),
      });
      await waitForPort(ports.app, app, 30_000);
    } catch (error) {
      await sidecar.stop();
      throw error;
    }
    return {
      workload,
      sidecar,
      app,
      running: {
        name: workload.name,
        namespace: workload.namespace,
        serviceId: workload.serviceId,
        appPort: ports.app,
        inboundPort: ports.inbound,
        outboundPort: ports.outbound,
        adminPort: ports.admin,
        outboundUrl,
        clientSecret: secrets.client,
        appProxyUrl: appOutboundUrl,
        adminUrl: `http://127.0.0.1:${ports.admin}`,
      },
    };
  };

  const stopWorkload = async (entry: Started) => {
    progress(`stopping ${entry.workload.serviceId}`);
    await entry.app.stop();
    await entry.sidecar.stop();
  };

  /** Brings the running workloads in line with the directory. */
  const syncWorkloads = async () => {
    const { workloads, problems } = await readWorkloads(directory);
    for (const problem of problems) progress(`skipped: ${problem.source}: ${problem.message}`);
    await writeLocations(workloads);
    const wanted = new Map(workloads.map((workload) => [keyOf(workload), workload]));
    for (const [key, entry] of [...started]) {
      if (wanted.get(key)?.digest !== entry.workload.digest) {
        started.delete(key);
        await stopWorkload(entry);
      }
    }
    // Started side by side: each mostly waits (for its identity, for its processes to be ready).
    const starting = [...wanted].filter(([key]) => !started.has(key));
    const results = await Promise.allSettled(
      starting.map(async ([key, workload]) => started.set(key, await startWorkload(workload))),
    );
    const failed = results.find((result): result is PromiseRejectedResult => result.status === "rejected");
    if (failed !== undefined) throw failed.reason;
  };

  const initial = await readWorkloads(directory);
  for (const problem of initial.problems) progress(`skipped: ${problem.source}: ${problem.message}`);
  await writeLocations(initial.workloads);
  let operator: ManagedProcess | undefined = await startOperatorProcess();
  let watcher: ChangeWatcher | undefined;
  const close = async () => {
    watcher?.close();
    await Promise.all([...started.values()].map((entry) => stopWorkload(entry)));
    started.clear();
    await operator?.stop();
    operator = undefined;
  };
  try {
    await syncWorkloads();
  } catch (error) {
    await close();
    throw error;
  }
  watcher = new ChangeWatcher([directory], syncWorkloads, {
    pollIntervalMs: 1_000,
    onError: (error) =>
      progress(`workloads not updated: ${error instanceof Error ? error.message : String(error)}`),
  });

  const running: RunningLocal = {
    stateDirectory: state,
    caDirectory,
    tokenUrl,
    operatorAdminUrl: `http://127.0.0.1:${book.operatorAdmin}`,
    tokenAdminUrl: `http://127.0.0.1:${book.tokenAdmin}`,
    get workloads() {
      return [...started.values()].map((entry) => entry.running);
    },
    workload(serviceId) {
      const found = [...started.values()].find((entry) => entry.running.serviceId === serviceId);
      if (found === undefined) throw new ProcessError(`no workload runs as ${serviceId}`);
      return found.running;
    },
    secretDirectory(serviceId) {
      const [identity = "", namespace = ""] = serviceId.split(".");
      return secretDirectory({ namespace, identity });
    },
    registryDirectory,
    async stopOperator() {
      progress("stopping the operator and token service");
      await operator?.stop();
      operator = undefined;
    },
    async startOperator() {
      if (operator === undefined) operator = await startOperatorProcess();
    },
    close,
  };
  return running;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

async function waitForFiles(paths: readonly string[], timeoutMs: number, message: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const present = await Promise.all(paths.map(exists));
    if (present.every(Boolean)) return;
    if (Date.now() > deadline) throw new ProcessError(message);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Until the app accepts connections on its port; fails at once if it exits first. */
async function waitForPort(port: number, app: ManagedProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!app.running) {
      throw new ProcessError(
        `${app.spec.name} exited before listening on 127.0.0.1:${port}; its log (${app.spec.logFile}) ends with:\n${app.tail()}`,
      );
    }
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) {
      await app.stop();
      throw new ProcessError(
        `${app.spec.name} did not listen on 127.0.0.1:${port} (its $PORT) within ${timeoutMs / 1000} s; see ${app.spec.logFile}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
