/**
 * An independent attack suite against `custody local up`, over real HTTP and TLS: the shipped
 * shop → cart → payments example plus an `echo` edge service whose app echoes what it receives, a
 * demo identity provider, and three foreign CAs in the trust bundle (partner A, mapped by DN;
 * partner B; and a rogue `custody pki init` CA that, by default, claims trust domain custody.local).
 *
 * Attackers modelled: a local shell as the same user (reads keys, secrets and locations from the
 * state directory), a partner CA in the trust bundle, a stolen user token, a browser on the machine
 * (DNS rebinding), and a compromised app.
 *
 * Every `it` is one attack and asserts that it is REFUSED, with the HTTP status and the JSON
 * `reason` code the sidecar returns (or the OAuth `error` of the token service). A test that fails
 * is an attack that GOT THROUGH. The first run of this suite got six through, each fixed since:
 *   4.3  a backdated middle link (cart → cart) continued an expired shop → cart link; a service's
 *        link to itself is refused now (self_link), and no element may be older than 300 s.
 *   6.3  the token service exchanged, for edge echo, a customer's token addressed to edge shop; the
 *        subject token must name the actor's edge audiences now (subject_token_audience).
 *   7.4  the token service read an anonymous client's 16 MiB body after refusing it; it now judges
 *        the client certificate before reading, and leaves a refused body unread.
 *   12.5 ~1990 client headers pushed the sidecar's own Custody-* headers past the app's 2000-header
 *        limit; more than 256 headers are refused now (too_many_headers), the sidecar's go first.
 *   12.23, 12.24  idle TLS connections and stalled handshakes were never closed; a connection has
 *        10 s for its handshake and 10 s more for its first request, and at most 4096 are held.
 */
import { execFileSync } from "node:child_process";
import { createHash, createHmac, generateKeyPairSync, randomBytes } from "node:crypto";
import { once } from "node:events";
import {
  cp,
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  realpath,
  rename,
  stat,
  writeFile,
} from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createServer as createTlsServer, type TLSSocket, connect as tlsConnect } from "node:tls";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { parseAllDocuments, stringify } from "yaml";
import { callInbound, callOutbound, type Reply } from "../../local/src/demo/client.js";
import {
  createDemoIdp,
  type DemoIdp,
  mintUserToken,
  trustedIssuersDocument,
} from "../../local/src/demo/idp.js";
import { clientCredentialsOf, linkSignerOf } from "../../local/src/demo/mesh-state.js";
import type { RunningLocal } from "../../local/src/running.js";
import { startLocal } from "../../local/src/up.js";
import { createCertificateAuthority } from "../../pki/src/ca.js";
import { issueCertificate } from "../../pki/src/issue.js";
import { signCompactJws } from "../../pki/src/jws.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import type { LinkSigner } from "../../sidecar/src/chain/mint.js";
import { mintLink } from "../../sidecar/src/chain/mint.js";
import { normalizeOperation } from "../../sidecar/src/chain/normalize.js";
import { requireTool } from "../support/tools.js";

const HAS_OPENSSL = requireTool("openssl");
const EXAMPLE = fileURLToPath(new URL("../../examples/shop", import.meta.url));
const ISSUER = "https://login.shop.example";
const SHOP = "shop.shop";
const CART = "cart.shop";
const PAYMENTS = "payments.shop";
const ECHO = "echo.shop";
const SERVICES = [SHOP, CART, PAYMENTS, ECHO] as const;
const EDGES = [SHOP, ECHO] as const;
const spiffe = (id: string) => `spiffe://custody.local/ns/shop/si/${id.split(".")[0]}`;
const JWT_LIKE = /eyJ[A-Za-z0-9_-]+\.eyJ/;
const PARTNER_A_CA_DN = "/C=GB/O=Partner Ltd/CN=Partner Client CA";
const PARTNER_A_SUBJECT = "/C=GB/O=Partner Ltd/CN=partner-client";

interface Client {
  readonly cert: string;
  readonly key: string;
}

/** The echo edge: its app answers with what it received (method, target, every header, trailers). */
const ECHO_APP = `import { readText, sendJson, serve } from "./mesh.mjs";
const seen = [];
serve("echo", async (request, response) => {
  if (request.url === "/__seen") {
    sendJson(response, 200, { step: "echo", seen });
    return;
  }
  seen.push({ method: request.method, url: request.url, headers: request.headers });
  if (seen.length > 1000) seen.shift();
  const body = await readText(request);
  sendJson(response, 200, {
    step: "echo",
    method: request.method,
    url: request.url,
    headers: request.headers,
    rawHeaders: request.rawHeaders,
    trailers: request.trailers,
    bodyLength: Buffer.byteLength(body),
  });
});
`;

const ECHO_MANIFESTS = [
  {
    apiVersion: "custody.dev/v1alpha1",
    kind: "ServiceIdentity",
    metadata: { name: "echo", namespace: "shop" },
    spec: { environment: "dev", edge: true, scopes: ["echo.read"], claims: { team: "edge" } },
  },
  {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: { name: "echo", namespace: "shop" },
    spec: {
      target: "echo",
      mode: "enforce",
      defaultAction: "deny",
      rules: [
        // As the README advises for deny rules: case-insensitive.
        { name: "no-admin", operation: { path: "(?i)/admin(/.*)?" }, action: "deny" },
        {
          name: "quota-loose",
          operation: { path: "/quota" },
          require: { initialToken: { issuer: ISSUER } },
          quota: { requestsPerSecond: 100, burst: 100 },
          action: "allow",
        },
        { name: "users", require: { initialToken: { issuer: ISSUER } }, action: "allow" },
      ],
    },
  },
  {
    // A second policy on the same target: every policy must allow, and its tighter quota must hold.
    apiVersion: "custody.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: { name: "echo-tight", namespace: "shop" },
    spec: {
      target: "echo",
      mode: "enforce",
      defaultAction: "allow",
      rules: [
        {
          name: "quota-tight",
          operation: { path: "/quota" },
          quota: { requestsPerSecond: 1, burst: 2 },
          action: "allow",
        },
      ],
    },
  },
  {
    apiVersion: "custody.dev/v1alpha1",
    kind: "LocalWorkload",
    metadata: { name: "echo", namespace: "shop" },
    spec: { identity: "echo", command: ["node", "apps/echo.mjs"] },
  },
];

// ---------------------------------------------------------------------------------------------
// Small clients
// ---------------------------------------------------------------------------------------------

function jsonOf(text: string): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}
const reasonOf = (reply: { body: string }) => jsonOf(reply.body).reason;
const refusal = (reply: Reply) => ({ status: reply.status, reason: reasonOf(reply) });

interface RawResult {
  /** Everything the server sent before it closed (or the deadline). */
  readonly raw: string;
  /** Status of the first response, 0 when none. */
  readonly status: number;
  /** Body of the first response (as far as it can be cut out). */
  readonly body: string;
  readonly closed: boolean;
  readonly elapsedMs: number;
}

function parseFirstResponse(raw: string): { status: number; body: string } {
  let text = raw;
  // Skip interim 1xx answers.
  while (/^HTTP\/1\.[01] 1\d\d/.test(text)) {
    const end = text.indexOf("\r\n\r\n");
    if (end === -1) return { status: 0, body: "" };
    text = text.slice(end + 4);
  }
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(text);
  if (match === null) return { status: 0, body: "" };
  const end = text.indexOf("\r\n\r\n");
  const head = end === -1 ? text : text.slice(0, end);
  const rest = end === -1 ? "" : text.slice(end + 4);
  const length = /\r\ncontent-length: *(\d+)/i.exec(head);
  return { status: Number(match[1]), body: length === null ? rest : rest.slice(0, Number(length[1])) };
}

/** Writes `payload` on a TLS connection to 127.0.0.1:port and reads until the server closes. */
function rawTls(
  port: number,
  payload: string | Buffer | readonly (string | Buffer)[],
  options: { client?: Client | undefined; timeoutMs?: number; gapMs?: number } = {},
): Promise<RawResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let closed = false;
    const socket = tlsConnect({
      host: "127.0.0.1",
      port,
      rejectUnauthorized: false,
      ...(options.client === undefined ? {} : { cert: options.client.cert, key: options.client.key }),
    });
    const finish = () => {
      clearTimeout(timer);
      const raw = Buffer.concat(chunks).toString("latin1");
      socket.destroy();
      resolve({ raw, ...parseFirstResponse(raw), closed, elapsedMs: Date.now() - started });
    };
    const timer = setTimeout(finish, options.timeoutMs ?? 8_000);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", () => undefined);
    socket.on("close", () => {
      closed = true;
      finish();
    });
    socket.on("secureConnect", async () => {
      const parts = typeof payload === "string" || Buffer.isBuffer(payload) ? [payload] : payload;
      for (const part of parts) {
        if (socket.destroyed) return;
        socket.write(part);
        if (options.gapMs !== undefined) await new Promise((done) => setTimeout(done, options.gapMs));
      }
    });
  });
}

/** Plain HTTP to a loopback port (outbound port, key service, app port), headers exactly as given. */
function plainHttp(
  port: number,
  init: { method: string; path: string; headers?: Record<string, string>; body?: string },
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest(
      {
        host: "127.0.0.1",
        port,
        method: init.method,
        path: init.path,
        agent: false,
        setHost: false,
        timeout: 10_000,
        headers: {
          ...(init.body === undefined ? {} : { "content-length": String(Buffer.byteLength(init.body)) }),
          ...init.headers,
        },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () =>
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: Buffer.concat(chunks).toString("utf8"),
          }),
        );
        response.on("error", reject);
      },
    );
    outgoing.on("timeout", () => outgoing.destroy(new Error("timeout")));
    outgoing.on("error", reject);
    outgoing.end(init.body);
  });
}

const basic = (secret: string) => `Basic ${Buffer.from(`custody:${secret}`).toString("base64")}`;

/** One token request (RFC 6749 form) to the token service, with or without a client certificate. */
function tokenRequest(
  tokenUrl: string,
  form: Record<string, string>,
  client?: Client,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const url = new URL(tokenUrl);
  const body = new URLSearchParams(form).toString();
  return new Promise((resolve, reject) => {
    const outgoing = httpsRequest(
      {
        host: url.hostname,
        port: Number(url.port),
        path: url.pathname,
        method: "POST",
        rejectUnauthorized: false,
        ...(client === undefined ? {} : { cert: client.cert, key: client.key }),
        agent: false,
        timeout: 10_000,
        headers: {
          "content-type": "application/x-www-form-urlencoded",
          "content-length": Buffer.byteLength(body),
        },
      },
      (response) => {
        let text = "";
        response.on("data", (chunk: Buffer) => {
          text += chunk.toString();
        });
        response.on("end", () => resolve({ status: response.statusCode ?? 0, json: jsonOf(text) }));
      },
    );
    outgoing.on("error", reject);
    outgoing.end(body);
  });
}

const claimsOf = (jwt: string): Record<string, unknown> =>
  jsonOf(Buffer.from(jwt.split(".")[1] ?? "", "base64url").toString("utf8"));
const headerOf = (jwt: string): Record<string, unknown> =>
  jsonOf(Buffer.from(jwt.split(".")[0] ?? "", "base64url").toString("utf8"));
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

/** Every string in a JSON value, depth first. */
function stringsIn(value: unknown, out: string[] = []): string[] {
  if (typeof value === "string") out.push(value);
  else if (Array.isArray(value)) for (const item of value) stringsIn(item, out);
  else if (typeof value === "object" && value !== null)
    for (const item of Object.values(value)) stringsIn(item, out);
  return out;
}

/** PIDs whose command line contains every one of `parts`. */
async function pidsWith(...parts: string[]): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = (await readFile(`/proc/${entry}/cmdline`, "utf8")).replaceAll("\u0000", " ");
      if (parts.every((part) => cmdline.includes(part))) pids.push(Number(entry));
    } catch {
      // gone
    }
  }
  return pids;
}

/** Bytes a process has read through read(2) and friends so far (/proc/<pid>/io rchar): sockets included. */
async function bytesRead(pid: number): Promise<number> {
  const io = await readFile(`/proc/${pid}/io`, "utf8");
  return Number(/rchar: (\d+)/.exec(io)?.[1] ?? Number.NaN);
}

/**
 * How many bytes `pid` reads while `action` runs, minus what it reads anyway (its registry and
 * identity polls) over as long a quiet period measured just before.
 */
async function readDuring<T>(
  pid: number,
  action: () => Promise<T>,
): Promise<{ result: T; read: number; idle: number }> {
  const quietStart = await bytesRead(pid);
  const quietFrom = Date.now();
  await new Promise((done) => setTimeout(done, 1_500));
  const idlePerMs = ((await bytesRead(pid)) - quietStart) / (Date.now() - quietFrom);
  const before = await bytesRead(pid);
  const from = Date.now();
  const result = await action();
  await new Promise((done) => setTimeout(done, 300));
  const elapsed = Date.now() - from;
  const idle = Math.round(idlePerMs * elapsed);
  return { result, read: (await bytesRead(pid)) - before - idle, idle };
}

/** Files a process has open whose path names a spooled body. */
async function spooledBodiesOf(pid: number): Promise<string[]> {
  const found: string[] = [];
  try {
    for (const fd of await readdir(`/proc/${pid}/fd`)) {
      try {
        const target = await readlink(`/proc/${pid}/fd/${fd}`);
        if (target.includes("custody-body-")) found.push(target);
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    // process gone
  }
  return found;
}

// ---------------------------------------------------------------------------------------------
// PKI for the attackers
// ---------------------------------------------------------------------------------------------

async function openssl(cwd: string, ...args: string[]): Promise<void> {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
}

/** A self-signed CA made with openssl (no passphrase), like a partner's. */
async function opensslCa(cwd: string, name: string, subject: string): Promise<{ cert: string; key: string }> {
  await openssl(
    cwd,
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.crt`,
    "-days",
    "30",
    "-subj",
    subject,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  );
  return {
    cert: await readFile(join(cwd, `${name}.crt`), "utf8"),
    key: await readFile(join(cwd, `${name}.key`), "utf8"),
  };
}

/** A leaf signed by an openssl CA, with an optional URI SAN. */
async function opensslLeaf(
  cwd: string,
  name: string,
  ca: string,
  subject: string,
  uri?: string,
): Promise<Client> {
  await openssl(
    cwd,
    "req",
    "-new",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.csr`,
    "-subj",
    subject,
  );
  const extensions = [
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature",
    "extendedKeyUsage=clientAuth,serverAuth",
    ...(uri === undefined ? [] : [`subjectAltName=URI:${uri}`]),
  ];
  await writeFile(join(cwd, `${name}.ext`), `${extensions.join("\n")}\n`);
  await openssl(
    cwd,
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    `${ca}.crt`,
    "-CAkey",
    `${ca}.key`,
    "-CAcreateserial",
    "-out",
    `${name}.crt`,
    "-days",
    "20",
    "-sha256",
    "-extfile",
    `${name}.ext`,
  );
  return {
    cert: await readFile(join(cwd, `${name}.crt`), "utf8"),
    key: await readFile(join(cwd, `${name}.key`), "utf8"),
  };
}

// ---------------------------------------------------------------------------------------------

describe.skipIf(!HAS_OPENSSL)("attacks on a running custody local up", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let manifests: string;
  let local: RunningLocal;
  let idp: DemoIdp;
  let ca: string;
  /** Partner A: its own CA, its client certificate mapped to ServiceIdentity partner by DN. */
  let partnerA: Client;
  let partnerACa: Client;
  /** Partner A's mapped certificate, to which A added payments' SPIFFE id. */
  let partnerASpiffe: Client;
  /** Partner B (its CA in the bundle): a certificate with A's subject DN, and one naming payments. */
  let partnerBCopy: Client;
  let partnerBSpiffe: Client;
  /** A CA that is not trusted at all, copying A's CA DN, signing A's subject DN. */
  let impostorCopy: Client;
  /** The rogue `custody pki init` CA (trust domain custody.local by default) in the bundle. */
  let rogue: Client;
  let rogueCa: Client;
  let orders = 0;
  const secrets = new Map<string, Client>();
  const signers = new Map<string, LinkSigner>();

  const workload = (id: string) => local.workload(id);
  const inbound = (id: string, init: Parameters<typeof callInbound>[1], client?: Client) =>
    callInbound({ port: workload(id).inboundPort, ca, spiffeId: spiffe(id), client }, init);
  const userToken = (
    options: { subject?: string; scopes?: string[]; audience?: string; ttl?: number; now?: number } = {},
  ) =>
    mintUserToken(idp, {
      subject: options.subject ?? "customer-7",
      scopes: options.scopes ?? ["shop.customer"],
      ...(options.audience === undefined ? {} : { audience: options.audience }),
      ...(options.ttl === undefined ? {} : { ttlSeconds: options.ttl }),
      ...(options.now === undefined ? {} : { nowSeconds: options.now }),
    });
  const atEcho = (
    path: string,
    headers: Record<string, string> = {},
    token = userToken({ audience: ECHO }),
  ) => inbound(ECHO, { method: "GET", path, headers: { authorization: `Bearer ${token}`, ...headers } });
  const checkout = (bearer?: string) =>
    inbound(SHOP, {
      method: "POST",
      path: "/checkout",
      headers: { authorization: `Bearer ${bearer ?? userToken()}` },
      body: JSON.stringify({ orderId: `o${++orders}`, card: "4111 1111 1111 1111" }),
    });
  const paid = (reply: Reply) => reply.status === 200 && reply.body.includes('"paid":true');
  const nowSeconds = () => Math.floor(Date.now() / 1000);
  const op = (method: string, path: string) => normalizeOperation(method, path);
  const credentials = async (id: string): Promise<Client> => {
    let found = secrets.get(id);
    if (found === undefined) {
      found = await clientCredentialsOf(local, id);
      secrets.set(id, found);
    }
    return found;
  };
  const signer = async (id: string): Promise<LinkSigner> => {
    let found = signers.get(id);
    if (found === undefined) {
      found = await linkSignerOf(local, id);
      signers.set(id, found);
    }
    return found;
  };
  /** e0 (a customer's token for shop) ~ e1 (shop → cart POST /cart/confirm), minted at `at`. */
  const customerAtCart = async (at: number, ttl = 10) => {
    const e0 = userToken({ subject: "customer-captured" });
    return mintLink(await signer(SHOP), {
      audience: CART,
      operation: op("POST", "/cart/confirm"),
      body: '{"orderId":"1"}',
      previous: [e0],
      nowSeconds: at,
      ttlSeconds: ttl,
    }).elements;
  };

  /** Slow connections opened at the start and judged at the end (attacks 12.22–12.24), so they cost no wall time. */
  const slow: { kind: string; opened: number; closedAt?: number }[] = [];
  const slowSockets: Socket[] = [];

  beforeAll(async () => {
    directory = await temporaryDirectory();
    manifests = join(directory.path, "shop");
    await cp(EXAMPLE, manifests, { recursive: true });
    await writeFile(join(manifests, "apps", "echo.mjs"), ECHO_APP);
    await writeFile(join(manifests, "echo.yaml"), ECHO_MANIFESTS.map((doc) => stringify(doc)).join("---\n"));
    idp = createDemoIdp(ISSUER);
    const trustedIssuers = join(directory.path, "trusted-issuers.json");
    await writeFile(trustedIssuers, JSON.stringify(trustedIssuersDocument(idp, [SHOP, ECHO])));

    // The attackers' PKI.
    const pki = join(directory.path, "pki");
    await mkdir(pki, { recursive: true });
    partnerACa = await opensslCa(pki, "partner-a-ca", PARTNER_A_CA_DN);
    partnerA = await opensslLeaf(pki, "partner-a", "partner-a-ca", PARTNER_A_SUBJECT);
    partnerASpiffe = await opensslLeaf(
      pki,
      "partner-a-spiffe",
      "partner-a-ca",
      PARTNER_A_SUBJECT,
      spiffe(PAYMENTS),
    );
    await opensslCa(pki, "partner-b-ca", "/C=GB/O=Partner B/CN=Partner B CA");
    partnerBCopy = await opensslLeaf(pki, "partner-b-copy", "partner-b-ca", PARTNER_A_SUBJECT);
    partnerBSpiffe = await opensslLeaf(
      pki,
      "partner-b-spiffe",
      "partner-b-ca",
      "/CN=payments.shop",
      spiffe(PAYMENTS),
    );
    await mkdir(join(pki, "impostor"));
    await opensslCa(join(pki, "impostor"), "impostor-ca", PARTNER_A_CA_DN);
    impostorCopy = await opensslLeaf(
      join(pki, "impostor"),
      "impostor-copy",
      "impostor-ca",
      PARTNER_A_SUBJECT,
    );
    // `custody pki init` with its defaults: trust domain custody.local, like Custody's own CA.
    const rogueAuthority = await createCertificateAuthority();
    rogueCa = {
      cert: rogueAuthority.certificate.pem,
      key: rogueAuthority.privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    };
    const rogueLeaf = await issueCertificate(rogueAuthority, { id: PAYMENTS, usage: "both" });
    rogue = {
      cert: rogueLeaf.certificate.pem,
      key: rogueLeaf.privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    };
    const bundle = join(pki, "bundle.pem");
    await writeFile(
      bundle,
      [partnerACa.cert, await readFile(join(pki, "partner-b-ca.crt"), "utf8"), rogueCa.cert].join(""),
    );

    await writeFile(
      join(manifests, "partner.yaml"),
      stringify({
        apiVersion: "custody.dev/v1alpha1",
        kind: "ServiceIdentity",
        metadata: { name: "partner", namespace: "shop" },
        spec: {
          externalSubjects: [
            {
              issuer: "CN=Partner Client CA,O=Partner Ltd,C=GB",
              subject: "CN=partner-client,O=Partner Ltd,C=GB",
            },
          ],
          scopes: ["shop.customer"],
        },
      }),
    );
    const policies = parseAllDocuments(await readFile(join(manifests, "policies.yaml"), "utf8")).map(
      (document) => document.toJS() as { metadata: { name: string }; spec: { rules: unknown[] } },
    );
    policies
      .find((policy) => policy.metadata.name === "shop")
      ?.spec.rules.push({
        name: "partner-orders",
        operation: { methods: ["POST"], path: "/partner/checkout" },
        require: { comeFrom: [{ service: "partner" }] },
        action: "allow",
      });
    await writeFile(
      join(manifests, "policies.yaml"),
      policies.map((policy) => stringify(policy)).join("---\n"),
    );

    local = await startLocal({
      directory: manifests,
      stateDirectory: join(directory.path, "state"),
      trustedIssuersPath: trustedIssuers,
      trustBundlePath: bundle,
      propagationDelayMs: 1_000,
      progress: () => undefined,
    });
    ca = await readFile(join(local.caDirectory, "ca.crt"), "utf8");

    // Slowloris, started now and judged in 12.22–12.24: one connection dribbling its headers, one that
    // completes TLS and sends nothing, one that never even starts the TLS handshake.
    const port = workload(PAYMENTS).inboundPort;
    const track = (kind: string, socket: Socket) => {
      const entry: { kind: string; opened: number; closedAt?: number } = { kind, opened: Date.now() };
      slow.push(entry);
      slowSockets.push(socket);
      socket.on("error", () => undefined);
      socket.on("close", () => {
        entry.closedAt = Date.now();
      });
      return socket;
    };
    const dribble = track(
      "headers dribbled, 1 byte/s",
      tlsConnect({ host: "127.0.0.1", port, rejectUnauthorized: false }),
    );
    dribble.on("secureConnect", () => {
      const text = "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";
      let index = 0;
      const timer = setInterval(() => {
        if (dribble.destroyed) return clearInterval(timer);
        dribble.write(index < text.length ? text.charAt(index) : "a");
        index++;
      }, 1_000);
      timer.unref();
    });
    track("TLS done, nothing sent", tlsConnect({ host: "127.0.0.1", port, rejectUnauthorized: false }));
    track("TCP open, no TLS handshake", netConnect(port, "127.0.0.1"));

    await vi.waitFor(async () => expect(paid(await checkout())).toBe(true), {
      timeout: 45_000,
      interval: 250,
    });
    await vi.waitFor(async () => expect((await atEcho("/ready")).status).toBe(200), {
      timeout: 20_000,
      interval: 250,
    });
  }, 120_000);

  afterAll(async () => {
    for (const socket of slowSockets) socket.destroy();
    await local?.close();
    await directory?.cleanup();
  }, 60_000);

  // -------------------------------------------------------------------------------------------
  // 1. A partner CA issues spiffe://custody.local/ns/shop/si/payments
  // -------------------------------------------------------------------------------------------

  it("1.1 rogue `pki init` CA (claims custody.local): exchanges its payments certificate at the token service", async () => {
    const answer = await tokenRequest(local.tokenUrl, { grant_type: "client_credentials" }, rogue);
    expect(answer.status, JSON.stringify(answer.json)).toBe(401);
    expect(answer.json.error).toBe("invalid_client");
    expect(String(answer.json.error_description)).toMatch(/mesh identity but was not issued by Custody's CA/);
    expect(answer.json.access_token).toBeUndefined();
  });

  it("1.2 openssl partner B CA: exchanges a certificate naming payments' SPIFFE id at the token service", async () => {
    const answer = await tokenRequest(local.tokenUrl, { grant_type: "client_credentials" }, partnerBSpiffe);
    expect(answer.status, JSON.stringify(answer.json)).toBe(401);
    expect(answer.json.error).toBe("invalid_client");
    expect(String(answer.json.error_description)).toMatch(/outside its CA's trust domain/);
  });

  it("1.3 partner A adds payments' SPIFFE id to its own DN-mapped certificate, at the token service", async () => {
    const answer = await tokenRequest(local.tokenUrl, { grant_type: "client_credentials" }, partnerASpiffe);
    expect(answer.status, JSON.stringify(answer.json)).toBe(401);
    expect(answer.json.error).toBe("invalid_client");
  });

  it("1.4 the rogue payments certificate as TLS client at every sidecar's inbound port (with a chain signed by payments' key)", async () => {
    for (const target of SERVICES) {
      const chain = mintLink(await signer(PAYMENTS), { audience: target, operation: op("GET", "/x") }).header;
      const withChain = await inbound(
        target,
        { method: "GET", path: "/x", headers: { "custody-chain": chain } },
        rogue,
      );
      expect(refusal(withChain), target).toEqual({ status: 401, reason: "peer_spiffe_id_not_mesh_issued" });
    }
    for (const edge of EDGES) {
      const token = userToken({ audience: edge });
      const withBearer = await inbound(
        edge,
        { method: "GET", path: "/x", headers: { authorization: `Bearer ${token}` } },
        rogue,
      );
      expect(refusal(withBearer), edge).toEqual({ status: 401, reason: "peer_spiffe_id_not_mesh_issued" });
    }
  });

  it("1.5 the openssl partner B / partner A certificates naming payments at every inbound port", async () => {
    for (const client of [partnerBSpiffe, partnerASpiffe]) {
      for (const target of SERVICES) {
        const chain = mintLink(await signer(PAYMENTS), {
          audience: target,
          operation: op("GET", "/x"),
        }).header;
        const reply = await inbound(
          target,
          { method: "GET", path: "/x", headers: { "custody-chain": chain } },
          client,
        );
        expect(refusal(reply), target).toEqual({ status: 401, reason: "peer_trust_domain_mismatch" });
      }
    }
  });

  // -------------------------------------------------------------------------------------------
  // 2. Partner B copies partner A's subject DN
  // -------------------------------------------------------------------------------------------

  it("2.1 partner B (trusted CA) issues itself partner A's subject DN and asks for A's identity", async () => {
    // Control: A's own certificate gets A's identity.
    const own = await tokenRequest(local.tokenUrl, { grant_type: "client_credentials" }, partnerA);
    expect(own.status, JSON.stringify(own.json)).toBe(200);
    const answer = await tokenRequest(local.tokenUrl, { grant_type: "client_credentials" }, partnerBCopy);
    expect(answer.status, JSON.stringify(answer.json)).toBe(401);
    expect(answer.json.error).toBe("invalid_client");
    expect(String(answer.json.error_description)).toMatch(/maps to no ServiceIdentity/);
  });

  it("2.2 an untrusted CA copying partner A's CA DN and subject DN asks for A's identity", async () => {
    const answer = await tokenRequest(local.tokenUrl, { grant_type: "client_credentials" }, impostorCopy);
    expect(answer.status, JSON.stringify(answer.json)).toBe(401);
    expect(answer.json.error).toBe("invalid_client");
  });

  it("2.3 partner B presents A's stolen identity JWT at the edge with its A-lookalike certificate", async () => {
    const own = await tokenRequest(local.tokenUrl, { grant_type: "client_credentials" }, partnerA);
    const stolen = String(own.json.access_token);
    for (const client of [partnerBCopy, impostorCopy, undefined]) {
      const reply = await inbound(
        SHOP,
        {
          method: "POST",
          path: "/partner/checkout",
          headers: { authorization: `Bearer ${stolen}` },
          body: JSON.stringify({ orderId: "b1", card: "4111 1111 1111 1111" }),
        },
        client,
      );
      expect(reply.status, reply.body).toBe(401);
      expect(["binding_mismatch", "peer_unknown_issuer", "peer_bad_signature"]).toContain(reasonOf(reply));
    }
    // Control: partner A itself does get through, so the refusals above are about the certificate.
    const legit = await inbound(
      SHOP,
      {
        method: "POST",
        path: "/partner/checkout",
        headers: { authorization: `Bearer ${stolen}` },
        body: JSON.stringify({ orderId: "a1", card: "4111 1111 1111 1111" }),
      },
      partnerA,
    );
    expect(legit.status, legit.body).toBe(200);
  });

  it("2.4 partner A (a DN-mapped external subject) connects to the mesh's inbound ports as if it were a service", async () => {
    const own = await tokenRequest(local.tokenUrl, { grant_type: "client_credentials" }, partnerA);
    const identity = String(own.json.access_token);
    for (const target of [CART, PAYMENTS]) {
      for (const chain of [identity, "e30.e30.AA"]) {
        const reply = await inbound(
          target,
          { method: "POST", path: "/pay-for-order/1", headers: { "custody-chain": chain }, body: "{}" },
          partnerA,
        );
        expect(refusal(reply), target).toEqual({ status: 401, reason: "peer_not_a_service" });
      }
    }
  });

  // -------------------------------------------------------------------------------------------
  // 3. Two AccessPolicies with different quotas on one target
  // -------------------------------------------------------------------------------------------

  it("3. a burst of calls against two policies' quotas (burst 100 and burst 2) on echo: the tighter one holds", async () => {
    const token = userToken({ audience: ECHO, subject: "quota-burster" });
    const replies: Reply[] = [];
    for (let index = 0; index < 8; index++) replies.push(await atEcho("/quota", {}, token));
    const allowed = replies.filter((reply) => reply.status === 200).length;
    const limited = replies.filter((reply) => reply.status === 429);
    expect(
      allowed,
      replies.map((reply) => `${reply.status} ${reasonOf(reply)}`).join(", "),
    ).toBeLessThanOrEqual(3);
    expect(limited.length).toBeGreaterThan(0);
    expect(reasonOf(limited[0] as Reply)).toBe("quota_exceeded");
    expect(limited[0]?.headers["retry-after"]).toBeDefined();
  });

  // -------------------------------------------------------------------------------------------
  // 4. Backdated iat to extend an expired upstream link (same-user attacker holding cart's key)
  // -------------------------------------------------------------------------------------------

  it("4.1 cart backdates its head link into the lifetime of an expired shop → cart link", async () => {
    const now = nowSeconds();
    const captured = await customerAtCart(now - 30); // e1 expired at now - 20
    const head = mintLink(await signer(CART), {
      audience: ECHO,
      operation: op("GET", "/backdated"),
      previous: captured,
      nowSeconds: now - 25,
      ttlSeconds: 40,
    });
    const reply = await inbound(
      ECHO,
      { method: "GET", path: "/backdated", headers: { "custody-chain": head.header } },
      await credentials(CART),
    );
    expect(refusal(reply)).toEqual({ status: 401, reason: "stale" });
  });

  it("4.2 cart continues an expired shop → cart link with a fresh head (and, as a control, a live one)", async () => {
    const now = nowSeconds();
    const live = await customerAtCart(now);
    const fresh = mintLink(await signer(CART), {
      audience: ECHO,
      operation: op("GET", "/live"),
      previous: live,
      nowSeconds: now,
    });
    const control = await inbound(
      ECHO,
      { method: "GET", path: "/live", headers: { "custody-chain": fresh.header } },
      await credentials(CART),
    );
    expect(control.status, control.body).toBe(200);

    const captured = await customerAtCart(now - 30);
    const head = mintLink(await signer(CART), {
      audience: ECHO,
      operation: op("GET", "/expired"),
      previous: captured,
      nowSeconds: now,
    });
    const reply = await inbound(
      ECHO,
      { method: "GET", path: "/expired", headers: { "custody-chain": head.header } },
      await credentials(CART),
    );
    expect(refusal(reply)).toEqual({ status: 401, reason: "expired" });
  });

  it("4.3 cart inserts a backdated cart → cart link between the expired shop → cart link and a fresh head", async () => {
    const now = nowSeconds();
    const captured = await customerAtCart(now - 30); // e1: iat now-30, exp now-20
    // e2 claims to have been issued while e1 was alive, and lives 55 s (≤ the 60 s maximum).
    const bridge = mintLink(await signer(CART), {
      audience: CART,
      operation: op("GET", "/bridge"),
      previous: captured,
      nowSeconds: now - 22,
      ttlSeconds: 55,
    });
    const head = mintLink(await signer(CART), {
      audience: ECHO,
      operation: op("GET", "/extended"),
      previous: bridge.elements,
      nowSeconds: now,
    });
    const reply = await inbound(
      ECHO,
      { method: "GET", path: "/extended", headers: { "custody-chain": head.header } },
      await credentials(CART),
    );
    // Evidence when it gets through: echo's app answered for customer-captured, whose shop → cart link
    // had expired 20 s earlier.
    expect(reply.status, `${reply.status} ${reply.body.slice(0, 300)}`).toBe(401);
    expect(reasonOf(reply)).toBe("self_link");
  });

  // -------------------------------------------------------------------------------------------
  // 5. The customer's token and what apps see
  // -------------------------------------------------------------------------------------------

  /** What apps saw in a checkout (payments' answer) and in a call to echo (its echo of headers). */
  const appViews = async () => {
    const token = userToken({ audience: ECHO, subject: "customer-leak" });
    const echoed = await atEcho("/leak", { "x-note": "five" }, token);
    expect(echoed.status).toBe(200);
    const shopToken = userToken({ subject: "customer-leak" });
    const order = await checkout(shopToken);
    expect(paid(order), order.body).toBe(true);
    const payments =
      (jsonOf(order.body).downstream as { downstream?: Record<string, unknown> }).downstream ?? {};
    return { token, shopToken, echoed: jsonOf(echoed.body), payments };
  };

  it("5.1 no app ever receives a raw JWT in a header (echo's headers), nor the customer's token anywhere", async () => {
    const { token, shopToken, echoed, payments } = await appViews();
    const headers = echoed.headers as Record<string, string>;
    const jwtHeaders = Object.entries(headers).filter(([, value]) => JWT_LIKE.test(String(value)));
    expect(jwtHeaders, JSON.stringify(jwtHeaders).slice(0, 400)).toEqual([]);
    expect(headers.authorization).toBeUndefined();
    expect(JSON.stringify(echoed)).not.toContain(token.split(".")[1]);
    // payments' app: the chain it was handed carries links (single-use, sealed e0); never the token.
    const everything = JSON.stringify(payments);
    expect(everything).not.toContain(shopToken.split(".")[1]);
    for (const value of stringsIn(payments).flatMap((text) => text.split("~"))) {
      if (!JWT_LIKE.test(value)) continue;
      expect(headerOf(value).typ, `payments saw a JWT that is not a call link: ${value.slice(0, 60)}`).toBe(
        "custody+jwt",
      );
    }
  });

  it("5.2 every JWT-looking or sealed value an app sees, as Authorization: Bearer at every edge", async () => {
    const { echoed, payments } = await appViews();
    const echoChain = String((echoed.headers as Record<string, string>)["custody-chain"]);
    const paymentsChain = String(payments.chain);
    const values = new Set([echoChain, paymentsChain, ...echoChain.split("~"), ...paymentsChain.split("~")]);
    expect(values.size).toBeGreaterThanOrEqual(4);
    for (const value of values) {
      for (const edge of EDGES) {
        const reply = await inbound(edge, {
          method: "POST",
          path: "/checkout",
          headers: { authorization: `Bearer ${value}` },
          body: "{}",
        });
        expect(reply.status, `${edge} ${value.slice(0, 40)}: ${reply.body}`).toBe(401);
        expect(typeof reasonOf(reply)).toBe("string");
      }
    }
  });

  it("5.3 every value an app sees, as Custody-Chain at every inbound port (anonymous, and with that service's certificate)", async () => {
    const { echoed, payments } = await appViews();
    const echoChain = String((echoed.headers as Record<string, string>)["custody-chain"]);
    const paymentsChain = String(payments.chain);
    const seen: [string, string][] = [
      [ECHO, echoChain],
      [PAYMENTS, paymentsChain],
      ...echoChain.split("~").map((value): [string, string] => [ECHO, value]),
      ...paymentsChain.split("~").map((value): [string, string] => [PAYMENTS, value]),
    ];
    for (const [owner, value] of seen) {
      for (const target of SERVICES) {
        for (const client of [undefined, await credentials(owner)]) {
          const reply = await inbound(
            target,
            {
              method: "POST",
              path: "/pay-for-order/1",
              headers: { "custody-chain": value },
              body: String(payments.body ?? "{}"),
            },
            client,
          );
          expect(
            reply.status,
            `${owner} value at ${target} (${client === undefined ? "anonymous" : "mTLS"}): ${reply.body}`,
          ).toBe(401);
        }
      }
    }
  });

  it("5.4 every value an app sees, as Custody-Chain at every other service's outbound port (with that port's credential)", async () => {
    const { token, echoed, payments } = await appViews();
    const echoChain = String((echoed.headers as Record<string, string>)["custody-chain"]);
    const paymentsChain = String(payments.chain);
    const seen: [string, string][] = [
      [ECHO, echoChain],
      [PAYMENTS, paymentsChain],
      ...echoChain.split("~").map((value): [string, string] => [ECHO, value]),
      ...paymentsChain.split("~").map((value): [string, string] => [PAYMENTS, value]),
      ["(stolen)", token],
    ];
    for (const [owner, value] of seen) {
      for (const caller of SERVICES) {
        if (caller === owner) continue; // an app continuing its own chain is the design
        const proxy = workload(caller).appProxyUrl;
        for (const target of SERVICES.filter((id) => id !== caller)) {
          const reply = await callOutbound(proxy, `http://${target}/pay-for-order/1`, {
            method: "POST",
            headers: { "custody-chain": value },
            body: "{}",
          });
          expect(reply.status, `${owner}'s value via ${caller} → ${target}: ${reply.body}`).toBe(400);
          expect(["chain_not_sealed", "chain_not_ours", "chain_altered"]).toContain(reasonOf(reply));
        }
      }
    }
  });

  // -------------------------------------------------------------------------------------------
  // 6. A user token addressed to another edge
  // -------------------------------------------------------------------------------------------

  it("6.1 a customer's token for shop, presented at echo (and echo's at shop)", async () => {
    const forShop = await atEcho("/x", {}, userToken({ audience: SHOP }));
    expect(refusal(forShop)).toEqual({ status: 401, reason: "initial_token_audience" });
    const forEcho = await checkout(userToken({ audience: ECHO }));
    expect(refusal(forEcho)).toEqual({ status: 401, reason: "initial_token_audience" });
  });

  it("6.2 a customer's token for a non-edge (payments), at both edges", async () => {
    for (const edge of EDGES) {
      const reply = await inbound(edge, {
        method: "GET",
        path: "/x",
        headers: { authorization: `Bearer ${userToken({ audience: PAYMENTS })}` },
      });
      expect(reply.status, reply.body).toBe(401);
      expect(["initial_token_invalid", "initial_token_audience"]).toContain(reasonOf(reply));
    }
  });

  it("6.3 echo (an edge) exchanges a customer's token addressed to shop at the token service", async () => {
    const answer = await tokenRequest(
      local.tokenUrl,
      {
        grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
        subject_token: userToken({ audience: SHOP, subject: "customer-of-shop" }),
        subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
        audience: CART,
      },
      await credentials(ECHO),
    );
    // Evidence when it gets through: a token for customer-of-shop with act.sub echo.shop.
    expect(
      answer.status,
      JSON.stringify({ ...answer.json, access_token: claimsOf(String(answer.json.access_token)) }),
    ).toBe(400);
    expect(answer.json.error).toBe("invalid_grant");
  });

  it("6.4 shop (its key held) starts a chain with a customer's token addressed to echo, towards cart", async () => {
    const chain = mintLink(await signer(SHOP), {
      audience: CART,
      operation: op("POST", "/cart/confirm"),
      body: "{}",
      previous: [userToken({ audience: ECHO })],
    }).header;
    const reply = await inbound(
      CART,
      { method: "POST", path: "/cart/confirm", headers: { "custody-chain": chain }, body: "{}" },
      await credentials(SHOP),
    );
    expect(refusal(reply)).toEqual({ status: 401, reason: "initial_token_audience" });
  });

  // -------------------------------------------------------------------------------------------
  // 7. An anonymous TLS client uploads 16 MiB to an inbound port
  // -------------------------------------------------------------------------------------------

  /**
   * Streams up to `total` bytes after the head, respecting backpressure, until the server answers or
   * closes; returns how much the client managed to hand over and what came back.
   */
  const upload = (port: number, head: string, total: number, watchPid?: number) =>
    new Promise<{
      written: number;
      status: number;
      reason: unknown;
      sawContinue: boolean;
      spooled: string[];
      tmpFiles: string[];
    }>((resolve) => {
      const socket = tlsConnect({ host: "127.0.0.1", port, rejectUnauthorized: false });
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      const chunked = /transfer-encoding: chunked/i.test(head);
      let written = 0;
      let answered = false;
      let done = false;
      let text = "";
      const spooled = new Set<string>();
      const tmpFiles = new Set<string>();
      const sample = setInterval(async () => {
        if (watchPid !== undefined) for (const file of await spooledBodiesOf(watchPid)) spooled.add(file);
        for (const name of await readdir(tmpdir()).catch(() => [] as string[]))
          if (name.startsWith("custody-body-")) tmpFiles.add(name);
      }, 20);
      const finish = () => {
        if (done) return;
        done = true;
        clearInterval(sample);
        clearTimeout(deadline);
        socket.destroy();
        const parsed = parseFirstResponse(text);
        resolve({
          written,
          status: parsed.status,
          reason: jsonOf(parsed.body).reason,
          sawContinue: /^HTTP\/1\.1 100/.test(text),
          spooled: [...spooled],
          tmpFiles: [...tmpFiles],
        });
      };
      const deadline = setTimeout(finish, 12_000);
      const pump = () => {
        while (!socket.destroyed && written < total) {
          const piece = chunked
            ? Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from("\r\n")])
            : chunk;
          written += chunk.length;
          if (!socket.write(piece)) {
            socket.once("drain", pump);
            return;
          }
        }
      };
      socket.on("data", (data: Buffer) => {
        text += data.toString("latin1");
        // An attacker ignores the answer and goes on sending; stop a while after it to measure.
        if (!answered && /^HTTP\/1\.1 [2-5]\d\d/m.test(text)) {
          answered = true;
          setTimeout(finish, 2_000);
        }
      });
      socket.on("error", () => finish());
      socket.on("close", () => finish());
      socket.on("secureConnect", () => {
        socket.write(head);
        if (!/expect: 100-continue/i.test(head)) pump();
        else setTimeout(pump, 1_000); // a client that waited for 100 Continue, then sends anyway
      });
    });

  /** At most this much may the sidecar read of a refused upload: the 64 KiB it may discard, TLS records, a read buffer. */
  const READ_BOUND = 256 * 1024;

  it("7.1 an anonymous client streams 16 MiB (Content-Length) to payments' inbound port: little read, nothing spooled", async () => {
    const [pid] = await pidsWith("sidecar", "custody-identity.shop.payments");
    expect(pid).toBeDefined();
    const total = 16 * 1024 * 1024;
    const { result, read } = await readDuring(pid as number, () =>
      upload(
        workload(PAYMENTS).inboundPort,
        `POST /pay-for-order/1 HTTP/1.1\r\nHost: payments\r\nContent-Type: application/octet-stream\r\nContent-Length: ${total}\r\n\r\n`,
        total,
        pid,
      ),
    );
    const evidence = `sidecar read ~${read} bytes; client handed over ${result.written}; answer ${result.status} ${String(result.reason)}`;
    console.log(evidence);
    expect(read, evidence).toBeLessThan(READ_BOUND);
    // What the client handed its own socket includes the kernel's buffers on both ends (megabytes on
    // loopback, more when the machine is slow): only that the upload never went through in full.
    expect(result.written, evidence).toBeLessThan(total);
    expect(result.spooled).toEqual([]);
    expect(result.tmpFiles).toEqual([]);
    // The refusal, or (the server closes with bytes unread) a reset that arrived before it was read.
    if (result.status !== 0)
      expect({ status: result.status, reason: result.reason }).toEqual({
        status: 401,
        reason: "no_client_certificate",
      });
  });

  it("7.2 an anonymous client streams 16 MiB chunked to echo's (edge) inbound port: little read, nothing spooled", async () => {
    const [pid] = await pidsWith("sidecar", "custody-identity.shop.echo");
    expect(pid).toBeDefined();
    const total = 16 * 1024 * 1024;
    const { result, read } = await readDuring(pid as number, () =>
      upload(
        workload(ECHO).inboundPort,
        "POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n",
        total,
        pid,
      ),
    );
    const evidence = `sidecar read ~${read} bytes; client handed over ${result.written}; answer ${result.status} ${String(result.reason)}`;
    console.log(evidence);
    expect(read, evidence).toBeLessThan(READ_BOUND);
    // What the client handed its own socket includes the kernel's buffers on both ends (megabytes on
    // loopback, more when the machine is slow): only that the upload never went through in full.
    expect(result.written, evidence).toBeLessThan(total);
    expect(result.spooled).toEqual([]);
    expect(result.tmpFiles).toEqual([]);
    if (result.status !== 0)
      expect({ status: result.status, reason: result.reason }).toEqual({
        status: 401,
        reason: "no_client_certificate",
      });
  });

  it("7.3 an anonymous client with Expect: 100-continue and 16 MiB: no 100 Continue, refused, little read, nothing spooled", async () => {
    const [pid] = await pidsWith("sidecar", "custody-identity.shop.payments");
    const total = 16 * 1024 * 1024;
    const { result, read } = await readDuring(pid as number, () =>
      upload(
        workload(PAYMENTS).inboundPort,
        `POST /pay-for-order/1 HTTP/1.1\r\nHost: payments\r\nExpect: 100-continue\r\nContent-Length: ${total}\r\n\r\n`,
        total,
        pid,
      ),
    );
    const evidence = `sidecar read ~${read} bytes; client handed over ${result.written}; answer ${result.status} ${String(result.reason)}`;
    console.log(evidence);
    expect(result.sawContinue).toBe(false);
    expect({ status: result.status, reason: result.reason }, evidence).toEqual({
      status: 401,
      reason: "no_client_certificate",
    });
    expect(read, evidence).toBeLessThan(READ_BOUND);
    expect(result.spooled).toEqual([]);
  });

  it("7.4 an anonymous client streams 16 MiB to the token service (limit 16 KiB): little read", async () => {
    const [pid] = await pidsWith("operator", local.stateDirectory);
    expect(pid).toBeDefined();
    const total = 16 * 1024 * 1024;
    const { result, read } = await readDuring(pid as number, () =>
      upload(
        Number(new URL(local.tokenUrl).port),
        `POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${total}\r\n\r\n`,
        total,
      ),
    );
    // The token service answers 400 (body too large) at once but keeps the connection, and Node
    // discards the rest of the body by reading it: an unauthenticated client has it read 16 MiB.
    const evidence = `token service read ~${read} bytes; client handed over ${result.written}; answer ${result.status}`;
    expect(read, evidence).toBeLessThan(READ_BOUND);
    // What the client handed its own socket includes the kernel's buffers on both ends (megabytes on
    // loopback, more when the machine is slow): only that the upload never went through in full.
    expect(result.written, evidence).toBeLessThan(total);
  });

  it("7.5 a refused client with a small body, then a second request on the same connection (the discarded body is not parsed as a request)", async () => {
    const smuggled = "GET /smuggled-after-refusal HTTP/1.1\r\nHost: echo\r\n\r\n";
    const body = `${"x".repeat(100)}${smuggled}`;
    const result = await rawTls(
      workload(ECHO).inboundPort,
      `POST /a HTTP/1.1\r\nHost: echo\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      { timeoutMs: 3_000 },
    );
    expect(result.status).toBe(401);
    const seen = jsonOf((await atEcho("/__seen")).body).seen as { url: string }[];
    expect(seen.map((entry) => entry.url)).not.toContain("/smuggled-after-refusal");
  });

  // -------------------------------------------------------------------------------------------
  // 8. A browser on the machine (DNS rebinding): the key service and the outbound proxy
  // -------------------------------------------------------------------------------------------

  it("8.1 key service (/.custody/sign, /open, /seal): no credential, a wrong one, a text/plain simple request", async () => {
    for (const id of [SHOP, PAYMENTS]) {
      const { outboundPort } = workload(id);
      for (const route of ["sign", "open", "seal"]) {
        for (const authorization of [undefined, basic("wrong"), `Bearer ${"x".repeat(43)}`]) {
          const reply = await plainHttp(outboundPort, {
            method: "POST",
            path: `/.custody/${route}`,
            headers: {
              host: `127.0.0.1:${outboundPort}`,
              "content-type": "text/plain",
              ...(authorization === undefined ? {} : { authorization }),
            },
            body: JSON.stringify({ payload: { pay: 1 }, recipients: [PAYMENTS], plaintext: "x" }),
          });
          expect(refusal(reply), `${id} ${route}`).toEqual({ status: 401, reason: "credential_required" });
        }
      }
    }
  });

  it("8.2 key service with the right credential but a browser's marks: Origin, Sec-Fetch-Site, Sec-Fetch-Dest, a foreign Host", async () => {
    const { outboundPort, clientSecret } = workload(PAYMENTS);
    const variants: [Record<string, string>, string][] = [
      [{ host: `127.0.0.1:${outboundPort}`, origin: "http://evil.example" }, "browser_request_refused"],
      [{ host: `127.0.0.1:${outboundPort}`, origin: "null" }, "browser_request_refused"],
      [{ host: `127.0.0.1:${outboundPort}`, "sec-fetch-site": "same-origin" }, "browser_request_refused"],
      [{ host: `127.0.0.1:${outboundPort}`, "sec-fetch-dest": "empty" }, "browser_request_refused"],
      [{ host: `evil.example:${outboundPort}` }, "host_not_local"],
      [{ host: "payments.shop" }, "host_not_local"],
      [{ host: `127.0.0.1.nip.io:${outboundPort}` }, "host_not_local"],
      [{ host: `localhost.evil.example:${outboundPort}` }, "host_not_local"],
    ];
    for (const route of ["sign", "open"]) {
      for (const [headers, reason] of variants) {
        const reply = await plainHttp(outboundPort, {
          method: "POST",
          path: `/.custody/${route}`,
          headers: { "content-type": "text/plain", authorization: basic(clientSecret), ...headers },
          body: JSON.stringify({ payload: { pay: 1 } }),
        });
        expect(refusal(reply), `${route} ${JSON.stringify(headers)}`).toEqual({ status: 403, reason });
      }
    }
  });

  it("8.3 outbound proxy from a browser: Host: payments.shop without credential, wrong credential, Origin/Sec-Fetch with credential", async () => {
    const { outboundPort, clientSecret } = workload(CART);
    const cases: [Record<string, string>, number, string][] = [
      [{ host: "payments.shop" }, 407, "proxy_auth_required"],
      [{ host: "payments.shop", "proxy-authorization": basic("wrong") }, 407, "proxy_auth_required"],
      // The key service's Authorization form is not a proxy credential.
      [{ host: "payments.shop", authorization: basic(clientSecret) }, 407, "proxy_auth_required"],
      [
        { host: "payments.shop", origin: "http://payments.shop", "proxy-authorization": basic(clientSecret) },
        403,
        "browser_request_refused",
      ],
      [
        {
          host: "payments.shop",
          "sec-fetch-site": "same-origin",
          "proxy-authorization": basic(clientSecret),
        },
        403,
        "browser_request_refused",
      ],
      [
        { host: "payments.shop", "sec-fetch-dest": "empty", "proxy-authorization": basic(clientSecret) },
        403,
        "browser_request_refused",
      ],
    ];
    for (const [headers, status, reason] of cases) {
      const reply = await plainHttp(outboundPort, {
        method: "POST",
        path: "/pay-for-order/1",
        headers: { "content-type": "text/plain", ...headers },
        body: '{"sealedCard":{}}',
      });
      expect(refusal(reply), JSON.stringify(headers)).toEqual({ status, reason });
    }
    // Absolute form, as a proxy-configured browser would send it.
    const absolute = await plainHttp(outboundPort, {
      method: "POST",
      path: "http://payments.shop/pay-for-order/1",
      headers: { host: "payments.shop", "content-type": "text/plain" },
      body: "{}",
    });
    expect(refusal(absolute)).toEqual({ status: 407, reason: "proxy_auth_required" });
  });

  // -------------------------------------------------------------------------------------------
  // 9. Local mode: app ports, file modes, secrets
  // -------------------------------------------------------------------------------------------

  it("9.1 a local process calls every app port directly with forged Custody-Caller / Custody-Decision", async () => {
    for (const id of SERVICES) {
      for (const token of [undefined, "", "guess", randomBytes(32).toString("base64url")]) {
        const reply = await plainHttp(workload(id).appPort, {
          method: "POST",
          path: id === PAYMENTS ? "/pay-for-order/1" : id === CART ? "/cart/confirm" : "/checkout",
          headers: {
            host: "127.0.0.1",
            "content-type": "application/json",
            "custody-caller": CART,
            "custody-decision": "allow policy=shop/payments rule=pay-for-order",
            "custody-initial-scope": "shop.customer",
            ...(token === undefined ? {} : { "custody-sidecar-token": token }),
          },
          body: "{}",
        });
        expect(reply.status, `${id}: ${reply.body}`).toBe(401);
        expect(jsonOf(reply.body).error).toBe("not_from_sidecar");
      }
    }
  });

  it("9.2 key material and credentials in the state directory are private (0600 files, 0700 directories)", async () => {
    const state = local.stateDirectory;
    const problems: string[] = [];
    const mode = async (path: string) => (await stat(path)).mode & 0o777;
    const expectMode = async (path: string, wanted: number) => {
      const actual = await mode(path);
      if (actual !== wanted) problems.push(`${path}: ${actual.toString(8)} (want ${wanted.toString(8)})`);
    };
    await expectMode(state, 0o700);
    await expectMode(local.caDirectory, 0o700);
    await expectMode(join(local.caDirectory, "ca.key"), 0o600);
    const walk = async (path: string): Promise<void> => {
      for (const name of await readdir(path)) {
        const full = join(path, name);
        const info = await lstat(full);
        if (info.isSymbolicLink()) continue;
        if (info.isDirectory()) {
          if (/secrets|clients|ca$/.test(full) || full.includes("/secrets/")) await expectMode(full, 0o700);
          await walk(full);
          continue;
        }
        if ((info.mode & 0o022) !== 0)
          problems.push(`${full}: writable by others (${(info.mode & 0o777).toString(8)})`);
        if (/(^|\.|-)key$|secret|signing/.test(name) || name === "tls.key") await expectMode(full, 0o600);
      }
    };
    await walk(state);
    for (const id of SERVICES) {
      const key = await realpath(join(local.secretDirectory(id), "tls.key"));
      await expectMode(key, 0o600);
      for (let dir = dirname(key); dir.startsWith(state); dir = dirname(dir)) {
        if ((await mode(dir)) & 0o077)
          problems.push(`${dir}: ${(await mode(dir)).toString(8)} on the path to ${id}'s key`);
      }
    }
    expect(problems).toEqual([]);
  });

  it("9.3 no secret on any command line (readable by every local user through /proc/*/cmdline)", async () => {
    const secretsOf = async () => {
      const values: string[] = [];
      for (const slug of await readdir(join(local.stateDirectory, "clients"))) {
        for (const name of await readdir(join(local.stateDirectory, "clients", slug))) {
          values.push((await readFile(join(local.stateDirectory, "clients", slug, name), "utf8")).trim());
        }
      }
      return values;
    };
    const values = await secretsOf();
    expect(values.length).toBeGreaterThanOrEqual(8);
    const leaks: string[] = [];
    for (const pid of await pidsWith(local.stateDirectory)) {
      const cmdline = (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).replaceAll(
        "\u0000",
        " ",
      );
      for (const value of values) if (cmdline.includes(value)) leaks.push(`${pid}: ${cmdline.slice(0, 120)}`);
    }
    for (const pid of await pidsWith("apps/")) {
      const cmdline = (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).replaceAll(
        "\u0000",
        " ",
      );
      for (const value of values) if (cmdline.includes(value)) leaks.push(`${pid}: ${cmdline.slice(0, 120)}`);
    }
    expect(leaks).toEqual([]);
  });

  // -------------------------------------------------------------------------------------------
  // 10. Header spellings that frameworks read as the sidecar's own or as an operation override
  // -------------------------------------------------------------------------------------------

  const FORGED = "forged-by-client";
  const normalized = (name: string) => name.toLowerCase().replaceAll("_", "-");

  it("10.1 Custody_Caller, CUSTODY-CALLER, custody-decision variants, method/URL overrides sent to the echo edge do not reach its app", async () => {
    const forged: Record<string, string> = {
      Custody_Caller: FORGED,
      "CUSTODY-CALLER": FORGED,
      "Custody-Decision": `${FORGED} allow`,
      custody_decision: FORGED,
      CUSTODY_DECISION: FORGED,
      "Custody-Sidecar-Token": FORGED,
      custody_sidecar_token: FORGED,
      "Custody-Initial-Subject": FORGED,
      Custody_Initial_Scope: FORGED,
      "Custody-Initial-Issuer": FORGED,
      "X-HTTP-Method-Override": "DELETE",
      X_HTTP_Method_Override: "DELETE",
      "X-HTTP-Method": "DELETE",
      "X-Method-Override": "DELETE",
      "X-Original-Method": "DELETE",
      "X-Original-URL": "/admin",
      X_Original_URL: "/admin",
      "X-Rewrite-URL": "/admin",
      x_rewrite_url: "/admin",
    };
    const reply = await atEcho("/hello", forged);
    expect(reply.status, reply.body).toBe(200);
    const headers = jsonOf(reply.body).headers as Record<string, string>;
    const overrides = new Set([
      "x-http-method-override",
      "x-http-method",
      "x-method-override",
      "x-original-method",
      "x-original-url",
      "x-rewrite-url",
    ]);
    const passed = Object.entries(headers).filter(
      ([name, value]) =>
        String(value).includes(FORGED) ||
        overrides.has(normalized(name)) ||
        value === "/admin" ||
        value === "DELETE",
    );
    expect(passed).toEqual([]);
    // The real ones are the sidecar's.
    expect(headers["custody-decision"]).toMatch(/^allow policy=shop\/echo(-tight)? rule=\S+ entry=bearer$/);
    expect(headers["custody-initial-subject"]).toBe("customer-7");
  });

  it("10.2 the same, repeated, in raw form: duplicated headers, a trailer, and an obs-fold continuation line", async () => {
    const token = userToken({ audience: ECHO });
    const requests = [
      // duplicates of a forged header, with odd spacing
      `GET /dup HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\nCustody-Caller: ${FORGED}\r\ncustody-caller:  ${FORGED}\r\nCUSTODY_CALLER:${FORGED}\r\nConnection: close\r\n\r\n`,
      // a forged header as a chunked trailer
      `POST /trailer HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\nTransfer-Encoding: chunked\r\nTrailer: Custody-Caller\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\nCustody-Caller: ${FORGED}\r\nX-Original-URL: /admin\r\n\r\n`,
      // obs-fold: a header folded into the previous one
      `GET /fold HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\nX-Note: a\r\n Custody-Caller: ${FORGED}\r\nConnection: close\r\n\r\n`,
    ];
    for (const request of requests) {
      const result = await rawTls(workload(ECHO).inboundPort, request);
      if (result.status === 200) {
        const echoed = jsonOf(result.body);
        expect(JSON.stringify(echoed.headers)).not.toContain(FORGED);
        expect(JSON.stringify(echoed.trailers ?? {})).not.toContain(FORGED);
        expect(JSON.stringify(echoed.headers)).not.toContain("/admin");
      } else {
        expect(result.status, result.raw.slice(0, 200)).toBe(400);
      }
    }
  });

  it("10.3 Upgrade: h2c / websocket at the echo edge: the app never gets a protocol switch or HTTP2-Settings", async () => {
    const token = userToken({ audience: ECHO });
    for (const upgrade of ["h2c", "websocket"]) {
      const result = await rawTls(
        workload(ECHO).inboundPort,
        `GET /upgrade HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: ${upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        { timeoutMs: 3_000 },
      );
      expect(result.status, result.raw.slice(0, 200)).not.toBe(101);
      if (result.status === 200) {
        const headers = jsonOf(result.body).headers as Record<string, string>;
        expect(headers.upgrade, upgrade).toBeUndefined();
        expect(headers["http2-settings"], upgrade).toBeUndefined();
      }
    }
  });

  // -------------------------------------------------------------------------------------------
  // 11. Paths against echo's deny rule `(?i)/admin(/.*)?`
  // -------------------------------------------------------------------------------------------

  it("11. /admin;jsessionid=1, /ADMIN, /admin., /admin%20, %2e%2e, %252F, overlong UTF-8 and friends, against a deny rule", async () => {
    const token = userToken({ audience: ECHO, subject: "path-walker" });
    const cases: [string, number, string][] = [
      ["/admin", 403, "denied_by_rule"],
      ["/admin;jsessionid=1", 400, "path_parameter"],
      ["/admin%3Bjsessionid=1", 400, "path_parameter"],
      ["/ADMIN", 403, "denied_by_rule"],
      ["/Admin/users", 403, "denied_by_rule"],
      ["/admin.", 400, "ambiguous_segment"],
      ["/admin%2e", 400, "ambiguous_segment"],
      ["/admin%20", 400, "ambiguous_segment"],
      ["/admin/", 403, "denied_by_rule"],
      ["//admin", 403, "denied_by_rule"],
      ["/./admin", 403, "denied_by_rule"],
      ["/x/../admin", 403, "denied_by_rule"],
      ["/x/%2e%2e/admin", 403, "denied_by_rule"],
      ["/x/%2E%2E/admin", 403, "denied_by_rule"],
      ["/%2e%2e/admin", 400, "path_traversal"],
      ["/%61dmin", 403, "denied_by_rule"],
      ["/x%2F..%2Fadmin", 400, "ambiguous_encoding"],
      ["/x%252F..%252Fadmin", 400, "ambiguous_encoding"],
      ["/x/%252e%252e/admin", 400, "ambiguous_encoding"],
      ["/x/%C0%AE%C0%AE/admin", 400, "ambiguous_encoding"],
      ["/%C0%AFadmin", 400, "ambiguous_encoding"],
      ["/x/%E0%80%AE%E0%80%AE/admin", 400, "ambiguous_encoding"],
      ["/admin%5C", 400, "ambiguous_encoding"],
      ["/x%5C..%5Cadmin", 400, "ambiguous_encoding"],
      ["/admin%00", 400, "ambiguous_encoding"],
      ["/admin%09", 400, "ambiguous_encoding"],
      ["/admin?x=1", 403, "denied_by_rule"],
      ["/admin/..;/x", 400, "path_parameter"],
    ];
    const problems: string[] = [];
    for (const [path, status, reason] of cases) {
      const result = await rawTls(
        workload(ECHO).inboundPort,
        `GET ${path} HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
      );
      const got = { status: result.status, reason: jsonOf(result.body).reason };
      if (got.status !== status || got.reason !== reason)
        problems.push(
          `${path}: ${JSON.stringify(got)} (want ${status} ${reason}) ${result.body.slice(0, 120)}`,
        );
    }
    // Raw bytes an HTTP parser might let through, and forms that are not origin-form.
    for (const target of [
      "/admin\\",
      "/x/..\\admin",
      "http://echo.shop/admin",
      "*",
      "/admin#x",
      "/ad\u00admin",
      "/x/\u2025/admin",
    ]) {
      const result = await rawTls(
        workload(ECHO).inboundPort,
        Buffer.from(
          `GET ${target} HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
          "utf8",
        ),
      );
      if (result.status === 200)
        problems.push(`${JSON.stringify(target)} reached the app: ${result.body.slice(0, 120)}`);
    }
    const seen = jsonOf((await atEcho("/__seen")).body).seen as { url: string }[];
    const reachedAdmin = seen.filter((entry) =>
      /admin/i.test(decodeURIComponent(entry.url.replace(/%(?![0-9A-F]{2})/gi, ""))),
    );
    expect(problems).toEqual([]);
    expect(reachedAdmin).toEqual([]);
  });

  // -------------------------------------------------------------------------------------------
  // 12. Everything else
  // -------------------------------------------------------------------------------------------

  it("12.1 a captured chain replayed at the same inbound, and played at every other inbound", async () => {
    const chain = mintLink(await signer(CART), {
      audience: ECHO,
      operation: op("POST", "/replay"),
      body: '{"n":1}',
      previous: await customerAtCart(nowSeconds()),
    }).header;
    const send = (target: string) =>
      inbound(
        target,
        { method: "POST", path: "/replay", headers: { "custody-chain": chain }, body: '{"n":1}' },
        secrets.get(CART),
      );
    await credentials(CART);
    const first = await send(ECHO);
    expect(first.status, first.body).toBe(200);
    expect(refusal(await send(ECHO))).toEqual({ status: 401, reason: "replayed" });
    for (const target of [SHOP, CART, PAYMENTS]) {
      expect(refusal(await send(target)), target).toEqual({ status: 401, reason: "audience_mismatch" });
    }
  });

  it("12.2 a chain whose head is addressed elsewhere (to cart), sent to payments and echo", async () => {
    const chain = mintLink(await signer(SHOP), {
      audience: CART,
      operation: op("POST", "/pay-for-order/1"),
      body: "{}",
      previous: [userToken()],
    }).header;
    for (const target of [PAYMENTS, ECHO]) {
      const reply = await inbound(
        target,
        { method: "POST", path: "/pay-for-order/1", headers: { "custody-chain": chain }, body: "{}" },
        await credentials(SHOP),
      );
      expect(refusal(reply), target).toEqual({ status: 401, reason: "audience_mismatch" });
    }
  });

  it("12.3 a sealed chain from payments' app, used at another service's outbound, and with its links swapped at its own", async () => {
    const order = await checkout();
    const payments =
      (jsonOf(order.body).downstream as { downstream?: Record<string, unknown> }).downstream ?? {};
    const chain = String(payments.chain);
    const [sealed = "", ...links] = chain.split("~");
    for (const caller of [SHOP, CART, ECHO]) {
      const reply = await callOutbound(workload(caller).appProxyUrl, "http://payments.shop/pay-for-order/1", {
        method: "POST",
        headers: { "custody-chain": chain },
        body: "{}",
      });
      expect(refusal(reply), caller).toEqual({ status: 400, reason: "chain_not_ours" });
    }
    // At payments' own outbound, the sealed e0 with other links (a fresh, unrelated link instead).
    const other = mintLink(await signer(CART), { audience: PAYMENTS, operation: op("GET", "/x") })
      .elements[0] as string;
    for (const value of [`${sealed}~${other}`, sealed, `${sealed}~${links.slice(0, -1).join("~")}`]) {
      const reply = await callOutbound(workload(PAYMENTS).appProxyUrl, "http://echo.shop/x", {
        method: "GET",
        headers: { "custody-chain": value },
      });
      expect(refusal(reply)).toEqual({ status: 400, reason: "chain_altered" });
    }
    // The seal binds the last link only: with a middle link cut out, the outbound signs on, and the
    // receiver refuses the broken hash link.
    const cut = `${sealed}~${links.slice(1).join("~")}`;
    const reply = await callOutbound(workload(PAYMENTS).appProxyUrl, "http://echo.shop/x", {
      method: "GET",
      headers: { "custody-chain": cut },
    });
    expect(refusal(reply)).toEqual({ status: 401, reason: "hash_link_broken" });
  });

  it("12.4 request smuggling at the echo edge: Content-Length + Transfer-Encoding, and obfuscated Transfer-Encoding", async () => {
    const token = userToken({ audience: ECHO, subject: "smuggler" });
    const smuggle = (marker: string) =>
      `GET /${marker} HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\n\r\n`;
    const variants: [string, string][] = [];
    const inner = smuggle("smuggled-cl-te");
    variants.push([
      "smuggled-cl-te",
      `POST /a HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${inner}`,
    ]);
    const te2 = smuggle("smuggled-te-te");
    variants.push([
      "smuggled-te-te",
      `POST /a HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n${te2}`,
    ]);
    const te3 = smuggle("smuggled-te-space");
    variants.push([
      "smuggled-te-space",
      `POST /a HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\nTransfer-Encoding : chunked\r\nContent-Length: ${te3.length + 5}\r\n\r\n0\r\n\r\n${te3}`,
    ]);
    const te4 = smuggle("smuggled-te-x");
    variants.push([
      "smuggled-te-x",
      `POST /a HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n${te4}`,
    ]);
    const cl2 = smuggle("smuggled-cl-cl");
    variants.push([
      "smuggled-cl-cl",
      `POST /a HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\nContent-Length: 0\r\nContent-Length: ${cl2.length}\r\n\r\n${cl2}`,
    ]);
    // Smuggling a request into the sidecar → app connection through the body the app receives.
    const lf = smuggle("smuggled-lf");
    variants.push([
      "smuggled-lf",
      `POST /a HTTP/1.1\nHost: echo\nAuthorization: Bearer ${token}\nTransfer-Encoding: chunked\n\n0\n\n${lf}`,
    ]);
    for (const [, request] of variants) {
      const result = await rawTls(workload(ECHO).inboundPort, request, { timeoutMs: 3_000 });
      expect(
        result.status === 0 || result.status === 400 || result.status === 200 || result.status === 401,
      ).toBe(true);
    }
    const seen = (jsonOf((await atEcho("/__seen")).body).seen as { url: string }[]).map((entry) => entry.url);
    const smuggled = seen.filter((url) => url.startsWith("/smuggled"));
    // A smuggled request that carries a valid token is merely a second allowed request; what must not
    // happen is the sidecar forwarding bytes the app parses as a request the sidecar never saw.
    const audit = await readFile(join(local.stateDirectory, "logs", "sidecar-shop-echo.log"), "utf8");
    const unseen = smuggled.filter((url) => !audit.includes(`GET ${url}`));
    expect(unseen).toEqual([]);
  });

  it("12.5 thousands of headers: the sidecar forwards an allowed request whose own Custody-* headers the app never gets", async () => {
    const token = userToken({ audience: ECHO, subject: "header-flooder" });
    // Forged headers past Node's 2000-header limit: the sidecar never sees them, so neither does the app.
    const beyond = Array.from({ length: 3000 }, (_, index) => `h${index}: v`).join("\r\n");
    const forged = await rawTls(
      workload(ECHO).inboundPort,
      `GET /many HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\n${beyond}\r\nCustody-Caller: ${FORGED}\r\nX-Original-URL: /admin\r\nConnection: close\r\n\r\n`,
    );
    expect(forged.body).not.toContain(FORGED);
    expect(forged.body).not.toContain('"/admin"');
    // 1990 headers pass the sidecar's parser; the sidecar appends its own after them, past the app's
    // 2000-header limit: the app then gets an authorized request without Custody-Chain, -Caller,
    // -Decision or -Sidecar-Token. Either the sidecar refuses such a request, or the app gets them.
    const filler = Array.from({ length: 1990 }, (_, index) => `h${index}: v`).join("\r\n");
    const result = await rawTls(
      workload(ECHO).inboundPort,
      `GET /many HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\n${filler}\r\nConnection: close\r\n\r\n`,
    );
    const evidence = `${result.status} ${result.body.slice(0, 200)}`;
    if (result.status === 200) {
      const headers = jsonOf(result.body).headers as Record<string, string>;
      expect(headers["custody-chain"], evidence).toBeDefined();
      expect(headers["custody-decision"], evidence).toBeDefined();
    } else {
      expect([400, 431], evidence).toContain(result.status);
      expect(jsonOf(result.body).step, evidence).toBeUndefined(); // the sidecar refused, not the app
    }
    // Still serving.
    expect((await atEcho("/after-many")).status).toBe(200);
  });

  it("12.6 many slow connections at once do not stop payments' inbound port from serving", async () => {
    const sockets: TLSSocket[] = [];
    try {
      for (let index = 0; index < 300; index++) {
        const socket = tlsConnect({
          host: "127.0.0.1",
          port: workload(PAYMENTS).inboundPort,
          rejectUnauthorized: false,
        });
        socket.on("error", () => undefined);
        socket.on("secureConnect", () => socket.write("POST /pay-for-order/1 HTTP/1.1\r\nHost: p\r\nX-A: "));
        sockets.push(socket);
      }
      await new Promise((done) => setTimeout(done, 1_000));
      const started = Date.now();
      expect(paid(await checkout())).toBe(true);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      for (const socket of sockets) socket.destroy();
    }
  });

  it("12.7 the token service and an inbound port with a CA certificate as the client certificate", async () => {
    const custodyCa: Client = { cert: ca, key: await readFile(join(local.caDirectory, "ca.key"), "utf8") };
    for (const client of [custodyCa, rogueCa, partnerACa]) {
      const answer = await tokenRequest(local.tokenUrl, { grant_type: "client_credentials" }, client);
      expect(answer.status, JSON.stringify(answer.json)).toBe(401);
      expect(answer.json.error).toBe("invalid_client");
      const reply = await inbound(
        PAYMENTS,
        { method: "GET", path: "/x", headers: { "custody-chain": "e30.e30.AA" } },
        client,
      );
      expect(reply.status).toBe(401);
      expect(["peer_is_ca", "peer_spiffe_id_not_mesh_issued"]).toContain(reasonOf(reply));
    }
  });

  it("12.8 token exchange abuse: a non-edge actor, a partner, re-exchange, links and identity tokens as subject, unknown audience, scope escalation", async () => {
    const exchange = (client: Client, subject: string, extra: Record<string, string> = {}) =>
      tokenRequest(
        local.tokenUrl,
        {
          grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
          subject_token: subject,
          subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
          audience: CART,
          ...extra,
        },
        client,
      );
    const echoTls = await credentials(ECHO);
    const forEcho = userToken({ audience: ECHO, subject: "exchanger" });
    const cartIdentity = await tokenRequest(
      local.tokenUrl,
      { grant_type: "client_credentials" },
      await credentials(CART),
    );
    const link = mintLink(await signer(SHOP), { audience: CART, operation: op("GET", "/x") })
      .elements[0] as string;
    const legit = await exchange(echoTls, forEcho);
    expect(legit.status, JSON.stringify(legit.json)).toBe(200);
    const delegated = String(legit.json.access_token);
    const cases: [string, Promise<{ status: number; json: Record<string, unknown> }>, number, string][] = [
      [
        "cart (not an edge) as actor",
        exchange(await credentials(CART), userToken({ audience: ECHO })),
        400,
        "unauthorized_client",
      ],
      ["partner A as actor", exchange(partnerA, forEcho), 400, "unauthorized_client"],
      ["no client certificate", exchange(undefined as unknown as Client, forEcho), 401, "invalid_client"],
      ["a call link as subject", exchange(echoTls, link), 400, "invalid_grant"],
      [
        "cart's identity token as subject",
        exchange(echoTls, String(cartIdentity.json.access_token)),
        400,
        "invalid_grant",
      ],
      ["an exchanged token as subject", exchange(echoTls, delegated), 400, "invalid_grant"],
      [
        "an expired user token",
        exchange(echoTls, userToken({ audience: ECHO, now: nowSeconds() - 400, ttl: 60 })),
        400,
        "invalid_grant",
      ],
      ["unknown audience", exchange(echoTls, forEcho, { audience: "nobody.shop" }), 400, "invalid_target"],
      [
        "scope escalation",
        exchange(echoTls, forEcho, { scope: "shop.customer shop.admin" }),
        400,
        "invalid_scope",
      ],
      [
        "an actor_token",
        exchange(echoTls, forEcho, {
          actor_token: forEcho,
          actor_token_type: "urn:ietf:params:oauth:token-type:jwt",
        }),
        400,
        "invalid_request",
      ],
    ];
    for (const [what, pending, status, error] of cases) {
      const answer = await pending.catch((problem: unknown) => ({
        status: -1,
        json: { error: String(problem) },
      }));
      expect({ status: answer.status, error: answer.json.error }, what).toEqual({ status, error });
    }
    // The exchanged token is echo's own e0, never a bearer credential at an edge.
    for (const edge of EDGES) {
      const reply = await inbound(
        edge,
        { method: "GET", path: "/x", headers: { authorization: `Bearer ${delegated}` } },
        edge === ECHO ? echoTls : undefined,
      );
      expect(refusal(reply), edge).toEqual({ status: 401, reason: "initial_token_not_admitted" });
    }
  });

  it("12.9 a compromised app has its key service sign a link-shaped payload and plays it as a link, and as a bearer token", async () => {
    const { outboundPort, clientSecret } = workload(CART);
    const now = nowSeconds();
    const claims = {
      iss: CART,
      aud: ECHO,
      op: "GET /forged-link",
      jti: randomBytes(16).toString("base64url"),
      iat: now,
      exp: now + 10,
    };
    const payloadBase64url = b64(claims);
    const signed = await plainHttp(outboundPort, {
      method: "POST",
      path: "/.custody/sign",
      headers: {
        host: `127.0.0.1:${outboundPort}`,
        authorization: basic(clientSecret),
        "content-type": "application/json",
      },
      body: JSON.stringify({ payloadBase64url: Buffer.from(payloadBase64url).toString("base64url") }),
    });
    expect(signed.status, signed.body).toBe(200);
    const jws = String(jsonOf(signed.body).jws);
    const [header = "", , signature = ""] = jws.split(".");
    // b64: false signs `header.payload-bytes`: with the payload bytes being base64url(claims), that is a compact JWS.
    const reassembled = `${header}.${payloadBase64url}.${signature}`;
    const asLink = await inbound(
      ECHO,
      { method: "GET", path: "/forged-link", headers: { "custody-chain": reassembled } },
      await credentials(CART),
    );
    expect(asLink.status, asLink.body).toBe(401);
    expect(["malformed", "wrong_type"]).toContain(reasonOf(asLink));
    const asBearer = await atEcho("/forged-link", {}, reassembled);
    expect(asBearer.status, asBearer.body).toBe(401);
  });

  it("12.10 forged customer tokens at the edges: alg none, HS256 with the IdP's public key, a stranger's key under the IdP's kid, a link's typ", async () => {
    const now = nowSeconds();
    const claims = {
      iss: ISSUER,
      sub: "forger",
      aud: ECHO,
      iat: now,
      exp: now + 300,
      jti: randomBytes(8).toString("hex"),
      scope: "shop.customer",
    };
    const none = `${b64({ alg: "none", typ: "JWT" })}.${b64(claims)}.`;
    const publicPem = idp.publicKey.export({ type: "spki", format: "pem" }).toString();
    const hsInput = `${b64({ alg: "HS256", typ: "JWT", kid: idp.kid })}.${b64(claims)}`;
    const hs = `${hsInput}.${createHash("sha256").update(publicPem).update(hsInput).digest("base64url")}`;
    const hmac = createHmac("sha256", publicPem).update(hsInput).digest("base64url");
    const hs256 = `${hsInput}.${hmac}`;
    const stranger = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    const strangerToken = signCompactJws({ alg: "ES256", typ: "JWT", kid: idp.kid }, claims, stranger);
    const linkTyped = signCompactJws(
      { alg: "ES256", typ: "custody+jwt", kid: idp.kid },
      claims,
      idp.privateKey,
    );
    const noKid = signCompactJws(
      { alg: "ES256", typ: "JWT" },
      { ...claims, iss: "https://evil.example" },
      stranger,
    );
    const expired = signCompactJws(
      { alg: "ES256", typ: "JWT", kid: idp.kid },
      { ...claims, iat: now - 900, exp: now - 600 },
      idp.privateKey,
    );
    const future = signCompactJws(
      { alg: "ES256", typ: "JWT", kid: idp.kid },
      { ...claims, iat: now + 600, exp: now + 900, nbf: now + 600 },
      idp.privateKey,
    );
    for (const token of [none, hs, hs256, strangerToken, linkTyped, noKid, expired, future]) {
      const reply = await atEcho("/forged", {}, token);
      expect(reply.status, `${headerOf(token).alg} ${reply.body}`).toBe(401);
      expect([
        "alg_not_allowed",
        "initial_token_invalid",
        "wrong_type",
        "malformed",
        "bad_signature",
      ]).toContain(reasonOf(reply));
    }
  });

  it("12.11 a customer's token whose claims try to inject headers into the app's request", async () => {
    const now = nowSeconds();
    const token = signCompactJws(
      { alg: "ES256", typ: "JWT", kid: idp.kid },
      {
        iss: ISSUER,
        sub: `evil\r\nCustody-Caller: ${FORGED}\r\nX-Injected: 1`,
        aud: ECHO,
        iat: now,
        exp: now + 300,
        jti: randomBytes(8).toString("hex"),
        scope: `shop.customer\r\nX-Injected: 2`,
      },
      idp.privateKey,
    );
    const reply = await atEcho("/inject", {}, token);
    if (reply.status === 200) {
      const headers = jsonOf(reply.body).headers as Record<string, string>;
      expect(headers["x-injected"]).toBeUndefined();
      expect(headers["custody-caller"]).toBeUndefined();
      expect(String(headers["custody-initial-subject"])).not.toMatch(/[\r\n]/);
    } else {
      expect(reply.status).toBe(401);
    }
  });

  it("12.12 no log file of the mesh holds a customer's token or an identity token", async () => {
    const logs = join(local.stateDirectory, "logs");
    const leaks: string[] = [];
    for (const name of await readdir(logs)) {
      const text = await readFile(join(logs, name), "utf8");
      for (const match of text.matchAll(/eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*/g)) {
        const typ = headerOf(match[0]).typ;
        if (typ !== "custody+jwt") leaks.push(`${name}: ${String(typ)} ${match[0].slice(0, 40)}…`);
      }
    }
    expect(leaks).toEqual([]);
  });

  it("12.13 the outbound proxy as an open proxy: CONNECT, non-service hosts, loopback ports, https, userinfo tricks", async () => {
    const { outboundPort, clientSecret, appProxyUrl } = workload(CART);
    const connect = await new Promise<number>((resolve) => {
      const outgoing = httpRequest({
        host: "127.0.0.1",
        port: outboundPort,
        method: "CONNECT",
        path: "payments.shop:443",
        headers: { "proxy-authorization": basic(clientSecret) },
      });
      outgoing.on("connect", (response) => resolve(response.statusCode ?? 0));
      outgoing.on("response", (response) => resolve(response.statusCode ?? 0));
      outgoing.on("error", () => resolve(0));
      outgoing.end();
    });
    expect(connect < 200 || connect >= 300).toBe(true);
    const cases: [string, number, string][] = [
      [`http://127.0.0.1:${workload(PAYMENTS).inboundPort}/pay-for-order/1`, 502, "unknown_service"],
      [`http://127.0.0.1:${workload(PAYMENTS).appPort}/pay-for-order/1`, 502, "unknown_service"],
      ["http://evil.example/x", 502, "unknown_service"],
      ["http://payments.shop@evil.example/x", 502, "unknown_service"],
      ["https://payments.shop/x", 400, "unsupported_scheme"],
      ["http://payments.shop.evil.example/x", 502, "unknown_service"],
    ];
    for (const [url, status, reason] of cases) {
      const reply = await callOutbound(appProxyUrl, url, { method: "GET" });
      expect(refusal(reply), url).toEqual({ status, reason });
    }
    // A fragment in the request target is not even HTTP: the parser refuses it (400, no JSON).
    const fragment = await callOutbound(appProxyUrl, "http://evil.example#@payments.shop/x", {
      method: "GET",
    });
    expect(fragment.status).toBe(400);
  });

  it("12.14 cart's identity token (a workload's bearer) at the shop edge, with and without cart's certificate", async () => {
    const identity = String(
      (await tokenRequest(local.tokenUrl, { grant_type: "client_credentials" }, await credentials(CART))).json
        .access_token,
    );
    const without = await checkout(identity);
    expect(refusal(without)).toEqual({ status: 401, reason: "binding_mismatch" });
    const withCert = await inbound(
      SHOP,
      {
        method: "POST",
        path: "/checkout",
        headers: { authorization: `Bearer ${identity}` },
        body: JSON.stringify({ orderId: "c1", card: "4111 1111 1111 1111" }),
      },
      await credentials(CART),
    );
    expect(refusal(withCert)).toEqual({ status: 403, reason: "initial_token_issuer" });
  });

  it("12.15 pipelining: an allowed request followed, on the same connection, by an anonymous one", async () => {
    const token = userToken({ audience: ECHO });
    const result = await rawTls(
      workload(ECHO).inboundPort,
      `GET /first HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer ${token}\r\n\r\nGET /second-anonymous HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n`,
    );
    expect(result.status).toBe(200);
    const second = result.raw.slice(result.raw.indexOf("HTTP/1.1", 10));
    expect(parseFirstResponse(second).status).toBe(401);
    const seen = (jsonOf((await atEcho("/__seen")).body).seen as { url: string }[]).map((entry) => entry.url);
    expect(seen).not.toContain("/second-anonymous");
  });

  it("12.16 Custody-Chain twice, and a chain under another spelling next to a bearer token at the edge", async () => {
    const chain = mintLink(await signer(CART), {
      audience: ECHO,
      operation: op("GET", "/twice"),
      previous: await customerAtCart(nowSeconds()),
    }).header;
    const twice = await rawTls(
      workload(ECHO).inboundPort,
      `GET /twice HTTP/1.1\r\nHost: echo\r\nCustody-Chain: ${chain}\r\nCustody-Chain: ${chain}\r\nConnection: close\r\n\r\n`,
      { client: await credentials(CART) },
    );
    expect({ status: twice.status, reason: jsonOf(twice.body).reason }).toEqual({
      status: 400,
      reason: "chain_repeated",
    });
    const spelled = await atEcho("/spelled", { Custody_Chain: chain });
    expect(spelled.status).toBe(200);
    const headers = jsonOf(spelled.body).headers as Record<string, string>;
    expect(JSON.stringify(headers)).not.toContain(chain.split("~")[1]);
  });

  it("12.17 TLS 1.2 at an inbound port, and no client certificate with a chain", async () => {
    const outcome = await new Promise<string>((resolve) => {
      const socket = tlsConnect({
        host: "127.0.0.1",
        port: workload(PAYMENTS).inboundPort,
        rejectUnauthorized: false,
        maxVersion: "TLSv1.2",
      });
      socket.on("secureConnect", () => {
        resolve(`connected with ${socket.getProtocol()}`);
        socket.destroy();
      });
      socket.on("error", (error) => resolve(`refused: ${error.message}`));
    });
    expect(outcome).toMatch(/^refused/);
    const chain = mintLink(await signer(CART), { audience: PAYMENTS, operation: op("GET", "/x") }).header;
    const reply = await inbound(PAYMENTS, { method: "GET", path: "/x", headers: { "custody-chain": chain } });
    expect(refusal(reply)).toEqual({ status: 401, reason: "no_client_certificate" });
  });

  it("12.18 one captured chain raced at the same inbound port on 12 connections at once: exactly one gets in", async () => {
    const chain = mintLink(await signer(CART), {
      audience: ECHO,
      operation: op("POST", "/race"),
      body: '{"race":1}',
      previous: await customerAtCart(nowSeconds()),
    }).header;
    const cart = await credentials(CART);
    const replies = await Promise.all(
      Array.from({ length: 12 }, () =>
        inbound(
          ECHO,
          { method: "POST", path: "/race", headers: { "custody-chain": chain }, body: '{"race":1}' },
          cart,
        ),
      ),
    );
    const outcomes = replies.map((reply) => `${reply.status} ${String(reasonOf(reply) ?? "")}`);
    expect(outcomes.filter((outcome) => outcome.startsWith("200")).length, outcomes.join(", ")).toBe(1);
    expect(outcomes.filter((outcome) => outcome === "401 replayed").length, outcomes.join(", ")).toBe(11);
  });

  it("12.19 client_credentials abuse: another service's client_id, a scope not granted, repeated parameters, no certificate", async () => {
    const cart = await credentials(CART);
    const cases: [string, Record<string, string>, Client | undefined, number, string][] = [
      [
        "client_id of payments",
        { grant_type: "client_credentials", client_id: PAYMENTS },
        cart,
        401,
        "invalid_client",
      ],
      [
        "scope shop.customer for cart",
        { grant_type: "client_credentials", scope: "shop.customer" },
        cart,
        400,
        "invalid_scope",
      ],
      ["no certificate", { grant_type: "client_credentials" }, undefined, 401, "invalid_client"],
      [
        "an unknown grant",
        { grant_type: "password", username: "a", password: "b" },
        cart,
        400,
        "unsupported_grant_type",
      ],
      [
        "partner B's copy of A",
        { grant_type: "client_credentials", client_id: "partner.shop" },
        partnerBCopy,
        401,
        "invalid_client",
      ],
    ];
    for (const [what, form, client, status, error] of cases) {
      const answer = await tokenRequest(local.tokenUrl, form, client);
      expect({ status: answer.status, error: answer.json.error }, what).toEqual({ status, error });
    }
    // grant_type twice: the second must not override the first.
    const url = new URL(local.tokenUrl);
    const body = "grant_type=client_credentials&grant_type=client_credentials&scope=cart.write";
    const repeated = await rawTls(
      Number(url.port),
      `POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
      { client: cart },
    );
    expect({ status: repeated.status, error: jsonOf(repeated.body).error }).toEqual({
      status: 400,
      error: "invalid_request",
    });
  });

  it("12.20 Expect: 100-continue at the outbound port without the workload's credential: no 100 Continue, 407", async () => {
    const result = await new Promise<string>((resolve) => {
      const socket = netConnect(workload(CART).outboundPort, "127.0.0.1");
      let text = "";
      socket.on("data", (data: Buffer) => {
        text += data.toString("latin1");
      });
      socket.on("close", () => resolve(text));
      socket.on("error", () => resolve(text));
      socket.write(
        `POST http://payments.shop/pay-for-order/1 HTTP/1.1\r\nHost: payments.shop\r\nExpect: 100-continue\r\nContent-Length: 1048576\r\nConnection: close\r\n\r\n`,
      );
      setTimeout(() => socket.destroy(), 3_000);
    });
    expect(result.startsWith("HTTP/1.1 100")).toBe(false);
    const first = parseFirstResponse(result);
    expect({ status: first.status, reason: jsonOf(first.body).reason }).toEqual({
      status: 407,
      reason: "proxy_auth_required",
    });
  });

  it("12.21 (class 1, as a server) an impostor TLS server with the partner-CA payments certificates at payments' registered location (a same-user attacker keeps rewriting locations.json)", async () => {
    const locationsPath = join(local.stateDirectory, "locations.json");
    const original = await readFile(locationsPath, "utf8");
    const echoTls = await credentials(ECHO);
    const impostors: [string, Client, string][] = [
      ["rogue pki-init CA's payments certificate", rogue, "peer_certificate_untrusted"],
      ["partner B's certificate naming payments", partnerBSpiffe, "peer_certificate_untrusted"],
      ["echo's genuine certificate", echoTls, "peer_identity_mismatch"],
    ];
    try {
      for (const [what, certificate, reason] of impostors) {
        let applicationBytes = 0;
        const server = createTlsServer(
          { cert: certificate.cert, key: certificate.key, requestCert: true, rejectUnauthorized: false },
          (socket) => {
            socket.on("data", (data: Buffer) => {
              applicationBytes += data.length;
            });
            socket.on("error", () => undefined);
          },
        );
        let connections = 0;
        server.on("connection", () => {
          connections++;
        });
        server.listen(0, "127.0.0.1");
        await once(server, "listening");
        const port = (server.address() as { port: number }).port;
        let keepMoving: NodeJS.Timeout | undefined;
        try {
          // `local up` rewrites locations.json every second: the attacker rewrites it more often.
          const moved = JSON.stringify({
            ...(JSON.parse(original) as Record<string, string>),
            [PAYMENTS]: `127.0.0.1:${port}`,
          });
          const rewrite = async () => {
            const aside = `${locationsPath}.${randomBytes(6).toString("hex")}`;
            await writeFile(aside, moved);
            await rename(aside, locationsPath);
          };
          await rewrite();
          keepMoving = setInterval(() => void rewrite().catch(() => undefined), 50);
          let last: Reply | undefined;
          await vi.waitFor(
            async () => {
              last = await callOutbound(workload(CART).appProxyUrl, "http://payments.shop/pay-for-order/1", {
                method: "POST",
                body: '{"secret":"card"}',
              });
              expect(connections).toBeGreaterThan(0);
              expect(last.status).toBe(502);
              expect(reasonOf(last)).not.toBe("peer_unreachable");
            },
            { timeout: 15_000, interval: 200 },
          );
          expect(refusal(last as Reply), what).toEqual({ status: 502, reason });
          expect(applicationBytes, `${what}: the impostor received ${applicationBytes} bytes of HTTP`).toBe(
            0,
          );
        } finally {
          clearInterval(keepMoving);
          server.close();
        }
      }
    } finally {
      await new Promise((done) => setTimeout(done, 200));
      await writeFile(`${locationsPath}.restore`, original);
      await rename(`${locationsPath}.restore`, locationsPath);
      await vi.waitFor(async () => expect(paid(await checkout())).toBe(true), {
        timeout: 20_000,
        interval: 300,
      });
    }
  }, 90_000);
  /** Waits (at most until 45 s after they were opened) for the slow connections of `kind` to be cut. */
  const judgeSlow = async (kind: string) => {
    const entry = slow.find((candidate) => candidate.kind === kind);
    expect(entry).toBeDefined();
    const opened = entry?.opened ?? 0;
    await vi
      .waitFor(() => expect(entry?.closedAt).toBeDefined(), {
        timeout: Math.max(500, opened + 45_000 - Date.now()),
        interval: 250,
      })
      .catch(() => undefined);
    const verdict =
      entry?.closedAt === undefined
        ? `still open after ${Math.round((Date.now() - opened) / 1000)} s`
        : `closed after ${Math.round((entry.closedAt - opened) / 1000)} s`;
    expect(entry?.closedAt !== undefined && entry.closedAt - opened <= 45_000, `${kind}: ${verdict}`).toBe(
      true,
    );
  };

  it("12.22 slowloris on payments' inbound port: headers dribbled at 1 byte/s are cut in bounded time (≤ 45 s)", async () => {
    await judgeSlow("headers dribbled, 1 byte/s");
  }, 60_000);

  it("12.23 slowloris: a TLS connection that completes the handshake and sends nothing is cut in bounded time (≤ 45 s)", async () => {
    await judgeSlow("TLS done, nothing sent");
  }, 60_000);

  it("12.24 slowloris: a TCP connection that never starts the TLS handshake is cut in bounded time (≤ 45 s)", async () => {
    await judgeSlow("TCP open, no TLS handshake");
  }, 60_000);
});
