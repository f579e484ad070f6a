/**
 * Every reason code the sidecar can answer over HTTP, each produced by one real request over real
 * TLS (the issue's acceptance item): a table of requests, each asserting status and the exact JSON
 * body `{error, reason}`, and a last test asserting that the reasons produced are exactly the
 * reachable ones. The reachable reasons are derived from the source lists (CHAIN_REASONS,
 * POLICY_REASONS, KEY_SERVICE_REASONS, VERIFICATION_CODES) and, where a module has no exported list,
 * from a transcription that a test holds against the source text; minus an explicit list of reasons
 * no HTTP request can produce, each with the reason why.
 *
 * Reasons are qualified by the surface that answers them (`inbound:`, `outbound:`, `keys:`): the
 * same word can be reachable on one surface and not on another (`expired` is a chain reason, but
 * the key service's `expired` is not reachable over HTTP).
 */
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import { join } from "node:path";
import type { Extension } from "@peculiar/asn1-x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KEY_USAGE } from "../../pki/src/certificate.js";
import { nameFromDer } from "../../pki/src/dn.js";
import { VERIFICATION_CODES } from "../../pki/src/errors.js";
import {
  type CertificateAuthority,
  createCertificateAuthority,
  issueCertificate,
  privateKeyToPem,
} from "../../pki/src/index.js";
import { publicKeyDer } from "../../pki/src/keys.js";
import {
  basicConstraints,
  keyUsage,
  signCertificate,
  subjectAltName,
  subjectKeyIdentifier,
} from "../../pki/src/template.js";
import { DAY, handBuilt, temporaryDirectory } from "../../pki/test/support.js";
import { CHAIN_REASONS } from "../../sidecar/src/chain/errors.js";
import { sha256Base64url, signCompactJws } from "../../sidecar/src/chain/jws.js";
import { DEFAULT_LIMITS } from "../../sidecar/src/chain/limits.js";
import { type LinkSigner, mintLink, newJti } from "../../sidecar/src/chain/mint.js";
import { normalizeOperation } from "../../sidecar/src/chain/normalize.js";
import { KEY_SERVICE_REASONS } from "../../sidecar/src/keys/errors.js";
import { POLICY_REASONS } from "../../sidecar/src/policy/engine.js";
import { loadIdentityFiles } from "../../sidecar/src/runtime/identity-files.js";
import { tokenServiceFetcher } from "../../sidecar/src/runtime/identity-token.js";
import { type RunningSidecar, startSidecar } from "../../sidecar/src/runtime/sidecar.js";
import { type Answer, type ClientCredentials, callThrough, Mesh, type ServiceSpec } from "../support/mesh.js";
import { freePort } from "../support/net.js";

// --- what the sidecar can answer, per surface -------------------------------------------------

type Surface = "inbound" | "outbound" | "keys";

/** normalize.ts (OperationError, no exported list): every code `reject(...)` is called with. */
const OPERATION_REASONS = [
  "invalid_character",
  "malformed_escape",
  "ambiguous_encoding",
  "path_traversal",
  "invalid_path",
  "invalid_method",
  "target_too_long",
  "invalid_operation",
  "path_parameter",
  "ambiguous_segment",
] as const;
/** body.ts: BodyError's codes. */
const BODY_REASONS = ["body_too_large"] as const;
/** inbound-server.ts: the refusals it sends itself (`reason: "..."`). */
const INBOUND_SERVER_REASONS = [
  "too_many_headers",
  "registry_unavailable",
  "body_too_large",
  "chain_repeated",
  "app_unreachable",
] as const;
/** inbound-decision.ts: its own literal refusals (`refuse(<status>, "...")`). */
const INBOUND_DECISION_REASONS = [
  "no_client_certificate",
  "peer_not_a_service",
  "self_not_in_registry",
  "quota_exceeded",
] as const;
/** inbound-decision.ts: `peer_${CertificateVerificationError code}` for a client certificate refused. */
const PEER_REASONS = VERIFICATION_CODES.map((code) => `peer_${code}`);
/** outbound-server.ts: every `new OutboundRefusal(<status>, "...")`. */
const OUTBOUND_SERVER_REASONS = [
  "too_many_headers",
  "self_call",
  "invalid_target",
  "unsupported_scheme",
  "unknown_service",
  "loopback_target",
  "chain_repeated",
  "registry_unavailable",
  "own_key_unpublished",
  "peer_unreachable",
  "peer_identity_mismatch",
  "peer_certificate_untrusted",
  "outbound_failed",
] as const;
/** app-chain.ts: AppChainError's codes (a propagated chain the sidecar did not hand its app). */
const APP_CHAIN_REASONS = ["chain_not_sealed", "chain_not_ours", "chain_altered", "chain_expired"] as const;
/** local-client.ts: LocalClientRefusal's codes (a client that is not the workload). */
const LOCAL_CLIENT_REASONS = [
  "proxy_auth_required",
  "credential_required",
  "browser_request_refused",
  "host_not_local",
] as const;
/** key-routes.ts: every `new RouteRefusal(<status>, "...")` and its literal `reason: "..."`. */
const KEY_ROUTE_REASONS = [
  "too_large",
  "malformed",
  "invalid_payload",
  "no_recipients",
  "own_key_unpublished",
  "registry_unavailable",
  "unknown_route",
  "method_not_allowed",
  "internal_error",
] as const;

/** Everything each surface can put in `reason` (or, for `allowed`, in its decision), by construction. */
const ANSWERABLE: Record<Surface, readonly string[]> = {
  // decideInbound: OperationError codes (400), chain reasons (401/503), policy reasons (403),
  // peer certificate reasons (401), its own refusals; inbound-server.ts: its own.
  inbound: [
    ...OPERATION_REASONS,
    ...CHAIN_REASONS,
    ...POLICY_REASONS,
    ...PEER_REASONS,
    ...INBOUND_DECISION_REASONS,
    ...INBOUND_SERVER_REASONS,
  ],
  // resolveTarget: OperationError codes (400); toRefusal: BodyError codes (413), AppChainError
  // codes (400) and LocalClientRefusal codes (403, 407).
  outbound: [
    ...OUTBOUND_SERVER_REASONS,
    ...OPERATION_REASONS,
    ...BODY_REASONS,
    ...APP_CHAIN_REASONS,
    ...LOCAL_CLIENT_REASONS,
  ],
  // KeyServiceError codes (400) and the routes' own refusals. The key service sits on the outbound
  // port behind the same client check; its refusals are the outbound port's (answered above).
  keys: [...KEY_SERVICE_REASONS, ...KEY_ROUTE_REASONS],
};

/** What no HTTP request can produce, and why. */
const UNREACHABLE: Record<string, string> = {
  "inbound:invalid_method":
    "Node's HTTP parser admits only the 35 methods of http.METHODS, all of which normalizeMethod accepts; any other method gets Node's own empty 400 before the sidecar runs.",
  "outbound:invalid_method": "as inbound: Node's HTTP parser refuses any method normalizeMethod would.",
  "inbound:invalid_operation":
    "thrown only by parseOperationClaim (a link's op claim), which verify.ts reports as the chain reason `malformed`.",
  "outbound:invalid_operation": "thrown only by parseOperationClaim, which the outbound side never calls.",
  "outbound:outbound_failed":
    "the catch-all for an exception nothing anticipated (every client error has its own reason); no request is known to produce one.",
  "keys:internal_error":
    "the catch-all for an exception nothing anticipated; no request is known to produce one (route names are own properties only, so /.custody/__proto__ and the like are unknown routes).",
  "keys:expired":
    "verifyDetached checks the age of a signature only when given maxAgeSeconds, which POST /.custody/verify never passes.",
  "keys:issued_in_future": "as keys:expired: checked only with maxAgeSeconds, never passed by the route.",
  "keys:unsupported_key":
    "signDetached raises it for a key that cannot sign, seal for a recipient key that is not a public key. Over HTTP the sidecar signs only with its own key as the registry publishes it (P-256, Ed25519 or RSA ≥ 2048: the registry's JWK schema admits nothing else, and all three sign), and seals only to public keys imported from the registry.",
};

const REACHABLE = new Set(
  (Object.entries(ANSWERABLE) as [Surface, readonly string[]][])
    .flatMap(([surface, reasons]) => reasons.map((reason) => `${surface}:${reason}`))
    .filter((key) => !(key in UNREACHABLE)),
);

// --- the mesh -----------------------------------------------------------------------------------

const SPECS: ServiceSpec[] = [
  { name: "shop", namespace: "shop", scopes: ["shop.checkout"], edge: true },
  { name: "cart", namespace: "shop", claims: { team: "checkout" } },
  // No policy targets payments: the mesh's sidecars allow such calls (whenNoPolicy: allow).
  { name: "payments", namespace: "shop" },
  { name: "vault", namespace: "shop" },
];

const USER_IDP = "https://login.shop.example";

/** One rule per policy reason, each on its own path; anything else falls to defaultAction deny. */
const VAULT_POLICY = {
  apiVersion: "custody.dev/v1alpha1",
  kind: "AccessPolicy",
  metadata: { name: "vault", namespace: "shop" },
  spec: {
    target: "vault",
    defaultAction: "deny",
    rules: [
      { name: "no-admin", operation: { path: "/admin/.*" }, action: "deny" },
      { name: "needs-token", operation: { path: "/needs-token" }, require: { initialToken: {} } },
      {
        name: "users-only",
        operation: { path: "/issuer" },
        require: { initialToken: { issuer: USER_IDP } },
      },
      {
        name: "admins-only",
        operation: { path: "/scope" },
        require: { initialToken: { scopesContain: ["shop.admin"] } },
      },
      {
        name: "for-vault",
        operation: { path: "/audience" },
        require: { initialToken: { audienceContains: ["vault.shop"] } },
      },
      {
        name: "gold-only",
        operation: { path: "/claims" },
        require: { initialToken: { claims: { tier: "gold" } } },
      },
      {
        name: "via-payments",
        operation: { path: "/from-payments" },
        require: { comeFrom: [{ service: "payments" }] },
      },
      {
        name: "finance-team",
        operation: { path: "/team-only" },
        require: { callerClaims: { team: "finance" } },
      },
      { name: "limited", operation: { path: "/quota" }, quota: { requestsPerSecond: 1, burst: 1 } },
      { name: "open", operation: { path: "/open" } },
    ],
  },
};

/** A Mesh whose every registry generation also lists services that have no sidecar. */
class ReasonsMesh extends Mesh {
  readonly unmanaged: Record<string, unknown>[] = [];

  override publishRegistry(
    specs: readonly ServiceSpec[],
    extraServices: readonly Record<string, unknown>[] = [],
  ): Promise<void> {
    return super.publishRegistry(specs, [...this.unmanaged, ...extraServices]);
  }
}

let directory: { path: string; cleanup: () => Promise<void> };
let mesh: ReasonsMesh;
const extras: RunningSidecar[] = [];
/** The user IdP's signing key (trusted in the registry). */
let idpKey: KeyObject;
const IDP_KID = "idp-key-1";
/** cart.shop's identity JWT from the token service, bound to cart's certificate. */
let cartIdentityToken: string;
/** Extra sidecars, each set up to produce a few reasons only it can. */
let stray: RunningSidecar; // stray.shop: a CA-issued identity the registry does not list
let unregistered: RunningSidecar; // payments, with no registry loaded
let tiny: RunningSidecar; // payments, 16-byte body limit, its app port closed
let denying: RunningSidecar; // payments, whenNoPolicy: deny
let open: RunningSidecar; // payments, outboundPolicy: passthrough
let redisless: RunningSidecar; // payments, replay store on a closed Redis port
let guarded: RunningSidecar; // cart, its outbound port wanting the workload's credential
/**
 * Partner CAs the registry publishes: a look-alike of Custody's CA (its trust domain and name), two
 * sharing one name, and a plain one.
 */
let partnerCa: CertificateAuthority;
let twinCa: CertificateAuthority;
let twinCa2: CertificateAuthority;
let plainCa: CertificateAuthority;
/** decoy.shop's registered address, where a server presents stray.shop's certificate instead. */
let decoy: { server: HttpsServer; requests: number };
/** impostor.shop's registered address, where a server presents a partner CA's certificate for it. */
let impostor: { server: HttpsServer; requests: number };

const reasonsProduced = new Set<string>();

/** What each row asserts on: status and body. */
type Reply = Pick<Answer, "status" | "body">;

const sidecarOf = (id: string): RunningSidecar => mesh.sidecarOf(id);

const portOf = (id: string) => mesh.service(id).inboundPort;

/** A sidecar started like Mesh.startSidecar, with what that one cannot vary. */
async function startExtra(
  name: string,
  identityDirectory: string,
  overrides: {
    registryPath?: string;
    appPort?: number;
    whenNoPolicy?: "allow" | "deny";
    maxBodyBytes?: number;
    redisUrl?: string;
    clientSecret?: string;
    outboundPolicy?: "passthrough" | "registry-only";
  } = {},
): Promise<RunningSidecar> {
  const sidecar = await startSidecar({
    identityDirectory,
    registryPath: overrides.registryPath ?? mesh.registryPath,
    appPort: overrides.appPort ?? mesh.service("payments.shop").appPort,
    // No identity token: none of these sidecars starts chains.
    tokenUrl: undefined,
    outbound: { host: "127.0.0.1", port: 0 },
    clientSecret: overrides.clientSecret,
    inbound: { host: "127.0.0.1", port: 0 },
    admin: { host: "127.0.0.1", port: 0 },
    limits: DEFAULT_LIMITS,
    whenNoPolicy: overrides.whenNoPolicy ?? "allow",
    ...(overrides.outboundPolicy === undefined ? {} : { outboundPolicy: overrides.outboundPolicy }),
    replay: { redisUrl: overrides.redisUrl, failureMode: "closed" },
    spool: overrides.maxBodyBytes === undefined ? {} : { maxBytes: overrides.maxBodyBytes },
    pollIntervalMs: 200,
    logger: mesh.logger.child({ extra: name }),
  });
  extras.push(sidecar);
  return sidecar;
}

function ecPublicJwk(key: KeyObject): { kty: string; crv: string; x: string; y: string } {
  const { kty = "", crv = "", x = "", y = "" } = key.export({ format: "jwk" });
  return { kty, crv, x, y };
}

beforeAll(async () => {
  directory = await temporaryDirectory();
  mesh = new ReasonsMesh(directory.path);
  const idp = generateKeyPairSync("ec", { namedCurve: "P-256" });
  idpKey = idp.privateKey;
  mesh.trustedIssuers = [
    { issuer: USER_IDP, jwks: { keys: [{ ...ecPublicJwk(idp.publicKey), alg: "ES256", kid: IDP_KID }] } },
  ];
  // A service whose current key is published for signing only (no sealing to it), at an address
  // where nothing listens (calls to it cannot connect).
  const sigOnly = generateKeyPairSync("ec", { namedCurve: "P-256" });
  mesh.unmanaged.push({
    id: "sigonly.shop",
    environment: "default",
    claims: {},
    scopes: [],
    edge: false,
    location: `127.0.0.1:${await freePort()}`,
    keys: [
      {
        kid: "sigonly-key-1",
        status: "current",
        notAfter: new Date(Date.now() + DAY).toISOString(),
        jwk: { ...ecPublicJwk(sigOnly.publicKey), alg: "ES256", kid: "sigonly-key-1", use: "sig" },
      },
    ],
  });
  // impostor.shop's address serves a certificate naming impostor.shop's SPIFFE id, from a partner CA.
  const impostorPort = await freePort();
  mesh.unmanaged.push({
    id: "impostor.shop",
    environment: "default",
    claims: {},
    scopes: [],
    edge: false,
    location: `127.0.0.1:${impostorPort}`,
    keys: [
      {
        kid: "impostor-key-1",
        status: "current",
        notAfter: new Date(Date.now() + DAY).toISOString(),
        jwk: { ...ecPublicJwk(sigOnly.publicKey), alg: "ES256", kid: "impostor-key-1", use: "sig" },
      },
    ],
  });
  const decoyPort = await freePort();
  mesh.unmanaged.push({
    id: "decoy.shop",
    environment: "default",
    claims: {},
    scopes: [],
    edge: false,
    location: `127.0.0.1:${decoyPort}`,
    keys: [
      {
        kid: "decoy-key-1",
        status: "current",
        notAfter: new Date(Date.now() + DAY).toISOString(),
        jwk: { ...ecPublicJwk(sigOnly.publicKey), alg: "ES256", kid: "decoy-key-1", use: "sig" },
      },
    ],
  });
  // Two partner CAs in the registry: one claims Custody's own trust domain (`custody pki init`'s
  // defaults), the other shares its subject DN with a third (a different key).
  [partnerCa, twinCa, twinCa2, plainCa] = await Promise.all([
    createCertificateAuthority({ trustDomain: "custody.local" }),
    createCertificateAuthority({ trustDomain: "twin.example" }),
    createCertificateAuthority({ trustDomain: "twin.example" }),
    createCertificateAuthority({ trustDomain: "plain.example" }),
  ]);
  mesh.partnerBundle = [partnerCa, twinCa, twinCa2, plainCa].map((ca) => ca.certificate.pem).join("");
  await mesh.start(SPECS, [VAULT_POLICY]);

  const fetchToken = tokenServiceFetcher(mesh.issuer.tokenUrl);
  try {
    const cart = await loadIdentityFiles(mesh.service("cart.shop").identityDirectory);
    cartIdentityToken = (await fetchToken(cart)).token;
  } finally {
    await fetchToken.close();
  }

  const strayDirectory = join(directory.path, "identities", "stray.shop");
  await mkdir(strayDirectory, { recursive: true });
  await mesh.issueIdentity("stray.shop", strayDirectory);
  const payments = mesh.service("payments.shop").identityDirectory;
  const strayFiles = await loadIdentityFiles(strayDirectory);
  decoy = {
    server: createHttpsServer({ cert: strayFiles.certificatePem, key: strayFiles.keyPem }),
    requests: 0,
  };
  decoy.server.on("request", (_request, response) => {
    decoy.requests++;
    response.end("not decoy.shop");
  });
  await new Promise<void>((resolve) => decoy.server.listen(decoyPort, "127.0.0.1", resolve));
  const forged = await issueCertificate(partnerCa, {
    id: "impostor.shop",
    usage: "both",
    ipAddresses: ["127.0.0.1"],
  });
  impostor = {
    server: createHttpsServer({ cert: forged.certificate.pem, key: privateKeyToPem(forged.privateKey) }),
    requests: 0,
  };
  impostor.server.on("request", (_request, response) => {
    impostor.requests++;
    response.end("not impostor.shop");
  });
  await new Promise<void>((resolve) => impostor.server.listen(impostorPort, "127.0.0.1", resolve));
  [stray, unregistered, tiny, denying, redisless, guarded, open] = await Promise.all([
    startExtra("stray", strayDirectory),
    startExtra("unregistered", payments, { registryPath: join(directory.path, "no-registry.json") }),
    startExtra("tiny", payments, { maxBodyBytes: 16, appPort: await freePort() }),
    startExtra("denying", payments, { whenNoPolicy: "deny" }),
    startExtra("redisless", payments, { redisUrl: `redis://127.0.0.1:${await freePort()}` }),
    startExtra("guarded", mesh.service("cart.shop").identityDirectory, {
      clientSecret: "guarded-secret-0123456789abcdef",
    }),
    startExtra("open", payments, { outboundPolicy: "passthrough" }),
  ]);
}, 30_000);

afterAll(async () => {
  for (const sidecar of extras) await sidecar.close(100);
  for (const server of [decoy?.server, impostor?.server]) {
    server?.close();
    server?.closeAllConnections();
  }
  await mesh?.close();
  await directory?.cleanup();
});

// --- requests -----------------------------------------------------------------------------------

/** An app's call through a sidecar's outbound port in origin form, naming the service in Host. */
const viaProxy = (
  sidecar: RunningSidecar,
  host: string,
  {
    path,
    ...init
  }: { method?: string; path: string; body?: string; headers?: Record<string, string | string[]> },
): Promise<Reply> => callThrough(sidecar, path, { ...init, host });

/** POST (or another method) to the local key service of a sidecar, a JSON value or raw text. */
async function keyService(
  sidecar: RunningSidecar,
  route: string,
  body: unknown,
  method = "POST",
): Promise<Reply> {
  const answer = await fetch(`${sidecar.outboundUrl}/.custody/${route}`, {
    method,
    headers: { "content-type": "application/json" },
    ...(method === "GET" ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
  });
  return { status: answer.status, body: await answer.text() };
}

const nowSeconds = () => Math.floor(Date.now() / 1000);
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

/** A genuine link from `from` to `to` for `METHOD path`, as `from`'s sidecar would mint it. */
async function link(
  from: string,
  to: string,
  method: string,
  path: string,
  options: { body?: string; previous?: readonly string[] } = {},
): Promise<string> {
  return mintLink(await mesh.signerOf(from), {
    audience: to,
    operation: normalizeOperation(method, path),
    ...options,
  }).header;
}

/** A link with arbitrary header and claims, signed with `key` (default: the signer's own). */
function forge(
  signer: LinkSigner,
  header: Record<string, unknown>,
  claims: Record<string, unknown>,
  key: KeyObject = signer.privateKey,
): string {
  const iat = nowSeconds();
  return signCompactJws(
    { alg: "ES256", typ: "custody+jwt", kid: signer.kid, ...header },
    {
      iss: signer.serviceId,
      aud: "payments.shop",
      op: "GET /reasons",
      jti: newJti(),
      iat,
      exp: iat + 10,
      ...claims,
    },
    key,
  );
}

/** A user's token from the trusted IdP (or, with `key`, from someone else claiming to be it). */
function userToken(claims: Record<string, unknown> = {}, key: KeyObject = idpKey): string {
  const iat = nowSeconds();
  return signCompactJws(
    { alg: "ES256", typ: "JWT", kid: IDP_KID },
    {
      iss: USER_IDP,
      sub: "marissa",
      aud: "shop.shop",
      scope: "shop.customer",
      iat,
      exp: iat + 300,
      ...claims,
    },
    key,
  );
}

/** cart.shop calls payments.shop's inbound port with `chain` for GET /reasons. */
async function cartToPayments(chain: string | undefined, port = portOf("payments.shop")): Promise<Reply> {
  return mesh.callInbound("cart.shop", port, {
    method: "GET",
    path: "/reasons",
    ...(chain === undefined ? {} : { chain }),
  });
}

const genuineCartLink = () => link("cart.shop", "payments.shop", "GET", "/reasons");

/** A client certificate Custody would never issue, signed by `issuer`, with its key. */
function oddCertificate(options: Omit<Parameters<typeof handBuilt>[0], "subjectKey">): ClientCredentials {
  const key = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
  const certificate = handBuilt({ ...options, subjectKey: key });
  return { cert: certificate.pem, key: privateKeyToPem(key) };
}

function identityOf(issued: Awaited<ReturnType<typeof issueCertificate>>): ClientCredentials {
  return { cert: issued.certificate.pem, key: privateKeyToPem(issued.privateKey) };
}

const CART_SPIFFE_ID = "spiffe://custody.local/ns/shop/si/cart";

/** A subjectAltName extension naming these URIs. */
function spiffeIds(...uris: string[]): Extension[] {
  const extension = subjectAltName({ uris });
  if (extension === undefined) throw new Error("no subjectAltName");
  return [extension];
}

/** GET /reasons at payments' inbound port, presenting `identity` (or no client certificate). */
const presenting = (identity: ClientCredentials | undefined) =>
  mesh.callInbound(identity, portOf("payments.shop"), { path: "/reasons" });

/** A CA with the mesh CA's name and key identifier but another key (the classic forgery). */
function lookAlikeCa() {
  const real = mesh.ca.certificate;
  const key = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
  const certificate = signCertificate(
    {
      issuerName: real.subjectName,
      subject: nameFromDer(real.subjectName),
      subjectPublicKeyInfo: publicKeyDer(key),
      notBefore: new Date(Date.now() - DAY),
      notAfter: new Date(Date.now() + DAY),
      extensions: [
        basicConstraints(true, 0),
        keyUsage(KEY_USAGE.keyCertSign),
        subjectKeyIdentifier(Buffer.from(real.subjectKeyId ?? "", "hex")),
      ],
    },
    key,
  );
  return { certificate, privateKey: key };
}

async function sealed(recipients: readonly string[], sender = "shop.shop") {
  const answer = await keyService(sidecarOf(sender), "seal", {
    recipients,
    plaintext: "4111 1111 1111 1111",
    contentType: "text/plain",
  });
  expect(answer.status).toBe(200);
  return JSON.parse(answer.body) as Record<string, unknown>;
}

async function cartSignature(payload: Record<string, unknown>): Promise<string> {
  const answer = await keyService(sidecarOf("cart.shop"), "sign", { payload });
  expect(answer.status).toBe(200);
  return String((JSON.parse(answer.body) as { jws: unknown }).jws);
}

/** A detached JWS header as the key service would read it, with `overrides`. */
function detachedHeader(overrides: Record<string, unknown>): string {
  return b64({
    alg: "ES256",
    kid: "no-such-kid",
    typ: "custody-detached+jws",
    cty: "json",
    iat: nowSeconds(),
    b64: false,
    crit: ["b64"],
    ...overrides,
  });
}
const FAKE_SIGNATURE = Buffer.alloc(64, 1).toString("base64url");

/** What vault's app received as Custody-Chain on an allowed call from shop (e0 sealed by vault's sidecar). */
async function chainVaultReceived(): Promise<string> {
  const answer = await callThrough(sidecarOf("shop.shop"), "http://vault.shop/open");
  expect(answer.status).toBe(200);
  return String(mesh.service("vault.shop").received.at(-1)?.headers["custody-chain"]);
}

// --- the table ----------------------------------------------------------------------------------

interface Row {
  readonly surface: Surface;
  readonly reason: string;
  readonly status: number;
  /** How the request produces it. */
  readonly how: string;
  readonly send: () => Promise<Reply>;
}

/**
 * `error` by surface and status: inbound as inbound-decision.ts / inbound-server.ts map them,
 * outbound `bad_gateway` for 502 and `refused` otherwise, the key service always `key_service`.
 */
function errorOf(surface: Surface, status: number): string {
  if (surface === "keys") return "key_service";
  if (surface === "outbound") return status === 502 ? "bad_gateway" : "refused";
  const inbound: Record<number, string> = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    413: "bad_request",
    429: "rate_limited",
    431: "bad_request",
    502: "bad_gateway",
    503: "unavailable",
  };
  return inbound[status] ?? "?";
}

const row = (surface: Surface, reason: string, status: number, how: string, send: () => Promise<Reply>) => ({
  surface,
  reason,
  status,
  how,
  send,
});

/** The request targets that normalization refuses, the same on both sides. */
const BAD_TARGETS: readonly [reason: string, target: string][] = [
  ["invalid_character", "/a{b}"],
  ["malformed_escape", "/a%zz"],
  ["ambiguous_encoding", "/a%2Fb"],
  ["path_traversal", "/../etc/passwd"],
  ["invalid_path", "*"],
  ["target_too_long", `/${"a".repeat(5000)}`],
  ["path_parameter", "/admin;jsessionid=1"],
  ["ambiguous_segment", "/admin."],
];

const ROWS: Row[] = [
  // --- inbound: the request target
  ...BAD_TARGETS.map(([reason, target]) =>
    row("inbound", reason, 400, `GET ${target.slice(0, 20)} to payments`, () =>
      mesh.callInbound("cart.shop", portOf("payments.shop"), { method: "GET", path: target }),
    ),
  ),

  // --- inbound: the sidecar itself
  row("inbound", "registry_unavailable", 503, "a sidecar that has no registry loaded", () =>
    cartToPayments(undefined, unregistered.inboundPort),
  ),
  row("inbound", "self_not_in_registry", 503, "a sidecar whose own service the registry does not list", () =>
    mesh.callInbound("cart.shop", stray.inboundPort, { method: "GET", path: "/" }),
  ),
  row("inbound", "body_too_large", 413, "an allowed 1 KB body to a sidecar limited to 16 bytes", async () => {
    const body = "x".repeat(1024);
    return mesh.callInbound("cart.shop", tiny.inboundPort, {
      method: "POST",
      path: "/reasons",
      body,
      chain: await link("cart.shop", "payments.shop", "POST", "/reasons", { body }),
    });
  }),
  row("inbound", "app_unreachable", 502, "an allowed call to a sidecar whose app is down", async () =>
    cartToPayments(await genuineCartLink(), tiny.inboundPort),
  ),

  // --- inbound: the TLS peer (payments' inbound port, no chain: the peer is checked first)
  row("inbound", "no_client_certificate", 401, "no client certificate", () => presenting(undefined)),
  row(
    "inbound",
    "peer_ambiguous_issuer",
    401,
    "a Custody-CA certificate without a SPIFFE id, while a partner CA bears Custody's CA's name",
    () => presenting(oddCertificate({ issuer: mesh.ca, commonName: "anonymous", extensions: [] })),
  ),
  row("inbound", "peer_unknown_issuer", 401, "a certificate from another CA", async () =>
    presenting(identityOf(await issueCertificate(await createCertificateAuthority(), { id: "cart.shop" }))),
  ),
  row("inbound", "peer_expired", 401, "a certificate that expired yesterday", () =>
    presenting(
      oddCertificate({
        issuer: mesh.ca,
        commonName: "cart.shop",
        extensions: spiffeIds(CART_SPIFFE_ID),
        notBefore: new Date(Date.now() - 2 * DAY),
        notAfter: new Date(Date.now() - DAY),
      }),
    ),
  ),
  row("inbound", "peer_not_yet_valid", 401, "a certificate valid from tomorrow", () =>
    presenting(
      oddCertificate({
        issuer: mesh.ca,
        commonName: "cart.shop",
        extensions: spiffeIds(CART_SPIFFE_ID),
        notBefore: new Date(Date.now() + DAY),
        notAfter: new Date(Date.now() + 2 * DAY),
      }),
    ),
  ),
  row("inbound", "peer_bad_signature", 401, "a certificate from a look-alike of the mesh CA", () =>
    presenting(
      oddCertificate({
        issuer: lookAlikeCa(),
        commonName: "cart.shop",
        extensions: spiffeIds(CART_SPIFFE_ID),
      }),
    ),
  ),
  row("inbound", "peer_not_client_auth", 401, "a server-only certificate", async () =>
    presenting(identityOf(await issueCertificate(mesh.ca, { id: "cart.shop", usage: "server" }))),
  ),
  row("inbound", "peer_is_ca", 401, "the mesh CA's own certificate as a client certificate", () =>
    presenting({ cert: mesh.ca.certificate.pem, key: privateKeyToPem(mesh.ca.privateKey) }),
  ),
  row("inbound", "peer_malformed", 401, "a certificate with two SPIFFE ids", () =>
    presenting(
      oddCertificate({
        issuer: mesh.ca,
        commonName: "cart.shop",
        extensions: spiffeIds(CART_SPIFFE_ID, "spiffe://custody.local/ns/shop/si/vault"),
      }),
    ),
  ),
  row("inbound", "peer_not_a_service", 401, "a partner's certificate (a subject DN, no SPIFFE id)", () =>
    presenting(oddCertificate({ issuer: plainCa, commonName: "partner-client", extensions: [] })),
  ),
  row(
    "inbound",
    "peer_spiffe_id_not_mesh_issued",
    401,
    "cart's SPIFFE id from a partner CA that claims Custody's trust domain",
    async () =>
      presenting(identityOf(await issueCertificate(partnerCa, { id: "cart.shop", usage: "client" }))),
  ),
  row("inbound", "peer_ambiguous_issuer", 401, "a certificate from one of two partner CAs of one name", () =>
    presenting(oddCertificate({ issuer: twinCa2, commonName: "partner-client", extensions: [] })),
  ),
  row("inbound", "peer_trust_domain_mismatch", 401, "a mesh-CA certificate for another trust domain", () =>
    presenting(
      oddCertificate({
        issuer: mesh.ca,
        commonName: "cart.shop",
        extensions: spiffeIds("spiffe://partner.example/ns/shop/si/cart"),
      }),
    ),
  ),

  // --- inbound: the chain
  row("inbound", "missing_chain", 401, "no Custody-Chain", () => cartToPayments(undefined)),
  row("inbound", "chain_repeated", 400, "two Custody-Chain headers, each a genuine link", async () =>
    mesh.callInbound("cart.shop", portOf("payments.shop"), {
      method: "GET",
      path: "/reasons",
      headers: { "custody-chain": [await genuineCartLink(), await genuineCartLink()] },
    }),
  ),
  row("inbound", "header_too_large", 401, "a 16 KiB + 1 Custody-Chain", () =>
    cartToPayments("a".repeat(DEFAULT_LIMITS.maxHeaderBytes + 1)),
  ),
  row("inbound", "chain_too_deep", 401, "17 elements", () =>
    cartToPayments(Array.from({ length: DEFAULT_LIMITS.maxDepth + 1 }, () => "a").join("~")),
  ),
  row("inbound", "element_too_large", 401, "one 4 KiB + 1 element", () =>
    cartToPayments("a".repeat(DEFAULT_LIMITS.maxElementBytes + 1)),
  ),
  row("inbound", "malformed", 401, "an element that is not a JWS", () => cartToPayments("garbage")),
  row("inbound", "alg_not_allowed", 401, "a link signed HS256", async () =>
    cartToPayments(
      `${b64({ alg: "HS256", typ: "custody+jwt", kid: (await mesh.signerOf("cart.shop")).kid })}.${b64({})}.AAAA`,
    ),
  ),
  row("inbound", "wrong_type", 401, "a head with typ JWT", async () =>
    cartToPayments(forge(await mesh.signerOf("cart.shop"), { typ: "JWT" }, {})),
  ),
  row("inbound", "unknown_key", 401, "a kid nobody published", async () =>
    cartToPayments(forge(await mesh.signerOf("cart.shop"), { kid: "no-such-kid" }, {})),
  ),
  row("inbound", "key_issuer_mismatch", 401, "cart's link under vault's kid", async () => {
    const vault = await mesh.signerOf("vault.shop");
    return cartToPayments(forge(await mesh.signerOf("cart.shop"), { kid: vault.kid }, {}));
  }),
  row("inbound", "bad_signature", 401, "cart's link signed with another key", async () => {
    const stranger = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    return cartToPayments(forge(await mesh.signerOf("cart.shop"), {}, {}, stranger));
  }),
  row("inbound", "lifetime_too_long", 401, "a link living 120 s", async () =>
    cartToPayments(forge(await mesh.signerOf("cart.shop"), {}, { exp: nowSeconds() + 120 })),
  ),
  row("inbound", "audience_mismatch", 401, "a link addressed to vault, sent to payments", async () =>
    cartToPayments(await link("cart.shop", "vault.shop", "GET", "/reasons")),
  ),
  row("inbound", "peer_mismatch", 401, "shop's link, played by cart", async () =>
    cartToPayments(await link("shop.shop", "payments.shop", "GET", "/reasons")),
  ),
  row("inbound", "operation_mismatch", 401, "a link for GET /other", async () =>
    cartToPayments(await link("cart.shop", "payments.shop", "GET", "/other")),
  ),
  row("inbound", "expired", 401, "a link that expired 20 s ago", async () =>
    cartToPayments(
      forge(await mesh.signerOf("cart.shop"), {}, { iat: nowSeconds() - 30, exp: nowSeconds() - 20 }),
    ),
  ),
  row("inbound", "issued_in_future", 401, "a link issued a minute from now", async () =>
    cartToPayments(
      forge(await mesh.signerOf("cart.shop"), {}, { iat: nowSeconds() + 60, exp: nowSeconds() + 70 }),
    ),
  ),
  row("inbound", "body_mismatch", 401, "a body changed after signing", async () =>
    mesh.callInbound("cart.shop", portOf("payments.shop"), {
      method: "POST",
      path: "/reasons",
      body: '{"amount":1000}',
      chain: await link("cart.shop", "payments.shop", "POST", "/reasons", { body: '{"amount":1}' }),
    }),
  ),
  row("inbound", "replayed", 401, "the same chain twice", async () => {
    const chain = await genuineCartLink();
    const first = await cartToPayments(chain);
    expect(first.status).toBe(200);
    return cartToPayments(chain);
  }),
  row("inbound", "replay_store_unavailable", 503, "a sidecar whose Redis replay store is down", async () =>
    cartToPayments(await genuineCartLink(), redisless.inboundPort),
  ),
  row("inbound", "custody_broken", 401, "cart continuing a link addressed to vault", async () => {
    const earlier = await link("shop.shop", "vault.shop", "GET", "/x");
    return cartToPayments(
      await link("cart.shop", "payments.shop", "GET", "/reasons", { previous: [earlier] }),
    );
  }),
  row(
    "inbound",
    "hash_link_broken",
    401,
    "a head pointing (prv) to an element that is not sent",
    async () => {
      const chain = await link("cart.shop", "payments.shop", "GET", "/reasons", { previous: ["elsewhere"] });
      return cartToPayments(chain.split("~").at(-1));
    },
  ),
  row(
    "inbound",
    "hash_link_broken",
    401,
    "a head whose prv hashes another element than the one before it",
    async () => {
      const earlier = await link("shop.shop", "cart.shop", "GET", "/x");
      const head = forge(await mesh.signerOf("cart.shop"), {}, { prv: sha256Base64url("another element") });
      return cartToPayments(`${earlier}~${head}`);
    },
  ),
  row("inbound", "too_many_headers", 431, "a request with 300 headers", () =>
    mesh.callInbound("cart.shop", portOf("payments.shop"), {
      method: "GET",
      path: "/reasons",
      headers: Object.fromEntries(Array.from({ length: 300 }, (_, index) => [`x-filler-${index}`, "1"])),
    }),
  ),
  row("inbound", "self_link", 401, "a link cart addressed to itself, continued by cart", async () => {
    const signer = await mesh.signerOf("cart.shop");
    const self = forge(signer, {}, { aud: "cart.shop", op: "GET /loop" });
    return cartToPayments(`${self}~${forge(signer, {}, { prv: sha256Base64url(self) })}`);
  }),
  row("inbound", "chain_too_old", 401, "an inner link issued six minutes ago", async () => {
    const now = nowSeconds();
    const earlier = forge(
      await mesh.signerOf("shop.shop"),
      {},
      { aud: "cart.shop", op: "GET /x", iat: now - 360, exp: now - 300 },
    );
    return cartToPayments(
      `${earlier}~${forge(await mesh.signerOf("cart.shop"), {}, { prv: sha256Base64url(earlier) })}`,
    );
  }),
  row("inbound", "stale", 401, "a head issued 8 s ago, not yet expired", async () =>
    cartToPayments(
      forge(await mesh.signerOf("cart.shop"), {}, { iat: nowSeconds() - 8, exp: nowSeconds() + 2 }),
    ),
  ),
  row("inbound", "out_of_order", 401, "a fresh head issued 6 s before the link it continues", async () => {
    const now = nowSeconds();
    const earlier = forge(
      await mesh.signerOf("shop.shop"),
      {},
      { aud: "cart.shop", op: "GET /x", iat: now + 2, exp: now + 12 },
    );
    const head = forge(
      await mesh.signerOf("cart.shop"),
      {},
      { iat: now - 4, exp: now + 6, prv: sha256Base64url(earlier) },
    );
    return cartToPayments(`${earlier}~${head}`);
  }),
  row(
    "inbound",
    "initial_token_invalid",
    401,
    "a chain starting with an untrusted issuer's token",
    async () => {
      const rogue = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
      const token = userToken({ iss: "https://rogue.example" }, rogue);
      return cartToPayments(
        await link("cart.shop", "payments.shop", "GET", "/reasons", { previous: [token] }),
      );
    },
  ),
  row(
    "inbound",
    "initial_token_not_admitted",
    401,
    "a user's token starting a chain at cart (not an edge)",
    async () =>
      cartToPayments(
        await link("cart.shop", "payments.shop", "GET", "/reasons", { previous: [userToken()] }),
      ),
  ),

  // --- inbound: edge entry (shop is an edge; Authorization: Bearer, no chain)
  row("inbound", "binding_mismatch", 401, "cart's identity token presented over payments' certificate", () =>
    mesh.callInbound("payments.shop", portOf("shop.shop"), {
      method: "GET",
      path: "/",
      headers: { authorization: `Bearer ${cartIdentityToken}` },
    }),
  ),
  row("inbound", "binding_mismatch", 401, "a user token bound (cnf) to a certificate, without one", () =>
    mesh.callInbound(undefined, portOf("shop.shop"), {
      path: "/",
      headers: { authorization: `Bearer ${userToken({ cnf: { "x5t#S256": sha256Base64url("another") } })}` },
    }),
  ),
  row("inbound", "initial_token_audience", 401, "a user token for another edge, at shop", () =>
    mesh.callInbound(undefined, portOf("shop.shop"), {
      path: "/",
      headers: { authorization: `Bearer ${userToken({ aud: "other-edge.shop" })}` },
    }),
  ),
  row("inbound", "initial_token_invalid", 401, "an expired user token", () =>
    mesh.callInbound(undefined, portOf("shop.shop"), {
      path: "/",
      headers: { authorization: `Bearer ${userToken({ exp: nowSeconds() - 60 })}` },
    }),
  ),
  row("inbound", "wrong_type", 401, "a call link as a bearer token", async () =>
    mesh.callInbound(undefined, portOf("shop.shop"), {
      path: "/",
      headers: { authorization: `Bearer ${await link("cart.shop", "shop.shop", "GET", "/")}` },
    }),
  ),
  row("inbound", "element_too_large", 401, "a 5000-character bearer token", () =>
    mesh.callInbound(undefined, portOf("shop.shop"), {
      path: "/",
      headers: { authorization: `Bearer ${"a".repeat(5000)}` },
    }),
  ),
  row("inbound", "malformed", 401, "a bearer token that is not a JWT", () =>
    mesh.callInbound(undefined, portOf("shop.shop"), { path: "/", headers: { authorization: "Bearer abc" } }),
  ),

  // --- inbound: policies (shop → vault through both sidecars; shop's chain starts with its identity token)
  ...(
    [
      ["denied_by_rule", "/admin/keys", "a deny rule"],
      ["default_action", "/elsewhere", "no rule matching, defaultAction deny"],
      ["initial_token_issuer", "/issuer", "an initial token from the token service, not the user IdP"],
      ["scope_missing", "/scope", "an initial token without scope shop.admin"],
      ["audience_missing", "/audience", "an initial token not addressed to vault.shop"],
      ["initial_token_claims", "/claims", "an initial token without tier=gold"],
      ["call_path", "/from-payments", "a call from shop where comeFrom wants payments"],
      ["caller_claims", "/team-only", "a caller without team=finance"],
    ] as const
  ).map(([reason, path, how]) =>
    row("inbound", reason, 403, how, () => callThrough(sidecarOf("shop.shop"), `http://vault.shop${path}`)),
  ),
  row(
    "inbound",
    "initial_token_required",
    403,
    "a chain without an initial token where one is required",
    async () =>
      mesh.callInbound("shop.shop", portOf("vault.shop"), {
        method: "GET",
        path: "/needs-token",
        chain: await link("shop.shop", "vault.shop", "GET", "/needs-token"),
      }),
  ),
  row(
    "inbound",
    "no_policy",
    403,
    "a sidecar with whenNoPolicy: deny, for a service no policy targets",
    async () => cartToPayments(await genuineCartLink(), denying.inboundPort),
  ),
  row("inbound", "quota_exceeded", 429, "calls beyond a burst of 1", async () => {
    let answer: Reply = { status: 0, body: "" };
    // One per second: the second call in a row is over quota unless the first took a second.
    for (let attempt = 0; attempt < 5 && answer.status !== 429; attempt++) {
      answer = await callThrough(sidecarOf("shop.shop"), "http://vault.shop/quota");
    }
    return answer;
  }),

  // --- outbound (the app's side: HTTP to 127.0.0.1, through shop's sidecar unless said otherwise)
  ...BAD_TARGETS.map(([reason, target]) =>
    row("outbound", reason, 400, `GET ${target.slice(0, 20)} with Host: cart.shop`, () =>
      viaProxy(sidecarOf("shop.shop"), "cart.shop", { path: target }),
    ),
  ),
  row("outbound", "registry_unavailable", 503, "a sidecar that has no registry loaded", () =>
    callThrough(unregistered, "http://cart.shop/x"),
  ),
  row("outbound", "unsupported_scheme", 400, "an https:// target", () =>
    callThrough(sidecarOf("shop.shop"), "https://cart.shop/x"),
  ),
  row("outbound", "unknown_service", 502, "a host not in the registry", () =>
    callThrough(sidecarOf("shop.shop"), "http://evil.example/steal"),
  ),
  row("outbound", "loopback_target", 400, "a passthrough call to a loopback address", () =>
    callThrough(open, "http://127.0.0.1:9/x"),
  ),
  row("outbound", "own_key_unpublished", 503, "a sidecar whose key the registry does not publish", () =>
    callThrough(stray, "http://cart.shop/x"),
  ),
  row("outbound", "invalid_target", 400, "an absolute-form target that is not a URL", () =>
    viaProxy(sidecarOf("shop.shop"), "cart.shop", { path: "http://cart.shop:99999/x" }),
  ),
  row("outbound", "chain_repeated", 400, "two propagated Custody-Chain headers", () =>
    viaProxy(sidecarOf("shop.shop"), "cart.shop", {
      path: "/x",
      headers: { "custody-chain": ["a.b.c", "d.e.f"] },
    }),
  ),
  row(
    "outbound",
    "chain_not_sealed",
    400,
    "a raw chain (a genuine link) as the propagated Custody-Chain",
    async () =>
      callThrough(sidecarOf("shop.shop"), "http://cart.shop/x", {
        headers: { "custody-chain": await genuineCartLink() },
      }),
  ),
  row("outbound", "chain_not_sealed", 400, "a user's token as the propagated Custody-Chain, at an edge", () =>
    callThrough(sidecarOf("shop.shop"), "http://cart.shop/x", { headers: { "custody-chain": userToken() } }),
  ),
  row("outbound", "chain_not_ours", 400, "the chain vault's app received, passed on through shop", async () =>
    callThrough(sidecarOf("shop.shop"), "http://cart.shop/x", {
      headers: { "custody-chain": await chainVaultReceived() },
    }),
  ),
  row("outbound", "chain_altered", 400, "the chain vault's app received, its link swapped", async () => {
    const [sealedE0] = (await chainVaultReceived()).split("~");
    const swapped = await link("shop.shop", "vault.shop", "GET", "/open");
    return callThrough(sidecarOf("vault.shop"), "http://cart.shop/x", {
      headers: { "custody-chain": `${sealedE0}~${swapped}` },
    });
  }),
  row("outbound", "chain_expired", 400, "a chain passed on after its initial token expired", async () => {
    const answer = await mesh.callInbound(undefined, portOf("shop.shop"), {
      path: "/",
      headers: { authorization: `Bearer ${userToken({ exp: nowSeconds() + 1 })}` },
    });
    expect(answer.status).toBe(200);
    const received = String(mesh.service("shop.shop").received.at(-1)?.headers["custody-chain"]);
    await new Promise((resolve) => setTimeout(resolve, 2_100));
    return callThrough(sidecarOf("shop.shop"), "http://cart.shop/x", {
      headers: { "custody-chain": received },
    });
  }),
  row("outbound", "self_call", 400, "shop's app calling shop through its own sidecar", () =>
    callThrough(sidecarOf("shop.shop"), "http://shop.shop/x"),
  ),
  row("outbound", "too_many_headers", 431, "a proxy call with 300 headers", () =>
    callThrough(sidecarOf("shop.shop"), "http://cart.shop/x", {
      headers: Object.fromEntries(Array.from({ length: 300 }, (_, index) => [`x-filler-${index}`, "1"])),
    }),
  ),
  row("outbound", "proxy_auth_required", 407, "a proxy call without the workload's credential", () =>
    callThrough(guarded, "http://payments.shop/x"),
  ),
  row("outbound", "credential_required", 401, "a key service call with a wrong credential", async () => {
    const answer = await fetch(`${guarded.outboundUrl}/.custody/sign`, {
      method: "POST",
      headers: { authorization: "Bearer not-the-credential-0123456789" },
      body: JSON.stringify({ payload: { a: 1 } }),
    });
    return { status: answer.status, body: await answer.text() };
  }),
  row("outbound", "browser_request_refused", 403, "a browser's request (Sec-Fetch-Site) to the proxy", () =>
    callThrough(sidecarOf("shop.shop"), "http://cart.shop/x", {
      headers: { "sec-fetch-site": "same-origin", "sec-fetch-dest": "empty" },
    }),
  ),
  row(
    "outbound",
    "browser_request_refused",
    403,
    "a cross-origin POST (Origin) to the key service",
    async () => {
      const answer = await fetch(`${sidecarOf("payments.shop").outboundUrl}/.custody/open`, {
        method: "POST",
        headers: { origin: "http://payments.shop:8080", "content-type": "text/plain" },
        body: "{}",
      });
      return { status: answer.status, body: await answer.text() };
    },
  ),
  row("outbound", "host_not_local", 403, "the key service addressed by another name (DNS rebinding)", () =>
    viaProxy(sidecarOf("payments.shop"), "payments.shop:15001", {
      method: "POST",
      path: "/.custody/open",
      body: "{}",
    }),
  ),
  row("outbound", "body_too_large", 413, "a 1 KB body through a sidecar limited to 16 bytes", () =>
    callThrough(tiny, "http://cart.shop/x", { method: "POST", body: "x".repeat(1024) }),
  ),
  row("outbound", "peer_unreachable", 502, "a registered service where nothing listens", () =>
    callThrough(sidecarOf("shop.shop"), "http://sigonly.shop/x"),
  ),
  row(
    "outbound",
    "peer_identity_mismatch",
    502,
    "decoy.shop's address answers with stray.shop's certificate (same CA)",
    async () => {
      const answer = await callThrough(sidecarOf("shop.shop"), "http://decoy.shop/x");
      // Refused during the TLS handshake: the impostor never receives the request or its chain.
      expect(decoy.requests).toBe(0);
      return answer;
    },
  ),

  row(
    "outbound",
    "peer_certificate_untrusted",
    502,
    "impostor.shop's address answers with its SPIFFE id, from a partner CA",
    async () => {
      const answer = await callThrough(sidecarOf("shop.shop"), "http://impostor.shop/x");
      // Refused during the TLS handshake: a partner's CA is no anchor for a mesh server.
      expect(impostor.requests).toBe(0);
      return answer;
    },
  ),

  // --- key service (POST /.custody/<route> on the outbound port)
  row("keys", "unknown_route", 404, "POST /.custody/nope", () =>
    keyService(sidecarOf("cart.shop"), "nope", {}),
  ),
  row("keys", "method_not_allowed", 405, "GET /.custody/sign", () =>
    keyService(sidecarOf("cart.shop"), "sign", undefined, "GET"),
  ),
  row("keys", "own_key_unpublished", 503, "sign at a sidecar whose key is not published", () =>
    keyService(stray, "sign", { payload: { a: 1 } }),
  ),
  row("keys", "registry_unavailable", 503, "seal at a sidecar without a registry", () =>
    keyService(unregistered, "seal", { recipients: ["cart.shop"], plaintext: "x" }),
  ),
  row("keys", "malformed", 400, "a body that is not a JSON object", () =>
    keyService(sidecarOf("cart.shop"), "sign", "[1]"),
  ),
  row("keys", "malformed", 400, "verify without a jws", () =>
    keyService(sidecarOf("cart.shop"), "verify", { payload: { a: 1 } }),
  ),
  row("keys", "too_large", 400, "a 3000-character JWS to verify", () =>
    keyService(sidecarOf("cart.shop"), "verify", { jws: "a".repeat(3000), payload: { a: 1 } }),
  ),
  row("keys", "invalid_payload", 400, "sign without a payload", () =>
    keyService(sidecarOf("cart.shop"), "sign", {}),
  ),
  row("keys", "invalid_payload", 400, "sign a string with a lone surrogate", () =>
    keyService(sidecarOf("cart.shop"), "sign", '{"payload":{"name":"\\ud800"}}'),
  ),
  row("keys", "alg_not_allowed", 400, "verify a detached JWS with alg HS256", () =>
    keyService(sidecarOf("cart.shop"), "verify", {
      jws: `${detachedHeader({ alg: "HS256" })}..${FAKE_SIGNATURE}`,
      payload: { a: 1 },
    }),
  ),
  row("keys", "wrong_type", 400, "verify a detached JWS typed as a call link", () =>
    keyService(sidecarOf("cart.shop"), "verify", {
      jws: `${detachedHeader({ typ: "custody+jwt" })}..${FAKE_SIGNATURE}`,
      payload: { a: 1 },
    }),
  ),
  row("keys", "wrong_payload_type", 400, "verify a JSON signature against bytes", async () =>
    keyService(sidecarOf("payments.shop"), "verify", {
      jws: await cartSignature({ order: 1 }),
      payloadBase64url: Buffer.from('{"order":1}').toString("base64url"),
    }),
  ),
  row("keys", "unknown_key", 400, "verify a signature under a kid nobody published", () =>
    keyService(sidecarOf("cart.shop"), "verify", {
      jws: `${detachedHeader({})}..${FAKE_SIGNATURE}`,
      payload: { a: 1 },
    }),
  ),
  row("keys", "bad_signature", 400, "verify cart's signature against a changed payload", async () =>
    keyService(sidecarOf("payments.shop"), "verify", {
      jws: await cartSignature({ order: 1 }),
      payload: { order: 2 },
    }),
  ),
  row("keys", "unexpected_signer", 400, "verify cart's signature expecting shop's", async () =>
    keyService(sidecarOf("payments.shop"), "verify", {
      jws: await cartSignature({ order: 1 }),
      payload: { order: 1 },
      expectedSigner: "shop.shop",
    }),
  ),
  row("keys", "no_recipients", 400, "seal to an empty list", () =>
    keyService(sidecarOf("shop.shop"), "seal", { recipients: [], plaintext: "x" }),
  ),
  row("keys", "no_recipients", 400, "seal without a recipient list", () =>
    keyService(sidecarOf("shop.shop"), "seal", { recipients: "cart.shop", plaintext: "x" }),
  ),
  row("keys", "too_many_recipients", 400, "seal to 17 services", () =>
    keyService(sidecarOf("shop.shop"), "seal", {
      recipients: Array.from({ length: 17 }, (_, index) => `s${index}.shop`),
      plaintext: "x",
    }),
  ),
  row("keys", "duplicate_recipient", 400, "seal to cart twice", () =>
    keyService(sidecarOf("shop.shop"), "seal", { recipients: ["cart.shop", "cart.shop"], plaintext: "x" }),
  ),
  row("keys", "unknown_recipient", 400, "seal to a service not in the registry", () =>
    keyService(sidecarOf("shop.shop"), "seal", { recipients: ["nobody.shop"], plaintext: "x" }),
  ),
  row("keys", "no_encryption_key", 400, "seal to a service whose key is for signing only", () =>
    keyService(sidecarOf("shop.shop"), "seal", { recipients: ["sigonly.shop"], plaintext: "x" }),
  ),
  row("keys", "not_a_recipient", 400, "open, at shop, what shop sealed for payments", async () =>
    keyService(sidecarOf("shop.shop"), "open", await sealed(["payments.shop"])),
  ),
  row("keys", "decryption_failed", 400, "open a JWE whose ciphertext was changed", async () => {
    const jwe = await sealed(["payments.shop"]);
    const ciphertext = String(jwe.ciphertext);
    const flipped = `${ciphertext.startsWith("A") ? "B" : "A"}${ciphertext.slice(1)}`;
    return keyService(sidecarOf("payments.shop"), "open", { ...jwe, ciphertext: flipped });
  }),
];

// --- the tests ----------------------------------------------------------------------------------

describe("every reason code reachable over HTTP", () => {
  for (const { surface, reason, status, how, send } of ROWS) {
    it(`${surface} ${reason} (${status}): ${how}`, async () => {
      const answer = await send();
      expect({ status: answer.status, body: JSON.parse(answer.body) as unknown }).toEqual({
        status,
        body: { error: errorOf(surface, status), reason },
      });
      reasonsProduced.add(`${surface}:${reason}`);
    });
  }

  it("inbound allowed (200): a call a policy rule allows reaches the app with the decision", async () => {
    const answer = await callThrough(sidecarOf("shop.shop"), "http://vault.shop/open");
    expect(answer).toMatchObject({ status: 200, body: "ok" });
    const received = mesh.service("vault.shop").received.at(-1);
    expect(received?.headers["custody-decision"]).toBe("allow policy=shop/vault rule=open");
    const metrics = await (await fetch(`${sidecarOf("vault.shop").adminUrl}/metrics`)).text();
    expect(metrics).toContain(
      'custody_sidecar_requests_total{direction="inbound",decision="allow",reason="allowed"}',
    );
    reasonsProduced.add("inbound:allowed");
  });

  it("the transcribed lists match the reasons in the source", async () => {
    const source = (path: string) => readFile(new URL(`../../sidecar/src/${path}`, import.meta.url), "utf8");
    const sorted = (list: readonly string[]) => [...new Set(list)].sort();
    const all = (text: string, pattern: RegExp) =>
      sorted([...text.matchAll(pattern)].map((match) => match[1] ?? ""));
    expect(all(await source("chain/normalize.ts"), /reject\(\s*"([a-z_]+)"/g)).toEqual(
      sorted(OPERATION_REASONS),
    );
    expect(all(await source("runtime/body.ts"), /"(body_[a-z_]+)"/g)).toEqual(sorted(BODY_REASONS));
    expect(all(await source("runtime/inbound-server.ts"), /reason: "([a-z_]+)"/g)).toEqual(
      sorted(INBOUND_SERVER_REASONS),
    );
    const decision = await source("runtime/inbound-decision.ts");
    expect(all(decision, /refuse\(\s*\d{3},\s*"([a-z_]+)"/g)).toEqual(sorted(INBOUND_DECISION_REASONS));
    expect(decision).toMatch(/refuse\(401, `peer_\$\{error\.code\}`/);
    expect(
      all(await source("runtime/outbound-server.ts"), /new OutboundRefusal\(\s*\d{3},\s*"([a-z_]+)"/g),
    ).toEqual(sorted(OUTBOUND_SERVER_REASONS));
    expect(all(await source("runtime/app-chain.ts"), /AppChainError\(\s*"([a-z_]+)"/g)).toEqual(
      sorted(APP_CHAIN_REASONS),
    );
    expect(all(await source("runtime/local-client.ts"), /LocalClientRefusal\(\s*"([a-z_]+)"/g)).toEqual(
      sorted(LOCAL_CLIENT_REASONS),
    );
    const routes = await source("runtime/key-routes.ts");
    expect(
      sorted([
        ...all(routes, /new RouteRefusal\(\s*\d{3},\s*"([a-z_]+)"/g),
        ...all(routes, /reason: "([a-z_]+)"/g),
      ]),
    ).toEqual(sorted(KEY_ROUTE_REASONS));
  });

  it("produced exactly the reachable reasons: the source lists minus the unreachable ones", () => {
    for (const key of Object.keys(UNREACHABLE)) {
      const [surface = "", reason = ""] = key.split(":");
      expect(ANSWERABLE[surface as Surface], key).toContain(reason);
    }
    expect([...reasonsProduced].sort()).toEqual([...REACHABLE].sort());
  });
});
