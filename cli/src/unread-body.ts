/**
 * What a server does with the body of a request it refuses before reading it: nothing is read from
 * a caller who is not authorized to send anything, but a socket closed with data still unread makes
 * the kernel reset the connection, and the client then loses the answer. So a small body announced
 * up front is discarded — at most UNREAD_BODY_LINGER_BYTES, for at most UNREAD_BODY_LINGER_MS, never
 * kept, parsed or hashed — and the connection stays usable; anything larger, or of unknown length,
 * is not read at all: the connection closes after the answer.
 *
 * Call it before the refusal is written: it may add `Connection: close` to the response.
 */
import type { IncomingMessage, ServerResponse } from "node:http";

export const UNREAD_BODY_LINGER_BYTES = 64 * 1024;
const UNREAD_BODY_LINGER_MS = 1_000;

export function leaveBodyUnread(request: IncomingMessage, response: ServerResponse): void {
  if (request.complete) return;
  const announced =
    request.headers["transfer-encoding"] === undefined
      ? Number(request.headers["content-length"] ?? 0)
      : Number.POSITIVE_INFINITY;
  if (!(announced <= UNREAD_BODY_LINGER_BYTES)) {
    response.setHeader("connection", "close");
    return;
  }
  let discarded = 0;
  const cut = () => request.socket?.destroy();
  const timer = setTimeout(cut, UNREAD_BODY_LINGER_MS);
  timer.unref();
  const stop = () => clearTimeout(timer);
  request.on("data", (chunk: Buffer) => {
    discarded += chunk.length;
    if (discarded > UNREAD_BODY_LINGER_BYTES) {
      stop();
      cut();
    }
  });
  request.once("end", stop);
  request.once("error", stop);
  request.once("close", stop);
}
