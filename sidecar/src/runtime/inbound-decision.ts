/**
 * What the inbound side decides about one request, free of HTTP and before its body is read: who
 * the TLS peer is, whether the chain verifies for exactly this request, what the policies say,
 * whether quota is left, and whether the head's jti is unspent. Steps run in the contract's order
 * and stop at the first refusal, which carries the HTTP status and one reason code: 400 for a
 * request that cannot be authorized as sent, 401 for authentication (peer certificate, chain), 403
 * for policy, 429 for quota, 503 when the replay store cannot answer. The body hash the head binds
 * is checked by the caller once the body is read (checkBody): nothing of an unauthenticated
 * caller's body is ever read.
 */

import { externalSubjectKey } from "../../../crds/src/service-identity.js";
import type { AuthenticatedPeer } from "../../../pki/src/anchors.js";
import { CertificateVerificationError } from "../../../pki/src/errors.js";
import type { VerifiedCertificateCache } from "../../../pki/src/peer.js";
import { admitBearer, type BearerPresentation, bearerToken, type CertificateHolder } from "../chain/entry.js";
import { ChainError } from "../chain/errors.js";
import type { ChainLimits } from "../chain/limits.js";
import { normalizeOperation, type Operation, OperationError } from "../chain/normalize.js";
import type { ServiceInfo } from "../chain/trust.js";
import {
  claimHead,
  type IncomingCall,
  type InitialToken,
  type VerifiedLink,
  verifyChain,
  verifyChainHeaders,
} from "../chain/verify.js";
import {
  type Decision,
  decide,
  type PolicyRequest,
  type Provenance,
  provenanceOfBearer,
  provenanceOfChain,
} from "../policy/engine.js";
import {
  type QuotaCharge,
  type QuotaDecision,
  type QuotaStore,
  QuotaStoreUnavailableError,
} from "../quota/limiter.js";
import type { ReplayGuard } from "../replay/guard.js";
import type { RegistrySnapshot } from "./registry-source.js";

export interface InboundRequest {
  readonly method: string;
  /** The request target as received (origin-form path and query). */
  readonly target: string;
  readonly chainHeader: string | undefined;
  /** `Authorization`, read only for edge entry (no chain, on an edge service). */
  readonly authorization: string | undefined;
  /** False when the request says it has no body (declaresNoBody): a head binding one is refused at once. */
  readonly declaresBody: boolean;
  /** The TLS peer's certificates, leaf first (DER). */
  readonly peerChain: readonly Uint8Array[];
  readonly nowMs: number;
}

export interface InboundContext {
  readonly self: string;
  readonly snapshot: RegistrySnapshot;
  readonly replay: ReplayGuard;
  readonly quota: QuotaStore;
  readonly limits: ChainLimits;
  readonly whenNoPolicy: "allow" | "deny";
  /** Client chains verified before (per process): the inbound hot path verifies each chain once. */
  readonly certificates: VerifiedCertificateCache;
}

export interface Allowed {
  readonly allowed: true;
  readonly operation: Operation;
  /** `chain`: a verified Custody-Chain; `bearer`: an edge entry, the token as the chain's e0. */
  readonly entry: "chain" | "bearer";
  /** The chain the app receives (and copies onto the calls it makes). */
  readonly elements: readonly string[];
  /** The calling service; undefined for a user entering through an edge. */
  readonly caller: string | undefined;
  /** Who the request is for, when a user's token started it: `<issuer> <subject>`. */
  readonly subject: string | undefined;
  /** The chain's initial token (verified), if it has one. */
  readonly initial: InitialToken | undefined;
  /** The head link, whose body hash the body must match; undefined for a bearer entry (no link). */
  readonly head: VerifiedLink | undefined;
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
  readonly caller?: string | undefined;
  readonly subject?: string | undefined;
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

/**
 * The TLS peer, authenticated under the registry's trust anchors with their roles; undefined when it
 * presented no certificate.
 */
function authenticatedPeer(
  context: InboundContext,
  request: InboundRequest,
): AuthenticatedPeer | undefined | Refused {
  if (request.peerChain.length === 0) return undefined;
  try {
    return context.snapshot.anchors.authenticate(
      request.peerChain,
      new Date(request.nowMs),
      context.certificates,
    );
  } catch (error) {
    if (error instanceof CertificateVerificationError)
      return refuse(401, `peer_${error.code}`, error.message);
    throw error;
  }
}

/** The service the TLS peer is: a mesh workload, by a certificate of Custody's CA only. */
function peerService(context: InboundContext, request: InboundRequest): string | Refused {
  const peer = authenticatedPeer(context, request);
  if (peer === undefined) return refuse(401, "no_client_certificate", "no client certificate was presented.");
  if ("allowed" in peer) return peer;
  if (peer.role !== "mesh") {
    return refuse(
      401,
      "peer_not_a_service",
      "the client certificate names no service of this trust domain (a partner's certificate authenticates only with its identity token, at an edge).",
    );
  }
  return peer.serviceId;
}

function holderOf(peer: AuthenticatedPeer): CertificateHolder {
  return peer.role === "mesh" ? { service: peer.serviceId } : { externalSubject: externalSubjectKey(peer) };
}

/** Where a request comes from, once its chain verified or its bearer token was admitted. */
export interface RequestOrigin {
  readonly entry: Allowed["entry"];
  readonly elements: readonly string[];
  readonly from: Provenance;
  /** The head link (chain entry); its jti is spent and its body hash checked once the call is allowed. */
  readonly head: VerifiedLink | undefined;
}

/*
 * The steps below are shared with `custody policy check` (sidecar/src/cli/policy-check.ts), which
 * has no TLS connection and spends no jti: a dry run that went through other functions could drift
 * from what the proxy enforces.
 */

/** A chain verified for `call` against the snapshot's registry, body and jti included. Throws ChainError. */
export async function verifiedChainOrigin(
  snapshot: RegistrySnapshot,
  header: string | undefined,
  call: IncomingCall,
  replay: ReplayGuard,
  limits: ChainLimits,
): Promise<RequestOrigin> {
  const chain = await verifyChain(header, call, snapshot.trust, replay, { limits, cache: snapshot.cache });
  return { entry: "chain", elements: chain.elements, from: provenanceOfChain(chain), head: chain.head };
}

/** A bearer token admitted at an edge as the initial element of a chain that starts here. Throws ChainError. */
export function admittedBearerOrigin(
  snapshot: RegistrySnapshot,
  presentation: BearerPresentation,
  operation: Operation,
  limits: ChainLimits,
): RequestOrigin {
  const admitted = admitBearer(presentation, snapshot.trust, limits);
  return {
    entry: "bearer",
    elements: [presentation.token],
    from: provenanceOfBearer(admitted, operation),
    head: undefined,
  };
}

/** Who the request is for when a user's token started it and no service called: `<issuer> <subject>`. */
export function subjectOf(from: Provenance): string | undefined {
  const { caller, initial } = from;
  return caller === undefined && initial !== undefined ? `${initial.issuer} ${initial.subject}` : undefined;
}

/** What the policies that target `request.target` decide, with the snapshot's compiled patterns. */
export function decidePolicies(
  snapshot: RegistrySnapshot,
  whenNoPolicy: "allow" | "deny",
  request: PolicyRequest,
): Decision {
  return decide(snapshot.registry.policies, request, {
    service: (id) => snapshot.trust.service(id),
    patterns: snapshot.patterns,
    whenNoPolicy,
  });
}

/**
 * A chain that verifies for exactly this request (its body aside), over a connection from the
 * service that signed its head.
 */
function chainOrigin(
  context: InboundContext,
  request: InboundRequest,
  operation: Operation,
): RequestOrigin | Refused {
  const peer = peerService(context, request);
  if (typeof peer !== "string") return { ...peer, operation };
  try {
    const chain = verifyChainHeaders(
      request.chainHeader,
      { self: context.self, peer, operation, nowSeconds: Math.floor(request.nowMs / 1000) },
      context.snapshot.trust,
      { limits: context.limits, cache: context.snapshot.cache },
    );
    // A head that binds a body, on a request that says it has none, cannot be satisfied: refused
    // now rather than after waiting for nothing.
    if (!request.declaresBody && chain.head.bdh !== undefined) {
      throw new ChainError(
        "body_mismatch",
        "the head binds a body, but the request has none.",
        chain.head.index,
      );
    }
    return { entry: "chain", elements: chain.elements, from: provenanceOfChain(chain), head: chain.head };
  } catch (error) {
    if (!(error instanceof ChainError)) throw error;
    return refuse(401, error.code, error.message, { operation, caller: peer });
  }
}

/** Edge entry: a bearer token admitted as the initial element of a chain that starts here. */
function bearerOrigin(
  context: InboundContext,
  request: InboundRequest,
  operation: Operation,
  self: ServiceInfo,
  token: string,
): RequestOrigin | Refused {
  const peer = authenticatedPeer(context, request);
  if (peer !== undefined && "allowed" in peer) return { ...peer, operation };
  try {
    return admittedBearerOrigin(
      context.snapshot,
      {
        self,
        token,
        clientCertificate: peer === undefined ? undefined : request.peerChain[0],
        holder: peer === undefined ? undefined : holderOf(peer),
        nowSeconds: Math.floor(request.nowMs / 1000),
      },
      operation,
      context.limits,
    );
  } catch (error) {
    if (!(error instanceof ChainError)) throw error;
    return refuse(401, error.code, error.message, { operation });
  }
}

/**
 * The quota of every enforced policy that allowed the call, each rule's bucket per caller: two
 * policies targeting one service each get their say, and any exhausted bucket refuses the call.
 */
export function quotaCharges(decision: Decision, who: string): QuotaCharge[] {
  return decision.verdicts.flatMap((verdict) =>
    verdict.mode === "enforce" && verdict.allowed && verdict.quota !== undefined
      ? [
          {
            key: { policy: verdict.policy, rule: verdict.rule ?? "default", caller: who },
            limit: verdict.quota,
          },
        ]
      : [],
  );
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
  const token =
    request.chainHeader === undefined && self.edge ? bearerToken(request.authorization) : undefined;
  const origin =
    token === undefined
      ? chainOrigin(context, request, operation)
      : bearerOrigin(context, request, operation, self, token);
  if ("allowed" in origin) return origin;
  const { caller, initial } = origin.from;
  const subject = subjectOf(origin.from);
  const decision = decidePolicies(snapshot, context.whenNoPolicy, {
    target: self,
    operation,
    from: origin.from,
  });
  if (!decision.allowed)
    return refuse(403, decision.reason, decision.explanation, { operation, caller, subject, decision });
  // `per: caller`: a user who entered through the edge is their own caller.
  const who = caller ?? subject ?? "anonymous";
  const charges = quotaCharges(decision, who);
  if (charges.length > 0) {
    let taken: QuotaDecision;
    try {
      taken = await context.quota.takeAll(charges);
    } catch (error) {
      if (!(error instanceof QuotaStoreUnavailableError)) throw error;
      return refuse(503, error.code, error.message, { operation, caller, subject, decision });
    }
    if (!taken.allowed) {
      return refuse(
        429,
        "quota_exceeded",
        `quota of ${taken.exhausted?.policy ?? "a policy"} exhausted for ${who}.`,
        {
          operation,
          caller,
          subject,
          decision,
          retryAfterSeconds: taken.retryAfterSeconds,
        },
      );
    }
  }
  if (origin.head !== undefined) {
    try {
      await claimHead(origin.head, context.replay, context.limits);
    } catch (error) {
      if (!(error instanceof ChainError)) throw error;
      const status = error.code === "replay_store_unavailable" ? 503 : 401;
      return refuse(status, error.code, error.message, { operation, caller, subject });
    }
  }
  return {
    allowed: true,
    operation,
    entry: origin.entry,
    elements: origin.elements,
    caller,
    subject,
    initial,
    head: origin.head,
    decision,
  };
}
