/** The sidecar's local key service (`/.custody/sign`, `verify`, `seal`, `open`), as a library. */
export { canonicalJson, type JsonObject, type JsonValue } from "./canonical-json.js";
export {
  DETACHED_JWS_TYPE,
  type DetachedPayload,
  type DetachedSigner,
  MAX_DETACHED_JWS_LENGTH,
  MAX_SIGNED_PAYLOAD_BYTES,
  type SignDetachedOptions,
  signDetached,
  type VerifiedDetached,
  type VerifyDetachedOptions,
  verifyDetached,
} from "./detached-jws.js";
export { KEY_SERVICE_REASONS, KeyServiceError, type KeyServiceReason } from "./errors.js";
export {
  type GeneralJwe,
  JWE_ENCRYPTION,
  JWE_KEY_MANAGEMENT,
  type JweRecipient,
  type JweRecipientEntry,
  MAX_AAD_BYTES,
  MAX_JWE_LENGTH,
  MAX_PLAINTEXT_BYTES,
  MAX_RECIPIENTS,
  type OpenedJwe,
  open,
  type RecipientKey,
  type SealOptions,
  seal,
} from "./jwe.js";
export { RecipientDirectory } from "./recipients.js";
