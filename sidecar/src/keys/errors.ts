/**
 * Every reason the local key service refuses a request. Stable: they are returned to the app by the
 * `/.custody/` routes, counted in metrics and matched by tests.
 */
import { CustodyError } from "../../../crds/src/errors.js";

export const KEY_SERVICE_REASONS = [
  /** The JWS or JWE is not of the one shape this service produces (structure, base64url, JSON). */
  "malformed",
  /** A payload, plaintext, AAD or serialization is larger than the service's bounds. */
  "too_large",
  /** A JSON payload is not I-JSON (lone surrogates, non-finite numbers, non-plain objects) or too deep. */
  "invalid_payload",
  /** An algorithm or header parameter outside the allow-list: `none`, HMAC, `zip`, `crit` other than b64… */
  "alg_not_allowed",
  /** `typ` is not `custody-detached+jws`; a call-chain link (`custody+jwt`) is always refused here. */
  "wrong_type",
  /** The signature was made over JSON and the verifier gave bytes, or the reverse. */
  "wrong_payload_type",
  /** `kid` is not a published, unexpired service key. */
  "unknown_key",
  "bad_signature",
  /** The signature is valid but made by another service than the one the caller expected. */
  "unexpected_signer",
  /** `iat` older than the caller's `maxAgeSeconds`. */
  "expired",
  "issued_in_future",
  /** A local key Custody cannot sign with, or a recipient key that cannot do ECDH (Ed25519, RSA). */
  "unsupported_key",
  "no_recipients",
  "too_many_recipients",
  "duplicate_recipient",
  /** A recipient service id the registry does not list, or whose current key has expired. */
  "unknown_recipient",
  /** The recipient's current key cannot agree keys: Ed25519 or RSA, or published with `use: "sig"`. */
  "no_encryption_key",
  /** None of the opener's key ids is among the JWE's recipients. */
  "not_a_recipient",
  /** Key unwrap or AES-GCM authentication failed: tampered, truncated or sealed to another key. */
  "decryption_failed",
] as const;

export type KeyServiceReason = (typeof KEY_SERVICE_REASONS)[number];

export class KeyServiceError extends CustodyError {
  declare readonly code: KeyServiceReason;
  constructor(code: KeyServiceReason, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
