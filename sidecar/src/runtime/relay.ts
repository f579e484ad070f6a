/**
 * One proxied exchange over an undici pool: the request sent with its body (bytes in hand go out
 * with the request head, in one write), and the answer streamed back to the client as it arrives,
 * hop-by-hop headers removed, with backpressure both ways. If the client goes away the upstream
 * call is aborted; if the upstream fails after the answer started, the client's connection is cut
 * (a truncated answer must never look complete).
 */
import type { ServerResponse } from "node:http";
import type { Readable } from "node:stream";
import type { Dispatcher } from "undici";
import { forwardableHeaders } from "./http.js";

export interface RelayedRequest {
  /** `http://host:port`, for a dispatcher that serves many origins (an Agent); a Pool has its own. */
  readonly origin?: string;
  readonly method: string;
  /** Origin-form path and query. */
  readonly path: string;
  readonly headers: Record<string, string | string[]>;
  readonly body: Buffer | Readable | null;
}

/** The upstream could not be reached or failed before answering: nothing was sent to the client yet. */
export class UpstreamError extends Error {
  constructor(readonly upstream: Error) {
    super(upstream.message);
  }
}

const CLIENT_GONE = new Error("the client closed the connection");

/**
 * Resolves when the answer has been relayed in full or the exchange was cut after the answer started;
 * rejects with UpstreamError when no answer started, so the caller can still send its refusal.
 */
export function relay(
  dispatcher: Dispatcher,
  request: RelayedRequest,
  response: ServerResponse,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let started = false;
    let controller: Dispatcher.DispatchController | undefined;
    const onClientClose = () => {
      if (!response.writableFinished) controller?.abort(CLIENT_GONE);
    };
    const onDrain = () => controller?.resume();
    const settle = () => {
      response.off("close", onClientClose);
      response.off("drain", onDrain);
    };
    const handler: Dispatcher.DispatchHandler = {
      onRequestStart(current) {
        controller = current;
        response.on("close", onClientClose);
        response.on("drain", onDrain);
      },
      onResponseStart(_controller, statusCode, headers) {
        started = true;
        response.writeHead(
          statusCode,
          forwardableHeaders(headers, { dropCustody: false, dropLength: false }),
        );
      },
      onResponseData(current, chunk) {
        if (!response.write(chunk)) current.pause();
      },
      onResponseEnd() {
        settle();
        response.end();
        resolve();
      },
      onResponseError(_controller, error) {
        settle();
        if (started || error === CLIENT_GONE) {
          response.destroy();
          resolve();
        } else {
          reject(new UpstreamError(error));
        }
      },
    };
    dispatcher.dispatch(
      {
        ...(request.origin === undefined ? {} : { origin: request.origin }),
        method: request.method,
        path: request.path,
        headers: request.headers,
        body: request.body,
      },
      handler,
    );
  });
}
