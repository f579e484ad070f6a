/**
 * Detached JWS (RFC 7515 Appendix F) with an unencoded payload (RFC 7797): `header..signature`, signed
 * with the service's own key and verifiable by any service through the registry (`kid` → key → owner).
 *
 * The protected header is fixed, never chosen by the caller:
 *   {"alg", "kid", "typ": "custody-detached+jws", ["cty": "json",] "iat", "b64": false, "crit": ["b64"]}
 * - `b64: false` + `crit`: the signing input is `base64url(header) "." payload-bytes`. A verifier that
 *   does not implement RFC 7797 must reject the token (crit), Custody's link and JWT verifiers refuse
 *   `crit`/`b64` outright, and reattaching the payload never yields a JWT: nothing signed here can be
 *   replayed as a call-chain link (whose header is exactly {alg, typ: "custody+jwt", kid}) or as a
 *   token. It also spares base64-encoding a 1 MiB body twice (sign and verify).
 * - `typ` names the purpose; `custody+jwt` is refused on verification with `wrong_type`.
 * - `cty: "json"` marks a JSON payload, signed as its RFC 8785 (JCS) canonical UTF-8 bytes, so a
 *   verifier holding the parsed value (after an intermediary re-serialized it) gets the same bytes.
 *   Bytes are signed as they are (no cty). Verification requires the same kind of payload.
 * - `iat` (seconds) says when it was signed; verifiers may demand a maximum age.
 */
import type { KeyObject } from "node:crypto";
import { CHAIN_LINK_TYPE } from "../../../crds/src/names.js";
import { algorithmForKey, type JwsAlgorithm, signBytes, verifyBytes } from "../../../pki/src/jws.js";
import { DEFAULT_LIMITS } from "../chain/limits.js";
import type { TrustView } from "../chain/trust.js";
import { decodeBase64url, decodeJsonObject, encodeBase64url } from "./base64url.js";
import { canonicalJson, type JsonObject } from "./canonical-json.js";
import { KeyServiceError } from "./errors.js";

export const DETACHED_JWS_TYPE = "custody-detached+jws";
export const JSON_CONTENT_TYPE = "json";
export const MAX_SIGNED_PAYLOAD_BYTES = 1024 * 1024;
/** Header (~200 characters) plus an RSA-4096 signature fit with room to spare. */
export const MAX_DETACHED_JWS_LENGTH = 2048;

const HEADER_MEMBERS: ReadonlySet<string> = new Set(["alg", "kid", "typ", "cty", "iat", "b64", "crit"]);
const KID = /^[A-Za-z0-9_.:-]{1,128}$/;

/** The service's own key: a LinkSigner fits. */
export interface DetachedSigner {
  readonly kid: string;
  readonly privateKey: KeyObject;
}

/** Bytes are signed as given; a plain JSON object is signed as its JCS canonical form. */
export type DetachedPayload = Uint8Array | JsonObject;

export interface SignDetachedOptions {
  readonly nowSeconds?: number;
}

export interface VerifyDetachedOptions {
  /** Default: the chain's link algorithms (ES256, EdDSA); add RS256 where RSA service keys are allowed. */
  readonly algorithms?: readonly JwsAlgorithm[];
  /** When set, a valid signature by any other service is refused with `unexpected_signer`. */
  readonly expectedSigner?: string;
  /** When set, `iat` must be at most this old (and not in the future beyond the skew). */
  readonly maxAgeSeconds?: number;
  readonly nowSeconds?: number;
  readonly clockSkewSeconds?: number;
}

export interface VerifiedDetached {
  /** The service whose registry key made the signature. */
  readonly serviceId: string;
  readonly kid: string;
  readonly alg: JwsAlgorithm;
  readonly issuedAt: number;
  readonly payloadType: "bytes" | "json";
}

function payloadBytes(payload: DetachedPayload): { bytes: Uint8Array; json: boolean } {
  if (payload instanceof Uint8Array) {
    if (payload.byteLength > MAX_SIGNED_PAYLOAD_BYTES) {
      throw new KeyServiceError("too_large", `payload is larger than ${MAX_SIGNED_PAYLOAD_BYTES} bytes.`);
    }
    return { bytes: payload, json: false };
  }
  if (typeof payload !== "object" || payload === null || Array.isArray(payload)) {
    throw new KeyServiceError("invalid_payload", "payload must be bytes or a JSON object.");
  }
  const bytes = Buffer.from(canonicalJson(payload, MAX_SIGNED_PAYLOAD_BYTES), "utf8");
  if (bytes.byteLength > MAX_SIGNED_PAYLOAD_BYTES) {
    throw new KeyServiceError("too_large", `payload is larger than ${MAX_SIGNED_PAYLOAD_BYTES} bytes.`);
  }
  return { bytes, json: true };
}

function signingInput(headerPart: string, payload: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(`${headerPart}.`, "ascii"), payload]);
}

export function signDetached(
  signer: DetachedSigner,
  payload: DetachedPayload,
  options: SignDetachedOptions = {},
): string {
  const alg = algorithmForKey(signer.privateKey);
  if (alg === undefined || signer.privateKey.type !== "private") {
    throw new KeyServiceError("unsupported_key", "the service key cannot sign (ES256, EdDSA or RS256 only).");
  }
  const { bytes, json } = payloadBytes(payload);
  const iat = options.nowSeconds ?? Math.floor(Date.now() / 1000);
  const header = {
    alg,
    kid: signer.kid,
    typ: DETACHED_JWS_TYPE,
    ...(json ? { cty: JSON_CONTENT_TYPE } : {}),
    iat,
    b64: false,
    crit: ["b64"],
  };
  const headerPart = encodeBase64url(JSON.stringify(header));
  const data = signingInput(headerPart, bytes);
  const signature = signBytes(alg, signer.privateKey, data);
  return `${headerPart}..${signature.toString("base64url")}`;
}

interface DetachedHeader {
  readonly alg: JwsAlgorithm;
  readonly kid: string;
  readonly json: boolean;
  readonly iat: number;
}

function readHeader(header: Record<string, unknown>, algorithms: readonly JwsAlgorithm[]): DetachedHeader {
  if (header.typ === CHAIN_LINK_TYPE) {
    throw new KeyServiceError("wrong_type", "a call-chain link is never verified by the key service.");
  }
  if (header.typ !== DETACHED_JWS_TYPE) {
    throw new KeyServiceError("wrong_type", `typ must be "${DETACHED_JWS_TYPE}".`);
  }
  const alg = header.alg;
  if (typeof alg !== "string" || !(algorithms as readonly string[]).includes(alg)) {
    throw new KeyServiceError("alg_not_allowed", `algorithm ${JSON.stringify(alg)} is not allowed.`);
  }
  const crit = header.crit;
  if (header.b64 !== false || !Array.isArray(crit) || crit.length !== 1 || crit[0] !== "b64") {
    throw new KeyServiceError("malformed", 'header must carry b64: false and crit: ["b64"].');
  }
  for (const member of Object.keys(header)) {
    if (!HEADER_MEMBERS.has(member)) {
      throw new KeyServiceError("malformed", `header parameter "${member.slice(0, 64)}" is not allowed.`);
    }
  }
  if (typeof header.kid !== "string" || !KID.test(header.kid)) {
    throw new KeyServiceError("malformed", "header needs a kid.");
  }
  const iat = header.iat;
  if (typeof iat !== "number" || !Number.isSafeInteger(iat) || iat < 0) {
    throw new KeyServiceError("malformed", "iat must be whole seconds.");
  }
  if (header.cty !== undefined && header.cty !== JSON_CONTENT_TYPE) {
    throw new KeyServiceError("malformed", `cty may only be "${JSON_CONTENT_TYPE}".`);
  }
  return { alg: alg as JwsAlgorithm, kid: header.kid, json: header.cty === JSON_CONTENT_TYPE, iat };
}

export function verifyDetached(
  jws: string,
  payload: DetachedPayload,
  trust: Pick<TrustView, "serviceKey">,
  options: VerifyDetachedOptions = {},
): VerifiedDetached {
  if (typeof jws !== "string") throw new KeyServiceError("malformed", "the JWS must be a string.");
  if (jws.length > MAX_DETACHED_JWS_LENGTH) {
    throw new KeyServiceError("too_large", `the JWS is longer than ${MAX_DETACHED_JWS_LENGTH} characters.`);
  }
  const parts = jws.split(".");
  if (parts.length !== 3) throw new KeyServiceError("malformed", "not a compact JWS (header..signature).");
  const [headerPart = "", attached = "", signaturePart = ""] = parts;
  if (attached !== "")
    throw new KeyServiceError("malformed", "the payload must be detached (header..signature).");
  if (signaturePart === "") throw new KeyServiceError("alg_not_allowed", "the JWS is unsigned.");
  const header = readHeader(
    decodeJsonObject(headerPart, "header"),
    options.algorithms ?? DEFAULT_LIMITS.linkAlgorithms,
  );
  const signature = decodeBase64url(signaturePart, "signature");
  const { bytes, json } = payloadBytes(payload);
  if (json !== header.json) {
    throw new KeyServiceError(
      "wrong_payload_type",
      header.json
        ? "the signature covers a JSON object, not bytes."
        : "the signature covers bytes, not JSON.",
    );
  }
  const key = trust.serviceKey(header.kid);
  if (key === undefined) throw new KeyServiceError("unknown_key", "kid is not a published service key.");
  if (key.alg !== header.alg) throw new KeyServiceError("alg_not_allowed", "alg does not match the key.");
  if (!verifyBytes(header.alg, key.key, signingInput(headerPart, bytes), signature)) {
    throw new KeyServiceError("bad_signature", "signature does not verify.");
  }
  if (options.expectedSigner !== undefined && key.serviceId !== options.expectedSigner) {
    throw new KeyServiceError(
      "unexpected_signer",
      `signed by ${key.serviceId}, not ${options.expectedSigner}.`,
    );
  }
  if (options.maxAgeSeconds !== undefined) {
    const now = options.nowSeconds ?? Math.floor(Date.now() / 1000);
    const skew = options.clockSkewSeconds ?? DEFAULT_LIMITS.clockSkewSeconds;
    if (header.iat > now + skew) throw new KeyServiceError("issued_in_future", "iat is in the future.");
    if (header.iat < now - options.maxAgeSeconds - skew) {
      throw new KeyServiceError("expired", `signed more than ${options.maxAgeSeconds} seconds ago.`);
    }
  }
  return {
    serviceId: key.serviceId,
    kid: header.kid,
    alg: header.alg,
    issuedAt: header.iat,
    payloadType: json ? "json" : "bytes",
  };
}
