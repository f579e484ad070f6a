/**
 * The talk's nested, self-issued JWT ("Beyond OAuth2", seed 003, slides 68-75 and 91-96), as the
 * baseline `npm run bench:chain` compares Custody's flat, hash-linked chain against. Benchmark code
 * only: it is never shipped and nothing in sidecar/ imports it.
 *
 * Format, as on the slides: every service wraps the token it received in a new RS256 JWT with header
 * `{"alg":"RS256","typ":"JWT"}` (no kid: the key is found through `iss` in the service registry) and
 * claims, in this order: `ini` (the initial token from the auth server, first wrap only) or `jwt`
 * (the nested self-issued JWT, every later wrap), then `jti` (a UUID), `iss`, `aud`, `op` (slide 91
 * calls it `req`), `iat`, `exp`, and `bdy: true` when the body travels as a separate JWS.
 *
 * Verification the talk's way (slide 68: "call stack verified by verifying each JWT recursively"):
 * verify the outer RS256 JWT with the registry key of its `iss`, check that it is addressed to us,
 * for this operation, fresh and unseen; then descend into `jwt` layer by layer, verifying each with
 * the key of its own `iss` and checking custody (the inner `aud` is the outer `iss`) and time order,
 * down to `ini`, which verifies against its issuer's key.
 */
import { type KeyObject, randomUUID, verify } from "node:crypto";
import { signCompactJws } from "../sidecar/src/chain/jws.js";

export const NESTED_HEADER: Readonly<Record<string, string>> = { alg: "RS256", typ: "JWT" };

/** A service that wraps tokens: its id and its RSA-2048 private key. */
export interface NestedSigner {
  readonly serviceId: string;
  readonly privateKey: KeyObject;
}

/** The talk's registry (slide 71): `iss` → public key; plus the auth servers initial tokens come from. */
export interface NestedRegistry {
  serviceKey(iss: string): KeyObject | undefined;
  issuerKey(iss: string): KeyObject | undefined;
}

export interface NestedWrapRequest {
  readonly audience: string;
  /** `METHOD /path`, the same normalized text Custody signs as `op`. */
  readonly operation: string;
  readonly hasBody: boolean;
  /** The token this call continues: none on the first hop of a chain without an initial token. */
  readonly incoming?: { readonly kind: "ini" | "jwt"; readonly token: string } | undefined;
  readonly nowSeconds: number;
  readonly ttlSeconds: number;
}

/** Signs any RS256 JWT (used for the wraps and for the auth server's initial token). */
export function signRs256Jwt(
  header: Readonly<Record<string, unknown>>,
  claims: Readonly<Record<string, unknown>>,
  privateKey: KeyObject,
): string {
  // The JWS encoding is the same as Custody's; only the format of the claims differs.
  return signCompactJws({ ...header, alg: "RS256" }, claims, privateKey);
}

/** One hop: wraps the incoming token (if any) in a new self-issued JWT addressed to `audience`. */
export function wrapNested(signer: NestedSigner, request: NestedWrapRequest): string {
  const claims: Record<string, unknown> = {};
  if (request.incoming !== undefined) claims[request.incoming.kind] = request.incoming.token;
  claims.jti = randomUUID();
  claims.iss = signer.serviceId;
  claims.aud = request.audience;
  claims.op = request.operation;
  claims.iat = request.nowSeconds;
  claims.exp = request.nowSeconds + request.ttlSeconds;
  if (request.hasBody) claims.bdy = true;
  return signRs256Jwt(NESTED_HEADER, claims, signer.privateKey);
}

export class NestedTokenError extends Error {
  constructor(
    readonly reason: string,
    message: string,
    readonly layer: number,
  ) {
    super(`${reason} (layer ${layer}): ${message}`);
    this.name = "NestedTokenError";
  }
}

export interface NestedLayer {
  readonly iss: string;
  readonly aud: string;
  readonly op: string;
  readonly jti: string;
  readonly iat: number;
  readonly exp: number;
  readonly bdy: boolean;
  readonly inner: { readonly kind: "ini" | "jwt"; readonly token: string } | undefined;
}

export interface VerifiedNested {
  /** Outermost (addressed to us) first, origin last. */
  readonly layers: readonly NestedLayer[];
  readonly initial: Readonly<Record<string, unknown>> | undefined;
}

export interface NestedIncomingCall {
  readonly self: string;
  readonly operation: string;
  readonly hasBody: boolean;
  readonly nowSeconds: number;
}

/** The same single-use check Custody's head gets (sidecar/src/replay/guard.ts has this shape). */
export interface NestedReplayGuard {
  claim(jti: string, expiresAtMs: number): Promise<boolean>;
}

const SKEW_SECONDS = 5;
const MAX_LIFETIME_SECONDS = 60;

interface ParsedJwt {
  readonly header: Record<string, unknown>;
  readonly payload: Record<string, unknown>;
  readonly signingInput: string;
  readonly signature: Buffer;
}

function fail(reason: string, message: string, layer: number): never {
  throw new NestedTokenError(reason, message, layer);
}

function decodeJsonObject(segment: string, layer: number): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(segment, "base64url").toString("utf8"));
  } catch {
    fail("malformed", "segment is not base64url JSON.", layer);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    fail("malformed", "segment is not a JSON object.", layer);
  }
  return value as Record<string, unknown>;
}

function parseJwt(token: string, layer: number): ParsedJwt {
  const parts = token.split(".");
  if (parts.length !== 3) fail("malformed", "not a compact JWS.", layer);
  const [headerPart = "", payloadPart = "", signaturePart = ""] = parts;
  const header = decodeJsonObject(headerPart, layer);
  // RS256 only: never `none`, never HMAC (the key is public).
  if (header.alg !== "RS256") fail("alg_not_allowed", `alg ${JSON.stringify(header.alg)}.`, layer);
  return {
    header,
    payload: decodeJsonObject(payloadPart, layer),
    signingInput: `${headerPart}.${payloadPart}`,
    signature: Buffer.from(signaturePart, "base64url"),
  };
}

function checkSignature(jwt: ParsedJwt, key: KeyObject, layer: number): void {
  if (!verify("sha256", Buffer.from(jwt.signingInput, "ascii"), key, jwt.signature)) {
    fail("bad_signature", "signature does not verify.", layer);
  }
}

function isTime(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/** Verifies one self-issued layer with the registry key of its `iss` and reads its claims. */
function verifyLayer(token: string, registry: NestedRegistry, layer: number): NestedLayer {
  const jwt = parseJwt(token, layer);
  if (jwt.header.typ !== "JWT") fail("wrong_type", "typ must be JWT.", layer);
  const { iss, aud, op, jti, iat, exp, bdy, ini, jwt: nested } = jwt.payload;
  if (typeof iss !== "string") fail("malformed", "iss must be a string.", layer);
  const key = registry.serviceKey(iss);
  if (key === undefined) fail("unknown_key", `no registry key for ${iss}.`, layer);
  checkSignature(jwt, key, layer);
  if (typeof aud !== "string" || typeof op !== "string" || typeof jti !== "string") {
    fail("malformed", "aud, op and jti must be strings.", layer);
  }
  if (!isTime(iat) || !isTime(exp)) fail("malformed", "iat and exp must be whole seconds.", layer);
  if (exp < iat || exp - iat > MAX_LIFETIME_SECONDS) fail("lifetime_too_long", "bad lifetime.", layer);
  if (bdy !== undefined && typeof bdy !== "boolean") fail("malformed", "bdy must be a boolean.", layer);
  if (ini !== undefined && nested !== undefined) fail("malformed", "both ini and jwt.", layer);
  let inner: NestedLayer["inner"];
  if (typeof nested === "string") inner = { kind: "jwt", token: nested };
  else if (typeof ini === "string") inner = { kind: "ini", token: ini };
  else if (nested !== undefined || ini !== undefined) fail("malformed", "ini/jwt must be a string.", layer);
  return { iss, aud, op, jti, iat, exp, bdy: bdy === true, inner };
}

function verifyInitialToken(
  token: string,
  registry: NestedRegistry,
  holder: NestedLayer,
  nowSeconds: number,
  layer: number,
): Record<string, unknown> {
  const jwt = parseJwt(token, layer);
  const { iss, exp } = jwt.payload;
  if (typeof iss !== "string") fail("initial_token_invalid", "iss must be a string.", layer);
  const key = registry.issuerKey(iss);
  if (key === undefined) fail("initial_token_invalid", `issuer ${iss} is not trusted.`, layer);
  checkSignature(jwt, key, layer);
  if (typeof exp !== "number" || exp < nowSeconds - SKEW_SECONDS) {
    fail("initial_token_invalid", "initial token has expired.", layer);
  }
  if (holder.iat > exp + SKEW_SECONDS) fail("expired", "initial token expired before it was wrapped.", layer);
  return jwt.payload;
}

/** Verifies a nested token recursively, outermost layer first (the talk's way). */
export async function verifyNested(
  token: string,
  call: NestedIncomingCall,
  registry: NestedRegistry,
  replay: NestedReplayGuard,
): Promise<VerifiedNested> {
  const head = verifyLayer(token, registry, 0);
  if (head.aud !== call.self) fail("audience_mismatch", "addressed to another service.", 0);
  if (head.op !== call.operation) fail("operation_mismatch", "signed for another operation.", 0);
  if (head.exp < call.nowSeconds - SKEW_SECONDS) fail("expired", "token has expired.", 0);
  if (head.iat > call.nowSeconds + SKEW_SECONDS) fail("issued_in_future", "iat is in the future.", 0);
  if (head.bdy !== call.hasBody) fail("body_mismatch", "bdy does not match the request.", 0);
  if (!(await replay.claim(head.jti, (head.exp + SKEW_SECONDS) * 1000))) fail("replayed", "jti seen.", 0);

  const layers: NestedLayer[] = [head];
  let initial: Record<string, unknown> | undefined;
  let outer = head;
  while (outer.inner !== undefined) {
    const layer = layers.length;
    if (outer.inner.kind === "ini") {
      initial = verifyInitialToken(outer.inner.token, registry, outer, call.nowSeconds, layer);
      break;
    }
    const inner = verifyLayer(outer.inner.token, registry, layer);
    // Custody continuity: whoever wrapped a token must be the one it was addressed to.
    if (inner.aud !== outer.iss)
      fail("custody_broken", `${outer.iss} wrapped a token for ${inner.aud}.`, layer);
    if (inner.exp < outer.iat - SKEW_SECONDS) fail("expired", "wrapped after it expired.", layer);
    if (outer.iat < inner.iat - SKEW_SECONDS) fail("out_of_order", "wrapped before it was issued.", layer);
    layers.push(inner);
    outer = inner;
  }
  return { layers, initial };
}
