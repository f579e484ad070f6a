/**
 * Outbound traffic that is not for the mesh. An app's HTTP_PROXY sends every call to the sidecar:
 * mesh services (names in the registry) get a signed link and mutual TLS; anything else — a cloud
 * metadata endpoint, a telemetry collector, a SaaS API, a Kubernetes Service outside the mesh —
 * is what the outbound policy decides:
 *
 * - `passthrough` (what the webhook injects by default, as Istio's ALLOW_ANY): plain HTTP is
 *   forwarded to the host the app named, and `CONNECT host:port` is tunnelled, so HTTPS clients
 *   reach their server end to end. Nothing of Custody's goes with it: no link, no chain, no
 *   Custody-* header, no proxy credential. Never to loopback, where the sidecar's own ports are.
 * - `registry-only` (the sidecar's default, and `custody local up`'s): refused, 502
 *   `unknown_service` for HTTP and 403 `passthrough_disabled` for CONNECT.
 *
 * Neither is egress control: without traffic capture an app can open connections itself. What the
 * policy decides is only what the sidecar does with what it is asked to carry.
 *
 * A tunnel to a mesh service is refused either way (`mesh_service_tunnel`): through it the app
 * would reach the peer without a link, and the peer would refuse it; the app calls it over http://
 * and the sidecar adds TLS.
 */
import { type LookupAddress, type LookupOptions, lookup } from "node:dns";
import { STATUS_CODES } from "node:http";
import { connect, isIP, type Socket } from "node:net";
import { Agent } from "undici";

export { OUTBOUND_POLICIES, type OutboundPolicy } from "../../../crds/src/names.js";

/** Connections to non-mesh hosts kept in all; beyond, calls wait for one (undici queues them). */
const MAX_CONNECTIONS_PER_ORIGIN = 64;
const CONNECT_TIMEOUT_MS = 10_000;
/** An answer's head, and the silence between two chunks of its body. */
const ANSWER_TIMEOUT_MS = 60_000;
/** A tunnel with no byte either way for this long is closed. */
const TUNNEL_IDLE_MS = 5 * 60_000;
/** Tunnels open at once: each holds two sockets. */
const MAX_TUNNELS = 1024;

/** The dispatcher of passed-through HTTP calls: bounded connections and time. */
export function createPassthroughAgent(): Agent {
  return new Agent({
    connections: MAX_CONNECTIONS_PER_ORIGIN,
    connect: { timeout: CONNECT_TIMEOUT_MS, lookup: lookupNotLoopback },
    headersTimeout: ANSWER_TIMEOUT_MS,
    bodyTimeout: ANSWER_TIMEOUT_MS,
    keepAliveTimeout: 30_000,
  });
}

/**
 * Names and addresses of this host's loopback (or "any" addresses, which connect to it): never a
 * passthrough target, since the sidecar's own ports are there (a call to itself would loop).
 */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, "").toLowerCase();
  return (
    bare === "localhost" ||
    bare.endsWith(".localhost") ||
    /^(::ffff:)?127\./.test(bare) ||
    /^(::ffff:)?0\.0\.0\.0$/.test(bare) ||
    bare === "::1" ||
    bare === "::"
  );
}

/** Refused when a name resolves to loopback: the check on the name alone misses `lvh.me`. */
export class LoopbackTargetError extends Error {
  readonly code = "loopback_target";
}

type LookupCallback = (
  error: NodeJS.ErrnoException | null,
  address: string | LookupAddress[],
  family?: number,
) => void;

/** dns.lookup for passthrough connections, failing when any address found is a loopback one. */
export function lookupNotLoopback(hostname: string, options: LookupOptions, callback: LookupCallback): void {
  lookup(hostname, { ...options, all: true }, (error, addresses) => {
    if (error !== null) {
      callback(error, []);
      return;
    }
    if (addresses.length === 0 || addresses.some((entry) => isLoopbackHost(entry.address))) {
      callback(new LoopbackTargetError(`${hostname} resolves to a loopback address`), []);
      return;
    }
    if (options.all === true) callback(null, addresses);
    else callback(null, addresses[0]?.address ?? "", addresses[0]?.family);
  });
}

/** `host` and `port` of a CONNECT request's authority (`host:port`, `[v6]:port`), or undefined. */
export function tunnelAuthorityOf(target: string | undefined): { host: string; port: number } | undefined {
  if (target === undefined || target.length > 300) return undefined;
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})$/.exec(target);
  if (match === null) return undefined;
  const host = match[1] ?? match[2] ?? "";
  const port = Number(match[3]);
  if (port < 1 || port > 65_535) return undefined;
  if (match[1] !== undefined && isIP(host) !== 6) return undefined;
  return { host, port };
}

export class TunnelRefusal extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

/** Answers a CONNECT that will not be tunnelled, on the raw socket, and closes it. */
export function refuseTunnel(socket: Socket, refusal: TunnelRefusal): void {
  const body = JSON.stringify({ error: "refused", reason: refusal.reason });
  const phrase = STATUS_CODES[refusal.status] ?? "Refused";
  socket.end(
    `HTTP/1.1 ${refusal.status} ${phrase}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `${refusal.status === 407 ? 'proxy-authenticate: Basic realm="custody"\r\n' : ""}connection: close\r\n\r\n${body}`,
  );
}

/** Tunnels, counted so that MAX_TUNNELS holds. */
export class Tunnels {
  #open = 0;

  get count(): number {
    return this.#open;
  }

  /**
   * Connects to `host:port`, answers 200 on `client`, then copies both ways until either side ends
   * or both are idle for TUNNEL_IDLE_MS. Resolves once the tunnel is up, rejects if it cannot be.
   */
  open(client: Socket, head: Buffer, host: string, port: number): Promise<void> {
    if (this.#open >= MAX_TUNNELS) {
      return Promise.reject(new TunnelRefusal(503, "too_many_tunnels", "too many tunnels are open."));
    }
    this.#open++;
    return new Promise((resolve, reject) => {
      let counted = true;
      const release = () => {
        if (!counted) return;
        counted = false;
        this.#open--;
      };
      const upstream = connect({ host, port, timeout: CONNECT_TIMEOUT_MS, lookup: lookupNotLoopback });
      const fail = (error: Error) => {
        release();
        upstream.destroy();
        reject(error);
      };
      upstream.once("timeout", () => fail(new Error(`connecting to ${host}:${port} timed out`)));
      upstream.once("error", fail);
      // The client gave up while the connection was being made: nothing to tunnel any more.
      const clientGone = () => fail(new Error("the client closed the connection"));
      client.once("close", clientGone);
      upstream.once("connect", () => {
        upstream.off("error", fail);
        client.off("close", clientGone);
        upstream.removeAllListeners("timeout");
        upstream.setTimeout(TUNNEL_IDLE_MS, () => upstream.destroy());
        client.setTimeout(TUNNEL_IDLE_MS, () => client.destroy());
        const close = () => {
          release();
          upstream.destroy();
          client.destroy();
        };
        upstream.once("error", close);
        client.once("error", close);
        upstream.once("close", close);
        client.once("close", close);
        client.write(`HTTP/1.1 200 Connection Established\r\n\r\n`);
        if (head.length > 0) upstream.write(head);
        upstream.pipe(client);
        client.pipe(upstream);
        resolve();
      });
    });
  }
}
