/**
 * The outbound side (`127.0.0.1:15001`, plain HTTP on loopback): the app calls a service by name —
 * as an HTTP proxy (`HTTP_PROXY`, absolute-form target) or with `Host: <service id>` — and the
 * sidecar resolves it in the registry, appends a link bound to this very method, path and body,
 * and calls the peer's inbound port over mutual TLS, checking that the peer's certificate carries
 * the SPIFFE id of the service asked for and chains to Custody's CA. It never calls an address that
 * is not in the registry.
 *
 * This port signs as the workload, so it serves the workload alone (local-client.ts): its credential
 * when one is configured, and never a browser. A chain the app passes on is accepted only as this
 * sidecar handed it to the app (app-chain.ts).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Logger } from "pino";
import { isServiceId } from "../../../crds/src/names.js";
import type { RegistryService } from "../../../crds/src/registry-schema.js";
import { ServerIdentityMismatchError } from "../../../pki/src/peer.js";
import { type LinkSigner, mintLink } from "../chain/mint.js";
import { normalizeOperation, type Operation, OperationError, requestTargetOf } from "../chain/normalize.js";
import { AppChainError, type AppChainSealer } from "./app-chain.js";
import { BodyError, declaresNoBody, type SpooledBody, type SpoolOptions, spoolRequestBody } from "./body.js";
import {
  boundConnections,
  CHAIN_HEADER,
  chainHeaderOf,
  forwardableHeaders,
  hasTooManyHeaders,
  refuseUnreadBody,
  sendRefusal,
} from "./http.js";
import type { WorkloadIdentity } from "./identity-files.js";
import { type LocalClientGuard, LocalClientRefusal } from "./local-client.js";
import type { SidecarMetrics } from "./metrics.js";
import { PeerPools } from "./peer-pools.js";
import type { RegistrySnapshot } from "./registry-source.js";
import { relay, UpstreamError } from "./relay.js";

export interface OutboundOptions {
  readonly self: string;
  readonly identity: () => WorkloadIdentity;
  readonly registry: () => RegistrySnapshot | undefined;
  /** This workload's link signer (its key under its registry kid); undefined while unpublished. */
  readonly signer: () => LinkSigner | undefined;
  /** The identity JWT to start chains with (e0), when there is one. */
  readonly identityToken: () => string | undefined;
  /** Opens the chains the app passes on, as the inbound side sealed them. */
  readonly appChain: AppChainSealer;
  /** Who may use this port: the workload's credential, no browsers. */
  readonly clients: LocalClientGuard;
  readonly spool: SpoolOptions;
  readonly logger: Logger;
  readonly metrics: SidecarMetrics;
  /** Requests under /.custody/ (the local key service); answered here, never proxied. */
  readonly localRoutes?: (request: IncomingMessage, response: ServerResponse) => Promise<void>;
  readonly now?: () => number;
}

interface Target {
  readonly service: RegistryService;
  readonly operation: Operation;
}

class OutboundRefusal extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

/** `cart.shop`, `cart.shop.svc`, `cart.shop.svc.cluster.local`, with or without a port. */
export function serviceIdOfHost(host: string): string | undefined {
  const name = host
    .replace(/:\d{1,5}$/, "")
    .toLowerCase()
    .replace(/\.svc(\.cluster\.local)?\.?$/, "");
  return isServiceId(name) ? name : undefined;
}

function resolveTarget(request: IncomingMessage, snapshot: RegistrySnapshot): Target {
  const raw = request.url ?? "/";
  let host: string | undefined;
  let target = raw;
  if (/^https?:\/\//i.test(raw)) {
    const url = URL.canParse(raw) ? new URL(raw) : undefined;
    if (url === undefined)
      throw new OutboundRefusal(400, "invalid_target", "the request target is not a valid URL.");
    if (url.protocol !== "http:")
      throw new OutboundRefusal(400, "unsupported_scheme", "use http:// targets; the sidecar adds TLS.");
    host = url.host;
    target = `${url.pathname}${url.search}`;
  } else {
    host = request.headers.host;
  }
  const id = host === undefined ? undefined : serviceIdOfHost(host);
  const service = id === undefined ? undefined : snapshot.registry.services.find((entry) => entry.id === id);
  if (service === undefined) {
    throw new OutboundRefusal(
      502,
      "unknown_service",
      `${host ?? "(no host)"} is not a service in the registry.`,
    );
  }
  try {
    return { service, operation: normalizeOperation(request.method ?? "GET", target) };
  } catch (error) {
    if (error instanceof OperationError) throw new OutboundRefusal(400, error.code, error.message);
    throw error;
  }
}

/** The chain the app propagated (copied from the request it is serving), as its sidecar verified it. */
function propagatedChain(
  request: IncomingMessage,
  appChain: AppChainSealer,
  nowSeconds: number,
): string[] | undefined {
  const value = chainHeaderOf(request);
  if (value === undefined) return undefined;
  if (value === null) throw new OutboundRefusal(400, "chain_repeated", "Custody-Chain appears twice.");
  return appChain.fromApp(value, nowSeconds);
}

export function createOutboundServer(options: OutboundOptions): Server {
  const peers = new PeerPools();

  async function handle(
    request: IncomingMessage,
    response: ServerResponse,
    expectsContinue: boolean,
  ): Promise<void> {
    const started = process.hrtime.bigint();
    const localRoute = (request.url ?? "").startsWith("/.custody/") && options.localRoutes !== undefined;
    let body: SpooledBody | undefined;
    try {
      if (hasTooManyHeaders(request)) {
        throw new OutboundRefusal(431, "too_many_headers", "the request carries too many headers.");
      }
      options.clients.check(request, localRoute ? "key_service" : "proxy");
      if (localRoute) {
        if (expectsContinue) response.writeContinue();
        await options.localRoutes?.(request, response);
        return;
      }
      const snapshot = options.registry();
      if (snapshot === undefined)
        throw new OutboundRefusal(503, "registry_unavailable", "no registry loaded yet.");
      const target = resolveTarget(request, snapshot);
      if (target.service.id === options.self) {
        // Receivers refuse a link addressed to its own signer (self_link): never send one.
        throw new OutboundRefusal(400, "self_call", "a service does not call itself through its sidecar.");
      }
      const identity = options.identity();
      const linkSigner = options.signer();
      if (linkSigner === undefined) {
        throw new OutboundRefusal(
          503,
          "own_key_unpublished",
          `the registry does not publish this workload's key for ${identity.serviceId} yet.`,
        );
      }
      const nowSeconds = () => Math.floor((options.now ?? Date.now)() / 1000);
      const previous =
        propagatedChain(request, options.appChain, nowSeconds()) ?? optionalToken(options.identityToken());
      if (expectsContinue && !declaresNoBody(request.headers)) response.writeContinue();
      body = await spoolRequestBody(request, options.spool);
      const chain = mintLink(linkSigner, {
        audience: target.service.id,
        operation: target.operation,
        bodyHash: body.hash,
        previous,
        nowSeconds: nowSeconds(),
      });
      await relay(
        peers.poolFor(identity, snapshot, target.service),
        {
          method: target.operation.method,
          path: requestTargetOf(target.operation),
          headers: {
            ...forwardableHeaders(request.headers, { dropCustody: true, dropLength: true }),
            host: target.service.id,
            "content-length": String(body.length),
            [CHAIN_HEADER]: chain.header,
          },
          body: body.payload(),
        },
        response,
      );
      options.metrics.outbound("sent", "sent", Number(process.hrtime.bigint() - started) / 1e9);
    } catch (error) {
      const refusal = toRefusal(error);
      options.metrics.outbound("refused", refusal.reason, 0);
      options.logger.warn(
        { event: "outbound_refused", reason: refusal.reason, detail: refusal.message, target: request.url },
        "outbound call refused",
      );
      if (refusal.status === 407) response.setHeader("proxy-authenticate", 'Basic realm="custody"');
      if (refusal.status === 401) response.setHeader("www-authenticate", 'Basic realm="custody"');
      const answer = {
        status: refusal.status,
        error: refusal.status === 502 ? "bad_gateway" : "refused",
        reason: refusal.reason,
      };
      // A client refused before its body was read does not get it read.
      if (body === undefined && !declaresNoBody(request.headers)) refuseUnreadBody(request, response, answer);
      else sendRefusal(response, answer);
    } finally {
      await body?.dispose();
    }
  }

  const server = createServer(
    { maxHeaderSize: 32 * 1024, requestTimeout: 60_000, keepAliveTimeout: 30_000 },
    (request, response) => void handle(request, response, false),
  );
  server.on("checkContinue", (request: IncomingMessage, response: ServerResponse) => {
    void handle(request, response, true);
  });
  boundConnections(server, "connection");
  server.on("close", () => void peers.destroy());
  return server;
}

/**
 * OpenSSL's verdicts on a server certificate that does not chain to the registry's trust bundle
 * (Custody's CA alone): a partner's CA, a self-signed or expired certificate at a service's address.
 */
const UNTRUSTED_CERTIFICATE = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_SIGNATURE_FAILURE",
  "CERT_NOT_YET_VALID",
  "CERT_HAS_EXPIRED",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "INVALID_CA",
  "INVALID_PURPOSE",
]);

function isUntrustedCertificate(error: Error): boolean {
  return "code" in error && typeof error.code === "string" && UNTRUSTED_CERTIFICATE.has(error.code);
}

function optionalToken(token: string | undefined): string[] | undefined {
  return token === undefined ? undefined : [token];
}

function toRefusal(error: unknown): OutboundRefusal {
  if (error instanceof OutboundRefusal) return error;
  if (error instanceof LocalClientRefusal)
    return new OutboundRefusal(error.status, error.code, error.message);
  if (error instanceof AppChainError) return new OutboundRefusal(400, error.code, error.message);
  if (error instanceof BodyError) return new OutboundRefusal(413, error.code, error.message);
  if (error instanceof UpstreamError) {
    if (error.upstream instanceof ServerIdentityMismatchError) {
      return new OutboundRefusal(502, "peer_identity_mismatch", error.message);
    }
    if (isUntrustedCertificate(error.upstream)) {
      return new OutboundRefusal(502, "peer_certificate_untrusted", error.message);
    }
    return new OutboundRefusal(502, "peer_unreachable", error.message);
  }
  return new OutboundRefusal(502, "outbound_failed", error instanceof Error ? error.message : String(error));
}
