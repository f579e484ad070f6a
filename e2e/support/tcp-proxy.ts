/**
 * A TCP proxy on 127.0.0.1 that a test can cut and restore: the way to take the API server away
 * from one client (an outage, a partitioned leader) while the server and everyone else go on.
 */
import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";

const HOST = "127.0.0.1";

export interface TcpProxy {
  readonly port: number;
  readonly url: string;
  /** Drops every connection and refuses new ones (connection refused) until restore(). */
  cut(): Promise<void>;
  /** Listens again on the same port. */
  restore(): Promise<void>;
  /**
   * Makes every open connection half-open, as a NAT or load balancer that forgot it does: the
   * server's side is closed, the client's stays open and from now on gets nothing, not even a FIN.
   * New connections work.
   */
  strand(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(targetPort: number): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  const pairs = new Set<{ client: Socket; upstream: Socket }>();
  const track = (socket: Socket): void => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
  };
  const server = createServer((client) => {
    const upstream = connect(targetPort, HOST);
    track(client);
    track(upstream);
    const pair = { client, upstream };
    pairs.add(pair);
    const closeClient = () => client.destroy();
    client.on("close", () => {
      pairs.delete(pair);
      upstream.destroy();
    });
    upstream.on("close", closeClient);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.listen(0, HOST);
  await once(server, "listening");
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no TCP address");
  const port = address.port;
  let listening = true;

  const cut = async (): Promise<void> => {
    for (const socket of sockets) socket.destroy();
    if (!listening) return;
    listening = false;
    const closed = once(server, "close");
    server.close();
    await closed;
  };
  return {
    port,
    url: `http://${HOST}:${port}`,
    cut,
    restore: async () => {
      if (listening) return;
      server.listen(port, HOST);
      await once(server, "listening");
      listening = true;
    },
    close: cut,
    strand: () => {
      for (const { client, upstream } of pairs) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        upstream.removeAllListeners("close");
        upstream.destroy();
        // What the client sends from now on goes nowhere.
        client.on("data", () => undefined);
      }
      pairs.clear();
    },
  };
}
