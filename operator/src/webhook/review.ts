/**
 * admission.k8s.io/v1 AdmissionReview: the request the API server POSTs to a webhook, checked
 * before anything reads it, and the response it expects back (same `uid`, a decision, and for a
 * mutation an RFC 6902 patch in base64).
 */
import { z } from "zod";
import { CustodyError, ValidationError } from "../../../crds/src/errors.js";
import { parseOrThrow } from "../../../crds/src/issues.js";

export const ADMISSION_API_VERSION = "admission.k8s.io/v1";
export const ADMISSION_REVIEW_KIND = "AdmissionReview";
/**
 * A review carries `object` and `oldObject`, each at most etcd's 1.5 MiB; 4 MiB leaves room for
 * both plus the envelope, and no legitimate review comes near it.
 */
export const MAX_REVIEW_BYTES = 4 * 1024 * 1024;
export const MALFORMED_REVIEW = "malformed_admission_review";

export const OPERATIONS = ["CREATE", "UPDATE", "DELETE", "CONNECT"] as const;
export type Operation = (typeof OPERATIONS)[number];

/** A request the webhook cannot read: answered with HTTP 400, never with a decision. */
export class ReviewError extends CustodyError {
  constructor(message: string) {
    super(MALFORMED_REVIEW, message);
  }
}

const groupSchema = z.string().max(253);
const versionSchema = z.string().max(63);

const requestSchema = z.looseObject({
  // Echoed back verbatim, so only characters a UUID (what the API server sends) could contain.
  uid: z
    .string()
    .min(1)
    .max(128)
    .regex(/^[A-Za-z0-9._:-]+$/, { error: "must be an identifier (letters, digits, '-', '.', '_', ':')" }),
  kind: z.looseObject({ group: groupSchema, version: versionSchema, kind: z.string().max(63) }),
  resource: z.looseObject({ group: groupSchema, version: versionSchema, resource: z.string().max(253) }),
  subResource: z.string().max(253).optional(),
  name: z.string().max(253).optional(),
  namespace: z.string().max(63).optional(),
  operation: z.enum(OPERATIONS),
  object: z.unknown().optional(),
  oldObject: z.unknown().optional(),
  dryRun: z.boolean().optional(),
});

const reviewSchema = z.looseObject({
  apiVersion: z.literal(ADMISSION_API_VERSION),
  kind: z.literal(ADMISSION_REVIEW_KIND),
  request: requestSchema,
});

export interface AdmissionRequest {
  readonly uid: string;
  readonly kind: { readonly group: string; readonly version: string; readonly kind: string };
  readonly resource: { readonly group: string; readonly version: string; readonly resource: string };
  /** "" for the main resource. */
  readonly subResource: string;
  /** "" when the client asked for a generated name. */
  readonly name: string;
  /** "" for cluster-scoped resources. */
  readonly namespace: string;
  readonly operation: Operation;
  /** undefined on DELETE (the API server sends null). */
  readonly object: unknown;
  /** undefined on CREATE. */
  readonly oldObject: unknown;
  readonly dryRun: boolean;
}

/** Parses the body the API server POSTed; throws ReviewError saying what is wrong with it. */
export function parseAdmissionReview(body: Buffer | string): AdmissionRequest {
  let value: unknown;
  try {
    value = JSON.parse(typeof body === "string" ? body : body.toString("utf8"));
  } catch {
    throw new ReviewError("the body is not JSON: expected an admission.k8s.io/v1 AdmissionReview");
  }
  let review: z.output<typeof reviewSchema>;
  try {
    review = parseOrThrow(reviewSchema, value, MALFORMED_REVIEW, "AdmissionReview");
  } catch (error) {
    if (error instanceof ValidationError) throw new ReviewError(error.message);
    throw error;
  }
  const { request } = review;
  return {
    uid: request.uid,
    kind: { group: request.kind.group, version: request.kind.version, kind: request.kind.kind },
    resource: {
      group: request.resource.group,
      version: request.resource.version,
      resource: request.resource.resource,
    },
    subResource: request.subResource ?? "",
    name: request.name ?? "",
    namespace: request.namespace ?? "",
    operation: request.operation,
    object: request.object ?? undefined,
    oldObject: request.oldObject ?? undefined,
    dryRun: request.dryRun ?? false,
  };
}

/** One RFC 6902 operation; the webhooks add, test, and replace a probe that capture rewrites. */
export type JsonPatchOp =
  | { readonly op: "add"; readonly path: string; readonly value: unknown }
  | { readonly op: "replace"; readonly path: string; readonly value: unknown }
  | { readonly op: "test"; readonly path: string; readonly value: unknown };

export interface AdmissionAllowed {
  readonly allowed: true;
  /** Empty: admitted unchanged. */
  readonly patch: readonly JsonPatchOp[];
  /** Why, for the decision log (injected, already_injected, not_requested, valid, ...). */
  readonly reason: string;
  readonly identity?: string;
}

export interface AdmissionDenied {
  readonly allowed: false;
  /** HTTP status the API server answers the client with (400 or more). */
  readonly code: number;
  /** Stable reason code; kubectl prints it as `Error from server (<reason>)`. */
  readonly reason: string;
  /** What the person applying the object reads after `denied the request: `. */
  readonly message: string;
  readonly identity?: string;
}

export type AdmissionDecision = AdmissionAllowed | AdmissionDenied;

export function allowUnchanged(reason: string): AdmissionAllowed {
  return { allowed: true, patch: [], reason };
}

/** RFC 6901: `~` and `/` inside one reference token (annotation keys contain `/`). */
export function escapePointerToken(token: string): string {
  return token.replaceAll("~", "~0").replaceAll("/", "~1");
}

/** The AdmissionReview answering `uid` with `decision`. */
export function admissionReviewResponse(uid: string, decision: AdmissionDecision): Record<string, unknown> {
  const response: Record<string, unknown> = { uid, allowed: decision.allowed };
  if (decision.allowed) {
    if (decision.patch.length > 0) {
      response.patchType = "JSONPatch";
      response.patch = Buffer.from(JSON.stringify(decision.patch)).toString("base64");
    }
  } else {
    response.status = {
      status: "Failure",
      code: Math.max(400, decision.code),
      reason: decision.reason,
      message: decision.message,
    };
  }
  return { apiVersion: ADMISSION_API_VERSION, kind: ADMISSION_REVIEW_KIND, response };
}
