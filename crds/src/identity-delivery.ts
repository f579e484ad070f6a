/**
 * The contract of identity delivery, between the operator (which keeps every identity's key in
 * its own namespace) and the sidecar (which asks for its own). A sidecar POSTs to
 * IDENTITY_DELIVERY_PATH with `Authorization: Bearer <token>`, the pod's projected service-account
 * token for IDENTITY_TOKEN_AUDIENCE; the operator checks the token with the API server
 * (TokenReview), finds the pod the token is bound to, and answers with the key and certificate of
 * the identity that pod may carry, or with `{ error, reason }` and no detail.
 *
 * The audience is the point of the projected token: the pod's default token (audience: the API
 * server) is refused, so a token leaked to some other service is no key to Custody, and the token
 * of a deleted pod stops working with the pod.
 */
import { z } from "zod";

export const IDENTITY_TOKEN_AUDIENCE = "custody";
export const IDENTITY_DELIVERY_PATH = "/v1/identity";
/** The projected token's lifetime: the kubelet renews it at 80% of it, the operator accepts it until it ends. */
export const IDENTITY_TOKEN_SECONDS = 3600;
export const MAX_IDENTITY_TOKEN_BYTES = 16 * 1024;
export const MAX_DELIVERED_IDENTITY_BYTES = 256 * 1024;

const pem = z
  .string()
  .min(1)
  .max(64 * 1024);

/**
 * What the operator answers: the Secret's kubernetes.io/tls keys, the next key mid-rotation, and
 * the shared Redis.
 */
export const deliveredIdentitySchema = z.strictObject({
  certificate: pem,
  key: pem,
  ca: pem,
  nextKey: pem.optional(),
  /**
   * The Redis the service's replicas share spent jtis and quota buckets through, when there is
   * one: it may carry a password, so it travels here, to the authenticated pod, never in the pod's
   * spec (which the webhook's answer and every reader of the pod would show).
   */
  redisUrl: z
    .string()
    .regex(/^rediss?:\/\/\S{1,2000}$/)
    .optional(),
});
export type DeliveredIdentity = z.output<typeof deliveredIdentitySchema>;

/** Why the operator refused (the `reason` of a non-200 answer). */
export const DELIVERY_REFUSALS = [
  "token_missing",
  "token_invalid",
  "pod_not_found",
  "pod_mismatch",
  "pod_finished",
  "injection_disabled",
  "sidecar_mismatch",
  "identity_not_found",
  "invalid_identity_name",
  "service_account_mismatch",
  "identity_not_issued",
  "delivery_unavailable",
  "too_many_requests",
] as const;
export type DeliveryRefusal = (typeof DELIVERY_REFUSALS)[number];
