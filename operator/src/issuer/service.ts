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
import { closeGracefully, drain, type ListenAddress, listen } from "../../../cli/src/serve.js";
import { leaveBodyUnread } from "../../../cli/src/unread-body.js";
import type { PublicJwk } from "../../../crds/src/jwk.js";
import { SERVICE_IDENTITY_KIND } from "../../../crds/src/service-identity.js";
import { TrustAnchors } from "../../../pki/src/anchors.js";
import { type CertificateAuthority, caPaths, loadCertificateAuthority } from "../../../pki/src/ca.js";
import { CaError } from "../../../pki/src/errors.js";
import { readBoundedFile } from "../../../pki/src/files.js";
import type { IssuerKeySet } from "../../../pki/src/jwks.js";
import { peerCertificateChain, VerifiedCertificateCache } from "../../../pki/src/peer.js";
import { ChangeWatcher } from "../../../pki/src/watch.js";
import { BodyTooLargeError, ClientAbortedError, readBody, sendJson } from "../http/io.js";
import { issueServerTls, renewServerCertificate } from "../http/server-certificate.js";
import { type ManifestSnapshot, manifestsOf, readManifestDirectory } from "../manifests/directory.js";
import { OAuthError } from "./errors.js";
import { assertFormContentType, MAX_TOKEN_REQUEST_BYTES, parseTokenForm } from "./form.js";
import {
  authenticateCertificate,
  GRANT_CLIENT_CREDENTIALS,
  GRANT_TOKEN_EXCHANGE,
  type GrantContext,
  grantLabel,
  grantToken,
} from "./grants.js";
import { type DeclaredIdentity, IdentityIndex } from "./identities.js";
import { createIssuerMetrics, type IssuerMetrics } from "./metrics.js";
import { type KeyStateStorage, SigningKeyRing } from "./signing-keys.js";
import { issuerKeySetOf, loadTrustedIssuers } from "./trusted-issuers.js";

export const TOKEN_PATH = "/oauth2/token";
export const JWKS_PATH = "/.well-known/jwks.json";
const DISCOVERY_PATHS = ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"];
const MAINTENANCE_INTERVAL_MS = 1_000;

export interface IssuerConfig {
  readonly caDirectory: string;
  readonly trustBundlePath: string | undefined;
  /** Where identities come from: a manifest directory (watched), or a source that says when they change. */
  readonly identities: { readonly directory: string } | IdentitySource;
  /** Where the signing keys live: a directory (signing-keys.json) or another storage. */
  readonly signingKeys: { readonly directory: string } | KeyStateStorage;
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

/** Identities kept current by someone else (the operator's store). */
export interface IdentitySource {
  declared(): readonly DeclaredIdentity[];
  onChange(listener: () => void): void;
}

/** Store notifications arrive one object at a time: rebuild the index once per burst. */
const IDENTITY_REINDEX_DELAY_MS = 100;

interface State {
  readonly identities: IdentityIndex;
  readonly anchors: TrustAnchors;
  readonly trustedIssuers: IssuerKeySet;
}

export interface RunningIssuer {
  readonly tokenUrl: string;
  readonly adminUrl: string;
  readonly issuer: string;
  readonly metrics: Registry;
  /** The keys relying parties must accept now (the registry's tokenService.jwks). */
  jwks(): { readonly keys: readonly PublicJwk[] };
  /** Custody's CA (the only anchor of mesh identities) and the configured partner CAs, with their roles. */
  anchors(): TrustAnchors;
  /** Keeps answering, but closes each connection after its request (see serve.ts `drain`). */
  drain(): void;
  /** Stops accepting, lets requests in flight finish (at most `graceMs`), then closes everything. */
  close(graceMs?: number): Promise<void>;
}

async function loadAnchors(
  ca: CertificateAuthority,
  caDirectory: string,
  trustDomain: string,
  bundlePath: string | undefined,
): Promise<TrustAnchors> {
  const mesh = [{ name: caPaths(caDirectory).certificate, pem: ca.certificate.pem }];
  // The seed's recipe concatenates every CA, Custody's included, into one file: Custody's CA is
  // recognized there and keeps its one role, the mesh anchor.
  const partners =
    bundlePath === undefined ? [] : [{ name: bundlePath, pem: await readBoundedFile(bundlePath) }];
  return TrustAnchors.fromPem({ trustDomain, mesh, partners });
}

function reportAnchors(anchors: TrustAnchors, logger: Logger): void {
  for (const issuer of anchors.ambiguousIssuers) {
    logger.warn(
      { event: "ambiguous_issuer", issuer },
      `two trusted CAs named "${issuer}" have different keys: no external subject is mapped under that name until one is renamed or removed`,
    );
  }
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
    ...("directory" in config.signingKeys
      ? { directory: config.signingKeys.directory }
      : { storage: config.signingKeys }),
    rotationPeriodMs: config.rotationPeriodMs,
    maxTokenLifetimeMs: config.maxTokenLifetimeMs,
    now,
  });
  const trustedIssuerList =
    config.trustedIssuersPath === undefined ? [] : await loadTrustedIssuers(config.trustedIssuersPath);
  const source = config.identities;
  const manifestsDirectory = "directory" in source ? source.directory : undefined;
  let snapshot: ManifestSnapshot | undefined;
  const declaredNow = async (): Promise<readonly DeclaredIdentity[]> => {
    if (manifestsDirectory === undefined) return (source as IdentitySource).declared();
    snapshot = await readManifestDirectory(manifestsDirectory, snapshot);
    return declaredOf(snapshot);
  };
  let state: State = {
    identities: indexOf(trustDomain, await declaredNow(), logger),
    anchors: await loadAnchors(ca, config.caDirectory, trustDomain, config.trustBundlePath),
    trustedIssuers: issuerKeySetOf(trustedIssuerList),
  };
  reportAnchors(state.anchors, logger);
  reportIdentities(snapshot, state.identities, metrics, logger);
  metrics.signingKeys(keys.jwks.keys.length, keys.nextRotationAt / 1000);

  const reloadManifests = async () => {
    if (manifestsDirectory === undefined) return;
    const before = snapshot;
    const next = await readManifestDirectory(manifestsDirectory, snapshot);
    if (next.digest === before?.digest && next.problems.length === before.problems.length) {
      metrics.manifestReload("unchanged");
      return;
    }
    snapshot = next;
    const identities = indexOf(trustDomain, declaredOf(next), logger);
    state = { ...state, identities };
    metrics.manifestReload("changed");
    reportIdentities(next, identities, metrics, logger);
  };
  let reindex: NodeJS.Timeout | undefined;
  if (!("directory" in source)) {
    source.onChange(() => {
      if (reindex !== undefined) return;
      reindex = setTimeout(() => {
        reindex = undefined;
        const identities = indexOf(trustDomain, source.declared(), logger);
        state = { ...state, identities };
        reportIdentities(undefined, identities, metrics, logger);
      }, IDENTITY_REINDEX_DELAY_MS);
      reindex.unref();
    });
  }
  const reloadBundle = async () => {
    const anchors = await loadAnchors(ca, config.caDirectory, trustDomain, config.trustBundlePath);
    if (anchors.all.toPem() !== state.anchors.all.toPem()) {
      state = { ...state, anchors };
      logger.info(
        { event: "trust_bundle_reloaded", certificates: anchors.all.certificates.length },
        "trust bundle reloaded",
      );
      reportAnchors(anchors, logger);
    }
  };
  const watcher = new ChangeWatcher(
    [
      ...(manifestsDirectory === undefined ? [] : [manifestsDirectory]),
      ...(config.trustBundlePath === undefined ? [] : [config.trustBundlePath]),
    ],
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
    if (issuerHost !== undefined && isIP(issuerHost) === 0) dnsNames.push(issuerHost);
    const ipAddresses = ["127.0.0.1", "::1"];
    if (isIP(config.listen.host) !== 0 && !["0.0.0.0", "::"].includes(config.listen.host))
      ipAddresses.push(config.listen.host);
    const tls = await issueServerTls(ca, { id: config.serverId, dnsNames, ipAddresses });
    // The CA names a client is offered to pick its certificate by: every anchor, partners included.
    return { ...tls, ca: state.anchors.all.toPem() };
  };

  let issuerUrl = config.issuer ?? "";
  const certificates = new VerifiedCertificateCache();
  const audience = config.audience ?? `spiffe://${trustDomain}`;
  const handleToken = async (request: IncomingMessage, response: ServerResponse) => {
    const started = process.hrtime.bigint();
    let grant = grantLabel(undefined);
    let bodyTouched = false;
    try {
      if (request.method !== "POST") {
        throw new OAuthError("invalid_request", "method_not_allowed", `use POST ${TOKEN_PATH}.`);
      }
      assertFormContentType(request.headers["content-type"]);
      const context: GrantContext = {
        ...state,
        signingKey: keys.signingKey,
        issuer: issuerUrl,
        audience,
        maxLifetimeSeconds: Math.floor(config.maxTokenLifetimeMs / 1000),
        nowMs: now(),
        certificates,
      };
      const chain = peerCertificateChain(request.socket as TLSSocket);
      // Nothing is read from a client that is not authenticated: its certificate is judged from the
      // TLS handshake before the form is read (grantToken maps it to an identity, from the cache).
      authenticateCertificate(context, chain);
      let body: Buffer;
      bodyTouched = true;
      try {
        body = await readBody(request, response, MAX_TOKEN_REQUEST_BYTES);
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
      const result = grantToken(context, form, chain);
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
      if (!bodyTouched) leaveBodyUnread(request, response);
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

  const renewal = renewServerCertificate(server, { issue: serverCertificate, logger });
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
    jwks: () => keys.jwks,
    anchors: () => state.anchors,
    drain() {
      drain(server);
      drain(adminServer);
    },
    async close(graceMs = 10_000) {
      watcher.close();
      clearTimeout(reindex);
      renewal.close();
      clearInterval(maintenance);
      await Promise.all([closeGracefully(server, graceMs), closeGracefully(adminServer, graceMs)]);
    },
  };
}

function declaredOf(snapshot: ManifestSnapshot): DeclaredIdentity[] {
  return manifestsOf(snapshot).flatMap(({ manifest, source }) =>
    manifest.kind === SERVICE_IDENTITY_KIND ? [{ identity: manifest, source }] : [],
  );
}

function indexOf(trustDomain: string, declared: readonly DeclaredIdentity[], logger: Logger): IdentityIndex {
  const index = new IdentityIndex(trustDomain, declared);
  for (const problem of index.problems)
    logger.warn({ event: "identity_conflict", source: problem.source }, problem.message);
  return index;
}

function reportIdentities(
  snapshot: ManifestSnapshot | undefined,
  identities: IdentityIndex,
  metrics: IssuerMetrics,
  logger: Logger,
): void {
  const skipped = snapshot?.problems ?? [];
  for (const problem of skipped) {
    logger.warn({ event: "manifest_skipped", source: problem.source, code: problem.code }, problem.message);
  }
  metrics.identities(identities.size, skipped.length + identities.problems.length);
  logger.info(
    {
      event: "identities_loaded",
      identities: identities.size,
      problems: skipped.length + identities.problems.length,
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
