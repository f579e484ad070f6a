/**
 * `custody token inspect` without the command line: a `Custody-Chain` value decoded element by
 * element and, given a registry, verified by the receiver's own code (chain/verify.ts), so what this
 * says about a chain is what a sidecar would say. Nothing is recorded: no jti is spent.
 *
 * The receiver stops at the first refusal. An inspector should not: one tampered element would hide
 * whether the rest is sound. So after a refusal blamed on element k, the chain ending just before k
 * is verified again as if e[k-1] were the head, as of the moment e[k] continued it (`iat`), and so on
 * down to e0. Every element ends up `ok`, `failed` with the receiver's reason code, or `not_verified`.
 */
import { CustodyError } from "../../../crds/src/errors.js";
import type { Registry } from "../../../crds/src/registry-schema.js";
import { printable } from "../../../pki/src/dn.js";
import { ChainError, type ChainReason } from "../chain/errors.js";
import { type ParsedJws, parseCompactJws, sha256Base64url } from "../chain/jws.js";
import { CHAIN_SEPARATOR, type ChainLimits, DEFAULT_LIMITS } from "../chain/limits.js";
import { isLinkHeader, readLinkClaims } from "../chain/link.js";
import { type Operation, parseOperationClaim } from "../chain/normalize.js";
import { RegistryTrustView } from "../chain/registry-view.js";
import type { TrustView } from "../chain/trust.js";
import { type IncomingCall, readInitialToken, verifyChain } from "../chain/verify.js";
import type { ReplayGuard } from "../replay/guard.js";
import { SEALED_PREFIX } from "../runtime/app-chain.js";

/** Input bounds: four times what a receiver accepts, so oversized chains can still be looked at. */
export const MAX_INSPECT_BYTES = 4 * DEFAULT_LIMITS.maxHeaderBytes;
export const MAX_INSPECT_ELEMENTS = 4 * DEFAULT_LIMITS.maxDepth;
/** Characters of one claim value shown; the rest is summarized, so one claim cannot flood a terminal. */
export const MAX_VALUE_CHARS = 96;
const MAX_CLAIMS_SHOWN = 32;
const MAX_KEY_CHARS = 48;

export class InspectError extends CustodyError {
  declare readonly code: "empty_chain" | "chain_too_large";
  constructor(code: InspectError["code"], message: string) {
    super(code, message);
  }
}

export type ElementVerdict =
  | { readonly status: "ok"; readonly note?: string }
  | { readonly status: "failed"; readonly reason: ChainReason; readonly message: string }
  | { readonly status: "not_verified"; readonly message: string };

export interface InspectedElement {
  readonly index: number;
  /** `link`: a call link; `token`: an initial token (identity JWT, user token); `unreadable`: not a JWS. */
  readonly kind: "link" | "token" | "unreadable";
  readonly bytes: number;
  /** base64url SHA-256 of the element's exact text: what the next link's `prv` must be. */
  readonly hash: string;
  /** `iss`: the calling service of a link, the issuer of a token. */
  readonly issuer: string | undefined;
  /** `aud`: the called service of a link; a token's audiences, comma-separated. */
  readonly audience: string | undefined;
  /** A link's `op`. */
  readonly operation: string | undefined;
  readonly issuedAt: number | undefined;
  readonly expiresAt: number | undefined;
  readonly alg: string | undefined;
  readonly kid: string | undefined;
  /** Every other claim, in the order the element carries them, as short printable text. */
  readonly claims: Readonly<Record<string, string>>;
  /** Why the element could not be decoded, or why its claims are not a valid link. */
  readonly problem: string | undefined;
  readonly verdict: ElementVerdict;
}

export interface ChainVerification {
  readonly generation: number;
  /** What a receiver decides: the first refusal, in the receiver's order. */
  readonly ok: boolean;
  readonly reason: ChainReason | undefined;
  /** The element the refusal is blamed on. */
  readonly element: number | undefined;
  readonly message: string | undefined;
  /** What a receiver checks that this verification could not, in words. */
  readonly unchecked: readonly string[];
}

export interface InspectedChain {
  readonly bytes: number;
  /** Oldest first; the last one is the head. */
  readonly elements: readonly InspectedElement[];
  /** The time verification used and relative times refer to (seconds since the epoch). */
  readonly at: number;
  /** Undefined without a registry: decoded only. */
  readonly verification: ChainVerification | undefined;
}

/** What the chain arrived with, for checking the head's binding to the request. */
export interface InspectRequest {
  /** The service the chain was presented to: the head's `aud` must name it. */
  readonly receiver?: string | undefined;
  /** The request it came with, normalized (normalizeOperation): the head's `op` must be it. */
  readonly operation?: Operation | undefined;
  /** The body it came with: `sha256` undefined for none. Absent: the body binding is not checked. */
  readonly body?: { readonly sha256: string | undefined } | undefined;
}

export interface InspectOptions {
  /** Verify against this registry; without one the chain is only decoded. */
  readonly registry?: Registry | undefined;
  /** Verify as of this time, in seconds since the epoch (default: now). */
  readonly nowSeconds?: number | undefined;
  readonly request?: InspectRequest | undefined;
  readonly limits?: ChainLimits | undefined;
}

/** A dry run spends nothing: every jti is fresh, and none is remembered. */
const NO_REPLAY: ReplayGuard = { claim: async () => true };

const LIMIT_REASONS: ReadonlySet<ChainReason> = new Set([
  "missing_chain",
  "header_too_large",
  "chain_too_deep",
  "element_too_large",
]);

/** Short, printable text: control and bidi characters escaped, then cut at `max` characters. */
export function shown(text: string, max = MAX_VALUE_CHARS): string {
  const safe = printable(text);
  const characters = [...safe];
  if (characters.length <= max) return safe;
  return `${characters.slice(0, max).join("")}… (${characters.length} characters)`;
}

function showValue(value: unknown): string {
  if (typeof value === "string") return shown(value);
  return shown(JSON.stringify(value) ?? String(value));
}

function stringClaim(value: unknown): string | undefined {
  return typeof value === "string" ? shown(value) : undefined;
}

function timeClaim(value: unknown): number | undefined {
  return typeof value === "number" && Number.isSafeInteger(value) ? value : undefined;
}

function audienceClaim(value: unknown): string | undefined {
  if (typeof value === "string") return shown(value);
  if (Array.isArray(value) && value.every((item) => typeof item === "string")) {
    return shown(value.join(", "));
  }
  return value === undefined ? undefined : showValue(value);
}

/**
 * The claims not already shown on the element's first line; a link's `ctx` one entry per claim.
 * Object.fromEntries defines own properties, so a claim named `__proto__` stays a claim.
 */
function otherClaims(payload: Readonly<Record<string, unknown>>): Record<string, string> {
  const shownFirst = new Set(["iss", "aud", "op", "iat", "exp"]);
  const claims: [string, string][] = [];
  for (const [name, value] of Object.entries(payload)) {
    if (shownFirst.has(name)) continue;
    if (name === "ctx" && typeof value === "object" && value !== null && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) {
        claims.push([`ctx.${shown(key, MAX_KEY_CHARS)}`, showValue(inner)]);
      }
    } else {
      claims.push([shown(name, MAX_KEY_CHARS), showValue(value)]);
    }
  }
  if (claims.length <= MAX_CLAIMS_SHOWN) return Object.fromEntries(claims);
  const more = claims.length - MAX_CLAIMS_SHOWN;
  return Object.fromEntries([...claims.slice(0, MAX_CLAIMS_SHOWN), ["…", `${more} more claims`]]);
}

type Decoded = Omit<InspectedElement, "verdict">;

/** An element shown without being decoded, and why. */
function unreadable(base: Pick<Decoded, "index" | "bytes" | "hash">, problem: string): Decoded {
  return {
    ...base,
    kind: "unreadable",
    issuer: undefined,
    audience: undefined,
    operation: undefined,
    issuedAt: undefined,
    expiresAt: undefined,
    alg: undefined,
    kid: undefined,
    claims: {},
    problem,
  };
}

function decodeElement(text: string, index: number): Decoded {
  const base = { index, bytes: Buffer.byteLength(text, "utf8"), hash: sha256Base64url(text) };
  if (index === 0 && text.startsWith(SEALED_PREFIX)) {
    // What an app receives: the initial token sealed by its sidecar, readable by that sidecar alone.
    return unreadable(
      base,
      "sealed: the initial token as an app receives it, sealed by its sidecar; its issuer, subject and scope are in the Custody-Initial-* headers the app got",
    );
  }
  let jws: ParsedJws;
  try {
    jws = parseCompactJws(text, index);
  } catch (error) {
    if (!(error instanceof ChainError)) throw error;
    return unreadable(base, `${error.code}: element ${error.message}`);
  }
  const { header, payload } = jws;
  const link = isLinkHeader(header);
  let problem: string | undefined;
  if (link) {
    try {
      readLinkClaims(jws, index);
    } catch (error) {
      if (!(error instanceof ChainError)) throw error;
      problem = `${error.code}: ${error.message}`;
    }
  }
  return {
    ...base,
    kind: link ? "link" : "token",
    issuer: stringClaim(payload.iss),
    audience: audienceClaim(payload.aud),
    operation: link ? stringClaim(payload.op) : undefined,
    issuedAt: timeClaim(payload.iat),
    expiresAt: timeClaim(payload.exp),
    alg: stringClaim(header.alg),
    kid: stringClaim(header.kid),
    claims: otherClaims(payload),
    problem,
  };
}

/** The input as a chain: surrounding blanks and a pasted `Custody-Chain:` header name removed. */
export function chainText(value: string): string {
  const trimmed = value.trim();
  const text = trimmed.replace(/^custody-chain\s*:\s*/i, "");
  if (text === "") throw new InspectError("empty_chain", "the Custody-Chain value is empty.");
  if (Buffer.byteLength(text, "utf8") > MAX_INSPECT_BYTES) {
    throw new InspectError("chain_too_large", `the chain is larger than ${MAX_INSPECT_BYTES} bytes.`);
  }
  if (text.split(CHAIN_SEPARATOR).length > MAX_INSPECT_ELEMENTS) {
    throw new InspectError("chain_too_large", `the chain has more than ${MAX_INSPECT_ELEMENTS} elements.`);
  }
  return text;
}

/** What a link binds its call to (`aud`, `op`, `bdh`), or undefined when `text` is not a readable link. */
export function linkBinding(text: string): { aud: string; op: string; bdh: string | undefined } | undefined {
  try {
    const { aud, op, bdh } = readLinkClaims(parseCompactJws(text, 0), 0);
    return { aud, op, bdh };
  } catch (error) {
    if (error instanceof ChainError) return undefined;
    throw error;
  }
}

/**
 * The call a head is held against: the request where given (only the real head came with one), else
 * the head's own claims, which then hold by construction.
 */
function callFor(head: string, request: InspectRequest, nowSeconds: number): IncomingCall {
  // Not a readable link: verifyChain refuses it with the precise reason before looking at the call.
  const claims = linkBinding(head);
  let own: Operation = { method: "GET", path: "/", query: "" };
  try {
    if (claims !== undefined) own = parseOperationClaim(claims.op);
  } catch {
    // An op that is not normalized: verifyChain refuses it as malformed.
  }
  return {
    self: request.receiver ?? claims?.aud ?? "",
    operation: request.operation ?? own,
    bodyHash: request.body === undefined ? claims?.bdh : request.body.sha256,
    nowSeconds,
  };
}

function failure(error: unknown): ChainError {
  if (error instanceof ChainError) return error;
  throw error;
}

interface Run {
  readonly error: ChainError | undefined;
}

async function verifyPrefix(
  elements: readonly string[],
  end: number,
  request: InspectRequest,
  nowSeconds: number,
  trust: TrustView,
  limits: ChainLimits,
): Promise<Run> {
  const head = elements[end] ?? "";
  try {
    await verifyChain(
      elements.slice(0, end + 1).join(CHAIN_SEPARATOR),
      callFor(head, request, nowSeconds),
      trust,
      NO_REPLAY,
      { limits },
    );
    return { error: undefined };
  } catch (error) {
    return { error: failure(error) };
  }
}

/** e0 alone, when it is an initial token: who may hold it is a question about e1, answered elsewhere. */
function verifyInitialAlone(text: string, nowSeconds: number, trust: TrustView, limits: ChainLimits): Run {
  try {
    readInitialToken(parseCompactJws(text, 0), sha256Base64url(text), trust, limits, nowSeconds);
    return { error: undefined };
  } catch (error) {
    return { error: failure(error) };
  }
}

function verdictOf(error: ChainError): ElementVerdict {
  return { status: "failed", reason: error.code, message: error.message };
}

async function verifyElements(
  elements: readonly string[],
  decoded: readonly Decoded[],
  trust: TrustView,
  options: { request: InspectRequest; nowSeconds: number; limits: ChainLimits },
): Promise<{ verdicts: ElementVerdict[]; first: ChainError | undefined }> {
  const { request, limits } = options;
  const verdicts: ElementVerdict[] = decoded.map(() => ({
    status: "not_verified",
    message: "not reached",
  }));
  let end = elements.length - 1;
  let nowSeconds = options.nowSeconds;
  let run =
    end === 0 && decoded[0]?.kind === "token"
      ? verifyInitialAlone(elements[0] ?? "", nowSeconds, trust, limits)
      : await verifyPrefix(elements, end, request, nowSeconds, trust, limits);
  const first = run.error;
  if (first !== undefined && LIMIT_REASONS.has(first.code)) {
    const message = `a receiver refuses the whole chain before verifying it (${first.code})`;
    return {
      verdicts: verdicts.map((_, index) =>
        index === first.element ? verdictOf(first) : { status: "not_verified", message },
      ),
      first,
    };
  }
  for (;;) {
    const { error } = run;
    if (error === undefined) {
      for (let index = 0; index <= end; index++) verdicts[index] = { status: "ok" };
      break;
    }
    // Refusals with no element are about the head (e.g. addressed to another service).
    const blamed = Math.min(error.element ?? end, end);
    for (let index = blamed + 1; index <= end; index++) verdicts[index] = { status: "ok" };
    verdicts[blamed] = verdictOf(error);
    // The rest is judged as of when the blamed element continued it (its own iat, if readable).
    nowSeconds = decoded[blamed]?.issuedAt ?? nowSeconds;
    end = blamed - 1;
    if (end < 0) break;
    if (end === 0 && decoded[0]?.kind === "token") {
      run = verifyInitialAlone(elements[0] ?? "", nowSeconds, trust, limits);
      if (run.error === undefined) {
        verdicts[0] = {
          status: "ok",
          note: "verified alone: e1 did not verify, so who holds it was not checked",
        };
        break;
      }
      continue;
    }
    // e[end] was not the head the request came with: it is held against its own claims.
    run = await verifyPrefix(elements, end, {}, nowSeconds, trust, limits);
  }
  return { verdicts, first };
}

function uncheckedParts(request: InspectRequest, head: Decoded | undefined, count: number): string[] {
  if (count === 1 && head?.kind === "token") {
    return ["who may present it: a token alone is a bearer credential, which only an edge service admits"];
  }
  const unchecked = ["replay (a dry run spends no jti)", "the TLS peer that presented the head"];
  if (request.receiver === undefined) unchecked.push("the receiver (the head's aud was taken as is)");
  if (request.operation === undefined) unchecked.push("the request (the head's op was taken as is)");
  if (request.body === undefined && head?.claims.bdh !== undefined) {
    unchecked.push("the body (the head binds one by its hash; none was given)");
  }
  return unchecked;
}

/**
 * Decodes a `Custody-Chain` value and, with `options.registry`, verifies it as a receiver would at
 * `options.nowSeconds`, holding the head against `options.request` where given. Throws InspectError
 * only for input beyond the inspector's bounds; everything wrong with the chain itself is reported.
 */
export async function inspectChain(value: string, options: InspectOptions = {}): Promise<InspectedChain> {
  const text = chainText(value);
  const elements = text.split(CHAIN_SEPARATOR);
  const decoded = elements.map((element, index) => decodeElement(element, index));
  const at = options.nowSeconds ?? Math.floor(Date.now() / 1000);
  const bytes = Buffer.byteLength(text, "utf8");
  const { registry } = options;
  if (registry === undefined) {
    const verdict: ElementVerdict = { status: "not_verified", message: "no registry given" };
    return {
      bytes,
      elements: decoded.map((element) => ({ ...element, verdict })),
      at,
      verification: undefined,
    };
  }
  // Keys are judged at `at` too: a key whose certificate had expired by then verifies nothing.
  const trust = new RegistryTrustView(registry, { now: () => at * 1000 });
  const request = options.request ?? {};
  const { verdicts, first } = await verifyElements(elements, decoded, trust, {
    request,
    nowSeconds: at,
    limits: options.limits ?? DEFAULT_LIMITS,
  });
  const headIndex = elements.length - 1;
  return {
    bytes,
    elements: decoded.map((element, index) => ({
      ...element,
      verdict: verdicts[index] ?? { status: "not_verified", message: "not reached" },
    })),
    at,
    verification: {
      generation: registry.generation,
      ok: first === undefined,
      reason: first?.code,
      element:
        first === undefined || LIMIT_REASONS.has(first.code) ? first?.element : (first.element ?? headIndex),
      message: first?.message,
      unchecked: uncheckedParts(request, decoded[headIndex], elements.length),
    },
  };
}
