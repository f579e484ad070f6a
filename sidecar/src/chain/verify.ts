/**
 * Verification of a received `Custody-Chain`, in the order the contract fixes (ARCHITECTURE.md,
 * "Call-chain tokens"), failing closed with one reason per refusal:
 *   1. limits; 2. the head (addressed to us, for this very request, fresh); 3. every earlier link
 *   and the relations between neighbours; 4. e0; (5. policy: elsewhere); then the body hash and the
 *   jti. The last two are separate steps (checkBody, claimHead) so that the inbound side decides
 *   everything it can before it reads a byte of the body, and spends a jti only on an allowed call.
 */

import { JwtError, type VerifiedJwt, verifyParsedJwt } from "../../../pki/src/jwt.js";
import { type ReplayGuard, ReplayStoreUnavailableError } from "../replay/guard.js";
import type { VerifiedElementCache } from "./cache.js";
import { ChainError } from "./errors.js";
import { type ParsedJws, parseCompactJws, sha256Base64url, verifySignature } from "./jws.js";
import { CHAIN_SEPARATOR, type ChainLimits, DEFAULT_LIMITS } from "./limits.js";
import { isLinkHeader, type LinkClaims, readLinkClaims, readLinkHeader } from "./link.js";
import { formatOperation, type Operation, parseOperationClaim } from "./normalize.js";
import { edgeAudiencesOf, type ServiceInfo, type TrustView } from "./trust.js";

export interface VerifiedLink extends LinkClaims {
  readonly index: number;
  readonly text: string;
  readonly hash: string;
  readonly kid: string;
  readonly operation: Operation;
}

export interface InitialToken {
  readonly index: 0;
  readonly text: string;
  readonly hash: string;
  readonly issuer: string;
  readonly subject: string;
  /**
   * `identity`: Custody's token service vouching for a service; `user`: an external IdP's token;
   * `delegated`: the token service's RFC 8693 exchange of a user's token, held by `actor` (an edge).
   */
  readonly kind: "identity" | "user" | "delegated";
  readonly actor: string | undefined;
  readonly scopes: readonly string[];
  readonly audiences: readonly string[];
  readonly expiresAt: number;
  readonly claims: Readonly<Record<string, unknown>>;
}

export interface VerifiedChain {
  readonly elements: readonly string[];
  /** Links, oldest first; the last one is the head, addressed to this service. */
  readonly links: readonly VerifiedLink[];
  readonly head: VerifiedLink;
  readonly initial: InitialToken | undefined;
}

/** What actually arrived, to hold the head against. */
export interface IncomingCall {
  /** This service's id: the head's `aud` must be it. */
  readonly self: string;
  /**
   * The service the connection is authenticated as (TLS client certificate), when known. The head
   * must be signed by it: the link proves who signed, TLS who is connected, and they must agree, or
   * a captured (still unused) chain could be played by another workload. Checked before the jti is
   * spent, so such an attempt cannot use the chain up either.
   */
  readonly peer?: string | undefined;
  readonly operation: Operation;
  /** base64url SHA-256 of the received body, or undefined when there is no body. */
  readonly bodyHash: string | undefined;
  readonly nowSeconds: number;
}

export interface VerifyOptions {
  readonly limits?: ChainLimits;
  readonly cache?: VerifiedElementCache<VerifiedLink>;
}

function checkLimits(value: string | undefined, limits: ChainLimits): string[] {
  if (value === undefined || value === "") throw new ChainError("missing_chain", "no Custody-Chain header.");
  if (Buffer.byteLength(value, "utf8") > limits.maxHeaderBytes) {
    throw new ChainError("header_too_large", `Custody-Chain is larger than ${limits.maxHeaderBytes} bytes.`);
  }
  const elements = value.split(CHAIN_SEPARATOR);
  if (elements.length > limits.maxDepth) {
    throw new ChainError("chain_too_deep", `chain has more than ${limits.maxDepth} elements.`);
  }
  for (const [index, element] of elements.entries()) {
    if (element.length > limits.maxElementBytes) {
      throw new ChainError(
        "element_too_large",
        `element is larger than ${limits.maxElementBytes} bytes.`,
        index,
      );
    }
  }
  return elements;
}

/**
 * The verified link as one explicit object literal: on the hot path, spreading claims and then adding
 * properties costs microseconds per element in V8, more than everything else but the signature.
 */
function verifiedLink(
  claims: LinkClaims,
  index: number,
  text: string,
  hash: string,
  kid: string,
  operation: Operation,
): VerifiedLink {
  return {
    iss: claims.iss,
    aud: claims.aud,
    op: claims.op,
    jti: claims.jti,
    iat: claims.iat,
    exp: claims.exp,
    bdh: claims.bdh,
    prv: claims.prv,
    ctx: claims.ctx,
    index,
    text,
    hash,
    kid,
    operation,
  };
}

/** Checks a parsed link's shape and its signature with the registry key its `kid` names. */
function verifyLinkSignature(
  jws: ParsedJws,
  hash: string,
  index: number,
  trust: TrustView,
  limits: ChainLimits,
): VerifiedLink {
  const header = readLinkHeader(jws, index, limits.linkAlgorithms);
  const claims = readLinkClaims(jws, index);
  const key = trust.serviceKey(header.kid);
  if (key === undefined) throw new ChainError("unknown_key", "kid is not a published service key.", index);
  if (key.serviceId !== claims.iss) {
    throw new ChainError("key_issuer_mismatch", "kid belongs to another service than iss.", index);
  }
  if (key.alg !== header.alg) throw new ChainError("alg_not_allowed", "alg does not match the key.", index);
  if (!verifySignature(header.alg, key.key, jws.signingInput, jws.signature)) {
    throw new ChainError("bad_signature", "signature does not verify.", index);
  }
  // A service never calls itself through the mesh: a link it addresses to itself would be received
  // and continued by its own signer alone, so nobody honest would ever hold its iat against a clock.
  if (claims.iss === claims.aud) {
    throw new ChainError("self_link", "a link may not be addressed to the service that signed it.", index);
  }
  if (claims.exp < claims.iat) throw new ChainError("lifetime_too_long", "exp is before iat.", index);
  if (claims.exp - claims.iat > limits.maxLinkLifetimeSeconds) {
    throw new ChainError(
      "lifetime_too_long",
      `link lives longer than ${limits.maxLinkLifetimeSeconds} seconds.`,
      index,
    );
  }
  let operation: Operation;
  try {
    operation = parseOperationClaim(claims.op);
  } catch {
    throw new ChainError("malformed", "op is not a normalized operation.", index);
  }
  return verifiedLink(claims, index, jws.text, hash, header.kid, operation);
}

/**
 * The head: signed by a published key of its `iss`, addressed to us, over the connection of the
 * service that signed it, for this very operation, and fresh. Freshness is judged on our clock: the
 * head's `iat` within skew of now, not only `exp`, because the neighbour check below trusts each
 * link's `iat` to say when the link before it was continued — a signer that backdated its head could
 * otherwise keep continuing a link that had long expired.
 */
function verifyHead(
  text: string,
  index: number,
  call: Omit<IncomingCall, "bodyHash">,
  trust: TrustView,
  limits: ChainLimits,
): VerifiedLink {
  const head = verifyLinkSignature(parseCompactJws(text, index), sha256Base64url(text), index, trust, limits);
  if (head.aud !== call.self)
    throw new ChainError("audience_mismatch", "head is addressed to another service.");
  if (call.peer !== undefined && head.iss !== call.peer) {
    throw new ChainError(
      "peer_mismatch",
      `head was signed by ${head.iss}, but ${call.peer} is connected.`,
      index,
    );
  }
  if (head.op !== formatOperation(call.operation)) {
    throw new ChainError("operation_mismatch", "head was signed for another operation.", index);
  }
  const skew = limits.clockSkewSeconds;
  if (head.exp < call.nowSeconds - skew) throw new ChainError("expired", "head has expired.", index);
  if (head.iat > call.nowSeconds + skew)
    throw new ChainError("issued_in_future", "head iat is in the future.", index);
  if (head.iat < call.nowSeconds - skew) {
    throw new ChainError(
      "stale",
      `head was issued ${call.nowSeconds - head.iat} s ago; a head must be issued within ${skew} s of its receipt.`,
      index,
    );
  }
  return head;
}

/**
 * The body against the hash the head's signer bound (`bdh`). `bodyHash` is the received body's
 * base64url SHA-256, undefined for an empty body.
 */
export function checkBody(head: VerifiedLink, bodyHash: string | undefined): void {
  if (head.bdh !== bodyHash) {
    throw new ChainError("body_mismatch", "body does not match the hash the caller signed.", head.index);
  }
}

/**
 * Spends the head's jti: a link is accepted once. Done last, once everything else allowed the call,
 * so that a caller refused by policy or quota cannot fill the replay store on everyone's behalf.
 */
export async function claimHead(head: VerifiedLink, replay: ReplayGuard, limits: ChainLimits): Promise<void> {
  const skew = limits.clockSkewSeconds;
  let fresh: boolean;
  try {
    // Remember the jti for as long as any replica could still accept the link: the head is accepted
    // while now (whole seconds, so up to 1 s late) ≤ exp + skew, and another replica's clock may be
    // up to `skew` behind ours.
    fresh = await replay.claim(head.jti, (head.exp + 2 * skew + 1) * 1000);
  } catch (error) {
    if (error instanceof ReplayStoreUnavailableError) {
      throw new ChainError(
        "replay_store_unavailable",
        "replay store unavailable; refusing (fail closed).",
        head.index,
      );
    }
    throw error;
  }
  if (!fresh) throw new ChainError("replayed", "this link was already used.", head.index);
}

/** Relations between element i and its successor: who held the chain, hash link, and time order. */
function checkNeighbours(earlier: VerifiedLink, later: VerifiedLink, skew: number): void {
  if (earlier.aud !== later.iss) {
    throw new ChainError(
      "custody_broken",
      `element ${earlier.index} was addressed to ${earlier.aud}, but ${later.iss} continued the chain.`,
      later.index,
    );
  }
  if (later.prv !== earlier.hash) {
    throw new ChainError("hash_link_broken", "prv does not hash the previous element.", later.index);
  }
  if (earlier.exp < later.iat - skew) {
    throw new ChainError(
      "expired",
      `element ${earlier.index} had expired when it was continued.`,
      earlier.index,
    );
  }
  if (later.iat < earlier.iat - skew) {
    throw new ChainError("out_of_order", "element was issued before the one it continues.", later.index);
  }
}

/** Initial-token checks that are not the chain's own reason codes all report initial_token_invalid. */
export function readInitialToken(
  jws: ParsedJws,
  hash: string,
  trust: TrustView,
  limits: ChainLimits,
  now: number,
): InitialToken {
  let token: VerifiedJwt;
  try {
    token = verifyParsedJwt(jws, {
      keyFor: (issuer, kid) => trust.issuerKey(issuer, kid),
      algorithms: limits.initialTokenAlgorithms,
      nowSeconds: now,
      skewSeconds: limits.clockSkewSeconds,
    });
  } catch (error) {
    if (!(error instanceof JwtError)) throw error;
    throw new ChainError(
      error.code === "alg_not_allowed" ? "alg_not_allowed" : "initial_token_invalid",
      error.message,
      0,
    );
  }
  const actor = actorOf(token.claims.act);
  const kind =
    token.issuer !== trust.tokenServiceIssuer ? "user" : actor === undefined ? "identity" : "delegated";
  return {
    index: 0,
    text: jws.text,
    hash,
    issuer: token.issuer,
    subject: token.subject,
    kind,
    actor,
    scopes: token.scopes,
    audiences: token.audiences,
    expiresAt: token.expiresAt,
    claims: token.claims,
  };
}

/** A user's token is admitted only at the edge its audience names: one edge's token is not another's. */
export function checkUserAudience(token: InitialToken, edge: ServiceInfo): void {
  const accepted = edgeAudiencesOf(edge);
  if (!token.audiences.some((audience) => accepted.includes(audience))) {
    throw new ChainError(
      "initial_token_audience",
      `the user's token is addressed to ${token.audiences.join(", ") || "no audience"}, not to the edge ${edge.id} (${accepted.join(", ")}).`,
      0,
    );
  }
}

/** RFC 8693 `act.sub`: the service that exchanged a user's token for this one. */
function actorOf(act: unknown): string | undefined {
  if (typeof act !== "object" || act === null || !("sub" in act)) return undefined;
  return typeof act.sub === "string" ? act.sub : undefined;
}

/** e0 as an initial token: it must verify and belong to the service that holds it (or an edge). */
function verifyInitialToken(
  jws: ParsedJws,
  hash: string,
  first: VerifiedLink,
  trust: TrustView,
  limits: ChainLimits,
  now: number,
): InitialToken {
  const token = readInitialToken(jws, hash, trust, limits, now);
  if (first.prv !== token.hash) {
    throw new ChainError("hash_link_broken", "prv does not hash the initial token.", first.index);
  }
  // A service's own identity token starts its own chains; anything else must have been admitted by
  // an edge (a user's token, or another workload's identity token presented as a bearer credential).
  if (token.kind === "identity" && token.subject === first.iss) return token;
  if (token.kind === "delegated" && token.actor !== first.iss) {
    throw new ChainError(
      "initial_token_not_admitted",
      "the exchanged token was issued to another service.",
      0,
    );
  }
  const edge = trust.service(first.iss);
  if (edge?.edge !== true) {
    const what = token.kind === "identity" ? "another service's identity token" : "a user's token";
    throw new ChainError(
      "initial_token_not_admitted",
      `${first.iss} is not an edge service, so it cannot start a chain with ${what}.`,
      0,
    );
  }
  // What the edge's sidecar checked on admission holds for every receiver, offline.
  if (token.kind === "user") checkUserAudience(token, edge);
  return token;
}

/**
 * Steps 1–4 for a request whose body has not been read: everything but the body hash and the jti,
 * which the caller checks and spends once policy and quota allowed the call (checkBody, claimHead).
 * A caller that is not authenticated by then has had nothing read beyond its headers.
 */
export function verifyChainHeaders(
  value: string | undefined,
  call: Omit<IncomingCall, "bodyHash">,
  trust: TrustView,
  options: VerifyOptions = {},
): VerifiedChain {
  const limits = options.limits ?? DEFAULT_LIMITS;
  const elements = checkLimits(value, limits);
  const headIndex = elements.length - 1;
  const head = verifyHead(elements[headIndex] ?? "", headIndex, call, trust, limits);

  const links: VerifiedLink[] = [head];
  let initial: InitialToken | undefined;
  for (let index = headIndex - 1; index >= 0; index--) {
    const text = elements[index] ?? "";
    const later = links[0] as VerifiedLink;
    // Each element is hashed and parsed once; the cache only ever holds links.
    const hash = sha256Base64url(text);
    const hit = options.cache?.get(hash, trust);
    let link: VerifiedLink;
    if (hit !== undefined) {
      // A cached entry is position-independent: re-stamp the index for this chain.
      link = verifiedLink(hit, index, hit.text, hit.hash, hit.kid, hit.operation);
    } else {
      const jws = parseCompactJws(text, index);
      if (index === 0 && !isLinkHeader(jws.header)) {
        initial = verifyInitialToken(jws, hash, later, trust, limits, call.nowSeconds);
        break;
      }
      link = verifyLinkSignature(jws, hash, index, trust, limits);
      options.cache?.set(hash, trust, link);
    }
    if (link.iat > call.nowSeconds + limits.clockSkewSeconds) {
      throw new ChainError("issued_in_future", "element iat is in the future.", index);
    }
    if (link.iat < call.nowSeconds - limits.maxChainAgeSeconds) {
      throw new ChainError(
        "chain_too_old",
        `element was issued more than ${limits.maxChainAgeSeconds} s ago; a call chain is one request in flight.`,
        index,
      );
    }
    checkNeighbours(link, later, limits.clockSkewSeconds);
    links.unshift(link);
  }
  const origin = links[0] as VerifiedLink;
  if (initial === undefined && origin.prv !== undefined) {
    throw new ChainError(
      "hash_link_broken",
      "the first link points to an element that is missing.",
      origin.index,
    );
  }
  return { elements, links, head, initial };
}

/** The whole verification of a received chain, its body and its jti (steps 1–4), in one call. */
export async function verifyChain(
  value: string | undefined,
  call: IncomingCall,
  trust: TrustView,
  replay: ReplayGuard,
  options: VerifyOptions = {},
): Promise<VerifiedChain> {
  const chain = verifyChainHeaders(value, call, trust, options);
  await claimHead(chain.head, replay, options.limits ?? DEFAULT_LIMITS);
  checkBody(chain.head, call.bodyHash);
  return chain;
}
