/**
 * Keeps an identity JWT from the token service for the current workload certificate: fetched at
 * start and whenever the certificate changes, refreshed at 2/3 of its life (jittered, so a fleet
 * restarted together does not refresh together), retried with capped exponential backoff while the
 * token service is unreachable. Until a token expires it stays in use: a token service outage is
 * invisible to calls for as long as the last token lives.
 */
import { isIP } from "node:net";
import { Agent, request } from "undici";
import { CustodyError } from "../../../crds/src/errors.js";
import { parseCompactJws } from "../../../pki/src/jws.js";
import type { WorkloadIdentity } from "./identity-files.js";

export interface IdentityToken {
  readonly token: string;
  readonly expiresAtMs: number;
  readonly issuedAtMs: number;
}

export type TokenFetcher = (identity: WorkloadIdentity) => Promise<IdentityToken>;

export class TokenFetchError extends CustodyError {
  declare readonly code: "token_service_unreachable" | "token_refused" | "token_invalid";
  constructor(code: TokenFetchError["code"], message: string) {
    super(code, message);
  }
}

const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024;

/**
 * Asks the token service over mTLS with the workload certificate (RFC 8705 client_credentials).
 * One pooled connection per certificate; a new certificate gets a new pool.
 */
export function tokenServiceFetcher(
  tokenUrl: string,
  options: { timeoutMs?: number; now?: () => number } = {},
) {
  const now = options.now ?? Date.now;
  let pool: { agent: Agent; identity: WorkloadIdentity } | undefined;
  const hostname = new URL(tokenUrl).hostname.replace(/^\[|\]$/g, "");
  const agentFor = (identity: WorkloadIdentity): Agent => {
    if (pool?.identity === identity) return pool.agent;
    void pool?.agent.close();
    const agent = new Agent({
      connect: {
        cert: identity.certificatePem,
        key: identity.keyPem,
        ca: identity.caPem,
        // SNI carries host names only (RFC 6066): none for an address.
        ...(isIP(hostname) === 0 ? { servername: hostname } : {}),
      },
      connections: 1,
      keepAliveTimeout: 30_000,
    });
    pool = { agent, identity };
    return agent;
  };
  const fetchToken: TokenFetcher = async (identity) => {
    let statusCode: number;
    let text: string;
    try {
      const response = await request(tokenUrl, {
        method: "POST",
        dispatcher: agentFor(identity),
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: "grant_type=client_credentials",
        headersTimeout: options.timeoutMs ?? 5_000,
        bodyTimeout: options.timeoutMs ?? 5_000,
      });
      statusCode = response.statusCode;
      text = await boundedText(response.body, MAX_TOKEN_RESPONSE_BYTES);
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw new TokenFetchError(
        "token_service_unreachable",
        `token service ${tokenUrl} unreachable: ${reason}`,
      );
    }
    if (statusCode !== 200) {
      throw new TokenFetchError(
        "token_refused",
        `token service answered ${statusCode}: ${describeRefusal(text)}`,
      );
    }
    return readTokenResponse(text, identity, now());
  };
  return Object.assign(fetchToken, { close: async () => pool?.agent.close() });
}

export async function boundedText(body: AsyncIterable<Uint8Array>, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of body) {
    length += chunk.length;
    if (length > limit) throw new Error(`response larger than ${limit} bytes`);
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks).toString("utf8");
}

function describeRefusal(text: string): string {
  try {
    const body = JSON.parse(text) as { error?: unknown; error_description?: unknown };
    return `${String(body.error)}: ${String(body.error_description)}`.slice(0, 300);
  } catch {
    return "(no OAuth error body)";
  }
}

/** The answer must be a Bearer JWT for this very service, with a positive lifetime. */
export function readTokenResponse(text: string, identity: WorkloadIdentity, nowMs: number): IdentityToken {
  let body: { access_token?: unknown; token_type?: unknown; expires_in?: unknown };
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    throw new TokenFetchError("token_invalid", "the token service's answer is not JSON.");
  }
  const { access_token: token, token_type: type, expires_in: expiresIn } = body;
  if (typeof token !== "string" || typeof type !== "string" || type.toLowerCase() !== "bearer") {
    throw new TokenFetchError("token_invalid", "the token service's answer has no Bearer access_token.");
  }
  if (typeof expiresIn !== "number" || !Number.isFinite(expiresIn) || expiresIn <= 0) {
    throw new TokenFetchError("token_invalid", "the token service's answer has no positive expires_in.");
  }
  let claims: Readonly<Record<string, unknown>>;
  try {
    claims = parseCompactJws(token).payload;
  } catch {
    throw new TokenFetchError("token_invalid", "access_token is not a JWS.");
  }
  if (claims.sub !== identity.serviceId || typeof claims.exp !== "number") {
    throw new TokenFetchError(
      "token_invalid",
      `access_token is not an identity token for ${identity.serviceId}.`,
    );
  }
  const expiresAtMs = Math.min(nowMs + expiresIn * 1000, claims.exp * 1000);
  return { token, expiresAtMs, issuedAtMs: nowMs };
}

export interface TokenKeeperOptions {
  readonly fetch: TokenFetcher;
  readonly now?: () => number;
  readonly random?: () => number;
  readonly minBackoffMs?: number;
  readonly maxBackoffMs?: number;
  readonly onRefreshed?: (token: IdentityToken) => void;
  readonly onFailure?: (error: unknown, retryInMs: number) => void;
}

/** When to refresh a token: at 2/3 of its life, ±10 %, never after it expires. */
export function refreshDelayMs(token: IdentityToken, nowMs: number, random: number): number {
  const life = token.expiresAtMs - token.issuedAtMs;
  const jitter = (random * 0.2 - 0.1) * life;
  const at = token.issuedAtMs + (life * 2) / 3 + jitter;
  return Math.max(0, Math.min(at, token.expiresAtMs - 1_000) - nowMs);
}

/** Capped exponential backoff with full jitter in its upper half: attempt 0 → ~min. */
export function backoffMs(attempt: number, minMs: number, maxMs: number, random: number): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + (ceiling / 2) * random);
}

export class IdentityTokenKeeper {
  #identity: WorkloadIdentity | undefined;
  #token: IdentityToken | undefined;
  #timer: NodeJS.Timeout | undefined;
  #attempt = 0;
  #generation = 0;
  #closed = false;
  readonly #now: () => number;
  readonly #random: () => number;

  constructor(private readonly options: TokenKeeperOptions) {
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
  }

  /** The current token while it is valid; undefined before the first fetch and after expiry. */
  get token(): IdentityToken | undefined {
    const token = this.#token;
    return token !== undefined && token.expiresAtMs > this.#now() ? token : undefined;
  }

  /** A new certificate: the old token was bound to the old one (cnf), so fetch anew right away. */
  setIdentity(identity: WorkloadIdentity): Promise<void> {
    this.#identity = identity;
    this.#attempt = 0;
    return this.refresh();
  }

  /** Fetches now; on failure keeps the current token and schedules a retry with backoff. */
  async refresh(): Promise<void> {
    const identity = this.#identity;
    if (identity === undefined || this.#closed) return;
    const generation = ++this.#generation;
    clearTimeout(this.#timer);
    try {
      const token = await this.options.fetch(identity);
      if (generation !== this.#generation || this.#closed) return;
      this.#token = token;
      this.#attempt = 0;
      this.options.onRefreshed?.(token);
      this.#schedule(refreshDelayMs(token, this.#now(), this.#random()));
    } catch (error) {
      if (generation !== this.#generation || this.#closed) return;
      const delay = backoffMs(
        this.#attempt++,
        this.options.minBackoffMs ?? 1_000,
        this.options.maxBackoffMs ?? 60_000,
        this.#random(),
      );
      this.options.onFailure?.(error, delay);
      this.#schedule(delay);
    }
  }

  #schedule(delayMs: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.refresh(), delayMs);
    this.#timer.unref();
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
  }
}
