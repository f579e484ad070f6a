/**
 * The token service process: an HTTPS server asking for client certificates (the token endpoint
 * and discovery), a plain-HTTP admin server (metrics, health), and the state they read — the
 * identities of a manifest directory (reloaded on change), the trust bundle, the signing keys
 * (rotated on schedule) and the trusted external issuers. Requests read one immutable snapshot of
 * that state, so a reload never shows a request half of the old state and half of the new.
 */

import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { isIP } from "node:net";
import type { TLSSocket } from "node:tls";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import { createAdminServer, createMetricsRegistry } from "../../../cli/src/admin.js";
import { closeGracefully, type ListenAddress, listen } from "../../../cli/src/serve.js";
import { SERVICE_IDENTITY_KIND } from "../../../crds/src/service-identity.js";
import { TrustBundle } from "../../../pki/src/bundle.js";
import { type CertificateAuthority, caPaths, loadCertificateAuthority } from "../../../pki/src/ca.js";
import { CaError } from "../../../pki/src/errors.js";
import { readBoundedFile } from "../../../pki/src/files.js";
import { issueCertificate } from "../../../pki/src/issue.js";
import type { IssuerKeySet } from "../../../pki/src/jwks.js";
import { privateKeyToPem } from "../../../pki/src/keys.js";
import { peerCertificateChain, VerifiedCertificateCache } from "../../../pki/src/peer.js";
import { ChangeWatcher } from "../../../pki/src/watch.js";
import { BodyTooLargeError, ClientAbortedError, readBody, sendJson } from "../http/io.js";
import { type ManifestSnapshot, manifestsOf, readManifestDirectory } from "../manifests/directory.js";
import { OAuthError } from "./errors.js";
import { assertFormContentType, MAX_TOKEN_REQUEST_BYTES, parseTokenForm } from "./form.js";
import {
  GRANT_CLIENT_CREDENTIALS,
  GRANT_TOKEN_EXCHANGE,
  type GrantContext,
  grantLabel,
  grantToken,
} from "./grants.js";
import { IdentityIndex } from "./identities.js";
import { createIssuerMetrics, type IssuerMetrics } from "./metrics.js";
import { SigningKeyRing } from "./signing-keys.js";
import { issuerKeySetOf, loadTrustedIssuers } from "./trusted-issuers.js";

export const TOKEN_PATH = "/oauth2/token";
export const JWKS_PATH = "/.well-known/jwks.json";
const DISCOVERY_PATHS = ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"];
/** The server certificate is re-issued at half its life; a week keeps a stolen one short-lived. */
const SERVER_CERTIFICATE_SECONDS = 7 * 86_400;
const MAINTENANCE_INTERVAL_MS = 1_000;

export interface IssuerConfig {
  readonly caDirectory: string;
  readonly trustBundlePath: string | undefined;
  readonly manifestsDirectory: string;
  readonly stateDirectory: string;
  readonly listen: ListenAddress;
  readonly admin: ListenAddress;
  /** `iss` of tokens; default https://localhost:<port> (or the listen host when it is a name). */
  readonly issuer: string | undefined;
  /** `aud` of identity tokens; default spiffe://<trust domain>. */
  readonly audience: string | undefined;
  readonly trustedIssuersPath: string | undefined;
  readonly rotationPeriodMs: number;
  readonly maxTokenLifetimeMs: number;
  /** Extra DNS names for the server certificate. */
  readonly serverNames: readonly string[];
  /** Service id of the token service's own certificate. */
  readonly serverId: string;
  readonly pollIntervalMs: number;
  readonly logger: Logger;
  readonly now?: () => number;
}

interface State {
  readonly identities: IdentityIndex;
  readonly bundle: TrustBundle;
  readonly trustedIssuers: IssuerKeySet;
}

export interface RunningIssuer {
  readonly tokenUrl: string;
  readonly adminUrl: string;
  readonly issuer: string;
  readonly metrics: Registry;
  /** Stops accepting, lets requests in flight finish (at most `graceMs`), then closes everything. */
  close(graceMs?: number): Promise<void>;
}

async function loadBundle(ca: CertificateAuthority, caDirectory: string, bundlePath: string | undefined) {
  const caSource = { name: caPaths(caDirectory).certificate, pem: ca.certificate.pem };
  if (bundlePath === undefined) return TrustBundle.fromPem([caSource]);
  const extra = { name: bundlePath, pem: await readBoundedFile(bundlePath) };
  const alone = TrustBundle.fromPem([extra]);
  // The seed's recipe concatenates every CA, Custody's included, into one file: accept that as is.
  const hasCa = alone.certificates.some((certificate) =>
    Buffer.from(certificate.der).equals(ca.certificate.der),
  );
  return hasCa ? alone : TrustBundle.fromPem([caSource, extra]);
}

function defaultIssuer(listen: ListenAddress, port: number): string {
  const wildcardOrLoopback = ["0.0.0.0", "::", "127.0.0.1", "::1", "localhost"].includes(listen.host);
  const host = wildcardOrLoopback ? "localhost" : isIP(listen.host) === 6 ? `[${listen.host}]` : listen.host;
  return `https://${host}:${port}`;
}

function urlHost(host: string): string {
  if (["0.0.0.0", "::"].includes(host)) return "127.0.0.1";
  return isIP(host) === 6 ? `[${host}]` : host;
}

export async function startIssuer(config: IssuerConfig): Promise<RunningIssuer> {
  const { logger } = config;
  const now = config.now ?? Date.now;
  const ca = await loadCertificateAuthority(config.caDirectory);
  if (ca.trustDomain === undefined) {
    throw new CaError(
      "no_trust_domain",
      "the CA has no spiffe:// trust domain: create it with `custody pki init`.",
    );
  }
  const trustDomain = ca.trustDomain;
  const registry = createMetricsRegistry("custody_issuer_");
  const metrics = createIssuerMetrics(registry);
  const keys = await SigningKeyRing.open({
    directory: config.stateDirectory,
    rotationPeriodMs: config.rotationPeriodMs,
    maxTokenLifetimeMs: config.maxTokenLifetimeMs,
    now,
  });
  const trustedIssuerList =
    config.trustedIssuersPath === undefined ? [] : await loadTrustedIssuers(config.trustedIssuersPath);
  let snapshot = await readManifestDirectory(config.manifestsDirectory);
  let state: State = {
    identities: indexOf(trustDomain, snapshot, logger),
    bundle: await loadBundle(ca, config.caDirectory, config.trustBundlePath),
    trustedIssuers: issuerKeySetOf(trustedIssuerList),
  };
  reportSnapshot(snapshot, state.identities, metrics, logger);
  metrics.signingKeys(keys.jwks.keys.length, keys.nextRotationAt / 1000);

  const reloadManifests = async () => {
    const next = await readManifestDirectory(config.manifestsDirectory, snapshot);
    if (next.digest === snapshot.digest && next.problems.length === snapshot.problems.length) {
      metrics.manifestReload("unchanged");
      return;
    }
    const identities = indexOf(trustDomain, next, logger);
    snapshot = next;
    state = { ...state, identities };
    metrics.manifestReload("changed");
    reportSnapshot(next, identities, metrics, logger);
  };
  const reloadBundle = async () => {
    const bundle = await loadBundle(ca, config.caDirectory, config.trustBundlePath);
    if (bundle.toPem() !== state.bundle.toPem()) {
      state = { ...state, bundle };
      logger.info(
        { event: "trust_bundle_reloaded", certificates: bundle.certificates.length },
        "trust bundle reloaded",
      );
    }
  };
  const watcher = new ChangeWatcher(
    [config.manifestsDirectory, ...(config.trustBundlePath === undefined ? [] : [config.trustBundlePath])],
    async () => {
      await reloadManifests();
      await reloadBundle();
    },
    {
      pollIntervalMs: config.pollIntervalMs,
      onError: (error) => {
        metrics.manifestReload("failed");
        logger.error(
          { event: "reload_failed", err: describeError(error) },
          "reload failed; keeping the last good state",
        );
      },
    },
  );

  const serverCertificate = async () => {
    const dnsNames = ["localhost", ...config.serverNames];
    const issuerHost = config.issuer === undefined ? undefined : new URL(config.issuer).hostname;
    if (issuerHost !== undefined && isIP(issuerHost) === 0 && !dnsNames.includes(issuerHost))
      dnsNames.push(issuerHost);
    const ipAddresses = ["127.0.0.1", "::1"];
    if (isIP(config.listen.host) !== 0 && !["0.0.0.0", "::"].includes(config.listen.host))
      ipAddresses.push(config.listen.host);
    const issued = await issueCertificate(ca, {
      id: config.serverId,
      usage: "server",
      dnsNames: [...new Set(dnsNames)],
      ipAddresses: [...new Set(ipAddresses)],
      lifetimeSeconds: SERVER_CERTIFICATE_SECONDS,
    });
    return {
      cert: `${issued.certificate.pem}${ca.certificate.pem}`,
      key: privateKeyToPem(issued.privateKey),
      ca: state.bundle.toPem(),
    };
  };

  let issuerUrl = config.issuer ?? "";
  const certificates = new VerifiedCertificateCache();
  const audience = config.audience ?? `spiffe://${trustDomain}`;
  const handleToken = async (request: IncomingMessage, response: ServerResponse) => {
    const started = process.hrtime.bigint();
    let grant = grantLabel(undefined);
    try {
      if (request.method !== "POST") {
        throw new OAuthError("invalid_request", "method_not_allowed", `use POST ${TOKEN_PATH}.`);
      }
      assertFormContentType(request.headers["content-type"]);
      let body: Buffer;
      try {
        body = await readBody(request, MAX_TOKEN_REQUEST_BYTES);
      } catch (error) {
        if (!(error instanceof BodyTooLargeError)) throw error;
        throw new OAuthError(
          "invalid_request",
          "body_too_large",
          `the token request is larger than ${error.limit} bytes.`,
        );
      }
      const form = parseTokenForm(body);
      grant = grantLabel(form.get("grant_type"));
      const context: GrantContext = {
        ...state,
        signingKey: keys.signingKey,
        issuer: issuerUrl,
        audience,
        maxLifetimeSeconds: Math.floor(config.maxTokenLifetimeMs / 1000),
        nowMs: now(),
        certificates,
      };
      const result = grantToken(context, form, peerCertificateChain(request.socket as TLSSocket));
      sendJson(response, 200, result.body, { pragma: "no-cache" });
      metrics.requested(grant, "issued", undefined, secondsSince(started));
      logger.info(
        {
          event: "token_issued",
          grant,
          client: result.client,
          sub: result.subject,
          jti: result.issued.jti,
          exp: result.issued.expiresAt,
          kid: context.signingKey.kid,
        },
        "token issued",
      );
    } catch (error) {
      if (error instanceof ClientAbortedError) {
        metrics.requested(grant, "invalid_request", "client_aborted", secondsSince(started));
        logger.info(
          { event: "token_refused", grant, error: "invalid_request", reason: "client_aborted" },
          "client closed the connection mid-request",
        );
        return;
      }
      const refusal =
        error instanceof OAuthError
          ? error
          : new OAuthError(
              "temporarily_unavailable",
              "internal_error",
              "the token service could not answer; retry shortly.",
            );
      if (!(error instanceof OAuthError)) {
        logger.error({ event: "token_error", err: describeError(error) }, "token request failed");
      }
      sendJson(response, refusal.status, refusal.toJSON(), { pragma: "no-cache" });
      metrics.requested(grant, refusal.code, refusal.reason, secondsSince(started));
      logger.warn(
        {
          event: "token_refused",
          grant,
          error: refusal.code,
          reason: refusal.reason,
          peer: peerSubject(request),
        },
        "token refused",
      );
    }
  };

  const handle = (request: IncomingMessage, response: ServerResponse) => {
    const path = (request.url ?? "").split("?")[0] ?? "";
    if (path === TOKEN_PATH) return void handleToken(request, response);
    if (request.method !== "GET" && request.method !== "HEAD") {
      return sendJson(response, 405, { error: "method_not_allowed" }, { allow: "GET, HEAD" });
    }
    if (path === JWKS_PATH)
      return sendJson(response, 200, keys.jwks, { "cache-control": "public, max-age=60" });
    if (DISCOVERY_PATHS.includes(path))
      return sendJson(response, 200, discovery(issuerUrl), { "cache-control": "public, max-age=300" });
    sendJson(response, 404, { error: "not_found" });
  };

  const tls = await serverCertificate();
  const server = createHttpsServer(
    {
      ...tls,
      requestCert: true,
      // Certificates are checked by pki's verifier, so that a refusal is an RFC 6749 invalid_client
      // answer with a reason, not a TLS alert the client cannot interpret.
      rejectUnauthorized: false,
      minVersion: "TLSv1.2",
      maxHeaderSize: 16 * 1024,
      requestTimeout: 10_000,
      headersTimeout: 5_000,
      keepAliveTimeout: 5_000,
    },
    handle,
  );
  server.maxConnections = 4096;
  const adminServer = createAdminServer(registry, () => ({
    status: 200,
    body: { status: "ready", identities: state.identities.size },
  }));

  const port = await listen(server, config.listen);
  issuerUrl = config.issuer ?? defaultIssuer(config.listen, port);
  const adminPort = await listen(adminServer, config.admin);

  const renewal = setInterval(
    () => {
      void serverCertificate()
        .then((renewed) => server.setSecureContext({ ...renewed }))
        .then(() => logger.info({ event: "server_certificate_renewed" }, "server certificate renewed"))
        .catch((error: unknown) =>
          logger.error(
            { event: "server_certificate_renewal_failed", err: describeError(error) },
            "renewal failed",
          ),
        );
    },
    (SERVER_CERTIFICATE_SECONDS * 1000) / 2,
  );
  renewal.unref();
  const maintenance = setInterval(
    () => {
      void keys
        .maintain()
        .then((result) => {
          if (result === "unchanged") return;
          if (result === "rotated" || result === "postponed") metrics.rotation(result);
          metrics.signingKeys(keys.jwks.keys.length, keys.nextRotationAt / 1000);
          logger.info(
            { event: `signing_key_${result}`, kid: keys.signingKey.kid, published: keys.jwks.keys.length },
            `signing keys ${result}`,
          );
        })
        .catch((error: unknown) =>
          logger.error(
            { event: "signing_key_rotation_failed", err: describeError(error) },
            "rotation failed; the current key keeps signing",
          ),
        );
    },
    Math.min(MAINTENANCE_INTERVAL_MS, config.rotationPeriodMs),
  );
  maintenance.unref();

  const tokenUrl = `https://${urlHost(config.listen.host)}:${port}${TOKEN_PATH}`;
  const adminUrl = `http://${urlHost(config.admin.host)}:${adminPort}`;
  logger.info(
    {
      event: "listening",
      tokenUrl,
      adminUrl,
      issuer: issuerUrl,
      trustDomain,
      identities: state.identities.size,
      kid: keys.signingKey.kid,
    },
    "token service listening",
  );

  return {
    tokenUrl,
    adminUrl,
    issuer: issuerUrl,
    metrics: registry,
    async close(graceMs = 10_000) {
      watcher.close();
      clearInterval(renewal);
      clearInterval(maintenance);
      await Promise.all([closeGracefully(server, graceMs), closeGracefully(adminServer, graceMs)]);
    },
  };
}

function indexOf(trustDomain: string, snapshot: ManifestSnapshot, logger: Logger): IdentityIndex {
  const declared = manifestsOf(snapshot).flatMap(({ manifest, source }) =>
    manifest.kind === SERVICE_IDENTITY_KIND ? [{ identity: manifest, source }] : [],
  );
  const index = new IdentityIndex(trustDomain, declared);
  for (const problem of index.problems)
    logger.warn({ event: "identity_conflict", source: problem.source }, problem.message);
  return index;
}

function reportSnapshot(
  snapshot: ManifestSnapshot,
  identities: IdentityIndex,
  metrics: IssuerMetrics,
  logger: Logger,
): void {
  for (const problem of snapshot.problems) {
    logger.warn({ event: "manifest_skipped", source: problem.source, code: problem.code }, problem.message);
  }
  metrics.identities(identities.size, snapshot.problems.length + identities.problems.length);
  logger.info(
    {
      event: "identities_loaded",
      identities: identities.size,
      problems: snapshot.problems.length + identities.problems.length,
    },
    "identities loaded",
  );
}

function discovery(issuer: string) {
  return {
    issuer,
    token_endpoint: `${issuer}${TOKEN_PATH}`,
    jwks_uri: `${issuer}${JWKS_PATH}`,
    grant_types_supported: [GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE],
    token_endpoint_auth_methods_supported: ["tls_client_auth"],
    tls_client_certificate_bound_access_tokens: true,
    response_types_supported: ["token"],
    subject_types_supported: ["public"],
    id_token_signing_alg_values_supported: ["ES256"],
    token_endpoint_auth_signing_alg_values_supported: ["ES256"],
  };
}

function peerSubject(request: IncomingMessage): string | undefined {
  // The socket is gone (null) when the client went away before the refusal was logged.
  const certificate = (request.socket as TLSSocket | null)?.getPeerCertificate?.();
  const subject = certificate?.subject;
  if (subject === undefined) return undefined;
  return Object.entries(subject)
    .map(([key, value]) => `${key}=${String(value)}`)
    .join(",")
    .replace(/[^\x20-\x7e]/g, "?")
    .slice(0, 256);
}

function secondsSince(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}

function describeError(error: unknown): { message: string; code?: string } {
  if (error instanceof Error) {
    const code = "code" in error && typeof error.code === "string" ? error.code : undefined;
    return code === undefined ? { message: error.message } : { message: error.message, code };
  }
  return { message: String(error) };
}
