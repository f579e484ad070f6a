/**
 * A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager and,
 * when asked, kube-scheduler, as built from source by `e2e/control-plane/build.sh`, started with
 * free ports in a temporary directory and thrown away by `stop()`. Without a node (support/node.ts)
 * Pods stay Pending. kube-apiserver listens on 127.0.0.1 unless given the node's address.
 *
 * Everything secret is made at run time with the openssl CLI: a CA, the API server's serving
 * certificate, client certificates (an admin in `system:masters`, the controller manager as
 * `system:kube-controller-manager`, users minted by `mintUser`), the service-account signing key.
 * Authentication is by client certificate and service-account token; authorization is Node,RBAC.
 *
 * The binaries are found in `${CUSTODY_CACHE_DIR:-~/.cache/custody}/control-plane/` under the
 * versions `CUSTODY_K8S_VERSION` (default v1.36.3) and `CUSTODY_ETCD_VERSION` (default v3.6.17),
 * as build.sh puts them. `requireControlPlane()` skips a suite visibly when they are missing.
 */
import { execFile } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { accessSync, constants } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { request } from "node:https";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { TLSSocket } from "node:tls";
import { stringify } from "yaml";
import { Daemons, seconds } from "./daemons.js";
import { freePort } from "./net.js";
import { findTool, realClockEnv } from "./tools.js";

export const DEFAULT_KUBERNETES_VERSION = "v1.36.3";
export const DEFAULT_ETCD_VERSION = "v3.6.17";
const LOOPBACK = "127.0.0.1";
/** The Service network; its first address is the `kubernetes` Service's, named in the serving cert. */
const SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24";
const KUBERNETES_SERVICE_IP = "10.0.0.1";
const FRONT_PROXY_CLIENT = "front-proxy-client";
export const SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local";
/** Certificates are checked by the Go binaries on the real clock; a week outlives any test run. */
const CERTIFICATE_DAYS = 7;

export type ComponentName = "etcd" | "kube-apiserver" | "kube-controller-manager" | "kube-scheduler";

export interface ControlPlaneBinaries {
  /** e.g. v1.36.3, the version kube-apiserver reports on /version. */
  readonly kubernetesVersion: string;
  /** e.g. v3.6.17 */
  readonly etcdVersion: string;
  readonly etcd: string;
  readonly kubeApiserver: string;
  readonly kubeControllerManager: string;
  readonly kubeScheduler: string;
}

export type BinariesCheck =
  | { readonly available: true; readonly binaries: ControlPlaneBinaries }
  | { readonly available: false; readonly reason: string };

export interface ControlPlaneOptions {
  /** Default: what `ControlPlane.binaries()` finds. */
  readonly binaries?: ControlPlaneBinaries;
  /** kube-controller-manager's `--controllers`. Default `*` (every controller enabled by default). */
  readonly controllers?: readonly string[];
  /** More kube-apiserver flags (`--name=value`), after the defaults. */
  readonly apiserverFlags?: readonly string[];
  /**
   * Where kube-apiserver listens and what it advertises as the `kubernetes` Service's endpoint.
   * Default 127.0.0.1, where no Pod can reach it. For a cluster with a node, the node's address on
   * the pod network (an address of this machine), so that Pods reach it through the Service.
   */
  readonly address?: string;
  /** Starts kube-scheduler too (Pods get bound to a node). Default false: nothing schedules. */
  readonly scheduler?: boolean;
  /** How long each component may take to become ready. Default 90 s. */
  readonly readyTimeoutMs?: number;
  /** Progress lines. Default: stderr. */
  readonly log?: (line: string) => void;
}

/** Where build.sh puts the binaries for the versions chosen by the environment. */
export function controlPlaneCacheDirectory(): string {
  return join(process.env.CUSTODY_CACHE_DIR ?? join(homedir(), ".cache", "custody"), "control-plane");
}

/** The binaries, or why they are not there. */
function findBinaries(): BinariesCheck {
  const kubernetesVersion = process.env.CUSTODY_K8S_VERSION ?? DEFAULT_KUBERNETES_VERSION;
  const etcdVersion = process.env.CUSTODY_ETCD_VERSION ?? DEFAULT_ETCD_VERSION;
  const cache = controlPlaneCacheDirectory();
  const kubernetes = join(cache, `kubernetes-${kubernetesVersion}`);
  const binaries: ControlPlaneBinaries = {
    kubernetesVersion,
    etcdVersion,
    etcd: join(cache, `etcd-${etcdVersion}`, "etcd"),
    kubeApiserver: join(kubernetes, "kube-apiserver"),
    kubeControllerManager: join(kubernetes, "kube-controller-manager"),
    kubeScheduler: join(kubernetes, "kube-scheduler"),
  };
  const required = [
    binaries.etcd,
    binaries.kubeApiserver,
    binaries.kubeControllerManager,
    binaries.kubeScheduler,
  ];
  const missing = required.filter((path) => {
    try {
      accessSync(path, constants.X_OK);
      return false;
    } catch {
      return true;
    }
  });
  if (missing.length > 0) {
    return {
      available: false,
      reason:
        `the Kubernetes control plane (kube-apiserver ${kubernetesVersion}, etcd ${etcdVersion}) is not built ` +
        `(missing ${missing.join(", ")}); build it with: bash e2e/control-plane/build.sh (a cold build takes ~5 min on 2 cores, plus ~1 GB of Go modules to download)`,
    };
  }
  return { available: true, binaries };
}

/**
 * Like `requireTool`: true when the control plane can start here (binaries built, openssl
 * installed). Otherwise throws when CUSTODY_REQUIRE_ALL=1, or prints a visible `SKIP:` line.
 */
export function requireControlPlane(): boolean {
  const shifted = process.env.CUSTODY_CLOCK_SHIFT;
  if (shifted !== undefined && shifted !== "") {
    // The Go binaries read the real clock (they ignore libfaketime), and what they issue (service
    // account tokens, certificates) would be judged on a clock years away: not a calendar test.
    process.stderr.write(
      `SKIP: the clock is shifted (${shifted}); the Kubernetes control plane runs on the real clock, so its suites are skipped.\n`,
    );
    return false;
  }
  const binaries = findBinaries();
  const openssl = findTool("openssl");
  const reason = !binaries.available ? binaries.reason : openssl.available ? undefined : openssl.detail;
  if (reason === undefined) return true;
  if (process.env.CUSTODY_REQUIRE_ALL === "1") throw new Error(`CUSTODY_REQUIRE_ALL=1 but ${reason}`);
  process.stderr.write(`SKIP: ${reason}; tests that need it are skipped.\n`);
  return false;
}

async function openssl(args: readonly string[], cwd: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    execFile("openssl", args, { cwd, env: realClockEnv() }, (error, _stdout, stderr) => {
      if (error === null) resolve();
      else reject(new Error(`openssl ${args.join(" ")} failed: ${stderr || error.message}`));
    });
  });
}

/** `/O=group/…/CN=name`; names are kept to characters that need no escaping in a subject. */
function subject(commonName: string, organizations: readonly string[]): string {
  for (const part of [commonName, ...organizations]) {
    if (!/^[A-Za-z0-9][A-Za-z0-9:._@-]*$/.test(part)) {
      throw new Error(`"${part}": use letters, digits and : . _ @ - in certificate names`);
    }
  }
  return [...organizations.map((organization) => `/O=${organization}`), `/CN=${commonName}`].join("");
}

interface Credentials {
  readonly certificate: string;
  readonly key: string;
}

/** A CA and the certificates it signs, all in `directory` (P-256 keys; fast to make). */
class Pki {
  readonly caCertificate: string;
  readonly caKey: string;
  readonly #config: string;

  /** `caName` names the CA's files (`<caName>.crt`, `<caName>.key`) and its subject. */
  constructor(
    readonly directory: string,
    readonly caName: string,
  ) {
    this.caCertificate = join(directory, `${caName}.crt`);
    this.caKey = join(directory, `${caName}.key`);
    this.#config = join(directory, "openssl.cnf");
  }

  /** A config of our own, so the system's openssl.cnf adds no extensions (its v3_ca marks CAs). */
  async init(): Promise<void> {
    await mkdir(this.directory, { recursive: true });
    await writeFile(this.#config, "[req]\ndistinguished_name = dn\n[dn]\n");
    await this.#make(
      this.caName,
      `/CN=custody-control-plane-${this.caName}`,
      ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"],
      false,
    );
  }

  /** A key and a certificate signed by the CA. */
  async issue(name: string, subjectName: string, extensions: readonly string[]): Promise<Credentials> {
    return this.#make(
      name,
      subjectName,
      ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature", ...extensions],
      true,
    );
  }

  /** A key pair: the private key (PKCS#8 PEM) and its public key (SPKI PEM). */
  async keyPair(name: string): Promise<{ readonly privateKey: string; readonly publicKey: string }> {
    const privateKey = join(this.directory, `${name}.key`);
    const publicKey = join(this.directory, `${name}.pub`);
    await openssl(
      ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", privateKey],
      this.directory,
    );
    await openssl(["pkey", "-in", privateKey, "-pubout", "-out", publicKey], this.directory);
    return { privateKey, publicKey };
  }

  async #make(
    name: string,
    subjectName: string,
    extensions: readonly string[],
    signed: boolean,
  ): Promise<Credentials> {
    const certificate = join(this.directory, `${name}.crt`);
    const key = join(this.directory, `${name}.key`);
    await openssl(
      [
        "req",
        "-x509",
        "-new",
        "-config",
        this.#config,
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
        "-out",
        certificate,
        "-days",
        String(CERTIFICATE_DAYS),
        "-subj",
        subjectName,
        ...(signed ? ["-CA", this.caCertificate, "-CAkey", this.caKey] : []),
        ...extensions.flatMap((extension) => ["-addext", extension]),
      ],
      this.directory,
    );
    return { certificate, key };
  }
}

type KubeconfigUser =
  | { readonly clientCertificate: string; readonly clientKey: string }
  | { readonly token: string };

function kubeconfig(server: string, caPem: string, userName: string, user: KubeconfigUser): string {
  const base64 = (text: string) => Buffer.from(text).toString("base64");
  return stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [
      { name: "custody-control-plane", cluster: { server, "certificate-authority-data": base64(caPem) } },
    ],
    users: [
      {
        name: userName,
        user:
          "token" in user
            ? { token: user.token }
            : {
                "client-certificate-data": base64(user.clientCertificate),
                "client-key-data": base64(user.clientKey),
              },
      },
    ],
    contexts: [{ name: userName, context: { cluster: "custody-control-plane", user: userName } }],
    "current-context": userName,
  });
}

interface HttpAnswer {
  readonly status: number;
  readonly body: string;
}

interface ProbeOptions {
  /** The client certificate to present. */
  readonly client?: { readonly certificate: string; readonly key: string };
  /** The serving certificate's SHA-256 fingerprint the server must present; unchecked when absent. */
  readonly fingerprint?: string;
}

/**
 * GET over TLS without verifying the chain, which Node would check on its own clock (shifted under
 * clock-shift.sh while the Go binaries run on the real one); the API server is pinned instead by
 * the fingerprint of the serving certificate made for it.
 */
async function httpsGet(url: string, options: ProbeOptions): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const outgoing = request(
      url,
      {
        method: "GET",
        agent: false,
        rejectUnauthorized: false,
        timeout: 5_000,
        ...(options.client === undefined
          ? {}
          : { cert: options.client.certificate, key: options.client.key }),
      },
      (response) => {
        const socket = response.socket;
        if (
          options.fingerprint !== undefined &&
          (!(socket instanceof TLSSocket) ||
            socket.getPeerCertificate().fingerprint256 !== options.fingerprint)
        ) {
          response.destroy();
          reject(new Error(`${url}: the server did not present the expected certificate`));
          return;
        }
        let body = "";
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => {
          body += chunk;
        });
        response.on("end", () => resolve({ status: response.statusCode ?? 0, body }));
        response.on("error", reject);
      },
    );
    outgoing.on("timeout", () => outgoing.destroy(new Error(`${url}: no answer within 5 s`)));
    outgoing.on("error", reject);
    outgoing.end();
  });
}

/** A throw-away Kubernetes control plane. Start with `ControlPlane.start()`, end with `stop()`. */
export class ControlPlane {
  /** The binaries build.sh made for the versions the environment chooses, or why they are missing. */
  static binaries(): BinariesCheck {
    return findBinaries();
  }

  /**
   * Makes the PKI, starts etcd, kube-apiserver (until /readyz and /livez answer ok) and
   * kube-controller-manager (until /healthz answers ok and it made the `default` ServiceAccount).
   * On failure every process is stopped and the error carries the tail of each component's log.
   */
  static async start(options: ControlPlaneOptions = {}): Promise<ControlPlane> {
    let binaries = options.binaries;
    if (binaries === undefined) {
      const check = findBinaries();
      if (!check.available) throw new Error(check.reason);
      binaries = check.binaries;
    }
    // A free port can be taken between the check and the start: try again with new ones.
    for (let attempt = 1; ; attempt++) {
      const directory = await mkdtemp(join(tmpdir(), "custody-control-plane-"));
      const plane = new ControlPlane(directory, binaries, options);
      try {
        await plane.#boot();
        return plane;
      } catch (error) {
        await plane.stop();
        const portTaken = error instanceof Error && /address already in use/i.test(error.message);
        if (!portTaken || attempt === 3) throw error;
        plane.#log("a port was taken meanwhile; starting again on other ports");
      }
    }
  }

  /** The temporary directory: PKI, etcd's data, logs, kubeconfigs (removed by `stop`). */
  readonly directory: string;
  /** The admin kubeconfig (client certificate in group `system:masters`). */
  readonly kubeconfigPath: string;
  readonly binaries: ControlPlaneBinaries;
  readonly serviceAccountIssuer = SERVICE_ACCOUNT_ISSUER;
  readonly serviceClusterIpRange = SERVICE_CLUSTER_IP_RANGE;
  readonly #options: ControlPlaneOptions;
  readonly #pki: Pki;
  /** The CA of the aggregation layer's front proxy (request-header authentication), kept apart. */
  readonly #frontProxyPki: Pki;
  readonly #daemons: Daemons;
  #server = "";
  #etcdUrl = "";
  #version = "";
  #caPem = "";
  #fingerprint = "";
  #admin: Credentials | undefined;
  #stopped = false;

  private constructor(directory: string, binaries: ControlPlaneBinaries, options: ControlPlaneOptions) {
    this.directory = directory;
    this.binaries = binaries;
    this.#options = options;
    this.#pki = new Pki(join(directory, "pki"), "ca");
    this.#frontProxyPki = new Pki(join(directory, "pki"), "front-proxy-ca");
    this.kubeconfigPath = join(directory, "admin.kubeconfig");
    this.address = options.address ?? LOOPBACK;
    this.#daemons = new Daemons(join(directory, "logs"), (line) => this.#log(line));
  }

  /** Where kube-apiserver listens (ControlPlaneOptions.address). */
  readonly address: string;

  /** https://<address>:<port> */
  get server(): string {
    return this.#server;
  }

  /** etcd's client URL (plain HTTP on 127.0.0.1). */
  get etcdUrl(): string {
    return this.#etcdUrl;
  }

  /**
   * Compacts etcd's history up to its current revision, as etcd's periodic compaction does in a
   * real cluster: a watch resumed from an older resourceVersion gets 410 Gone (when the API
   * server serves it from etcd rather than its watch cache) and the client must list again.
   * Returns the revision compacted to.
   */
  async compact(): Promise<number> {
    const post = async (path: string, body: unknown) => {
      const response = await fetch(`${this.#etcdUrl}${path}`, {
        method: "POST",
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(5_000),
      });
      const text = await response.text();
      if (response.status !== 200) throw new Error(`etcd ${path}: ${response.status} ${text}`);
      return JSON.parse(text) as { header?: { revision?: string } };
    };
    const range = await post("/v3/kv/range", {
      key: Buffer.from("custody-compaction-probe").toString("base64"),
    });
    const revision = Number(range.header?.revision ?? 0);
    await post("/v3/kv/compaction", { revision: String(revision), physical: true });
    return revision;
  }

  /** The gitVersion the API server reports on /version, e.g. v1.36.3. */
  get version(): string {
    return this.#version;
  }

  /** The CA that signed the serving certificate and every client certificate (PEM). */
  get caPem(): string {
    return this.#caPem;
  }

  /** Where each component's stdout and stderr go (inside `directory`). */
  logPath(component: ComponentName): string {
    return this.#daemons.logPath(component);
  }

  /**
   * The process id of a running component (the binary itself: setpriv execs it), e.g. to read its
   * CPU time and memory in /proc; undefined when it is not running.
   */
  pid(component: ComponentName): number | undefined {
    return this.#daemons.pid(component);
  }

  /**
   * A kubeconfig for a user authenticated by a client certificate (CN = name, O = each group),
   * with no permissions beyond what RBAC grants that user or those groups.
   */
  async mintUser(name: string, groups: readonly string[] = []): Promise<string> {
    const credentials = await this.#pki.issue(`user-${name}`, subject(name, groups), [
      "extendedKeyUsage=clientAuth",
    ]);
    const path = join(this.directory, "users", `${name.replaceAll(":", "_")}.kubeconfig`);
    await mkdir(join(this.directory, "users"), { recursive: true });
    await writeFile(path, await this.#kubeconfig(name, credentials), { mode: 0o600 });
    return path;
  }

  /**
   * A kubeconfig presenting a bearer token (e.g. from `kubectl create token`) and nothing else; to
   * `server` when given (a proxy in front of the API server on 127.0.0.1), else the API server.
   */
  async tokenKubeconfig(name: string, token: string, server = this.server): Promise<string> {
    const path = join(
      this.directory,
      "users",
      `token-${name.replaceAll(/[^A-Za-z0-9._-]/g, "_")}.kubeconfig`,
    );
    await mkdir(join(this.directory, "users"), { recursive: true });
    await writeFile(path, kubeconfig(server, this.caPem, name, { token }), { mode: 0o600 });
    return path;
  }

  /** GET on the API server as the admin: status and body, whatever the status. */
  async get(path: string): Promise<HttpAnswer> {
    const admin = this.#admin;
    if (admin === undefined) throw new Error("the control plane is not started");
    return httpsGet(`${this.server}${path}`, {
      client: {
        certificate: await readFile(admin.certificate, "utf8"),
        key: await readFile(admin.key, "utf8"),
      },
      fingerprint: this.#fingerprint,
    });
  }

  /** Stops every process (SIGTERM, SIGKILL after 5 s) and removes the directory. Idempotent. */
  async stop(): Promise<void> {
    if (!this.#stopped) {
      this.#stopped = true;
      // The clients of etcd first, then etcd.
      await this.#daemons.stop(["kube-scheduler", "kube-controller-manager", "kube-apiserver"]);
      await this.#daemons.stop(["etcd"]);
    }
    await rm(this.directory, { recursive: true, force: true });
  }

  #log(line: string): void {
    (this.#options.log ?? ((text: string) => process.stderr.write(`${text}\n`)))(`control-plane: ${line}`);
  }

  async #kubeconfig(userName: string, credentials: Credentials): Promise<string> {
    return kubeconfig(this.server, this.caPem, userName, {
      clientCertificate: await readFile(credentials.certificate, "utf8"),
      clientKey: await readFile(credentials.key, "utf8"),
    });
  }

  async #boot(): Promise<void> {
    const started = Date.now();
    const timeout = this.#options.readyTimeoutMs ?? 90_000;
    const { kubernetesVersion, etcdVersion } = this.binaries;
    this.#log(`starting Kubernetes ${kubernetesVersion} (etcd ${etcdVersion}) in ${this.directory}`);
    await mkdir(join(this.directory, "logs"), { recursive: true });
    const [etcdClientPort, etcdPeerPort, apiserverPort, controllerManagerPort, schedulerPort] =
      await distinctFreePorts(5);
    this.#server = `https://${this.address}:${apiserverPort}`;

    // PKI, made fresh on every start.
    const pki = this.#pki;
    await pki.init();
    this.#caPem = await readFile(pki.caCertificate, "utf8");
    const serving = await pki.issue("kube-apiserver", "/CN=kube-apiserver", [
      "extendedKeyUsage=serverAuth",
      `subjectAltName=${[
        ...new Set([`IP:${LOOPBACK}`, `IP:${this.address}`]),
        `IP:${KUBERNETES_SERVICE_IP}`,
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
      ].join(",")}`,
    ]);
    this.#fingerprint = new X509Certificate(await readFile(serving.certificate)).fingerprint256;
    const clientAuth = ["extendedKeyUsage=clientAuth"];
    this.#admin = await pki.issue("admin", subject("custody-admin", ["system:masters"]), clientAuth);
    const controllerManager = await pki.issue(
      "kube-controller-manager",
      subject("system:kube-controller-manager", []),
      clientAuth,
    );
    const scheduler = await pki.issue("kube-scheduler", subject("system:kube-scheduler", []), clientAuth);
    const kubeletClient = await pki.issue(
      "kube-apiserver-kubelet-client",
      subject("kube-apiserver-kubelet-client", ["system:masters"]),
      clientAuth,
    );
    const serviceAccountKey = await pki.keyPair("service-account");
    // The aggregation layer: the API server proxies to extension API servers as this client,
    // which they (and kube-controller-manager's delegated authentication) trust through the
    // request-header CA the API server publishes in kube-system/extension-apiserver-authentication.
    await this.#frontProxyPki.init();
    const frontProxyClient = await this.#frontProxyPki.issue(
      "front-proxy-client",
      subject(FRONT_PROXY_CLIENT, []),
      clientAuth,
    );
    await writeFile(this.kubeconfigPath, await this.#kubeconfig("custody-admin", this.#admin), {
      mode: 0o600,
    });
    const controllerManagerKubeconfig = join(this.directory, "kube-controller-manager.kubeconfig");
    await writeFile(
      controllerManagerKubeconfig,
      await this.#kubeconfig("system:kube-controller-manager", controllerManager),
      { mode: 0o600 },
    );
    const schedulerKubeconfig = join(this.directory, "kube-scheduler.kubeconfig");
    await writeFile(schedulerKubeconfig, await this.#kubeconfig("system:kube-scheduler", scheduler), {
      mode: 0o600,
    });

    // etcd: one member, data in the temporary directory, no fsync (throw-away data, faster).
    const etcdUrl = `http://${LOOPBACK}:${etcdClientPort}`;
    this.#etcdUrl = etcdUrl;
    const peerUrl = `http://${LOOPBACK}:${etcdPeerPort}`;
    this.#daemons.spawn("etcd", this.binaries.etcd, [
      "--name=custody",
      `--data-dir=${join(this.directory, "etcd")}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=custody=${peerUrl}`,
      "--initial-cluster-state=new",
      "--unsafe-no-fsync",
      "--log-level=warn",
    ]);
    await this.#daemons.waitFor("etcd /health", timeout, async () => {
      const response = await fetch(`${etcdUrl}/health`, { signal: AbortSignal.timeout(2_000) });
      const body = await response.text();
      return response.status === 200 && body.includes('"health":"true"') ? true : body;
    });

    // kube-apiserver.
    const adminProbe: ProbeOptions = {
      client: {
        certificate: await readFile(this.#admin.certificate, "utf8"),
        key: await readFile(this.#admin.key, "utf8"),
      },
      fingerprint: this.#fingerprint,
    };
    this.#daemons.spawn("kube-apiserver", this.binaries.kubeApiserver, [
      `--etcd-servers=${etcdUrl}`,
      `--bind-address=${this.address}`,
      `--advertise-address=${this.address}`,
      `--secure-port=${apiserverPort}`,
      `--cert-dir=${join(this.directory, "kube-apiserver")}`,
      `--tls-cert-file=${serving.certificate}`,
      `--tls-private-key-file=${serving.key}`,
      `--client-ca-file=${pki.caCertificate}`,
      "--authorization-mode=Node,RBAC",
      `--service-account-issuer=${SERVICE_ACCOUNT_ISSUER}`,
      `--service-account-key-file=${serviceAccountKey.publicKey}`,
      `--service-account-signing-key-file=${serviceAccountKey.privateKey}`,
      `--service-cluster-ip-range=${SERVICE_CLUSTER_IP_RANGE}`,
      // The `kubernetes` Service's Endpoints would name 127.0.0.1, which validation refuses
      // (loopback), every 10 s; on loopback no Pod could reach the API server anyway.
      ...(this.address === LOOPBACK ? ["--endpoint-reconciler-type=none"] : []),
      // What a kubelet may change is limited to its own Node and the Pods bound to it (kubeadm's
      // default; the Node authorizer above limits what it may read).
      "--enable-admission-plugins=NodeRestriction",
      // Logs, exec and port-forward go to the kubelet at the address it reports, as this client.
      `--kubelet-client-certificate=${kubeletClient.certificate}`,
      `--kubelet-client-key=${kubeletClient.key}`,
      "--kubelet-preferred-address-types=InternalIP",
      `--requestheader-client-ca-file=${this.#frontProxyPki.caCertificate}`,
      `--requestheader-allowed-names=${FRONT_PROXY_CLIENT}`,
      "--requestheader-username-headers=X-Remote-User",
      "--requestheader-group-headers=X-Remote-Group",
      "--requestheader-extra-headers-prefix=X-Remote-Extra-",
      `--proxy-client-cert-file=${frontProxyClient.certificate}`,
      `--proxy-client-key-file=${frontProxyClient.key}`,
      "--allow-privileged=true",
      ...(this.#options.apiserverFlags ?? []),
    ]);
    for (const check of ["/readyz", "/livez"]) {
      await this.#daemons.waitFor(`kube-apiserver ${check}`, timeout, async () => {
        const answer = await httpsGet(`${this.server}${check}?verbose`, adminProbe);
        if (answer.status === 200) return true;
        const failing = answer.body.split("\n").filter((line) => line.startsWith("[-]"));
        return `${answer.status} ${failing.join(" ") || answer.body.slice(0, 200)}`;
      });
    }
    const version = JSON.parse((await httpsGet(`${this.server}/version`, adminProbe)).body) as {
      gitVersion?: string;
    };
    this.#version = version.gitVersion ?? "";
    this.#log(`kube-apiserver ${this.#version} ready at ${this.server} after ${seconds(started)} s`);

    // kube-controller-manager, as system:kube-controller-manager, each controller with its own
    // service-account credentials (as kubeadm runs it).
    this.#daemons.spawn("kube-controller-manager", this.binaries.kubeControllerManager, [
      `--kubeconfig=${controllerManagerKubeconfig}`,
      `--authentication-kubeconfig=${controllerManagerKubeconfig}`,
      `--authorization-kubeconfig=${controllerManagerKubeconfig}`,
      `--bind-address=${LOOPBACK}`,
      `--secure-port=${controllerManagerPort}`,
      `--cert-dir=${join(this.directory, "kube-controller-manager")}`,
      `--controllers=${(this.#options.controllers ?? ["*"]).join(",")}`,
      `--service-account-private-key-file=${serviceAccountKey.privateKey}`,
      `--root-ca-file=${pki.caCertificate}`,
      "--use-service-account-credentials=true",
      `--cluster-signing-cert-file=${pki.caCertificate}`,
      `--cluster-signing-key-file=${pki.caKey}`,
      "--leader-elect=false",
    ]);
    await this.#daemons.waitFor("kube-controller-manager /healthz", timeout, async () => {
      const answer = await httpsGet(`https://${LOOPBACK}:${controllerManagerPort}/healthz`, {});
      return answer.status === 200 ? true : `${answer.status} ${answer.body.slice(0, 200)}`;
    });
    // The serviceaccount controller at work: Pods cannot be created in a namespace before it is.
    await this.#daemons.waitFor("the default ServiceAccount", timeout, async () => {
      const answer = await httpsGet(
        `${this.server}/api/v1/namespaces/default/serviceaccounts/default`,
        adminProbe,
      );
      return answer.status === 200 ? true : `${answer.status}`;
    });
    if (this.#options.scheduler === true) {
      this.#daemons.spawn("kube-scheduler", this.binaries.kubeScheduler, [
        `--kubeconfig=${schedulerKubeconfig}`,
        `--authentication-kubeconfig=${schedulerKubeconfig}`,
        `--authorization-kubeconfig=${schedulerKubeconfig}`,
        `--bind-address=${LOOPBACK}`,
        `--secure-port=${schedulerPort}`,
        "--leader-elect=false",
      ]);
      await this.#daemons.waitFor("kube-scheduler /healthz", timeout, async () => {
        const answer = await httpsGet(`https://${LOOPBACK}:${schedulerPort}/healthz`, {});
        return answer.status === 200 ? true : `${answer.status} ${answer.body.slice(0, 200)}`;
      });
    }
    this.#log(`control plane ready after ${seconds(started)} s; kubeconfig ${this.kubeconfigPath}`);
  }
}

async function distinctFreePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}
