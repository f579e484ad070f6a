/**
 * A hand-wired mesh for end-to-end tests, all real: a CA, the token service, and one sidecar per
 * service with a small app behind it, over real TLS on loopback. Identities are written as the
 * operator's Secret would be (tls.crt, tls.key, ca.crt); the registry as the operator would publish
 * it (keys, locations, the token service's JWKS, compiled policies).
 */
import { createHash, createPrivateKey, createPublicKey, type KeyObject } from "node:crypto";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import {
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
} from "node:http";
import { get, request as httpsRequest } from "node:https";
import { join } from "node:path";
import { type Logger, pino } from "pino";
import { compilePolicy } from "../../crds/src/compiled-policy.js";
import { startIssuer } from "../../operator/src/issuer/service.js";
import {
  type CertificateAuthority,
  createCertificateAuthority,
  issueCertificate,
  privateKeyToPem,
  writeCertificateAuthority,
} from "../../pki/src/index.js";
import { DEFAULT_LIMITS } from "../../sidecar/src/chain/limits.js";
import { type RunningSidecar, startSidecar } from "../../sidecar/src/runtime/sidecar.js";
import { freePort } from "./net.js";

export interface ServiceSpec {
  readonly name: string;
  readonly namespace: string;
  readonly scopes?: readonly string[];
  readonly claims?: Readonly<Record<string, string>>;
  readonly edge?: boolean;
}

export interface Received {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}

export type AppHandler = (request: Received) => Promise<{ status: number; body: string }>;

export interface MeshService {
  readonly id: string;
  readonly identityDirectory: string;
  readonly inboundPort: number;
  readonly appPort: number;
  sidecar: RunningSidecar | undefined;
  readonly received: Received[];
  handler: AppHandler;
}

function jwkOf(pem: string) {
  const jwk = createPublicKey(pem).export({ format: "jwk" });
  const kid = createHash("sha256")
    .update(JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }))
    .digest("base64url")
    .slice(0, 16);
  return { kid, jwk: { ...jwk, alg: "ES256", kid } };
}

/** A client certificate and its key, PEM. */
export interface ClientCredentials {
  readonly cert: string;
  readonly key: string;
}

export interface Answer {
  readonly status: number;
  readonly body: string;
  readonly headers: IncomingHttpHeaders;
}

/** The whole response, as text. */
export function collect(response: IncomingMessage): Promise<Answer> {
  return new Promise((resolve, reject) => {
    let text = "";
    response.on("data", (chunk: Buffer) => {
      text += chunk.toString("utf8");
    });
    response.on("error", reject);
    response.on("end", () =>
      resolve({ status: response.statusCode ?? 0, body: text, headers: response.headers }),
    );
  });
}

/** The token service on loopback ports, its CA in `<directory>/ca`, its keys in `<directory>/issuer-state`. */
export function startTestIssuer(directory: string, manifests: string, logger: Logger) {
  return startIssuer({
    caDirectory: join(directory, "ca"),
    trustBundlePath: undefined,
    identities: { directory: manifests },
    signingKeys: { directory: join(directory, "issuer-state") },
    listen: { host: "127.0.0.1", port: 0 },
    admin: { host: "127.0.0.1", port: 0 },
    issuer: undefined,
    audience: undefined,
    trustedIssuersPath: undefined,
    rotationPeriodMs: 86_400_000,
    maxTokenLifetimeMs: 3_600_000,
    serverNames: [],
    serverId: "issuer.custody-system",
    pollIntervalMs: 60_000,
    logger,
  });
}

export class Mesh {
  readonly services = new Map<string, MeshService>();
  readonly apps: Server[] = [];
  readonly logger: Logger = pino({ level: process.env.CUSTODY_E2E_LOGS === "1" ? "info" : "silent" });
  ca!: CertificateAuthority;
  issuer!: Awaited<ReturnType<typeof startIssuer>>;
  generation = 1;
  policies: unknown[] = [];
  specs: ServiceSpec[] = [];
  readonly extraSidecars: RunningSidecar[] = [];

  constructor(readonly directory: string) {}

  get registryPath(): string {
    return join(this.directory, "registry.json");
  }

  async start(specs: readonly ServiceSpec[], policies: readonly unknown[]): Promise<void> {
    this.ca = await createCertificateAuthority();
    await writeCertificateAuthority(join(this.directory, "ca"), this.ca, { force: false });
    const manifests = join(this.directory, "manifests");
    await mkdir(manifests);
    for (const spec of specs) {
      await writeFile(
        join(manifests, `${spec.name}.json`),
        JSON.stringify({
          apiVersion: "custody.dev/v1alpha1",
          kind: "ServiceIdentity",
          metadata: { name: spec.name, namespace: spec.namespace },
          spec: {
            // An empty scope list is invalid (the token service would skip the whole manifest).
            ...(spec.scopes === undefined || spec.scopes.length === 0 ? {} : { scopes: spec.scopes }),
            claims: spec.claims ?? {},
            edge: spec.edge ?? false,
            tokenTTL: "5m",
          },
        }),
      );
    }
    this.issuer = await startTestIssuer(this.directory, manifests, this.logger);
    for (const spec of specs) await this.createService(spec);
    this.policies = [...policies];
    this.specs = [...specs];
    await this.publishRegistry(specs);
    for (const service of this.services.values()) await this.startSidecar(service);
  }

  /** Identity files, ports and a running app for one service (its sidecar starts later). */
  private async createService(spec: ServiceSpec): Promise<MeshService> {
    const id = `${spec.name}.${spec.namespace}`;
    const identityDirectory = join(this.directory, "identities", id);
    await mkdir(identityDirectory, { recursive: true });
    await this.issueIdentity(id, identityDirectory);
    const service: MeshService = {
      id,
      identityDirectory,
      inboundPort: await freePort(),
      appPort: await freePort(),
      sidecar: undefined,
      received: [],
      handler: async () => ({ status: 200, body: "ok" }),
    };
    this.services.set(id, service);
    await this.startApp(service);
    return service;
  }

  /** A new service with its app and sidecar, published in a new registry generation. */
  async addService(spec: ServiceSpec): Promise<MeshService> {
    const service = await this.createService(spec);
    this.specs.push(spec);
    await this.publishRegistry(this.specs);
    await this.startSidecar(service);
    await this.converged();
    return service;
  }

  /**
   * Waits until every running sidecar serves the newest registry generation (each picks it up on
   * its own: watch + poll); fails after `timeoutMs`.
   */
  async converged(timeoutMs = 10_000): Promise<void> {
    const generation = this.generation - 1;
    const deadline = Date.now() + timeoutMs;
    for (const service of this.services.values()) {
      if (service.sidecar === undefined) continue;
      for (;;) {
        const ready = (await (await fetch(`${service.sidecar.adminUrl}/readyz`)).json()) as {
          generation?: number;
        };
        if (ready.generation === generation) break;
        if (Date.now() > deadline) {
          throw new Error(`${service.id} serves generation ${ready.generation}, not ${generation}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  }

  async issueIdentity(id: string, directory: string): Promise<void> {
    const issued = await issueCertificate(this.ca, {
      id,
      dnsNames: ["localhost"],
      ipAddresses: ["127.0.0.1"],
    });
    // Kubernetes swaps a Secret's files together; writing the key first would pair new key and old
    // certificate for a moment, which the sidecar refuses (and keeps the old pair) — also fine.
    await writeFile(join(directory, "ca.crt"), this.ca.certificate.pem);
    await writeFile(join(directory, "tls.key"), privateKeyToPem(issued.privateKey));
    await writeFile(join(directory, "tls.crt"), issued.certificate.pem);
  }

  private async startApp(service: MeshService): Promise<void> {
    const app = createServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on("data", (chunk: Buffer) => chunks.push(chunk));
      request.on("end", () => {
        const received = {
          method: request.method ?? "",
          url: request.url ?? "",
          headers: request.headers,
          body: Buffer.concat(chunks).toString("utf8"),
        };
        service.received.push(received);
        void service.handler(received).then(
          ({ status, body }) => {
            response.writeHead(status, { "content-type": "text/plain" });
            response.end(body);
          },
          (error: unknown) => {
            response.writeHead(500);
            response.end(String(error));
          },
        );
      });
    });
    await new Promise<void>((resolve) => app.listen(service.appPort, "127.0.0.1", resolve));
    this.apps.push(app);
  }

  async jwks(): Promise<{ keys: unknown[] }> {
    const url = new URL("/.well-known/jwks.json", this.issuer.tokenUrl);
    return new Promise((resolve, reject) => {
      get(url, { ca: this.ca.certificate.pem }, (response) => {
        collect(response).then((answer) => resolve(JSON.parse(answer.body) as { keys: unknown[] }), reject);
      }).on("error", reject);
    });
  }

  /** External issuers (user IdPs) every later registry generation trusts, with inline JWKS. */
  trustedIssuers: Record<string, unknown>[] = [];
  /** Partner CAs (PEM) every later registry generation publishes beside Custody's CA; none when undefined. */
  partnerBundle: string | undefined;
  /** Keys published for a service besides its current certificate's (rotation: next or previous). */
  readonly extraKeys = new Map<string, Record<string, unknown>[]>();

  /** Writes the registry (a new generation) from the identities on disk. */
  async publishRegistry(
    specs: readonly ServiceSpec[],
    extraServices: readonly Record<string, unknown>[] = [],
  ): Promise<void> {
    const services = [];
    for (const spec of specs) {
      const id = `${spec.name}.${spec.namespace}`;
      const service = this.services.get(id);
      if (service === undefined) continue;
      const pem = await readFile(join(service.identityDirectory, "tls.crt"), "utf8");
      services.push({
        id,
        environment: "default",
        claims: spec.claims ?? {},
        scopes: spec.scopes ?? [],
        edge: spec.edge ?? false,
        location: `127.0.0.1:${service.inboundPort}`,
        keys: [Mesh.registryKeyOf(pem, "current"), ...(this.extraKeys.get(id) ?? [])],
      });
    }
    const document = {
      apiVersion: "custody.dev/v1alpha1",
      kind: "Registry",
      generation: this.generation++,
      shard: { index: 0, count: 1 },
      trustDomain: "custody.local",
      trustBundle: this.ca.certificate.pem,
      ...(this.partnerBundle === undefined ? {} : { partnerBundle: this.partnerBundle }),
      tokenService: { issuer: this.issuer.issuer, jwks: await this.jwks() },
      trustedIssuers: this.trustedIssuers,
      services: [...services, ...extraServices],
      policies: this.policies.map((policy) => compilePolicy(policy)),
    };
    const temporary = `${this.registryPath}.tmp`;
    await writeFile(temporary, JSON.stringify(document));
    await rename(temporary, this.registryPath);
  }

  async startSidecar(
    service: MeshService,
    overrides: { redisUrl?: string; inboundPort?: number; tokenUrl?: string; clientSecret?: string } = {},
  ): Promise<RunningSidecar> {
    const sidecar = await startSidecar({
      identityDirectory: service.identityDirectory,
      registryPath: this.registryPath,
      appPort: service.appPort,
      tokenUrl: overrides.tokenUrl ?? this.issuer.tokenUrl,
      outbound: { host: "127.0.0.1", port: 0 },
      clientSecret: overrides.clientSecret,
      inbound: { host: "127.0.0.1", port: overrides.inboundPort ?? service.inboundPort },
      admin: { host: "127.0.0.1", port: 0 },
      limits: DEFAULT_LIMITS,
      whenNoPolicy: "allow",
      replay: { redisUrl: overrides.redisUrl, failureMode: "closed" },
      spool: {},
      pollIntervalMs: 200,
      logger: this.logger.child({ service: service.id }),
    });
    if (overrides.inboundPort === undefined) service.sidecar = sidecar;
    else this.extraSidecars.push(sidecar);
    return sidecar;
  }

  service(id: string): MeshService {
    const service = this.services.get(id);
    if (service === undefined) throw new Error(`no service ${id}`);
    return service;
  }

  /** The running in-process sidecar of a service. */
  sidecarOf(id: string): RunningSidecar {
    const sidecar = this.service(id).sidecar;
    if (sidecar === undefined) throw new Error(`no sidecar for ${id}`);
    return sidecar;
  }

  /** What the service's sidecar signs links with: its certificate key under its registry kid. */
  async signerOf(id: string): Promise<{ serviceId: string; kid: string; privateKey: KeyObject }> {
    const directory = this.service(id).identityDirectory;
    const { kid } = jwkOf(await readFile(join(directory, "tls.crt"), "utf8"));
    return {
      serviceId: id,
      kid,
      privateKey: createPrivateKey(await readFile(join(directory, "tls.key"), "utf8")),
    };
  }

  /** The published key entry for a certificate (what publishRegistry lists), for rotation tests. */
  static registryKeyOf(certificatePem: string, status: "current" | "next" | "previous") {
    const { kid, jwk } = jwkOf(certificatePem);
    return { kid, status, notAfter: new Date(Date.now() + 86_400_000).toISOString(), jwk };
  }

  /**
   * A request straight to a service's inbound port, as `from`'s sidecar would send it: over mTLS
   * with the certificate of service `from` (or the given certificate and key), or with no client
   * certificate when `from` is undefined.
   */
  async callInbound(
    from: string | ClientCredentials | undefined,
    port: number,
    init: {
      method?: string;
      path: string;
      body?: string;
      chain?: string;
      headers?: Record<string, string | string[]>;
    },
  ): Promise<Answer> {
    const { cert, key } = typeof from === "string" ? await this.credentialsOf(from) : (from ?? {});
    return new Promise((resolve, reject) => {
      const outgoing = httpsRequest(
        {
          host: "127.0.0.1",
          port,
          method: init.method ?? "GET",
          path: init.path,
          ...(cert === undefined ? {} : { cert, key }),
          ca: this.ca.certificate.pem,
          servername: "localhost",
          agent: false,
          headers: {
            ...(init.headers ?? {}),
            ...(init.chain === undefined ? {} : { "custody-chain": init.chain }),
          },
        },
        (response) => void collect(response).then(resolve, reject),
      );
      outgoing.on("error", reject);
      outgoing.end(init.body);
    });
  }

  private async credentialsOf(id: string): Promise<ClientCredentials> {
    const directory = this.service(id).identityDirectory;
    const [cert, key] = await Promise.all([
      readFile(join(directory, "tls.crt"), "utf8"),
      readFile(join(directory, "tls.key"), "utf8"),
    ]);
    return { cert, key };
  }

  async close(): Promise<void> {
    for (const sidecar of this.extraSidecars) await sidecar.close(100);
    for (const service of this.services.values()) await service.sidecar?.close(100);
    await this.issuer?.close(100);
    for (const app of this.apps) app.closeAllConnections();
    await Promise.all(this.apps.map((app) => new Promise((resolve) => app.close(resolve))));
  }
}

/**
 * A call through a sidecar's outbound port, the way an app makes it: with HTTP_PROXY (an absolute
 * URL), or in origin form naming the service in `host`.
 */
export async function callThrough(
  sidecar: RunningSidecar,
  url: string,
  init: {
    method?: string;
    body?: string;
    headers?: Record<string, string | string[]>;
    /** Send `url` as is (origin form) with this Host, instead of an absolute URL's own host. */
    host?: string;
  } = {},
): Promise<Answer> {
  const proxy = new URL(sidecar.outboundUrl);
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest(
      {
        host: proxy.hostname,
        port: Number(proxy.port),
        method: init.method ?? "GET",
        path: url,
        headers: { ...(init.headers ?? {}), host: init.host ?? new URL(url).host },
      },
      (response) => void collect(response).then(resolve, reject),
    );
    outgoing.on("error", reject);
    outgoing.end(init.body);
  });
}
