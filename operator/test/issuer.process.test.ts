/**
 * `custody issuer` as a real process: real TLS, real child processes (the issuer, openssl, curl,
 * promtool). The design seed's openssl recipe end to end — a Custody CA, the seed's client CSR
 * signed by it, a partner CA and client made by openssl, both CAs cat'ed into ca_certs.pem — then
 * what a token holds and proves (jose verifies it on its own), token exchange, key rotation,
 * malformed requests, manifest reloads and the metrics that count all of it.
 */

import { createHash, X509Certificate } from "node:crypto";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import type { IncomingHttpHeaders } from "node:http";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { connect as connectTls } from "node:tls";
import {
  createLocalJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  exportJWK,
  type JSONWebKeySet,
  type JWTPayload,
  generateKeyPair as joseKeyPair,
  jwtVerify,
  SignJWT,
} from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EXIT_OK } from "../../cli/src/kit.js";
import { promtoolProblems, requireTool } from "../../e2e/support/tools.js";
import { pkiCommand } from "../../pki/src/cli.js";
import {
  EKU_CLIENT_AUTH,
  generateKeyPair,
  issueCertificate,
  loadCertificateAuthority,
  privateKeyToPem,
} from "../../pki/src/index.js";
import { extendedKeyUsage, subjectAltName } from "../../pki/src/template.js";
import {
  seedCa as seedCaIn,
  seedKeyAndCsr as seedKeyAndCsrIn,
  seedSign as seedSignIn,
} from "../../pki/test/seed-recipe.js";
import { captureIO, HOUR, handBuilt, run, temporaryDirectory } from "../../pki/test/support.js";
import { type IssuerProcess, type LogLine, startIssuerProcess } from "./support/issuer-process.js";

// Call each: a missing tool prints its own SKIP line (or throws under CUSTODY_REQUIRE_ALL=1).
const hasOpenssl = requireTool("openssl");
const hasCurl = requireTool("curl");
const hasPromtool = requireTool("promtool");

const CLIENT_CREDENTIALS = "client_credentials";
const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token";
const TRUST_DOMAIN_AUDIENCE = "spiffe://custody.local";
const USER_ISSUER = "https://login.example";
const PARTNER_SUBJECT = "CN=client_alternative,O=Partner,C=US";
/** The partner's CA, which alone vouches for PARTNER_SUBJECT. */
const PARTNER_ISSUER = "CN=Partner Client CA,O=Partner,C=US";

type Json = Record<string, unknown>;
type SigningKey = Awaited<ReturnType<typeof joseKeyPair>>["privateKey"];

/** A client certificate and its key, as files (what curl and node:https both take). */
interface ClientFiles {
  readonly crt: string;
  readonly key: string;
}

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly text: string;
  readonly json: Json;
}

function parseJson(text: string): Json {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === "object" && value !== null ? (value as Json) : {};
  } catch {
    return {};
  }
}

async function pki(...args: string[]): Promise<string> {
  const captured = captureIO();
  const code = await pkiCommand(args, captured.io);
  if (code !== EXIT_OK)
    throw new Error(`custody pki ${args.join(" ")} failed (${code}): ${captured.stderr()}`);
  return captured.stdout();
}

/** base64url(SHA-256(DER)), RFC 8705 §3.1, computed here independently of the issuer's code. */
async function thumbprintOf(certificateFile: string): Promise<string> {
  const der = new X509Certificate(await readFile(certificateFile)).raw;
  return createHash("sha256").update(der).digest("base64url");
}

/** Writes a manifest the way a careful tool does: a hidden temporary file, then an atomic rename. */
async function writeManifest(directory: string, name: string, text: string): Promise<void> {
  const temporary = join(directory, `.${name}.tmp`);
  await writeFile(temporary, text);
  await rename(temporary, join(directory, name));
}

/** One request over node:https, a fresh connection each time (no agent: certificates never mix). */
async function https(
  url: string,
  options: {
    readonly ca: string;
    readonly client?: ClientFiles;
    readonly method?: string;
    readonly headers?: Readonly<Record<string, string>>;
    readonly body?: string | Buffer;
    /** Sends the body in pieces with Transfer-Encoding: chunked (no Content-Length). */
    readonly chunked?: boolean;
  },
): Promise<Answer> {
  const [ca, cert, key] = await Promise.all([
    readFile(options.ca),
    options.client === undefined ? undefined : readFile(options.client.crt),
    options.client === undefined ? undefined : readFile(options.client.key),
  ]);
  return new Promise<Answer>((resolve, reject) => {
    const request = httpsRequest(
      url,
      { method: options.method ?? "GET", headers: options.headers, ca, cert, key, agent: false },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("error", reject);
        response.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            text,
            json: parseJson(text),
          });
        });
      },
    );
    // A server may answer (and stop reading) before a large body is all sent: the answer wins.
    request.on("error", reject);
    const body = options.body;
    if (body === undefined) {
      request.end();
    } else if (options.chunked === true) {
      const bytes = Buffer.from(body);
      for (let offset = 0; offset < bytes.length; offset += 64 * 1024) {
        request.write(bytes.subarray(offset, offset + 64 * 1024));
      }
      request.end();
    } else {
      request.end(body);
    }
  });
}

function form(parameters: Readonly<Record<string, string>>): string {
  return new URLSearchParams(parameters).toString();
}

const FORM_HEADERS = { "content-type": "application/x-www-form-urlencoded" };

/** Prometheus text exposition: the value of one sample with exactly these labels (0 when absent). */
function sample(text: string, name: string, labels: Readonly<Record<string, string>>): number {
  const wanted = Object.entries(labels).sort(([a], [b]) => a.localeCompare(b));
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const found = [...(match[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)]
      .map(([, key, value]) => [key ?? "", value ?? ""] as const)
      .sort(([a], [b]) => a.localeCompare(b));
    if (JSON.stringify(found) === JSON.stringify(wanted)) return Number(match[3]);
  }
  return 0;
}

/** Every sample of `name` carrying label `label`, keyed by that label's value, filtered by `where`. */
function samplesBy(
  text: string,
  name: string,
  label: string,
  where: Readonly<Record<string, string>>,
): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}\s+(\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const labels = Object.fromEntries(
      [...(match[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map(([, k, v]) => [
        k,
        v,
      ]),
    );
    if (Object.entries(where).every(([key, value]) => labels[key] === value)) {
      values.set(String(labels[label]), Number(match[3]));
    }
  }
  return values;
}

async function scrape(adminUrl: string): Promise<string> {
  const response = await fetch(`${adminUrl}/metrics`);
  expect(response.status).toBe(200);
  return response.text();
}

/** The next `count` refusals the server logs from line `from` on (grant, OAuth error, reason). */
async function refusalsSince(
  server: IssuerProcess,
  from: number,
  count: number,
): Promise<{ grant: unknown; error: unknown; reason: unknown }[]> {
  const lines = await server.waitForEvents("token_refused", count, { from });
  return lines.map((line: LogLine) => ({ grant: line.grant, error: line.error, reason: line.reason }));
}

/** The last `token_issued` line, once the one for a request sent after line `from` has arrived. */
async function issuedSince(server: IssuerProcess, from: number): Promise<LogLine | undefined> {
  return (await server.waitForEvents("token_issued", 1, { from }))[0];
}

const hasTools = hasOpenssl && hasCurl;

describe.skipIf(!hasTools)("custody issuer, a real process", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  const at = (...parts: string[]) => join(directory.path, ...parts);
  const caDir = () => at("ca");
  const caCert = () => at("ca", "ca.crt");
  const manifests = () => at("manifests");

  // The seed's files (pki/…), plus certificates openssl cannot easily make.
  const files: Record<
    "client" | "partner" | "third" | "gateway" | "serverOnly" | "nobody" | "expired" | "short",
    ClientFiles
  > = {
    client: { crt: "", key: "" },
    partner: { crt: "", key: "" },
    third: { crt: "", key: "" },
    gateway: { crt: "", key: "" },
    serverOnly: { crt: "", key: "" },
    nobody: { crt: "", key: "" },
    expired: { crt: "", key: "" },
    short: { crt: "", key: "" },
  };
  let shortNotAfterSeconds = 0;
  let userKey: SigningKey;
  let foreignKey: SigningKey;
  let main: IssuerProcess;

  const seedCa = (name: string, subject: string) => seedCaIn(directory.path, name, subject);
  const seedKeyAndCsr = (name: string, subject: string) => seedKeyAndCsrIn(directory.path, name, subject);
  const seedSign = (name: string, ca: string) => seedSignIn(directory.path, name, ca);

  /** curl, as the issue shows it: `curl --cert … --key … --cacert ca/ca.crt -d … https://localhost:PORT/…`. */
  async function curlToken(client: ClientFiles | undefined, parameters: readonly string[]): Promise<Answer> {
    counted(main);
    const { stdout } = await run("curl", [
      "--silent",
      "--show-error",
      "--noproxy",
      "*",
      ...(client === undefined ? [] : ["--cert", client.crt, "--key", client.key]),
      "--cacert",
      caCert(),
      ...parameters.flatMap((parameter) => ["-d", parameter]),
      "--write-out",
      "\n%{http_code}",
      `https://localhost:${main.port}/oauth2/token`,
    ]);
    const cut = stdout.lastIndexOf("\n");
    const text = stdout.slice(0, cut);
    return { status: Number(stdout.slice(cut + 1)), headers: {}, text, json: parseJson(text) };
  }

  /** Requests sent to each server's token endpoint: each one logs exactly one token_issued or token_refused. */
  const tokenRequests = new Map<IssuerProcess, number>();
  const counted = (server: IssuerProcess) => tokenRequests.set(server, (tokenRequests.get(server) ?? 0) + 1);

  /** The log index after the lines of every token request sent so far (they may still be in the pipe). */
  async function settled(server: IssuerProcess): Promise<number> {
    const outcome = (line: LogLine) => line.event === "token_issued" || line.event === "token_refused";
    await server.waitForCount(outcome, tokenRequests.get(server) ?? 0, {
      what: "token_issued/token_refused",
    });
    return server.logs.length;
  }

  function toTokenEndpoint(server: IssuerProcess, options: Parameters<typeof https>[1]): Promise<Answer> {
    counted(server);
    return https(server.tokenUrl, options);
  }

  const token = (
    server: IssuerProcess,
    client: ClientFiles | undefined,
    body: string,
    headers = FORM_HEADERS,
  ) => toTokenEndpoint(server, { ca: caCert(), client, method: "POST", headers, body });

  async function jwksOf(server: IssuerProcess): Promise<JSONWebKeySet> {
    const answer = await https(new URL("/.well-known/jwks.json", server.tokenUrl).href, { ca: caCert() });
    expect(answer.status).toBe(200);
    return answer.json as unknown as JSONWebKeySet;
  }

  async function userToken(
    key: SigningKey,
    claims: { iss?: string; sub?: string; scope?: string; iat?: number; exp?: number; kid?: string } = {},
  ): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ scope: claims.scope ?? "orders.read profile" })
      .setProtectedHeader({ alg: "ES256", typ: "JWT", kid: claims.kid ?? "k1" })
      .setIssuer(claims.iss ?? USER_ISSUER)
      .setSubject(claims.sub ?? "alice")
      .setAudience("shop")
      .setIssuedAt(claims.iat ?? now)
      .setExpirationTime(claims.exp ?? now + 600)
      .sign(key);
  }

  beforeAll(async () => {
    directory = await temporaryDirectory();
    await Promise.all([mkdir(at("pki", "CA"), { recursive: true }), mkdir(manifests())]);

    // Custody's CA (the seed's `openssl req -new -x509 … pki/CA/ca.crt`, the Custody way).
    await pki("init", "--out", caDir());
    const ca = await loadCertificateAuthority(caDir());

    await Promise.all([
      // The seed's client: its key and CSR made with openssl, signed by Custody for cart.shop.
      (async () => {
        await seedKeyAndCsr("client", "/C=US/O=Shop/CN=client");
        await pki(
          "sign-csr",
          "--ca",
          caDir(),
          "--csr",
          at("pki", "client.csr"),
          "--out",
          at("pki", "client.crt"),
          "--id",
          "cart.shop",
        );
      })(),
      // The seed's partner: its own CA and client_alternative, all openssl.
      (async () => {
        await seedCa("ca_alternative", "/C=US/O=Partner/CN=Partner Client CA");
        await seedKeyAndCsr("client_alternative", "/C=US/O=Partner/CN=client_alternative");
        await seedSign("client_alternative", "ca_alternative");
      })(),
      // A third CA nobody trusts, and its client.
      (async () => {
        await seedCa("ca_third", "/C=US/O=Stranger/CN=Stranger CA");
        await seedKeyAndCsr("client_third", "/C=US/O=Stranger/CN=client_third");
        await seedSign("client_third", "ca_third");
      })(),
      pki("issue", "--ca", caDir(), "--id", "gateway.edge", "--out", at("gateway")),
      pki("issue", "--ca", caDir(), "--id", "web.shop", "--usage", "server", "--out", at("web")),
      pki("issue", "--ca", caDir(), "--id", "nobody.shop", "--out", at("nobody")),
    ]);
    // The seed's last step: cat pki/CA/ca.crt pki/CA/ca_alternative.crt > pki/CA/ca_certs.pem
    const { stdout: bundle } = await run("cat", [caCert(), at("pki", "CA", "ca_alternative.crt")]);
    await writeFile(at("pki", "CA", "ca_certs.pem"), bundle);

    files.client = { crt: at("pki", "client.crt"), key: at("pki", "client.key") };
    files.partner = { crt: at("pki", "client_alternative.crt"), key: at("pki", "client_alternative.key") };
    files.third = { crt: at("pki", "client_third.crt"), key: at("pki", "client_third.key") };
    files.gateway = { crt: at("gateway", "tls.crt"), key: at("gateway", "tls.key") };
    files.serverOnly = { crt: at("web", "tls.crt"), key: at("web", "tls.key") };
    files.nobody = { crt: at("nobody", "tls.crt"), key: at("nobody", "tls.key") };

    // Expired yesterday, but otherwise a perfect cart.shop client certificate from the Custody CA.
    const expiredKey = await generateKeyPair("ecdsa-p256");
    const spiffe = subjectAltName({ uris: ["spiffe://custody.local/ns/shop/si/cart"] });
    if (spiffe === undefined) throw new Error("no SAN extension");
    const expired = handBuilt({
      issuer: ca,
      subjectKey: expiredKey.privateKey,
      commonName: "cart.shop",
      extensions: [extendedKeyUsage([EKU_CLIENT_AUTH]), spiffe],
      notBefore: new Date(Date.now() - 48 * HOUR),
      notAfter: new Date(Date.now() - 24 * HOUR),
    });
    files.expired = { crt: at("expired.crt"), key: at("expired.key") };
    await writeFile(files.expired.crt, expired.pem);
    await writeFile(files.expired.key, privateKeyToPem(expiredKey.privateKey), { mode: 0o600 });

    // cart.shop with 90 s to live: less than its 5 min tokenTTL.
    const short = await issueCertificate(ca, { id: "cart.shop", usage: "client", lifetimeSeconds: 90 });
    shortNotAfterSeconds = Math.floor(short.certificate.notAfter.getTime() / 1000);
    files.short = { crt: at("short.crt"), key: at("short.key") };
    await writeFile(files.short.crt, short.certificate.pem);
    await writeFile(files.short.key, privateKeyToPem(short.privateKey), { mode: 0o600 });

    // The users' IdP (trusted) and an impostor (not).
    const user = await joseKeyPair("ES256");
    userKey = user.privateKey;
    foreignKey = (await joseKeyPair("ES256")).privateKey;
    const { x, y } = await exportJWK(user.publicKey);
    await writeFile(
      at("trusted-issuers.yaml"),
      [
        "trustedIssuers:",
        `  - issuer: ${USER_ISSUER}`,
        "    audiences: [shop]",
        "    jwks:",
        "      keys:",
        `        - {kty: EC, crv: P-256, alg: ES256, kid: k1, x: ${x}, y: ${y}}`,
        "",
      ].join("\n"),
    );

    await writeManifest(manifests(), "shop.yaml", SHOP_IDENTITIES);
    await writeManifest(manifests(), "gateway.yaml", GATEWAY_IDENTITY);

    main = await startIssuerProcess({
      args: [
        "--ca",
        caDir(),
        "--manifests",
        manifests(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--trust-bundle",
        at("pki", "CA", "ca_certs.pem"),
        "--trusted-issuers",
        at("trusted-issuers.yaml"),
        "--state",
        at("state-main"),
        "--poll-interval",
        "200ms",
      ],
    });
  }, 60_000);

  afterAll(async () => {
    await main?.stop();
    await directory?.cleanup();
  });

  describe("the seed's recipe: client certificates for tokens", () => {
    it("logs where it listens: token URL, admin URL and issuer", () => {
      expect(main.tokenUrl).toBe(`https://127.0.0.1:${main.port}/oauth2/token`);
      expect(main.adminUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(main.issuer).toBe(`https://localhost:${main.port}`);
      expect(main.listening.identities).toBe(4);
    });

    it("curl --cert client.crt (the seed's CSR, signed for cart.shop) gets a Bearer token", async () => {
      const from = await settled(main);
      const answer = await curlToken(files.client, ["grant_type=client_credentials"]);
      expect(answer.status, answer.text).toBe(200);
      expect(answer.json.token_type).toBe("Bearer");
      expect(answer.json.expires_in).toBeGreaterThan(0);
      expect(answer.json.scope).toBe("cart.read cart.write");
      const claims = decodeJwt(String(answer.json.access_token));
      expect(claims.sub).toBe("cart.shop");
      const issued = await issuedSince(main, from);
      expect(issued).toMatchObject({ grant: CLIENT_CREDENTIALS, client: "cart.shop", sub: "cart.shop" });
    });

    it("client_alternative (partner CA in ca_certs.pem) is invalid_client until a manifest lists its DN", async () => {
      const from = await settled(main);
      const refused = await curlToken(files.partner, ["grant_type=client_credentials"]);
      expect(refused.status).toBe(401);
      expect(refused.json.error).toBe("invalid_client");
      expect(String(refused.json.error_description)).toContain("externalSubjects");
      expect(await refusalsSince(main, from, 1)).toEqual([
        { grant: CLIENT_CREDENTIALS, error: "invalid_client", reason: "unknown_identity" },
      ]);

      // Registered while the server runs: the poll (200ms) picks it up.
      const before = main.logs.length;
      await writeManifest(manifests(), "partner.yaml", PARTNER_IDENTITY);
      const loaded = await main.waitForLog((line) => line.event === "identities_loaded", {
        from: before,
        what: "identities_loaded after partner.yaml was written",
      });
      expect(loaded.identities).toBe(5);

      const answer = await curlToken(files.partner, ["grant_type=client_credentials"]);
      expect(answer.status, answer.text).toBe(200);
      expect(answer.json.token_type).toBe("Bearer");
      const claims = decodeJwt(String(answer.json.access_token));
      expect(claims.sub).toBe("settlement.partner");
      expect(claims.organization).toBe("Partner");
      expect(claims.cnf).toEqual({ "x5t#S256": await thumbprintOf(files.partner.crt) });
    });
  });

  describe("refused client certificates are invalid_client, and counted", () => {
    it("refuses a third CA's client, an expired, a server-only and an unmapped certificate", async () => {
      const before = await scrape(main.adminUrl);
      const from = await settled(main);
      const cases = [
        { client: files.third, reason: "unknown_issuer" },
        { client: files.expired, reason: "expired" },
        { client: files.serverOnly, reason: "not_client_auth" },
        { client: files.nobody, reason: "unknown_identity" },
        { client: undefined, reason: "no_client_certificate" },
      ];
      for (const { client, reason } of cases) {
        const answer = await curlToken(client, ["grant_type=client_credentials"]);
        expect(answer.status, reason).toBe(401);
        expect(answer.json.error, reason).toBe("invalid_client");
        expect(typeof answer.json.error_description, reason).toBe("string");
        // No internal detail: no stack, no file path.
        expect(answer.text, reason).not.toMatch(/\/tmp\/|\bat \w+ \(|node:internal/);
      }
      // A certificate that does not authenticate is refused before the request is read: its grant
      // is not known ("other"). One that does, but maps to no identity, is refused after.
      const grantOf = (reason: string) => (reason === "unknown_identity" ? CLIENT_CREDENTIALS : "other");
      expect(await refusalsSince(main, from, cases.length)).toEqual(
        cases.map(({ reason }) => ({ grant: grantOf(reason), error: "invalid_client", reason })),
      );

      const after = await scrape(main.adminUrl);
      const refusals = "custody_issuer_refusals_total";
      for (const { reason } of cases) {
        const labels = { grant: grantOf(reason), reason };
        expect(sample(after, refusals, labels) - sample(before, refusals, labels), reason).toBe(1);
      }
      const tokens = "custody_issuer_tokens_issued_total";
      const invalidOf = (grant: string) => ({ grant, result: "invalid_client" });
      const invalidAll = (scraped: typeof after) =>
        sample(scraped, tokens, invalidOf(CLIENT_CREDENTIALS)) + sample(scraped, tokens, invalidOf("other"));
      expect(invalidAll(after) - invalidAll(before)).toBe(cases.length);
      // Over the whole run so far: every invalid_client answer has exactly one refusal reason.
      const clientReasons = [CLIENT_CREDENTIALS, "other"].flatMap((grant) =>
        [...samplesBy(after, refusals, "reason", { grant })].filter(([reason]) =>
          [...cases.map((entry) => entry.reason), "client_id_mismatch"].includes(reason),
        ),
      );
      expect(clientReasons.reduce((sum, [, value]) => sum + value, 0)).toBe(invalidAll(after));
      expect(sample(after, refusals, { grant: CLIENT_CREDENTIALS, reason: "unknown_identity" })).toBe(2);
    });

    it("refuses a client_id that is not the certificate's identity", async () => {
      const from = await settled(main);
      const answer = await token(
        main,
        files.client,
        form({ grant_type: CLIENT_CREDENTIALS, client_id: "gateway.edge" }),
      );
      expect(answer.status).toBe(401);
      expect(answer.json.error).toBe("invalid_client");
      expect((await refusalsSince(main, from, 1))[0]?.reason).toBe("client_id_mismatch");
    });
  });

  describe("what a token holds", () => {
    it("verifies with the published JWKS and carries the identity's claims and certificate binding", async () => {
      const answer = await token(main, files.client, form({ grant_type: CLIENT_CREDENTIALS }));
      expect(answer.status, answer.text).toBe(200);
      expect(answer.headers["cache-control"]).toBe("no-store");
      const accessToken = String(answer.json.access_token);
      const jwks = await jwksOf(main);
      for (const key of jwks.keys) {
        expect(key).toMatchObject({ kty: "EC", crv: "P-256", alg: "ES256", use: "sig" });
        expect(key).not.toHaveProperty("d");
      }
      const { payload, protectedHeader } = await jwtVerify(accessToken, createLocalJWKSet(jwks), {
        issuer: main.issuer,
        audience: TRUST_DOMAIN_AUDIENCE,
        typ: "at+jwt",
        algorithms: ["ES256"],
      });
      expect(protectedHeader.alg).toBe("ES256");
      expect(protectedHeader.kid).toBe(main.listening.kid);
      expect(payload).toMatchObject({
        iss: main.issuer,
        sub: "cart.shop",
        aud: TRUST_DOMAIN_AUDIENCE,
        client_id: "cart.shop",
        env: "prod",
        scope: "cart.read cart.write",
        team: "checkout",
        tier: "gold",
      });
      expect(typeof payload.jti).toBe("string");
      expect(payload.cnf).toEqual({ "x5t#S256": await thumbprintOf(files.client.crt) });
      const expiresIn = Number(answer.json.expires_in);
      expect(expiresIn).toBeGreaterThan(0);
      expect(expiresIn).toBeLessThanOrEqual(300); // tokenTTL: 5m
      expect(Number(payload.exp) - Number(payload.iat)).toBe(expiresIn);
    });

    it("grants a requested subset of scopes and refuses a scope the identity lacks", async () => {
      const subset = await token(
        main,
        files.client,
        form({ grant_type: CLIENT_CREDENTIALS, scope: "cart.read" }),
      );
      expect(subset.status).toBe(200);
      expect(subset.json.scope).toBe("cart.read");
      expect(decodeJwt(String(subset.json.access_token)).scope).toBe("cart.read");
      const refused = await token(
        main,
        files.client,
        form({ grant_type: CLIENT_CREDENTIALS, scope: "cart.read orders.read" }),
      );
      expect(refused.status).toBe(400);
      expect(refused.json.error).toBe("invalid_scope");
    });

    it("never outlives the certificate: 90 s left on it, tokenTTL 5m", async () => {
      const answer = await token(main, files.short, form({ grant_type: CLIENT_CREDENTIALS }));
      expect(answer.status, answer.text).toBe(200);
      const { payload } = await jwtVerify(
        String(answer.json.access_token),
        createLocalJWKSet(await jwksOf(main)),
        {
          issuer: main.issuer,
          audience: TRUST_DOMAIN_AUDIENCE,
        },
      );
      expect(payload.sub).toBe("cart.shop");
      expect(Number(payload.exp)).toBeLessThanOrEqual(shortNotAfterSeconds);
      expect(Number(answer.json.expires_in)).toBeLessThanOrEqual(90);
      expect(payload.cnf).toEqual({ "x5t#S256": await thumbprintOf(files.short.crt) });
    });

    it("publishes discovery metadata naming the same issuer and JWKS", async () => {
      const answer = await https(new URL("/.well-known/openid-configuration", main.tokenUrl).href, {
        ca: caCert(),
      });
      expect(answer.status).toBe(200);
      expect(answer.json).toMatchObject({
        issuer: main.issuer,
        token_endpoint: `${main.issuer}/oauth2/token`,
        jwks_uri: `${main.issuer}/.well-known/jwks.json`,
        token_endpoint_auth_methods_supported: ["tls_client_auth"],
        grant_types_supported: [CLIENT_CREDENTIALS, TOKEN_EXCHANGE],
      });
    });
  });

  describe("token exchange (RFC 8693)", () => {
    const exchange = (client: ClientFiles, parameters: Readonly<Record<string, string>>) =>
      token(
        main,
        client,
        form({
          grant_type: TOKEN_EXCHANGE,
          subject_token_type: JWT_TOKEN_TYPE,
          audience: "orders.shop",
          ...parameters,
        }),
      );

    it("gives an edge actor a composite token for a trusted user's token", async () => {
      const subject = await userToken(userKey);
      const userClaims = decodeJwt(subject);
      const from = await settled(main);
      const answer = await exchange(files.gateway, { subject_token: subject, scope: "orders.read" });
      expect(answer.status, answer.text).toBe(200);
      expect(answer.json).toMatchObject({ token_type: "Bearer", issued_token_type: ACCESS_TOKEN_TYPE });
      const { payload, protectedHeader } = await jwtVerify(
        String(answer.json.access_token),
        createLocalJWKSet(await jwksOf(main)),
        { issuer: main.issuer, audience: "orders.shop", typ: "at+jwt", algorithms: ["ES256"] },
      );
      expect(protectedHeader.typ).toBe("at+jwt");
      expect(payload).toMatchObject({
        sub: "alice",
        aud: "orders.shop",
        act: { sub: "gateway.edge" },
        client_id: "gateway.edge",
        subject_issuer: USER_ISSUER,
        scope: "orders.read",
      });
      expect(payload.cnf).toEqual({ "x5t#S256": await thumbprintOf(files.gateway.crt) });
      expect(Number(payload.exp)).toBeLessThanOrEqual(Number(userClaims.exp));
      const userScopes = String(userClaims.scope).split(" ");
      for (const scope of String(payload.scope).split(" ")) expect(userScopes).toContain(scope);
      expect(await issuedSince(main, from)).toMatchObject({
        grant: "token_exchange",
        client: "gateway.edge",
        sub: "alice",
      });
    });

    it("without a scope parameter, keeps exactly the user's scopes; a wider one is invalid_scope", async () => {
      const subject = await userToken(userKey);
      const all = await exchange(files.gateway, { subject_token: subject });
      expect(all.status, all.text).toBe(200);
      expect(decodeJwt(String(all.json.access_token)).scope).toBe("orders.read profile");
      const wider = await exchange(files.gateway, { subject_token: subject, scope: "orders.read admin" });
      expect(wider.status).toBe(400);
      expect(wider.json.error).toBe("invalid_scope");
    });

    it("refuses a non-edge actor, an expired or foreign user token and an unknown audience", async () => {
      const now = Math.floor(Date.now() / 1000);
      const from = await settled(main);
      const before = await scrape(main.adminUrl);
      const nonEdge = await exchange(files.client, { subject_token: await userToken(userKey) });
      expect([nonEdge.status, nonEdge.json.error]).toEqual([400, "unauthorized_client"]);

      const expired = await exchange(files.gateway, {
        subject_token: await userToken(userKey, { iat: now - 7200, exp: now - 3600 }),
      });
      expect([expired.status, expired.json.error]).toEqual([400, "invalid_grant"]);

      const foreign = await exchange(files.gateway, {
        subject_token: await userToken(foreignKey, { iss: "https://login.impostor.example" }),
      });
      expect([foreign.status, foreign.json.error]).toEqual([400, "invalid_grant"]);

      const forged = await exchange(files.gateway, { subject_token: await userToken(foreignKey) });
      expect([forged.status, forged.json.error]).toEqual([400, "invalid_grant"]);

      const unknownAudience = await exchange(files.gateway, {
        subject_token: await userToken(userKey),
        audience: "nowhere.shop",
      });
      expect([unknownAudience.status, unknownAudience.json.error]).toEqual([400, "invalid_target"]);

      const reasons = [
        "actor_not_edge",
        "subject_token_expired",
        "subject_token_untrusted_issuer",
        "subject_token_bad_signature",
        "unknown_audience",
      ];
      const refusals = await refusalsSince(main, from, reasons.length);
      expect(refusals.map((refusal) => [refusal.grant, refusal.reason])).toEqual(
        reasons.map((reason) => ["token_exchange", reason]),
      );
      const after = await scrape(main.adminUrl);
      for (const reason of reasons) {
        const labels = { grant: "token_exchange", reason };
        const name = "custody_issuer_refusals_total";
        expect(sample(after, name, labels) - sample(before, name, labels), reason).toBe(1);
      }
    });
  });

  describe("malformed requests", () => {
    it("are 400 invalid_request (or unsupported_grant_type) and the server keeps serving", async () => {
      const from = await settled(main);
      const megabyte = `grant_type=client_credentials&padding=${"a".repeat(1024 * 1024)}`;
      const cases: { name: string; send: () => Promise<Answer>; error: string; reason: string }[] = [
        {
          name: "application/json",
          send: () =>
            token(main, files.client, JSON.stringify({ grant_type: CLIENT_CREDENTIALS }), {
              "content-type": "application/json",
            }),
          error: "invalid_request",
          reason: "bad_content_type",
        },
        {
          name: "no grant_type",
          send: () => token(main, files.client, form({ scope: "cart.read" })),
          error: "invalid_request",
          reason: "missing_parameter",
        },
        {
          name: "1 MB body with Content-Length",
          send: () => token(main, files.client, megabyte),
          error: "invalid_request",
          reason: "body_too_large",
        },
        {
          name: "1 MB body, chunked",
          send: () =>
            toTokenEndpoint(main, {
              ca: caCert(),
              client: files.client,
              method: "POST",
              headers: FORM_HEADERS,
              body: megabyte,
              chunked: true,
            }),
          error: "invalid_request",
          reason: "body_too_large",
        },
        {
          name: "grant_type twice",
          send: () =>
            token(main, files.client, "grant_type=client_credentials&grant_type=client_credentials"),
          error: "invalid_request",
          reason: "repeated_parameter",
        },
        {
          name: "grant_type=password",
          send: () =>
            token(main, files.client, form({ grant_type: "password", username: "u", password: "p" })),
          error: "unsupported_grant_type",
          reason: "unsupported_grant_type",
        },
      ];
      for (const { name, send, error } of cases) {
        const answer = await send();
        expect(answer.status, name).toBe(400);
        expect(answer.json.error, name).toBe(error);
        expect(typeof answer.json.error_description, name).toBe("string");
      }
      // curl, seed style, repeats grant_type too.
      const curled = await curlToken(files.client, [
        "grant_type=client_credentials",
        "grant_type=client_credentials",
      ]);
      expect([curled.status, curled.json.error]).toEqual([400, "invalid_request"]);

      expect((await refusalsSince(main, from, cases.length + 1)).map((refusal) => refusal.reason)).toEqual([
        ...cases.map((entry) => entry.reason),
        "repeated_parameter",
      ]);
      expect(main.exitStatus()).toBeUndefined();
      const health = await fetch(`${main.adminUrl}/healthz`);
      expect(health.status).toBe(200);
      const valid = await curlToken(files.client, ["grant_type=client_credentials"]);
      expect(valid.status, valid.text).toBe(200);
      expect(valid.json.token_type).toBe("Bearer");
      expect(main.stderr()).toBe("");
    });

    it("answers other paths and methods without a token", async () => {
      const get = await toTokenEndpoint(main, { ca: caCert(), client: files.client });
      expect([get.status, get.json.error]).toEqual([400, "invalid_request"]);
      const missing = await https(new URL("/nope", main.tokenUrl).href, { ca: caCert() });
      expect(missing.status).toBe(404);
    });

    it("survives a client that hangs up in the middle of its body", async () => {
      const [ca, cert, key] = await Promise.all(
        [caCert(), files.client.crt, files.client.key].map((f) => readFile(f)),
      );
      counted(main);
      await new Promise<void>((resolve, reject) => {
        const socket = connectTls(
          { host: "127.0.0.1", port: main.port, servername: "localhost", ca, cert, key },
          () => {
            socket.write(
              "POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\n" +
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type=",
            );
            setTimeout(() => {
              socket.destroy();
              resolve();
            }, 100);
          },
        );
        socket.on("error", reject);
      });
      await settled(main);
      expect(main.exitStatus()).toBeUndefined();
      const valid = await token(main, files.client, form({ grant_type: CLIENT_CREDENTIALS }));
      expect(valid.status, valid.text).toBe(200);
    });
  });

  describe.skipIf(!hasPromtool)("metrics", () => {
    it("pass promtool check metrics", async () => {
      const response = await fetch(`${main.adminUrl}/metrics`);
      expect(response.headers.get("content-type")).toContain("text/plain");
      const text = await response.text();
      expect(text).toContain("custody_issuer_tokens_issued_total");
      expect(text).toContain("custody_issuer_request_duration_seconds_bucket");
      expect(promtoolProblems(text)).toBe("");
    });

    it("report the identities loaded and the signing keys published", async () => {
      const text = await scrape(main.adminUrl);
      expect(sample(text, "custody_issuer_identities", {})).toBe(5);
      expect(sample(text, "custody_issuer_signing_keys", {})).toBe(2);
      const ready = await fetch(`${main.adminUrl}/readyz`);
      expect(await ready.json()).toEqual({ status: "ready", identities: 5 });
    });
  });

  describe("signing key rotation", () => {
    let rotating: IssuerProcess;
    beforeAll(async () => {
      rotating = await startIssuerProcess({
        args: [
          "--ca",
          caDir(),
          "--manifests",
          manifests(),
          "--listen",
          "127.0.0.1:0",
          "--admin",
          "127.0.0.1:0",
          "--state",
          at("state-rotating"),
          "--key-rotation-period",
          "2s",
          "--max-token-ttl",
          "1m",
        ],
      });
    });
    afterAll(async () => {
      await rotating?.stop();
    });

    it("rotates to the pre-published next key; tokens of both keys verify against the new JWKS", async () => {
      const first = await token(rotating, files.gateway, form({ grant_type: CLIENT_CREDENTIALS }));
      expect(first.status, first.text).toBe(200);
      // --max-token-ttl 1m caps gateway.edge's tokenTTL of 10m.
      expect(Number(first.json.expires_in)).toBeLessThanOrEqual(60);
      const tokenA = String(first.json.access_token);
      const kidA = decodeProtectedHeader(tokenA).kid;
      const jwksBefore = await jwksOf(rotating);
      expect(jwksBefore.keys.map((key) => key.kid)).toContain(kidA);

      let tokenB: string | undefined;
      const deadline = Date.now() + 8_000;
      while (tokenB === undefined && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 200));
        const next = await token(rotating, files.gateway, form({ grant_type: CLIENT_CREDENTIALS }));
        expect(next.status).toBe(200);
        const candidate = String(next.json.access_token);
        if (decodeProtectedHeader(candidate).kid !== kidA) tokenB = candidate;
      }
      if (tokenB === undefined)
        throw new Error(`the signing key did not rotate within 8 s\n${rotating.stdout()}`);
      const kidB = decodeProtectedHeader(tokenB).kid;
      expect(kidB).not.toBe(kidA);
      // Overlap: the new key was in the JWKS before it signed anything.
      expect(jwksBefore.keys.map((key) => key.kid)).toContain(kidB);
      await rotating.waitForLog((line) => line.event === "signing_key_rotated" && line.kid === kidB, {
        what: `signing_key_rotated to ${kidB}`,
      });

      const jwksAfter = createLocalJWKSet(await jwksOf(rotating));
      const options = { issuer: rotating.issuer, audience: TRUST_DOMAIN_AUDIENCE, algorithms: ["ES256"] };
      const verifiedA: JWTPayload = (await jwtVerify(tokenA, jwksAfter, options)).payload;
      const verifiedB: JWTPayload = (await jwtVerify(tokenB, jwksAfter, options)).payload;
      expect(verifiedA.sub).toBe("gateway.edge");
      expect(verifiedB.sub).toBe("gateway.edge");
    });
  });

  describe("manifest problems", () => {
    let watched: IssuerProcess;
    const directoryOf = () => at("manifests-watched");

    beforeAll(async () => {
      await mkdir(directoryOf());
      await writeManifest(directoryOf(), "a-shop.yaml", SHOP_IDENTITIES);
      await writeManifest(
        directoryOf(),
        "b-broken.yaml",
        "apiVersion: custody.dev/v1alpha1\nkind: [unclosed\n",
      );
      await writeManifest(directoryOf(), "c-schema.yaml", NOBODY_WITH_SCHEMA_ERROR);
      await writeManifest(directoryOf(), "d-gateway.yaml", GATEWAY_IDENTITY);
      watched = await startIssuerProcess({
        args: [
          "--ca",
          caDir(),
          "--manifests",
          directoryOf(),
          "--listen",
          "127.0.0.1:0",
          "--admin",
          "127.0.0.1:0",
          "--state",
          at("state-watched"),
          "--poll-interval",
          "200ms",
        ],
      });
    });
    afterAll(async () => {
      await watched?.stop();
    });

    it("reports a file with bad YAML and one with a schema error, skips them, and serves the rest", async () => {
      const skipped = watched.events("manifest_skipped");
      const bySource = new Map(skipped.map((line) => [String(line.source), line]));
      expect(bySource.get(join(directoryOf(), "b-broken.yaml"))).toMatchObject({ code: "invalid_yaml" });
      expect(bySource.get(join(directoryOf(), "c-schema.yaml"))).toMatchObject({ code: "invalid_manifest" });
      expect(String(bySource.get(join(directoryOf(), "c-schema.yaml"))?.msg)).toContain("tokenTTL");
      expect(skipped).toHaveLength(2);
      expect(watched.listening.identities).toBe(4);

      const cart = await token(watched, files.client, form({ grant_type: CLIENT_CREDENTIALS }));
      expect(cart.status, cart.text).toBe(200);
      // nobody.shop is declared only in the skipped file.
      const from = await settled(watched);
      const nobody = await token(watched, files.nobody, form({ grant_type: CLIENT_CREDENTIALS }));
      expect([nobody.status, nobody.json.error]).toEqual([401, "invalid_client"]);
      expect((await refusalsSince(watched, from, 1))[0]?.reason).toBe("unknown_identity");
      const metrics = await scrape(watched.adminUrl);
      expect(sample(metrics, "custody_issuer_manifest_problems", {})).toBe(2);
    });

    it("keeps the last good version of a file that breaks, and takes its next good version", async () => {
      const before = watched.logs.length;
      await writeManifest(directoryOf(), "d-gateway.yaml", "kind: ServiceIdentity\nmetadata: {name: [\n");
      const skipped = await watched.waitForLog(
        (line) => line.event === "manifest_skipped" && line.source === join(directoryOf(), "d-gateway.yaml"),
        { from: before, what: "manifest_skipped for d-gateway.yaml" },
      );
      expect(String(skipped.msg)).toContain("keeping its last good version");
      const loaded = await watched.waitForLog((line) => line.event === "identities_loaded", { from: before });
      expect(loaded.identities).toBe(4);

      const kept = await token(watched, files.gateway, form({ grant_type: CLIENT_CREDENTIALS }));
      expect(kept.status, kept.text).toBe(200);
      expect(decodeJwt(String(kept.json.access_token))).toMatchObject({ sub: "gateway.edge", team: "edge" });

      const fixed = watched.logs.length;
      await writeManifest(
        directoryOf(),
        "d-gateway.yaml",
        GATEWAY_IDENTITY.replace("team: edge", "team: edge-v2"),
      );
      const reloaded = await watched.waitForLog((line) => line.event === "identities_loaded", {
        from: fixed,
        what: "identities_loaded after d-gateway.yaml was fixed",
      });
      expect(reloaded).toMatchObject({ identities: 4, problems: 2 });
      const renewed = await token(watched, files.gateway, form({ grant_type: CLIENT_CREDENTIALS }));
      expect(renewed.status, renewed.text).toBe(200);
      expect(decodeJwt(String(renewed.json.access_token)).team).toBe("edge-v2");
    });
  });

  describe("shutdown", () => {
    it("stops on SIGTERM: drains, logs stopped, exits 0", async () => {
      const status = await main.stop();
      expect(status).toEqual({ code: 0, signal: null });
      expect(main.events("shutting_down")).toHaveLength(1);
      expect(main.events("stopped")).toHaveLength(1);
      expect(main.stderr()).toBe("");
    });
  });
});

const SHOP_IDENTITIES = `apiVersion: custody.dev/v1alpha1
kind: ServiceIdentity
metadata: {name: cart, namespace: shop}
spec:
  environment: prod
  claims: {team: checkout, tier: gold}
  scopes: [cart.read, cart.write]
  tokenTTL: 5m
---
apiVersion: custody.dev/v1alpha1
kind: ServiceIdentity
metadata: {name: orders, namespace: shop}
spec:
  environment: prod
  scopes: [orders.read]
---
apiVersion: custody.dev/v1alpha1
kind: ServiceIdentity
metadata: {name: web, namespace: shop}
spec:
  environment: prod
`;

const GATEWAY_IDENTITY = `apiVersion: custody.dev/v1alpha1
kind: ServiceIdentity
metadata: {name: gateway, namespace: edge}
spec:
  environment: prod
  edge: true
  # The customers' IdP addresses their tokens to "shop": this edge acts on those.
  edgeAudiences: [shop]
  claims:
    team: edge
  scopes: [gateway.call]
  tokenTTL: 10m
`;

const PARTNER_IDENTITY = `apiVersion: custody.dev/v1alpha1
kind: ServiceIdentity
metadata: {name: settlement, namespace: partner}
spec:
  environment: prod
  claims: {organization: Partner}
  scopes: [payments.settle]
  externalSubjects:
    - {issuer: "${PARTNER_ISSUER}", subject: "${PARTNER_SUBJECT}"}
`;

const NOBODY_WITH_SCHEMA_ERROR = `apiVersion: custody.dev/v1alpha1
kind: ServiceIdentity
metadata: {name: nobody, namespace: shop}
spec:
  environment: prod
  tokenTTL: 48h
`;
