/**
 * Identity delivery: the one way a workload's private key leaves the operator. A sidecar presents
 * its pod's projected service-account token (audience IDENTITY_TOKEN_AUDIENCE); the key is handed
 * over only when
 *   1. the API server vouches for the token (TokenReview, for our audience only), and the token is
 *      bound to a pod — the pod's name and uid are in it, so it dies with the pod;
 *   2. that pod exists with that uid, runs as the token's service account, has not finished, and
 *      asked for injection (`custody.dev/inject: "true"`): a pod that opted out gets nothing even
 *      if it mounts a token for our audience itself;
 *   2b. its spec shows the webhook's work and nothing else holding the token: the identity in
 *      `custody.dev/injected`, a `custody-sidecar` container of the configured image running the
 *      sidecar command unaltered, and no other container (ephemeral ones included) mounting a
 *      token for our audience — so a container of the pod, or a later edit, cannot be what asks;
 *   3. the identity the pod may carry, by the very rule the injection webhook applies, exists and
 *      was made for that service account;
 *   4. its key has been issued (else: retry later).
 * The boundary is therefore the service account, as in Istio and SPIRE's Kubernetes attestors:
 * whoever may create pods that run as service account X may act as X's identity, and nobody else.
 *
 * Refusals carry a reason code and nothing else; the log line says which check failed. Reviews
 * are cached briefly by the token's hash, refusals too (a sidecar polls; the API server should not
 * see one TokenReview per poll of every pod, nor one per junk token of a flood); a token that
 * cannot be a pod-bound token for our audience is refused before any TokenReview; the work in
 * flight is bounded, and so is each client's share of it.
 */
import { createHash } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Logger } from "pino";
import { Counter, type Registry } from "prom-client";
import { leaveBodyUnread } from "../../../cli/src/unread-body.js";
import type { DeliveredIdentity, DeliveryRefusal } from "../../../crds/src/identity-delivery.js";
import { IDENTITY_TOKEN_AUDIENCE, MAX_IDENTITY_TOKEN_BYTES } from "../../../crds/src/identity-delivery.js";
import { ANNOTATION_INJECT } from "../../../crds/src/names.js";
import { sendJson } from "../http/io.js";
import type { ObjectKey, StoredSecret } from "../store/store.js";
import {
  ANNOTATION_INJECTED,
  type IdentityLookup,
  identityForPod,
  SIDECAR_CONTAINER_NAME,
} from "./inject.js";
import { recordOf } from "./records.js";

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
  /** The sidecar image the webhook injects: the pod's custody-sidecar must be of its repository. */
  readonly sidecarImage: string;
  /** The Redis the sidecars share (it may carry a password): delivered, never injected into the spec. */
  readonly redisUrl?: string;
  readonly logger: Logger;
  readonly metrics?: Registry;
  readonly now?: () => number;
  /** How long a token's review (accepted or refused) is believed without asking again (default 30 s). */
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
/** One client address cannot take every slot: a flood from one pod leaves room for the others. */
const MAX_IN_FLIGHT_PER_CLIENT = 8;
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

/**
 * Whether a token could be a pod-bound service-account token for Custody's audience, read without
 * verifying it. Nothing here is trusted — the TokenReview decides — but what cannot be is refused
 * without asking the API server, so junk costs no TokenReview.
 */
export function plausibleToken(token: string, nowMs: number): boolean {
  const parts = token.split(".");
  const payload = parts[1];
  if (parts.length !== 3 || payload === undefined || payload.length > MAX_IDENTITY_TOKEN_BYTES) return false;
  let claims: unknown;
  try {
    claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
  } catch {
    return false;
  }
  if (typeof claims !== "object" || claims === null) return false;
  const { aud, exp } = claims as { aud?: unknown; exp?: unknown };
  const kubernetes = (claims as Record<string, unknown>)["kubernetes.io"];
  const pod =
    typeof kubernetes === "object" && kubernetes !== null ? (kubernetes as { pod?: unknown }).pod : undefined;
  const audiences: unknown[] = typeof aud === "string" ? [aud] : Array.isArray(aud) ? aud : [];
  return (
    audiences.includes(IDENTITY_TOKEN_AUDIENCE) &&
    typeof exp === "number" &&
    exp * 1000 > nowMs &&
    typeof pod === "object" &&
    pod !== null
  );
}

/** An image reference without its tag or digest: `registry/path/name`. */
export function imageRepository(image: string): string {
  const withoutDigest = image.split("@")[0] ?? "";
  const lastSlash = withoutDigest.lastIndexOf("/");
  const colon = withoutDigest.lastIndexOf(":");
  return colon > lastSlash ? withoutDigest.slice(0, colon) : withoutDigest;
}

/** `value` as a JSON object, empty when it is anything else: absent fields read as undefined. */
function fieldsOf(value: unknown): Readonly<Record<string, unknown>> {
  return recordOf(value) ?? {};
}

function listOf(value: unknown): readonly Readonly<Record<string, unknown>>[] {
  return Array.isArray(value) ? value.map(fieldsOf) : [];
}

/**
 * What is wrong with who holds the pod's token for Custody's audience, or undefined: the webhook
 * wrote `custody.dev/injected: <identity>` and a `custody-sidecar` container of the sidecar image
 * that runs `sidecar` with no command, environment source or NODE_OPTIONS of the pod's own (which
 * could make it run other code); no other container, ephemeral ones included, mounts a volume
 * with a token for our audience.
 */
export function sidecarProblem(pod: unknown, identityName: string, sidecarImage: string): string | undefined {
  const metadata = fieldsOf(fieldsOf(pod).metadata);
  const spec = fieldsOf(fieldsOf(pod).spec);
  if (fieldsOf(metadata.annotations)[ANNOTATION_INJECTED] !== identityName) {
    return `${ANNOTATION_INJECTED} is not "${identityName}": the webhook did not inject this pod for that identity`;
  }
  const containers = [
    ...listOf(spec.initContainers),
    ...listOf(spec.containers),
    ...listOf(spec.ephemeralContainers),
  ];
  const sidecars = containers.filter((container) => container.name === SIDECAR_CONTAINER_NAME);
  const sidecar = sidecars[0];
  if (sidecars.length !== 1 || sidecar === undefined)
    return `the pod has no single ${SIDECAR_CONTAINER_NAME}`;
  if (typeof sidecar.image !== "string" || imageRepository(sidecar.image) !== imageRepository(sidecarImage)) {
    return `${SIDECAR_CONTAINER_NAME} is not of the sidecar image's repository ${imageRepository(sidecarImage)}`;
  }
  const args = sidecar.args;
  const env = listOf(sidecar.env);
  if (
    sidecar.command !== undefined ||
    sidecar.envFrom !== undefined ||
    !Array.isArray(args) ||
    args.length !== 1 ||
    args[0] !== "sidecar" ||
    env.some((variable) => variable.name === "NODE_OPTIONS")
  ) {
    return `${SIDECAR_CONTAINER_NAME} does not run the sidecar as injected (command, args or environment changed)`;
  }
  const tokenVolumes = new Set(
    listOf(spec.volumes)
      .filter((volume) =>
        listOf(fieldsOf(volume.projected).sources).some(
          (source) => fieldsOf(source.serviceAccountToken).audience === IDENTITY_TOKEN_AUDIENCE,
        ),
      )
      .map((volume) => volume.name),
  );
  const holder = containers.find(
    (container) =>
      container !== sidecar && listOf(container.volumeMounts).some((mount) => tokenVolumes.has(mount.name)),
  );
  return holder === undefined
    ? undefined
    : `container ${String(holder.name)} mounts a token for Custody's audience: only ${SIDECAR_CONTAINER_NAME} may`;
}

interface PodFacts {
  readonly uid?: unknown;
  readonly annotations?: Readonly<Record<string, unknown>>;
  readonly serviceAccount?: unknown;
  readonly phase?: unknown;
}

function podFacts(pod: unknown): PodFacts {
  const metadata = fieldsOf(fieldsOf(pod).metadata);
  const spec = fieldsOf(fieldsOf(pod).spec);
  return {
    uid: metadata.uid,
    annotations: fieldsOf(metadata.annotations),
    serviceAccount: spec.serviceAccountName || spec.serviceAccount || "default",
    phase: fieldsOf(fieldsOf(pod).status).phase,
  };
}

export class IdentityDelivery {
  readonly #options: IdentityDeliveryOptions;
  readonly #now: () => number;
  readonly #reviews = new Map<
    string,
    { readonly token: ReviewedToken | undefined; readonly untilMs: number }
  >();
  readonly #perClient = new Map<string, number>();
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

  /**
   * Decides for one bearer token from one client address; never rejects (an API failure is
   * delivery_unavailable).
   */
  async decide(token: string | undefined, client = ""): Promise<DeliveryOutcome> {
    if (token === undefined) {
      return refuse(401, "token_missing", "no Authorization: Bearer token of the pod's custody token");
    }
    if (!plausibleToken(token, this.#now())) {
      return refuse(401, "token_invalid", "not a pod-bound, unexpired token for Custody's audience");
    }
    const mine = this.#perClient.get(client) ?? 0;
    if (mine >= MAX_IN_FLIGHT_PER_CLIENT) {
      return refuse(429, "too_many_requests", `${client} has ${mine} deliveries in flight`);
    }
    if (this.#inFlight >= MAX_IN_FLIGHT) {
      return refuse(503, "delivery_unavailable", `more than ${MAX_IN_FLIGHT} deliveries in flight`);
    }
    this.#inFlight++;
    this.#perClient.set(client, mine + 1);
    try {
      return await this.#decide(token);
    } catch (error) {
      return refuse(503, "delivery_unavailable", error instanceof Error ? error.message : String(error));
    } finally {
      this.#inFlight--;
      const left = (this.#perClient.get(client) ?? 1) - 1;
      if (left <= 0) this.#perClient.delete(client);
      else this.#perClient.set(client, left);
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
    if (facts.phase === "Succeeded" || facts.phase === "Failed") {
      return refuse(403, "pod_finished", `${where} has finished (${String(facts.phase)})`);
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
    const problem = sidecarProblem(pod, metadata.name, this.#options.sidecarImage);
    if (problem !== undefined) return refuse(403, "sidecar_mismatch", `${where}: ${problem}`);
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
      body: {
        certificate,
        key,
        ca,
        ...(nextKey === undefined ? {} : { nextKey }),
        ...(this.#options.redisUrl === undefined ? {} : { redisUrl: this.#options.redisUrl }),
      },
    };
  }

  async #review(token: string): Promise<ReviewedToken | undefined> {
    const id = createHash("sha256").update(token).digest("base64url");
    const now = this.#now();
    const cached = this.#reviews.get(id);
    if (cached !== undefined && cached.untilMs > now) return cached.token;
    this.#reviews.delete(id);
    // Refusals are remembered as well: the same junk token again costs no TokenReview.
    const reviewed = await this.#options.reviewer.review(token);
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
    const outcome = await this.decide(
      bearerToken(request.headers.authorization),
      request.socket.remoteAddress ?? "",
    );
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
      {
        error:
          outcome.status === 503 ? "unavailable" : outcome.status === 429 ? "too_many_requests" : "forbidden",
        reason,
      },
      outcome.status === 401
        ? { "www-authenticate": 'Bearer realm="custody"' }
        : outcome.status === 429 || outcome.status === 503
          ? { "retry-after": "1" }
          : {},
    );
  }
}
