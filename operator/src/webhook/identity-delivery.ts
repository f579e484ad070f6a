/**
 * Identity delivery: the one way a workload's private key leaves the operator. A sidecar presents
 * its pod's projected service-account token (audience IDENTITY_TOKEN_AUDIENCE); the key is handed
 * over only when
 *   1. the API server vouches for the token (TokenReview, for our audience only), and the token is
 *      bound to a pod — the pod's name and uid are in it, so it dies with the pod;
 *   2. that pod exists with that uid, runs as the token's service account, and asked for
 *      injection (`custody.dev/inject: "true"`): a pod that opted out gets nothing even if it
 *      mounts a token for our audience itself;
 *   3. the identity the pod may carry, by the very rule the injection webhook applies, exists and
 *      was made for that service account;
 *   4. its key has been issued (else: retry later).
 * The boundary is therefore the service account, as in Istio and SPIRE's Kubernetes attestors:
 * whoever may create pods that run as service account X may act as X's identity, and nobody else.
 *
 * Refusals carry a reason code and nothing else; the log line says which check failed. Successful
 * reviews are cached briefly by the token's hash (a sidecar polls; the API server should not see
 * one TokenReview per poll of every pod), and the work in flight is bounded.
 */
import { createHash } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "pino";
import { Counter, type Registry } from "prom-client";
import { leaveBodyUnread } from "../../../cli/src/unread-body.js";
import type { DeliveredIdentity, DeliveryRefusal } from "../../../crds/src/identity-delivery.js";
import { MAX_IDENTITY_TOKEN_BYTES } from "../../../crds/src/identity-delivery.js";
import { ANNOTATION_INJECT } from "../../../crds/src/names.js";
import { sendJson } from "../http/io.js";
import type { ObjectKey, StoredSecret } from "../store/store.js";
import { type IdentityLookup, identityForPod } from "./inject.js";

/** What the API server said about a token: the service account and the pod it is bound to. */
export interface ReviewedToken {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly podName: string;
  readonly podUid: string;
}

export interface TokenReviewer {
  /** The token's subject, or undefined when the API server does not accept it for our audience. */
  review(token: string): Promise<ReviewedToken | undefined>;
}

export interface PodReader {
  /** The pod as the API server returns it, or undefined when there is none. */
  pod(namespace: string, name: string): Promise<unknown>;
}

export interface IdentityDeliveryOptions {
  readonly reviewer: TokenReviewer;
  readonly pods: PodReader;
  readonly lookup: IdentityLookup;
  /** The issued Secret of an identity (none for a deleted namesake's leftover). */
  readonly secretOf: (identity: ObjectKey) => StoredSecret | undefined;
  readonly logger: Logger;
  readonly metrics?: Registry;
  readonly now?: () => number;
  /** How long an accepted token is believed without asking the API server again (default 30 s). */
  readonly reviewCacheMs?: number;
}

export type DeliveryOutcome =
  | { readonly ok: true; readonly identity: string; readonly body: DeliveredIdentity }
  | {
      readonly ok: false;
      readonly status: number;
      readonly reason: DeliveryRefusal;
      readonly detail: string;
    };

const MAX_CACHED_REVIEWS = 4096;
const MAX_IN_FLIGHT = 64;
const SERVICE_ACCOUNT_USER = /^system:serviceaccount:([a-z0-9-]{1,63}):([a-z0-9.-]{1,253})$/;

function refuse(status: number, reason: DeliveryRefusal, detail: string): DeliveryOutcome {
  return { ok: false, status, reason, detail };
}

/** The token of `Authorization: Bearer <token>`, or undefined when there is none usable. */
export function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined || header.length > MAX_IDENTITY_TOKEN_BYTES + 7) return undefined;
  const match = /^Bearer ([A-Za-z0-9._~+/=-]+)$/.exec(header);
  return match?.[1];
}

/** The service account and pod of a TokenReview's user, or undefined when it names no pod. */
export function reviewedTokenOf(user: {
  readonly username?: string;
  readonly extra?: Readonly<Record<string, readonly string[]>>;
}): ReviewedToken | undefined {
  const match = SERVICE_ACCOUNT_USER.exec(user.username ?? "");
  const podName = user.extra?.["authentication.kubernetes.io/pod-name"]?.[0];
  const podUid = user.extra?.["authentication.kubernetes.io/pod-uid"]?.[0];
  if (match?.[1] === undefined || match[2] === undefined || !podName || !podUid) return undefined;
  return { namespace: match[1], serviceAccount: match[2], podName, podUid };
}

interface PodFacts {
  readonly uid?: unknown;
  readonly annotations?: Readonly<Record<string, unknown>>;
  readonly serviceAccount?: unknown;
}

function podFacts(pod: unknown): PodFacts {
  const record = (value: unknown) =>
    typeof value === "object" && value !== null ? (value as Record<string, unknown>) : {};
  const metadata = record(record(pod).metadata);
  const spec = record(record(pod).spec);
  return {
    uid: metadata.uid,
    annotations: record(metadata.annotations),
    serviceAccount: spec.serviceAccountName || spec.serviceAccount || "default",
  };
}

export class IdentityDelivery {
  readonly #options: IdentityDeliveryOptions;
  readonly #now: () => number;
  readonly #reviews = new Map<string, { readonly token: ReviewedToken; readonly untilMs: number }>();
  readonly #deliveries: Counter<"reason"> | undefined;
  #inFlight = 0;

  constructor(options: IdentityDeliveryOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#deliveries =
      options.metrics === undefined
        ? undefined
        : new Counter({
            name: "custody_webhook_identity_deliveries_total",
            help: "Identity delivery answers by reason code (delivered, token_invalid, service_account_mismatch, ...).",
            labelNames: ["reason"] as const,
            registers: [options.metrics],
          });
  }

  /** Decides for one bearer token; never rejects (an API failure is delivery_unavailable). */
  async decide(token: string | undefined): Promise<DeliveryOutcome> {
    if (token === undefined) {
      return refuse(401, "token_missing", "no Authorization: Bearer token of the pod's custody token");
    }
    if (this.#inFlight >= MAX_IN_FLIGHT) {
      return refuse(503, "delivery_unavailable", `more than ${MAX_IN_FLIGHT} deliveries in flight`);
    }
    this.#inFlight++;
    try {
      return await this.#decide(token);
    } catch (error) {
      return refuse(503, "delivery_unavailable", error instanceof Error ? error.message : String(error));
    } finally {
      this.#inFlight--;
    }
  }

  async #decide(token: string): Promise<DeliveryOutcome> {
    const reviewed = await this.#review(token);
    if (reviewed === undefined) {
      return refuse(
        401,
        "token_invalid",
        "the API server does not accept the token for Custody's audience, or it is bound to no pod",
      );
    }
    const where = `pod ${reviewed.namespace}/${reviewed.podName}`;
    const pod = await this.#options.pods.pod(reviewed.namespace, reviewed.podName);
    if (pod === undefined) return refuse(403, "pod_not_found", `${where} does not exist`);
    const facts = podFacts(pod);
    if (facts.uid !== reviewed.podUid || facts.serviceAccount !== reviewed.serviceAccount) {
      return refuse(
        403,
        "pod_mismatch",
        `${where} is not the pod the token was issued for (uid or service account differ)`,
      );
    }
    if (facts.annotations?.[ANNOTATION_INJECT] !== "true") {
      return refuse(403, "injection_disabled", `${where} does not have ${ANNOTATION_INJECT}: "true"`);
    }
    const resolved = identityForPod(pod, reviewed.namespace, this.#options.lookup);
    if (!resolved.ok) {
      const reason = (
        ["identity_not_found", "invalid_identity_name", "service_account_mismatch"] as const
      ).find((known) => known === resolved.reason);
      return refuse(403, reason ?? "pod_mismatch", `${where}: ${resolved.reason}`);
    }
    const { metadata } = resolved.identity;
    const name = `${reviewed.namespace}/${metadata.name}`;
    const secret = this.#options.secretOf({ namespace: reviewed.namespace, name: metadata.name });
    const data = secret?.data;
    const certificate = data?.["tls.crt"];
    const key = data?.["tls.key"];
    const ca = data?.["ca.crt"];
    if (certificate === undefined || key === undefined || ca === undefined) {
      return refuse(503, "identity_not_issued", `ServiceIdentity ${name} has no certificate yet`);
    }
    const nextKey = data?.["next.key"];
    return {
      ok: true,
      identity: name,
      body: { certificate, key, ca, ...(nextKey === undefined ? {} : { nextKey }) },
    };
  }

  async #review(token: string): Promise<ReviewedToken | undefined> {
    const id = createHash("sha256").update(token).digest("base64url");
    const now = this.#now();
    const cached = this.#reviews.get(id);
    if (cached !== undefined && cached.untilMs > now) return cached.token;
    this.#reviews.delete(id);
    const reviewed = await this.#options.reviewer.review(token);
    if (reviewed === undefined) return undefined;
    if (this.#reviews.size >= MAX_CACHED_REVIEWS) {
      for (const [key, entry] of this.#reviews) if (entry.untilMs <= now) this.#reviews.delete(key);
      if (this.#reviews.size >= MAX_CACHED_REVIEWS) {
        const oldest = this.#reviews.keys().next().value;
        if (oldest !== undefined) this.#reviews.delete(oldest);
      }
    }
    this.#reviews.set(id, { token: reviewed, untilMs: now + (this.#options.reviewCacheMs ?? 30_000) });
    return reviewed;
  }

  /** The HTTP face: POST with the bearer token, no body; answers JSON, never detail on refusal. */
  async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    // No body is expected: nothing of one is kept (a small one is discarded, a large one not read).
    leaveBodyUnread(request, response);
    const outcome = await this.decide(bearerToken(request.headers.authorization));
    if (response.destroyed) return;
    const reason = outcome.ok ? "delivered" : outcome.reason;
    this.#deliveries?.inc({ reason });
    if (outcome.ok) {
      this.#options.logger.info(
        { event: "identity_delivered", identity: outcome.identity },
        "identity delivered to its pod",
      );
      sendJson(response, 200, outcome.body);
      return;
    }
    const line = { event: "identity_refused", reason, detail: outcome.detail };
    if (outcome.status === 503) this.#options.logger.warn(line, "identity delivery could not decide");
    else this.#options.logger.warn(line, "identity delivery refused");
    sendJson(
      response,
      outcome.status,
      { error: outcome.status === 503 ? "unavailable" : "forbidden", reason },
      outcome.status === 401 ? { "www-authenticate": 'Bearer realm="custody"' } : {},
    );
  }
}
