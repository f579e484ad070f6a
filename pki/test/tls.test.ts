/**
 * A real mutual-TLS handshake on 127.0.0.1: Node's TLS stack (OpenSSL underneath) accepts a client
 * certificate Custody issued and rejects one from another CA; verifyClientCertificate agrees on the
 * peer certificate as the token service will receive it.
 */
import { readFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { connect, createServer, type Server, type TLSSocket } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EXIT_OK } from "../../cli/src/kit.js";
import { TrustBundle } from "../src/bundle.js";
import { pkiCommand } from "../src/cli.js";
import { verifyClientCertificate } from "../src/verify.js";
import { captureIO, temporaryDirectory } from "./support.js";

interface Identity {
  readonly key: string;
  readonly cert: string;
}

let directory: { path: string; cleanup: () => Promise<void> };
let caPem: string;
let server: Server | undefined;
let port: number;
/** What the server saw for each accepted connection. */
const accepted: { cn: string | undefined; authorized: boolean; spiffeId: string | undefined }[] = [];
const refused: Error[] = [];

async function pki(...args: string[]): Promise<void> {
  const captured = captureIO();
  const code = await pkiCommand(args, captured.io);
  if (code !== EXIT_OK) throw new Error(`custody pki ${args.join(" ")}: ${captured.stderr()}`);
}

/** `custody pki issue` into a fresh directory; returns the PEM files a TLS stack takes. */
async function issue(caDir: string, name: string, ...flags: string[]): Promise<Identity> {
  const out = join(directory.path, name);
  await pki("issue", "--ca", caDir, "--out", out, ...flags);
  return {
    key: await readFile(join(out, "tls.key"), "utf8"),
    cert: await readFile(join(out, "tls.crt"), "utf8"),
  };
}

const caDir = () => join(directory.path, "ca");
const otherCaDir = () => join(directory.path, "other-ca");

beforeAll(async () => {
  directory = await temporaryDirectory();
  await pki("init", "--out", caDir());
  await pki("init", "--out", otherCaDir());
  caPem = await readFile(join(caDir(), "ca.crt"), "utf8");
  const serverIdentity = await issue(
    caDir(),
    "web",
    "--id",
    "web.shop",
    "--usage",
    "server",
    "--dns",
    "localhost",
  );
  const bundle = TrustBundle.fromPem([{ name: "ca.crt", pem: caPem }]);
  const tlsServer = createServer({
    ...serverIdentity,
    ca: caPem,
    requestCert: true,
    rejectUnauthorized: true,
  });
  tlsServer.on("secureConnection", (socket: TLSSocket) => {
    const peer = socket.getPeerX509Certificate();
    const spiffeId =
      peer === undefined ? undefined : verifyClientCertificate(bundle, [new Uint8Array(peer.raw)]).spiffeId;
    const cn = socket.getPeerCertificate().subject?.CN;
    accepted.push({ cn: typeof cn === "string" ? cn : undefined, authorized: socket.authorized, spiffeId });
    socket.end("hello\n");
  });
  tlsServer.on("tlsClientError", (error) => refused.push(error));
  await new Promise<void>((resolve) => tlsServer.listen(0, "127.0.0.1", resolve));
  server = tlsServer;
  port = (tlsServer.address() as AddressInfo).port;
});

afterAll(async () => {
  await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
  await directory?.cleanup();
});

/** Connects with a client identity; resolves with what the server sent, rejects if the handshake fails. */
function talk(identity: Identity): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port, servername: "localhost", ca: caPem, ...identity });
    let received = "";
    socket.setEncoding("utf8");
    socket.setTimeout(5_000, () => socket.destroy(new Error("timed out")));
    socket.on("data", (chunk: string) => {
      received += chunk;
    });
    socket.on("end", () => {
      socket.destroy();
      if (received === "") reject(new Error("closed without data"));
      else resolve(received);
    });
    socket.on("error", (error) => {
      socket.destroy();
      reject(error);
    });
  });
}

describe("mutual TLS with Custody certificates", () => {
  it("accepts a Custody client certificate", async () => {
    const client = await issue(caDir(), "cart", "--id", "cart.shop", "--usage", "client");
    expect(await talk(client)).toBe("hello\n");
    expect(accepted).toContainEqual({
      cn: "cart.shop",
      authorized: true,
      spiffeId: "spiffe://custody.local/ns/shop/si/cart",
    });
  });

  it("rejects a client certificate from another CA during the handshake", async () => {
    const before = accepted.length;
    const errorsBefore = refused.length;
    const stranger = await issue(otherCaDir(), "stranger", "--id", "cart.shop", "--usage", "client");
    await expect(talk(stranger)).rejects.toThrow();
    // Node destroys the socket once OpenSSL's verification of the client certificate fails: the
    // client sees the connection closed, the server a client error, and no connection is accepted.
    expect(accepted.length).toBe(before);
    expect(refused.length).toBeGreaterThan(errorsBefore);
  });

  it("rejects a server-only certificate used as a client certificate", async () => {
    const before = accepted.length;
    const serverOnly = await issue(caDir(), "server-only", "--id", "cart.shop", "--usage", "server");
    await expect(talk(serverOnly)).rejects.toThrow();
    expect(accepted.length).toBe(before);
  });
});
