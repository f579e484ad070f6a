/**
 * Small HTTP helpers shared by the operator's servers: bounded bodies, JSON answers with the
 * headers every answer carries.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { leaveBodyUnread } from "../../../cli/src/unread-body.js";

export class BodyTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`request body is larger than ${limit} bytes`);
  }
}

/**
 * Reads the request body up to `limit` bytes. A body announced larger is refused before a byte is
 * read; past the limit it stops collecting and throws. Either way the rest is left unread for the
 * refusal that follows (leaveBodyUnread: the connection closes, or a few KiB are discarded). A
 * plain `for await` would destroy the request, and its socket with it, on the early exit.
 */
export async function readBody(
  request: IncomingMessage,
  response: ServerResponse,
  limit: number,
): Promise<Buffer> {
  const declared = Number(request.headers["content-length"] ?? Number.NaN);
  if (Number.isFinite(declared) && declared > limit) {
    leaveBodyUnread(request, response);
    throw new BodyTooLargeError(limit);
  }
  const chunks: Buffer[] = [];
  let length = 0;
  try {
    for await (const chunk of request.iterator({ destroyOnReturn: false })) {
      const buffer = chunk as Buffer;
      length += buffer.length;
      if (length > limit) {
        response.setHeader("connection", "close");
        throw new BodyTooLargeError(limit);
      }
      chunks.push(buffer);
    }
  } catch (error) {
    if (error instanceof BodyTooLargeError) throw error;
    throw new ClientAbortedError();
  }
  return Buffer.concat(chunks, length);
}

/** The client went away before its request body was complete: nobody is left to answer. */
export class ClientAbortedError extends Error {
  constructor() {
    super("the client closed the connection before the request body was complete");
  }
}

export function sendJson(
  response: ServerResponse,
  status: number,
  body: unknown,
  headers: Readonly<Record<string, string>> = {},
): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    ...headers,
  });
  response.end(text);
}
