/**
 * The lifecycle every long-running command shares: listen (resolving the port actually bound),
 * close gracefully (stop accepting, let requests in flight finish, then cut what is left), and run
 * until SIGTERM or SIGINT.
 */
import type { Server } from "node:net";

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

/** `HOST:PORT`, `[v6]:PORT` or `:PORT` (all interfaces); undefined for anything else. */
export function parseListenAddress(text: string): ListenAddress | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text);
  if (match === null) return undefined;
  const port = Number(match[3]);
  if (port > 65_535) return undefined;
  const host = match[1] ?? match[2] ?? "";
  return { host: host === "" ? "0.0.0.0" : host, port };
}

interface HttpLikeServer extends Server {
  closeAllConnections(): void;
  closeIdleConnections(): void;
}

/** Listens and resolves the bound port (port 0 picks a free one). */
export function listen(server: Server, address: ListenAddress): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(address.port, address.host, () => {
      server.off("error", reject);
      const bound = server.address();
      resolve(typeof bound === "object" && bound !== null ? bound.port : address.port);
    });
  });
}

/**
 * Stops accepting, closes idle keep-alive connections, and cuts the rest after `graceMs`. A
 * connection busy at the start is closed once its response is done (a response started meanwhile
 * says `Connection: close`): Node keeps such a connection alive, and every caller's pool holds one,
 * so without this every shutdown would wait out the whole grace and then cut what had been reused.
 */
export function closeGracefully(server: HttpLikeServer, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const force = setTimeout(() => server.closeAllConnections(), graceMs);
    force.unref();
    const lastOnConnection = (_request: unknown, response: { shouldKeepAlive: boolean }) => {
      response.shouldKeepAlive = false;
    };
    server.prependListener("request", lastOnConnection);
    const sweep = setInterval(() => server.closeIdleConnections(), 100);
    sweep.unref();
    server.close(() => {
      clearTimeout(force);
      clearInterval(sweep);
      server.off("request", lastOnConnection);
      resolve();
    });
    server.closeIdleConnections();
  });
}

/**
 * The start of a shutdown in a cluster: the server keeps accepting and answering, but every
 * response from now on closes its connection and idle keep-alive connections are closed now, so
 * that clients reconnect, and their new connections go where the Service's endpoints now point.
 * Endpoints drop a terminating pod only a moment after it got SIGTERM (the EndpointSlice update,
 * then every node's kube-proxy); a server that stopped listening at once would refuse the
 * connections made in that moment.
 */
export function drain(server: HttpLikeServer): void {
  // Before the handler, which may answer at once.
  server.prependListener("request", (_request: unknown, response: { shouldKeepAlive: boolean }) => {
    response.shouldKeepAlive = false;
  });
  server.closeIdleConnections();
}

/**
 * Resolves once SIGTERM or SIGINT arrived and `stop` has finished. Later signals are ignored while
 * `stop` runs: a Ctrl-C reaches the whole process group and can arrive twice, and the second one
 * must not kill the process half-way through its orderly shutdown.
 */
export function runUntilSignal(stop: (signal: NodeJS.Signals) => Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) return;
      stopping = true;
      void stop(signal).then(() => {
        process.off("SIGTERM", onSignal);
        process.off("SIGINT", onSignal);
        resolve();
      });
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
}
