/**
 * The inbound side (`:15006`): TLS with the workload certificate, a client certificate required
 * (checked against the registry's trust anchors, not by the TLS stack, so a refusal is a JSON answer
 * with a reason). Everything that can be decided from the headers is decided before a byte of the
 * body is read — peer, chain, policies, quota, the jti — and a refused request's connection is
 * closed instead of drained; only then is the body read (bounded, spooled), held against the hash
 * the head binds, and the request forwarded to the app on 127.0.0.1:<app-port> with its chain (e0
 * sealed, see app-chain.ts), the caller, the decision and the initial token's facts in Custody-*
 * headers. Whatever a client sent that looks like one of those, in any spelling, is dropped.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import type { TLSSocket } from "node:tls";
import type { Logger } from "pino";
import { Pool } from "undici";
import { peerCertificateChain, VerifiedCertificateCache } from "../../../pki/src/peer.js";
import { ChainError } from "../chain/errors.js";
import type { ChainLimits } from "../chain/limits.js";
import { formatOperation, requestTargetOf } from "../chain/normalize.js";
import { checkBody } from "../chain/verify.js";
import type { QuotaStore } from "../quota/limiter.js";
import type { ReplayGuard } from "../replay/guard.js";
import type { AppChainSealer } from "./app-chain.js";
import {
  BodyError,
  DEFAULT_MAX_BODY_BYTES,
  declaresNoBody,
  type SpooledBody,
  type SpoolOptions,
  spoolRequestBody,
} from "./body.js";
import {
  boundConnections,
  CALLER_HEADER,
  CHAIN_HEADER,
  chainHeaderOf,
  DECISION_HEADER,
  forwardableHeaders,
  hasTooManyHeaders,
  headerSafe,
  INITIAL_ISSUER_HEADER,
  INITIAL_SCOPE_HEADER,
  INITIAL_SUBJECT_HEADER,
  type Refusal,
  refuseUnreadBody,
  SIDECAR_TOKEN_HEADER,
  sendRefusal,
} from "./http.js";
import type { WorkloadIdentity } from "./identity-files.js";
import { type Allowed, decideInbound, type InboundOutcome } from "./inbound-decision.js";
import type { SidecarMetrics } from "./metrics.js";
import type { RegistrySnapshot } from "./registry-source.js";
import { relay } from "./relay.js";

export interface InboundOptions {
  readonly self: string;
  readonly appPort: number;
  readonly identity: () => WorkloadIdentity;
  readonly registry: () => RegistrySnapshot | undefined;
  readonly replay: ReplayGuard;
  readonly quota: QuotaStore;
  readonly limits: ChainLimits;
  readonly whenNoPolicy: "allow" | "deny";
  readonly spool: SpoolOptions;
  /** Seals the chain's e0 for the app, as the outbound side will open it. */
  readonly appChain: AppChainSealer;
  /** Sent to the app in Custody-Sidecar-Token on every request, when configured. */
  readonly appSecret?: string | undefined;
  readonly logger: Logger;
  readonly metrics: SidecarMetrics;
  readonly now?: () => number;
}

/** `allow policy=shop/payments rule=pay-for-order`: what the app may log or act on. */
function decisionHeader(outcome: Allowed): string {
  // With only audit-mode policies nothing enforced decided: name the audited one that would have denied.
  const verdict =
    outcome.decision.decidedBy ?? outcome.decision.audited[0] ?? outcome.decision.verdicts.at(-1);
  const entry = outcome.entry === "bearer" ? " entry=bearer" : "";
  if (verdict === undefined) return `allow reason=no_policy${entry}`;
  return `allow policy=${verdict.policy} rule=${verdict.rule ?? "defaultAction"}${outcome.decision.audited.length > 0 ? " audited=deny" : ""}${entry}`;
}

const peerChains = new WeakMap<TLSSocket, Uint8Array[]>();

/** The client's certificates, read once per connection. */
function peerChainOf(socket: TLSSocket): Uint8Array[] {
  let chain = peerChains.get(socket);
  if (chain === undefined) {
    chain = peerCertificateChain(socket);
    peerChains.set(socket, chain);
  }
  return chain;
}

export function createInboundServer(options: InboundOptions): Server {
  const now = options.now ?? Date.now;
  const app = new Pool(`http://127.0.0.1:${options.appPort}`, {
    connections: 256,
    headersTimeout: 60_000,
    bodyTimeout: 60_000,
  });
  const certificates = new VerifiedCertificateCache();
  const identity = options.identity();
  const server = createServer(
    {
      cert: identity.certificatePem,
      key: identity.keyPem,
      requestCert: true,
      rejectUnauthorized: false,
      // TLS 1.3 has no renegotiation, so a connection's client certificate cannot change: it is read
      // once per connection (reading it costs more than verifying the chain token).
      minVersion: "TLSv1.3",
      maxHeaderSize: 32 * 1024,
      requestTimeout: 60_000,
      headersTimeout: 10_000,
      keepAliveTimeout: 30_000,
      // A connection that never completes its handshake holds a file handle for nothing.
      handshakeTimeout: 10_000,
    },
    (request, response) => void handle(request, response, false),
  );
  boundConnections(server, "secureConnection");
  server.on("checkContinue", (request: IncomingMessage, response: ServerResponse) => {
    void handle(request, response, true);
  });

  const audit = (outcome: InboundOutcome, started: bigint, depth: number, bytes: number) => {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const reason = outcome.allowed ? outcome.decision.reason : outcome.reason;
    options.metrics.inbound(outcome.allowed ? "allow" : "deny", reason, seconds, depth, bytes);
    // The audit line is built only when it is written: at a level above info it would be pure garbage.
    if (!options.logger.isLevelEnabled("info")) return;
    const verdict = outcome.decision?.decidedBy;
    options.logger.info(
      {
        event: "inbound_decision",
        caller: outcome.caller,
        subject: outcome.subject,
        operation: outcome.operation === undefined ? undefined : formatOperation(outcome.operation),
        decision: outcome.allowed ? "allow" : "deny",
        status: outcome.allowed ? undefined : outcome.status,
        policy: verdict?.policy,
        rule: verdict?.rule,
        reason,
        detail: outcome.allowed ? outcome.decision.explanation : outcome.detail,
      },
      outcome.allowed ? "allowed" : "refused",
    );
  };

  /**
   * `expectsContinue`: the client sent `Expect: 100-continue` and waits for our go-ahead before it
   * sends the body; it gets it only once the request is allowed, so a refused client sends nothing.
   */
  async function handle(
    request: IncomingMessage,
    response: ServerResponse,
    expectsContinue: boolean,
  ): Promise<void> {
    const started = process.hrtime.bigint();
    const hasBody = !declaresNoBody(request.headers);
    // A refusal before the body was read does not read it: nothing is taken from a caller who is
    // not authorized to send us anything (but a few KiB discarded so it reads the answer).
    const refuseUnread = (refusal: Refusal) =>
      hasBody ? refuseUnreadBody(request, response, refusal) : sendRefusal(response, refusal);
    if (hasTooManyHeaders(request)) {
      refuseUnread({ status: 431, error: "bad_request", reason: "too_many_headers" });
      return;
    }
    const snapshot = options.registry();
    if (snapshot === undefined) {
      refuseUnread({ status: 503, error: "unavailable", reason: "registry_unavailable" });
      return;
    }
    const headerValue = chainHeaderOf(request);
    if (headerValue === null) {
      refuseUnread({ status: 400, error: "bad_request", reason: "chain_repeated" });
      return;
    }
    const outcome = await decideInbound(
      {
        self: options.self,
        snapshot,
        replay: options.replay,
        quota: options.quota,
        limits: options.limits,
        whenNoPolicy: options.whenNoPolicy,
        certificates,
      },
      {
        method: request.method ?? "GET",
        target: request.url ?? "/",
        chainHeader: headerValue,
        authorization: request.headers.authorization,
        declaresBody: hasBody,
        peerChain: peerChainOf(request.socket as TLSSocket),
        nowMs: now(),
      },
    );
    if (!outcome.allowed) {
      audit(outcome, started, 0, Buffer.byteLength(headerValue ?? ""));
      refuseUnread(outcome);
      return;
    }
    const declaredLength = Number(request.headers["content-length"] ?? 0);
    if (declaredLength > (options.spool.maxBytes ?? DEFAULT_MAX_BODY_BYTES)) {
      audit(outcome, started, outcome.elements.length, Buffer.byteLength(headerValue ?? ""));
      refuseUnread({ status: 413, error: "bad_request", reason: "body_too_large" });
      return;
    }
    if (expectsContinue && hasBody) response.writeContinue();
    let body: SpooledBody;
    try {
      body = await spoolRequestBody(request, options.spool);
    } catch (error) {
      if (error instanceof BodyError && error.code === "body_too_large") {
        sendRefusal(
          response,
          { status: 413, error: "bad_request", reason: "body_too_large" },
          { closeConnection: true },
        );
      } else {
        response.destroy();
      }
      return;
    }
    try {
      if (outcome.head !== undefined) {
        try {
          checkBody(outcome.head, body.hash);
        } catch (error) {
          if (!(error instanceof ChainError)) throw error;
          const refused = {
            allowed: false as const,
            status: 401 as const,
            error: "unauthenticated",
            reason: error.code,
            detail: error.message,
            operation: outcome.operation,
            caller: outcome.caller,
            subject: outcome.subject,
          };
          audit(refused, started, 0, Buffer.byteLength(headerValue ?? ""));
          sendRefusal(response, refused);
          return;
        }
      }
      audit(outcome, started, outcome.elements.length, Buffer.byteLength(headerValue ?? ""));
      await forward(request, response, outcome, body);
    } finally {
      await body.dispose();
    }
  }

  /** The last moment the app's chain may be continued: its head's, or for a bearer entry the token's. */
  function continuableUntil(outcome: Allowed): number {
    if (outcome.head !== undefined) return outcome.head.exp + options.limits.clockSkewSeconds;
    return outcome.initial?.expiresAt ?? 0;
  }

  async function forward(
    request: IncomingMessage,
    response: ServerResponse,
    outcome: Allowed,
    body: SpooledBody,
  ): Promise<void> {
    // The sidecar's own headers first: an app stack that keeps only so many headers keeps these.
    const headers: Record<string, string | string[]> = {
      host: `127.0.0.1:${options.appPort}`,
      "content-length": String(body.length),
      [CHAIN_HEADER]: options.appChain.forApp(outcome.elements, continuableUntil(outcome)),
      [DECISION_HEADER]: decisionHeader(outcome),
    };
    if (outcome.caller !== undefined) headers[CALLER_HEADER] = outcome.caller;
    if (options.appSecret !== undefined) headers[SIDECAR_TOKEN_HEADER] = options.appSecret;
    if (outcome.initial !== undefined) {
      headers[INITIAL_ISSUER_HEADER] = headerSafe(outcome.initial.issuer);
      headers[INITIAL_SUBJECT_HEADER] = headerSafe(outcome.initial.subject);
      headers[INITIAL_SCOPE_HEADER] = headerSafe(outcome.initial.scopes.join(" "));
    }
    Object.assign(headers, forwardableHeaders(request.headers, { dropCustody: true, dropLength: true }));
    // Consumed, as Envoy's jwt_authn does: the app gets the verified token, sealed, as the chain's e0.
    if (outcome.entry === "bearer") delete headers.authorization;
    try {
      // The app receives the normalized target: exactly what was authorized, never a variant of it.
      await relay(
        app,
        {
          method: outcome.operation.method,
          path: requestTargetOf(outcome.operation),
          headers,
          body: body.payload(),
        },
        response,
      );
    } catch {
      sendRefusal(response, { status: 502, error: "bad_gateway", reason: "app_unreachable" });
    }
  }

  server.on("close", () => void app.destroy().catch(() => undefined));
  return server;
}
