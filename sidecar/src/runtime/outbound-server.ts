/**
 * The outbound side (`127.0.0.1:15001`, plain HTTP on loopback): the app calls a service by name —
 * as an HTTP proxy (`HTTP_PROXY`, absolute-form target) or with `Host: <service id>` — and the
 * sidecar resolves it in the registry, appends a link bound to this very method, path and body,
 * and calls the peer's inbound port over mutual TLS, checking that the peer's certificate carries
 * the SPIFFE id of the service asked for. It never calls an address that is not in the registry.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Logger } from "pino";
import { isServiceId } from "../../../crds/src/names.js";
import type { RegistryService } from "../../../crds/src/registry-schema.js";
import { ServerIdentityMismatchError } from "../../../pki/src/peer.js";
import { parseCompactJws } from "../chain/jws.js";
import { CHAIN_SEPARATOR } from "../chain/limits.js";
import { LINK_TYPE } from "../chain/link.js";
import { type LinkSigner, mintLink } from "../chain/mint.js";
import { normalizeOperation, type Operation, OperationError, requestTargetOf } from "../chain/normalize.js";
import { BodyError, type SpooledBody, type SpoolOptions, spoolRequestBody } from "./body.js";
import { CHAIN_HEADER, chainHeaderOf, forwardableHeaders, sendRefusal } from "./http.js";
import type { WorkloadIdentity } from "./identity-files.js";
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

/**
 * The chain the app propagated (copied from the request it is serving), accepted only when its
 * head was addressed to this service, or is an initial token this service was handed (edge).
 */
function propagatedChain(request: IncomingMessage, self: string): string[] | undefined {
  const value = chainHeaderOf(request);
  if (value === undefined) return undefined;
  if (value === null) throw new OutboundRefusal(400, "chain_repeated", "Custody-Chain appears twice.");
  const elements = value.split(CHAIN_SEPARATOR);
  const head = elements.at(-1) ?? "";
  let header: Readonly<Record<string, unknown>>;
  let payload: Readonly<Record<string, unknown>>;
  try {
    ({ header, payload } = parseCompactJws(head, elements.length - 1));
  } catch {
    throw new OutboundRefusal(400, "chain_malformed", "the propagated Custody-Chain cannot be read.");
  }
  if (header.typ === LINK_TYPE && payload.aud !== self) {
    throw new OutboundRefusal(
      400,
      "chain_not_ours",
      "the propagated Custody-Chain was not addressed to this service.",
    );
  }
  return elements;
}

export function createOutboundServer(options: OutboundOptions): Server {
  const peers = new PeerPools();

  async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const started = process.hrtime.bigint();
    if ((request.url ?? "").startsWith("/.custody/") && options.localRoutes !== undefined) {
      await options.localRoutes(request, response);
      return;
    }
    let body: SpooledBody | undefined;
    try {
      const snapshot = options.registry();
      if (snapshot === undefined)
        throw new OutboundRefusal(503, "registry_unavailable", "no registry loaded yet.");
      const target = resolveTarget(request, snapshot);
      const identity = options.identity();
      const linkSigner = options.signer();
      if (linkSigner === undefined) {
        throw new OutboundRefusal(
          503,
          "own_key_unpublished",
          `the registry does not publish this workload's key for ${identity.serviceId} yet.`,
        );
      }
      const previous = propagatedChain(request, options.self) ?? optionalToken(options.identityToken());
      body = await spoolRequestBody(request, options.spool);
      const chain = mintLink(linkSigner, {
        audience: target.service.id,
        operation: target.operation,
        bodyHash: body.hash,
        previous,
        nowSeconds: Math.floor((options.now ?? Date.now)() / 1000),
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
      sendRefusal(response, {
        status: refusal.status,
        error: refusal.status === 502 ? "bad_gateway" : "refused",
        reason: refusal.reason,
      });
    } finally {
      await body?.dispose();
    }
  }

  const server = createServer(
    { maxHeaderSize: 32 * 1024, requestTimeout: 60_000, keepAliveTimeout: 30_000 },
    (request, response) => void handle(request, response),
  );
  server.on("close", () => void peers.destroy());
  return server;
}

function optionalToken(token: string | undefined): string[] | undefined {
  return token === undefined ? undefined : [token];
}

function toRefusal(error: unknown): OutboundRefusal {
  if (error instanceof OutboundRefusal) return error;
  if (error instanceof BodyError) return new OutboundRefusal(413, error.code, error.message);
  if (error instanceof UpstreamError) {
    return error.upstream instanceof ServerIdentityMismatchError
      ? new OutboundRefusal(502, "peer_identity_mismatch", error.message)
      : new OutboundRefusal(502, "peer_unreachable", error.message);
  }
  return new OutboundRefusal(502, "outbound_failed", error instanceof Error ? error.message : String(error));
}
