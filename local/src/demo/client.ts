/**
 * The demo's own HTTP calls, each standing for someone in the talk: the customer's browser (TLS to
 * shop's inbound port, no client certificate), a workload or an attacker holding a workload's
 * certificate (mutual TLS to an inbound port), and an app calling through its sidecar's outbound
 * port. Answers are read up to a bound; every call has a deadline.
 */
import type { IncomingHttpHeaders, IncomingMessage } from "node:http";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { spiffeServerCheck } from "../../../pki/src/peer.js";
import { DemoError } from "./errors.js";

export const MAX_ANSWER_BYTES = 1024 * 1024;
const TIMEOUT_MS = 15_000;

export interface Reply {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}

export interface CallInit {
  readonly method: string;
  readonly path: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: string;
}

function collect(response: IncomingMessage): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    response.on("data", (chunk: Buffer) => {
      length += chunk.length;
      if (length > MAX_ANSWER_BYTES) {
        response.destroy(new DemoError("demo_bad_reply", `answer larger than ${MAX_ANSWER_BYTES} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    response.on("error", reject);
    response.on("end", () =>
      resolve({
        status: response.statusCode ?? 0,
        headers: response.headers,
        body: Buffer.concat(chunks).toString("utf8"),
      }),
    );
  });
}

function withBody(init: CallInit): Record<string, string> {
  return {
    ...(init.body === undefined
      ? {}
      : { "content-type": "application/json", "content-length": String(Buffer.byteLength(init.body)) }),
    ...init.headers,
  };
}

export interface InboundTarget {
  /** Default 127.0.0.1 (the demo's sidecars, a port-forward); a Service's address in a cluster. */
  readonly host?: string | undefined;
  readonly port: number;
  /** PEM of Custody's CA (<caDirectory>/ca.crt). */
  readonly ca: string;
  /** The SPIFFE id the server must present, e.g. spiffe://custody.local/ns/shop/si/shop. */
  readonly spiffeId: string;
  /** A client certificate and key (PEM), for mutual TLS as a workload; none for a browser. */
  readonly client?: { readonly cert: string; readonly key: string } | undefined;
}

/** A request to a sidecar's inbound port over TLS. */
export function callInbound(target: InboundTarget, init: CallInit): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const outgoing = httpsRequest(
      {
        host: target.host ?? "127.0.0.1",
        port: target.port,
        method: init.method,
        path: init.path,
        ca: target.ca,
        ...(target.client === undefined ? {} : { cert: target.client.cert, key: target.client.key }),
        checkServerIdentity: spiffeServerCheck(target.spiffeId),
        agent: false,
        timeout: TIMEOUT_MS,
        headers: withBody(init),
      },
      (response) => void collect(response).then(resolve, reject),
    );
    outgoing.on("timeout", () => outgoing.destroy(new DemoError("demo_bad_reply", "no answer in time")));
    outgoing.on("error", reject);
    outgoing.end(init.body);
  });
}

/**
 * What an app does: a request to its sidecar's outbound port. With an absolute `url`
 * (http://payments.shop/…) it is a proxy request naming the service; with a path (/.custody/seal)
 * it is for the sidecar itself. The workload's credential, when `outboundUrl` carries one as
 * userinfo (as the app's HTTP_PROXY does), goes as `Proxy-Authorization: Basic`.
 */
export function callOutbound(outboundUrl: string, url: string, init: Omit<CallInit, "path">): Promise<Reply> {
  const proxy = new URL(outboundUrl);
  const absolute = /^https?:\/\//i.test(url);
  const credential =
    proxy.password === ""
      ? {}
      : {
          "proxy-authorization": `Basic ${Buffer.from(
            `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`,
          ).toString("base64")}`,
        };
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest(
      {
        host: proxy.hostname,
        port: Number(proxy.port),
        method: init.method,
        path: url,
        agent: false,
        timeout: TIMEOUT_MS,
        headers: {
          ...withBody({ ...init, path: url }),
          ...credential,
          host: absolute ? new URL(url).host : proxy.host,
        },
      },
      (response) => void collect(response).then(resolve, reject),
    );
    outgoing.on("timeout", () => outgoing.destroy(new DemoError("demo_bad_reply", "no answer in time")));
    outgoing.on("error", reject);
    outgoing.end(init.body);
  });
}
