/**
 * The three client operations of bench/issuer.ts, all with the workload's client certificate and
 * the CA as the only trusted root (the server certificate is verified every time):
 * a bare mTLS handshake, a token request on a new connection, and a token request on a kept-alive
 * connection. Each checks what it got and rejects with the reason otherwise.
 */
import { Agent, request } from "node:https";
import { connect, createSecureContext, type SecureContext, type TLSSocket } from "node:tls";
import type { Target } from "./issuer-server.js";

const TOKEN_REQUEST = Buffer.from("grant_type=client_credentials");
const MAX_RESPONSE_BYTES = 64 * 1024;

export class CheckError extends Error {}

const contexts = new WeakMap<Target, SecureContext>();

/**
 * The TLS options of every connection: one secure context (client certificate and key, the CA as
 * the only trusted root), built once as a long-running client would. Passing the PEM strings to
 * every connect instead would parse them and build a new context per connection, which raised the
 * client's CPU per handshake from ~1.35 to ~2.3 ms. No connection is ever given a session to resume.
 */
function tlsOptions(target: Target): { secureContext: SecureContext } {
  let secureContext = contexts.get(target);
  if (secureContext === undefined) {
    secureContext = createSecureContext({ cert: target.cert, key: target.key, ca: target.ca });
    contexts.set(target, secureContext);
  }
  return { secureContext };
}

function closed(socket: TLSSocket): Promise<void> {
  if (socket.destroyed) return Promise.resolve();
  return new Promise((resolve) => socket.once("close", () => resolve()));
}

/**
 * One full TLS handshake with the client certificate, no HTTP: connect (never offering a session,
 * so the handshake is always full), and on secureConnect close gracefully (close_notify + FIN).
 * Resolves once the server has closed its side too, i.e. after it processed the client's
 * certificate, CertificateVerify and Finished, so a worker never has more than one handshake open.
 */
export function bareHandshake(target: Target): Promise<void> {
  return new Promise((resolve, reject) => {
    let failure: Error | undefined;
    let handshaken = false;
    const socket = connect({ host: target.host, port: target.port, ...tlsOptions(target) });
    socket.once("secureConnect", () => {
      handshaken = true;
      if (!socket.authorized)
        failure = new CheckError(`server certificate refused: ${socket.authorizationError}`);
      else if (socket.isSessionReused()) failure = new CheckError("a TLS session was resumed");
      socket.end();
    });
    socket.once("error", (error) => {
      failure ??= error;
    });
    socket.once("close", () => {
      if (failure === undefined && !handshaken)
        failure = new CheckError("closed before the handshake completed");
      if (failure === undefined) resolve();
      else reject(failure);
    });
  });
}

/** The token endpoint's answer, checked: 200, JSON, a compact JWS access token of type Bearer. */
export interface TokenAnswer {
  readonly accessToken: string;
  readonly socket: TLSSocket;
  /** True when the request went over a connection that an earlier request had used. */
  readonly reusedSocket: boolean;
}

/** POST grant_type=client_credentials to the token endpoint through `agent`. */
export function requestToken(target: Target, agent: Agent): Promise<TokenAnswer> {
  return new Promise((resolve, reject) => {
    const outgoing = request(
      target.tokenUrl,
      {
        method: "POST",
        agent,
        headers: {
          "content-type": "application/x-www-form-urlencoded",
          "content-length": TOKEN_REQUEST.length,
        },
      },
      (response) => {
        const chunks: Buffer[] = [];
        let length = 0;
        response.on("data", (chunk: Buffer) => {
          length += chunk.length;
          if (length <= MAX_RESPONSE_BYTES) chunks.push(chunk);
        });
        response.once("error", reject);
        response.once("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          if (response.statusCode !== 200) {
            reject(new CheckError(`HTTP ${response.statusCode}: ${text.slice(0, 300)}`));
            return;
          }
          let body: { access_token?: unknown; token_type?: unknown };
          try {
            body = JSON.parse(text) as typeof body;
          } catch {
            reject(new CheckError(`200 but not JSON: ${text.slice(0, 300)}`));
            return;
          }
          const token = body.access_token;
          if (typeof token !== "string" || token.split(".").length !== 3 || body.token_type !== "Bearer") {
            reject(new CheckError(`200 without a Bearer JWT: ${text.slice(0, 300)}`));
            return;
          }
          resolve({
            accessToken: token,
            socket: outgoing.socket as TLSSocket,
            reusedSocket: outgoing.reusedSocket,
          });
        });
      },
    );
    outgoing.once("error", reject);
    outgoing.end(TOKEN_REQUEST);
  });
}

/**
 * For token requests each on a new connection: no keep-alive (the agent asks `Connection: close`
 * and destroys the socket after the response) and no TLS session cache, so every request pays a
 * full handshake.
 */
export function freshConnectionAgent(target: Target): Agent {
  return new Agent({ ...tlsOptions(target), keepAlive: false, maxCachedSessions: 0 });
}

/** One token request on its own new connection; resolves once that connection is closed. */
export async function freshConnectionToken(target: Target, agent: Agent): Promise<TokenAnswer> {
  const answer = await requestToken(target, agent);
  if (answer.reusedSocket) throw new CheckError("a connection was reused without keep-alive");
  if (answer.socket.isSessionReused()) throw new CheckError("a TLS session was resumed");
  await closed(answer.socket);
  return answer;
}

/** For token requests over kept-alive connections: at most `connections` of them, never closed by us. */
export function keepAliveAgent(target: Target, connections: number): Agent {
  return new Agent({
    ...tlsOptions(target),
    keepAlive: true,
    maxSockets: connections,
    maxFreeSockets: connections,
    maxCachedSessions: 0,
  });
}

/** What a handshake negotiates (for the report): protocol, cipher suite, key-exchange group. */
export function negotiated(target: Target): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: target.host, port: target.port, ...tlsOptions(target) });
    socket.once("error", reject);
    socket.once("secureConnect", () => {
      const group = socket.getEphemeralKeyInfo();
      const exchange = group && "name" in group && group.name !== undefined ? `, ${group.name}` : "";
      const description = `${socket.getProtocol() ?? "?"}, ${socket.getCipher().name}${exchange}`;
      socket.end();
      resolve(description);
    });
  });
}
