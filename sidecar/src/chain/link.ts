/**
 * The shape of a link (ARCHITECTURE.md, "Call-chain tokens"), checked field by field: a chain is
 * attacker-controlled input, so every claim has a type, a bound, and unknown claims are refused.
 */
import { isServiceId, CHAIN_LINK_TYPE as LINK_TYPE } from "../../../crds/src/names.js";
import { ChainError } from "./errors.js";
import type { LinkAlgorithm, ParsedJws } from "./jws.js";

export { LINK_TYPE };

const LINK_HEADER_KEYS = new Set(["alg", "typ", "kid"]);
const LINK_CLAIM_KEYS = new Set(["iss", "aud", "op", "jti", "iat", "exp", "bdh", "prv", "ctx"]);
const HASH = /^[A-Za-z0-9_-]{43}$/;
const JTI = /^[A-Za-z0-9_-]{22,64}$/;
const KID = /^[A-Za-z0-9_.:-]{1,128}$/;
const CTX_KEY = /^[A-Za-z][A-Za-z0-9_.-]{0,62}$/;
export const MAX_CTX_CLAIMS = 16;
export const MAX_CTX_VALUE_LENGTH = 256;
const MAX_OP_LENGTH = 4200;

export interface LinkClaims {
  readonly iss: string;
  readonly aud: string;
  readonly op: string;
  readonly jti: string;
  readonly iat: number;
  readonly exp: number;
  readonly bdh: string | undefined;
  readonly prv: string | undefined;
  readonly ctx: Readonly<Record<string, string>>;
}

export interface LinkHeader {
  readonly alg: LinkAlgorithm;
  readonly kid: string;
}

function malformed(element: number, message: string): never {
  throw new ChainError("malformed", message, element);
}

function isTime(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

export function isLinkHeader(header: Readonly<Record<string, unknown>>): boolean {
  return header.typ === LINK_TYPE;
}

export function readLinkHeader(
  jws: ParsedJws,
  element: number,
  allowed: readonly LinkAlgorithm[],
): LinkHeader {
  const { header } = jws;
  if (header.typ !== LINK_TYPE) {
    throw new ChainError("wrong_type", `element is not a call link (typ must be "${LINK_TYPE}").`, element);
  }
  for (const key of Object.keys(header)) {
    if (!LINK_HEADER_KEYS.has(key)) malformed(element, `link header parameter "${key}" is not allowed.`);
  }
  const alg = header.alg;
  if (typeof alg !== "string" || !(allowed as readonly string[]).includes(alg)) {
    throw new ChainError("alg_not_allowed", `algorithm ${JSON.stringify(alg)} is not allowed.`, element);
  }
  if (typeof header.kid !== "string" || !KID.test(header.kid)) malformed(element, "link header needs a kid.");
  return { alg: alg as LinkAlgorithm, kid: header.kid };
}

function readCtx(value: unknown, element: number): Readonly<Record<string, string>> {
  if (value === undefined) return {};
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    malformed(element, "ctx must be an object of strings.");
  }
  const entries = Object.entries(value);
  if (entries.length > MAX_CTX_CLAIMS) malformed(element, `ctx holds more than ${MAX_CTX_CLAIMS} claims.`);
  for (const [key, claim] of entries) {
    if (!CTX_KEY.test(key) || typeof claim !== "string" || claim.length > MAX_CTX_VALUE_LENGTH) {
      malformed(element, `ctx claim "${key.slice(0, 64)}" is not a short string.`);
    }
  }
  return value as Readonly<Record<string, string>>;
}

export function readLinkClaims(jws: ParsedJws, element: number): LinkClaims {
  const claims = jws.payload;
  for (const key of Object.keys(claims)) {
    if (!LINK_CLAIM_KEYS.has(key)) malformed(element, `link claim "${key.slice(0, 64)}" is not allowed.`);
  }
  const { iss, aud, op, jti, iat, exp, bdh, prv } = claims;
  if (typeof iss !== "string" || !isServiceId(iss)) malformed(element, "iss must be a service id.");
  if (typeof aud !== "string" || !isServiceId(aud)) malformed(element, "aud must be a service id.");
  if (typeof op !== "string" || op.length > MAX_OP_LENGTH) malformed(element, "op must be a string.");
  if (typeof jti !== "string" || !JTI.test(jti))
    malformed(element, "jti must be 22-64 base64url characters.");
  if (!isTime(iat) || !isTime(exp)) malformed(element, "iat and exp must be whole seconds.");
  if (bdh !== undefined && (typeof bdh !== "string" || !HASH.test(bdh))) {
    malformed(element, "bdh must be a base64url SHA-256.");
  }
  if (prv !== undefined && (typeof prv !== "string" || !HASH.test(prv))) {
    malformed(element, "prv must be a base64url SHA-256.");
  }
  return { iss, aud, op, jti, iat, exp, bdh, prv, ctx: readCtx(claims.ctx, element) };
}
