/**
 * The outbound side (`127.0.0.1:15001`, plain HTTP on loopback): the app calls a service by name —
 * as an HTTP proxy (`HTTP_PROXY`, absolute-form target) or with `Host: <service id>` — and the
 * sidecar resolves it in the registry, appends a link bound to this very method, path and body,
 * and calls the peer's inbound port over mutual TLS, checking that the peer's certificate carries
 * the SPIFFE id of the service asked for and chains to Custody's CA. A host that is not in the
 * registry is the outbound policy's (passthrough.ts): forwarded as it is, with nothing of Custody's,
 * or refused.
 *
 * This port signs as the workload, so it serves the workload alone (local-client.ts): its credential
 * when one is configured, and never a browser. A chain the app passes on is accepted only as this
 * sidecar handed it to the app (app-chain.ts).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
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
import {
  createPassthroughAgent,
  isLoopbackHost,
  LoopbackTargetError,
  type OutboundPolicy,
  refuseTunnel,
  TunnelRefusal,
  Tunnels,
  tunnelAuthorityOf,
} from "./passthrough.js";
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
  /** What happens to calls for hosts that are not in the registry. */
  readonly outboundPolicy: OutboundPolicy;
  readonly logger: Logger;
  readonly metrics: SidecarMetrics;
  /** Requests under /.custody/ (the local key service); answered here, never proxied. */
  readonly localRoutes?: (request: IncomingMessage, response: ServerResponse) => Promise<void>;
  readonly now?: () => number;
}

interface MeshTarget {
  readonly kind: "mesh";
  readonly service: RegistryService;
  readonly operation: Operation;
}

/** A host outside the registry: `origin` is `http://host[:port]`, `path` the origin-form target. */
interface ExternalTarget {
  readonly kind: "external";
  readonly host: string;
  readonly origin: string;
  readonly path: string;
}

type Target = MeshTarget | ExternalTarget;

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

/** The registry's entry for `host` (`cart.shop`, `cart.shop.svc…`, with or without a port). */
function meshServiceOf(host: string, snapshot: RegistrySnapshot): RegistryService | undefined {
  const id = serviceIdOfHost(host);
  return id === undefined ? undefined : snapshot.registry.services.find((entry) => entry.id === id);
}

function resolveTarget(request: IncomingMessage, snapshot: RegistrySnapshot, policy: OutboundPolicy): Target {
  const raw = request.url ?? "/";
  let host: string | undefined;
  let target = raw;
  if (/^https?:\/\//i.test(raw)) {
    const url = URL.canParse(raw) ? new URL(raw) : undefined;
    if (url === undefined)
      throw new OutboundRefusal(400, "invalid_target", "the request target is not a valid URL.");
    if (url.protocol !== "http:") {
      throw new OutboundRefusal(
        400,
        "unsupported_scheme",
        "use http:// targets for mesh services (the sidecar adds TLS), and CONNECT (what HTTPS clients send to a proxy) for others.",
      );
    }
    host = url.host;
    target = `${url.pathname}${url.search}`;
  } else {
    host = request.headers.host;
  }
  const service = host === undefined ? undefined : meshServiceOf(host, snapshot);
  if (service === undefined) {
    if (policy === "registry-only" || host === undefined || host === "") {
      throw new OutboundRefusal(
        502,
        "unknown_service",
        `${host ?? "(no host)"} is not a service in the registry${policy === "registry-only" ? ", and the outbound policy is registry-only" : ""}.`,
      );
    }
    const origin = URL.canParse(`http://${host}`) ? new URL(`http://${host}`) : undefined;
    if (origin === undefined || origin.pathname !== "/" || origin.username !== "" || origin.search !== "") {
      throw new OutboundRefusal(400, "invalid_target", "the request's host is not a host name or address.");
    }
    if (isLoopbackHost(origin.hostname)) {
      throw new OutboundRefusal(
        400,
        "loopback_target",
        "the sidecar does not pass calls through to loopback.",
      );
    }
    return {
      kind: "external",
      host: origin.host,
      origin: origin.origin,
      path: target.startsWith("/") ? target : "/",
    };
  }
  try {
    return { kind: "mesh", service, operation: normalizeOperation(request.method ?? "GET", target) };
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
  const passthrough = createPassthroughAgent();
  const tunnels = new Tunnels();

  /** A call for a host outside the mesh: as the app sent it, without anything of Custody's. */
  async function passThrough(request: IncomingMessage, response: ServerResponse, target: ExternalTarget) {
    const body = await spoolRequestBody(request, options.spool);
    try {
      await relay(
        passthrough,
        {
          origin: target.origin,
          method: request.method ?? "GET",
          path: target.path,
          headers: {
            ...forwardableHeaders(request.headers, { dropCustody: true, dropLength: true }),
            host: target.host,
            ...(body.length > 0 || !declaresNoBody(request.headers)
              ? { "content-length": String(body.length) }
              : {}),
          },
          body: body.payload(),
        },
        response,
      );
    } finally {
      await body.dispose();
    }
  }

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
      const resolved = resolveTarget(request, snapshot, options.outboundPolicy);
      if (resolved.kind === "external") {
        if (expectsContinue) response.writeContinue();
        await passThrough(request, response, resolved);
        options.metrics.outbound("sent", "passthrough", Number(process.hrtime.bigint() - started) / 1e9);
        return;
      }
      const target = resolved;
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
  server.on("connect", (request: IncomingMessage, socket: Socket, head: Buffer) => {
    void tunnel(request, socket, head);
  });
  boundConnections(server, "connection");
  server.on("close", () => {
    void peers.destroy();
    void passthrough.close();
  });
  return server;

  /** CONNECT host:port: HTTPS (or any TCP) to a host outside the mesh, end to end. */
  async function tunnel(request: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
    socket.on("error", () => socket.destroy());
    try {
      if (hasTooManyHeaders(request)) {
        throw new TunnelRefusal(431, "too_many_headers", "the request carries too many headers.");
      }
      try {
        options.clients.check(request, "proxy");
      } catch (error) {
        if (error instanceof LocalClientRefusal)
          throw new TunnelRefusal(error.status, error.code, error.message);
        throw error;
      }
      if (options.outboundPolicy === "registry-only") {
        throw new TunnelRefusal(
          403,
          "passthrough_disabled",
          "the outbound policy is registry-only: no tunnels.",
        );
      }
      const authority = tunnelAuthorityOf(request.url);
      if (authority === undefined) {
        throw new TunnelRefusal(400, "invalid_target", "CONNECT needs host:port.");
      }
      const snapshot = options.registry();
      if (snapshot !== undefined && meshServiceOf(authority.host, snapshot) !== undefined) {
        throw new TunnelRefusal(
          400,
          "mesh_service_tunnel",
          `${authority.host} is a mesh service: call it over http://, and the sidecar adds TLS and the chain.`,
        );
      }
      if (isLoopbackHost(authority.host)) {
        throw new TunnelRefusal(400, "loopback_target", "the sidecar does not tunnel to loopback.");
      }
      try {
        await tunnels.open(socket, head, authority.host, authority.port);
      } catch (error) {
        if (error instanceof TunnelRefusal) throw error;
        const message = error instanceof Error ? error.message : String(error);
        if (error instanceof LoopbackTargetError) throw new TunnelRefusal(400, "loopback_target", message);
        throw new TunnelRefusal(502, "passthrough_unreachable", message);
      }
      options.metrics.outbound("sent", "tunnel", 0);
    } catch (error) {
      const refusal =
        error instanceof TunnelRefusal
          ? error
          : new TunnelRefusal(502, "outbound_failed", error instanceof Error ? error.message : String(error));
      options.metrics.outbound("refused", refusal.reason, 0);
      options.logger.warn(
        { event: "outbound_refused", reason: refusal.reason, detail: refusal.message, target: request.url },
        "tunnel refused",
      );
      refuseTunnel(socket, refusal);
    }
  }
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
    if (error.upstream instanceof LoopbackTargetError || hasCause(error.upstream, LoopbackTargetError)) {
      return new OutboundRefusal(400, "loopback_target", error.message);
    }
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

function hasCause(error: Error, type: new (...args: never[]) => Error): boolean {
  let cause: unknown = error.cause;
  for (let depth = 0; depth < 5 && cause !== undefined; depth++) {
    if (cause instanceof type) return true;
    cause = typeof cause === "object" && cause !== null ? (cause as { cause?: unknown }).cause : undefined;
  }
  return false;
}
