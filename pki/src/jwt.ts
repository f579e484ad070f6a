/**
 * Verifying a JWT from a trusted issuer whose keys are known in advance (inline JWKS): the token
 * service checks users' tokens with it for token exchange, and relying parties check identity
 * tokens. Offline by construction: header parameters that would fetch or embed keys (`jku`, `x5u`,
 * `jwk`, `x5c`) are refused, as are `crit`, compression and JWE, so nothing in the token chooses the key.
 */
import type { KeyObject } from "node:crypto";
import { CustodyError } from "../../crds/src/errors.js";
import { type JwsAlgorithm, JwsError, type ParsedJws, parseCompactJws, verifySignature } from "./jws.js";

export const FORBIDDEN_JWT_HEADERS = ["crit", "jku", "jwk", "x5u", "x5c", "b64", "zip", "enc"] as const;
export const MAX_JWT_BYTES = 8 * 1024;
const MAX_SCOPES = 64;
const MAX_AUDIENCES = 16;

export type JwtErrorCode =
  | "malformed"
  | "alg_not_allowed"
  | "untrusted_issuer"
  | "bad_signature"
  | "expired"
  | "not_yet_valid"
  | "wrong_audience"
  | "wrong_type";

export class JwtError extends CustodyError {
  declare readonly code: JwtErrorCode;
  constructor(code: JwtErrorCode, message: string) {
    super(code, message);
  }
}

export interface JwtKey {
  readonly alg: JwsAlgorithm;
  readonly key: KeyObject;
  /** When set, the token's `aud` must contain one of these. */
  readonly audiences?: readonly string[];
}

export interface JwtVerifyOptions {
  /** The key for (iss, kid), or undefined when the issuer or key is not trusted. */
  readonly keyFor: (issuer: string, kid: string | undefined) => JwtKey | undefined;
  readonly algorithms: readonly JwsAlgorithm[];
  readonly nowSeconds: number;
  readonly skewSeconds: number;
  /** `typ` values refused: e.g. a call-chain link must never pass as an access token. */
  readonly refusedTypes?: readonly string[];
}

export interface VerifiedJwt {
  readonly issuer: string;
  readonly subject: string;
  readonly audiences: readonly string[];
  readonly scopes: readonly string[];
  readonly expiresAt: number;
  readonly claims: Readonly<Record<string, unknown>>;
}

/** `scope` as RFC 8693 space-separated string or a JSON array (`scp`, as some IdPs send it). */
export function stringList(value: unknown, max: number): string[] | undefined {
  if (typeof value === "string") {
    const items = value.split(" ").filter((item) => item !== "");
    return items.length <= max ? items : undefined;
  }
  if (Array.isArray(value) && value.length <= max && value.every((item) => typeof item === "string")) {
    return value as string[];
  }
  return undefined;
}

export function verifyJwt(text: string, options: JwtVerifyOptions): VerifiedJwt {
  if (text.length > MAX_JWT_BYTES) {
    throw new JwtError("malformed", `token is longer than ${MAX_JWT_BYTES} bytes.`);
  }
  let jws: ParsedJws;
  try {
    jws = parseCompactJws(text);
  } catch (error) {
    if (error instanceof JwsError) throw new JwtError(error.code, `token ${error.message}`);
    throw error;
  }
  return verifyParsedJwt(jws, options);
}

/** verifyJwt for a JWS the caller has already parsed (the sidecar parses every chain element once). */
export function verifyParsedJwt(jws: ParsedJws, options: JwtVerifyOptions): VerifiedJwt {
  const { header, payload } = jws;
  for (const name of FORBIDDEN_JWT_HEADERS) {
    if (name in header) throw new JwtError("malformed", `header parameter "${name}" is not accepted.`);
  }
  if (typeof header.typ === "string" && options.refusedTypes?.includes(header.typ.toLowerCase())) {
    throw new JwtError("wrong_type", `a token of type "${header.typ}" is not accepted here.`);
  }
  const alg = header.alg;
  if (typeof alg !== "string" || !(options.algorithms as readonly string[]).includes(alg)) {
    throw new JwtError("alg_not_allowed", `algorithm ${JSON.stringify(alg)} is not allowed.`);
  }
  if (header.kid !== undefined && typeof header.kid !== "string")
    throw new JwtError("malformed", "kid must be a string.");
  const { iss, sub, exp, nbf, iat } = payload;
  if (typeof iss !== "string" || typeof sub !== "string" || sub === "") {
    throw new JwtError("malformed", "iss and sub must be non-empty strings.");
  }
  const key = options.keyFor(iss, header.kid);
  if (key === undefined) throw new JwtError("untrusted_issuer", "the token's issuer or key is not trusted.");
  if (key.alg !== alg || !verifySignature(key.alg, key.key, jws.signingInput, jws.signature)) {
    throw new JwtError("bad_signature", "the token's signature does not verify.");
  }
  const { nowSeconds: now, skewSeconds: skew } = options;
  if (typeof exp !== "number" || !Number.isFinite(exp))
    throw new JwtError("malformed", "the token has no exp.");
  if (exp < now - skew) throw new JwtError("expired", "the token has expired.");
  for (const notBefore of [nbf, iat]) {
    if (notBefore !== undefined && (typeof notBefore !== "number" || notBefore > now + skew)) {
      throw new JwtError("not_yet_valid", "the token is not valid yet.");
    }
  }
  const scopes = stringList(payload.scope ?? payload.scp ?? [], MAX_SCOPES);
  const audiences = stringList(payload.aud ?? [], MAX_AUDIENCES);
  if (scopes === undefined || audiences === undefined)
    throw new JwtError("malformed", "scope or aud has the wrong type.");
  if (key.audiences !== undefined && !audiences.some((aud) => key.audiences?.includes(aud))) {
    throw new JwtError(
      "wrong_audience",
      "the token is not addressed to an audience its issuer is trusted for.",
    );
  }
  return { issuer: iss, subject: sub, audiences, scopes, expiresAt: exp, claims: payload };
}
