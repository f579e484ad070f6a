/**
 * The client of bench/sidecar.ts: one undici keep-alive pool per mode, and one request as every mode
 * sends it — `GET /cart/items`, straight to the app (direct) or to the caller's outbound sidecar with
 * `Host: cart.shop` (as an app behind HTTP_PROXY would), at depth 5 with a propagated Custody-Chain.
 * Every answer is checked in full: status 200, body "ok", and what the app says it received (the
 * number of chain elements, the caller its sidecar named).
 */
import { Pool } from "undici";

export const PATH = "/cart/items";

/** Enough connections for the closed-loop concurrency; the open loop needs only a few. */
const CONNECTIONS = 128;

export function keepAlivePool(origin: string): Pool {
  return new Pool(origin, {
    connections: CONNECTIONS,
    pipelining: 1,
    keepAliveTimeout: 60_000,
    keepAliveMaxTimeout: 120_000,
    headersTimeout: 10_000,
    bodyTimeout: 10_000,
  });
}

export interface Expected {
  /** x-bench-depth: elements of the Custody-Chain the app received (0: none). */
  readonly depth: number;
  /** x-bench-caller: the Custody-Caller the app received ("-": none). */
  readonly caller: string;
}

export class AnswerError extends Error {}

/** One request; resolves when the whole answer arrived and is what `expected` says, else rejects. */
export async function call(pool: Pool, headers: Record<string, string>, expected: Expected): Promise<void> {
  const answer = await pool.request({ method: "GET", path: PATH, headers });
  const body = await answer.body.text();
  if (answer.statusCode !== 200) throw new AnswerError(`status ${answer.statusCode}: ${body.slice(0, 200)}`);
  if (body !== "ok") throw new AnswerError(`unexpected body ${JSON.stringify(body.slice(0, 200))}`);
  const depth = answer.headers["x-bench-depth"];
  const caller = answer.headers["x-bench-caller"];
  if (depth !== String(expected.depth) || caller !== expected.caller) {
    throw new AnswerError(
      `the app received a chain of ${String(depth)} elements from ${String(caller)}, ` +
        `expected ${expected.depth} from ${expected.caller}`,
    );
  }
}

/** One request whose refusal is expected: answers the status and the body (for the self-check). */
export async function callExpectingRefusal(
  pool: Pool,
  headers: Record<string, string>,
): Promise<{ status: number; body: string }> {
  const answer = await pool.request({ method: "GET", path: PATH, headers });
  return { status: answer.statusCode, body: await answer.body.text() };
}
