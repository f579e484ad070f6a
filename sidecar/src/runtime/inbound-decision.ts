/**
 * What the inbound side decides about one request, free of HTTP: who the TLS peer is, whether the
 * chain verifies for exactly this request, what the policies say, and whether quota is left. Steps
 * run in the contract's order and stop at the first refusal, which carries the HTTP status and one
 * reason code: 400 for a request that cannot be authorized as sent, 401 for authentication
 * (peer certificate, chain), 403 for policy, 429 for quota, 503 when the replay store cannot answer.
 */

import { parseSpiffeId, serviceId } from "../../../crds/src/names.js";
import { CertificateVerificationError } from "../../../pki/src/errors.js";
import type { VerifiedCertificateCache } from "../../../pki/src/peer.js";
import { ChainError } from "../chain/errors.js";
import type { ChainLimits } from "../chain/limits.js";
import { normalizeOperation, type Operation, OperationError } from "../chain/normalize.js";
import type { ServiceInfo } from "../chain/trust.js";
import { type VerifiedChain, verifyChain } from "../chain/verify.js";
import { type Decision, decide } from "../policy/engine.js";
import type { QuotaLimiter } from "../quota/limiter.js";
import type { ReplayGuard } from "../replay/guard.js";
import type { RegistrySnapshot } from "./registry-source.js";

export interface InboundRequest {
  readonly method: string;
  /** The request target as received (origin-form path and query). */
  readonly target: string;
  readonly chainHeader: string | undefined;
  readonly bodyHash: string | undefined;
  /** The TLS peer's certificates, leaf first (DER). */
  readonly peerChain: readonly Uint8Array[];
  readonly nowMs: number;
}

export interface InboundContext {
  readonly self: string;
  readonly snapshot: RegistrySnapshot;
  readonly replay: ReplayGuard;
  readonly quota: QuotaLimiter;
  readonly limits: ChainLimits;
  readonly whenNoPolicy: "allow" | "deny";
  /** Client chains verified before (per process): the inbound hot path verifies each chain once. */
  readonly certificates: VerifiedCertificateCache;
}

export interface Allowed {
  readonly allowed: true;
  readonly operation: Operation;
  readonly chain: VerifiedChain;
  readonly caller: string;
  readonly decision: Decision;
}

export interface Refused {
  readonly allowed: false;
  readonly status: 400 | 401 | 403 | 429 | 503;
  /** `unauthenticated`, `forbidden`, `rate_limited`, `bad_request`, `unavailable`. */
  readonly error: string;
  readonly reason: string;
  /** For logs only: never sent to the caller beyond the reason code. */
  readonly detail: string;
  readonly retryAfterSeconds?: number;
  readonly operation?: Operation;
  readonly caller?: string;
  readonly decision?: Decision;
}

export type InboundOutcome = Allowed | Refused;

function refuse(
  status: Refused["status"],
  reason: string,
  detail: string,
  extra: Partial<Refused> = {},
): Refused {
  const error =
    status === 400
      ? "bad_request"
      : status === 401
        ? "unauthenticated"
        : status === 403
          ? "forbidden"
          : status === 429
            ? "rate_limited"
            : "unavailable";
  return { allowed: false, status, error, reason, detail, ...extra };
}

/** The service id the TLS peer's certificate names, or a refusal. */
function peerService(context: InboundContext, request: InboundRequest): string | Refused {
  if (request.peerChain.length === 0)
    return refuse(401, "no_client_certificate", "no client certificate was presented.");
  try {
    const verified = context.certificates.verify(
      context.snapshot.bundle,
      request.peerChain,
      new Date(request.nowMs),
    );
    const parsed = verified.spiffeId === undefined ? undefined : parseSpiffeId(verified.spiffeId);
    if (parsed === undefined || parsed.trustDomain !== context.snapshot.registry.trustDomain) {
      return refuse(
        401,
        "peer_not_a_service",
        "the client certificate names no service of this trust domain.",
      );
    }
    return serviceId(parsed.ref);
  } catch (error) {
    if (error instanceof CertificateVerificationError)
      return refuse(401, `peer_${error.code}`, error.message);
    throw error;
  }
}

export async function decideInbound(
  context: InboundContext,
  request: InboundRequest,
): Promise<InboundOutcome> {
  const { snapshot } = context;
  let operation: Operation;
  try {
    operation = normalizeOperation(request.method, request.target);
  } catch (error) {
    if (error instanceof OperationError) return refuse(400, error.code, error.message);
    throw error;
  }
  const self: ServiceInfo | undefined = snapshot.trust.service(context.self);
  if (self === undefined) {
    return refuse(
      503,
      "self_not_in_registry",
      `${context.self} is not in registry generation ${snapshot.generation}.`,
      { operation },
    );
  }
  const peer = peerService(context, request);
  if (typeof peer !== "string") return { ...peer, operation };
  let chain: VerifiedChain;
  try {
    chain = await verifyChain(
      request.chainHeader,
      {
        self: context.self,
        peer,
        operation,
        bodyHash: request.bodyHash,
        nowSeconds: Math.floor(request.nowMs / 1000),
      },
      snapshot.trust,
      context.replay,
      { limits: context.limits, cache: snapshot.cache },
    );
  } catch (error) {
    if (!(error instanceof ChainError)) throw error;
    const status = error.code === "replay_store_unavailable" ? 503 : 401;
    return refuse(status, error.code, error.message, { operation, caller: peer });
  }
  const caller = chain.head.iss;
  const decision = decide(
    snapshot.registry.policies,
    { target: self, operation, chain },
    {
      service: (id) => snapshot.trust.service(id),
      patterns: snapshot.patterns,
      whenNoPolicy: context.whenNoPolicy,
    },
  );
  if (!decision.allowed)
    return refuse(403, decision.reason, decision.explanation, { operation, caller, decision });
  const quota = decision.decidedBy?.quota;
  if (quota !== undefined && decision.decidedBy !== undefined) {
    const taken = context.quota.take(
      { policy: decision.decidedBy.policy, rule: decision.decidedBy.rule ?? "default", caller },
      quota,
    );
    if (!taken.allowed) {
      return refuse(429, "quota_exceeded", `quota of ${decision.decidedBy.policy} exhausted for ${caller}.`, {
        operation,
        caller,
        decision,
        retryAfterSeconds: taken.retryAfterSeconds,
      });
    }
  }
  return { allowed: true, operation, chain, caller, decision };
}
