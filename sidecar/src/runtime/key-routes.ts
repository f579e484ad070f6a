/**
 * The local key service, on the outbound port under `/.custody/` (loopback only, for the app next
 * to this sidecar): JSON in, JSON out, POST only.
 *
 *   POST /.custody/sign    {payload: {...}} | {payloadBase64url}             → {jws, kid}
 *   POST /.custody/verify  {jws, payload | payloadBase64url, expectedSigner?} → {valid: true, signer, kid, issuedAt}
 *   POST /.custody/seal    {recipients: [service ids], plaintext | plaintextBase64url, contentType?} → JWE (General JSON)
 *   POST /.custody/open    a JWE (General JSON)                              → {plaintextBase64url, contentType}
 *
 * Refusals are `{error, reason}` with the key service's reason codes: 400 for what the caller sent,
 * 503 while this workload's key is not in the registry yet.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { LinkSigner } from "../chain/mint.js";
import type { JsonObject } from "../keys/canonical-json.js";
import {
  KeyServiceError,
  open,
  RecipientDirectory,
  seal,
  signDetached,
  verifyDetached,
} from "../keys/index.js";
import type { RecipientKey } from "../keys/jwe.js";
import { sendRefusal } from "./http.js";
import type { RegistrySnapshot } from "./registry-source.js";

const MAX_REQUEST_BYTES = 2 * 1024 * 1024;

export interface KeyRoutesOptions {
  readonly registry: () => RegistrySnapshot | undefined;
  /** This workload's signer (its key under its registry kid), or undefined while unpublished. */
  readonly signer: () => LinkSigner | undefined;
  /** The keys `open` tries (current, and next during a rotation); default: the signer's key alone. */
  readonly openingKeys?: () => readonly RecipientKey[];
  readonly now?: () => number;
}

class RouteRefusal extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
  ) {
    super(reason);
  }
}

async function readJson(request: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of request.iterator({ destroyOnReturn: false })) {
    length += (chunk as Buffer).length;
    if (length > MAX_REQUEST_BYTES) {
      request.resume();
      throw new RouteRefusal(413, "too_large");
    }
    chunks.push(chunk as Buffer);
  }
  try {
    const value: unknown = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    if (typeof value === "object" && value !== null && !Array.isArray(value))
      return value as Record<string, unknown>;
  } catch {
    // refused below
  }
  throw new RouteRefusal(400, "malformed");
}

function payloadOf(
  body: Record<string, unknown>,
  objectField: string,
  bytesField: string,
): Uint8Array | JsonObject {
  const object = body[objectField];
  const bytes = body[bytesField];
  if (typeof object === "object" && object !== null && !Array.isArray(object) && bytes === undefined)
    return object as JsonObject;
  if (typeof object === "string" && bytes === undefined) return Buffer.from(object, "utf8");
  if (typeof bytes === "string" && object === undefined && /^[A-Za-z0-9_-]*$/.test(bytes))
    return Buffer.from(bytes, "base64url");
  throw new RouteRefusal(400, "invalid_payload");
}

export function createKeyRoutes(options: KeyRoutesOptions) {
  const directories = new WeakMap<RegistrySnapshot, RecipientDirectory>();
  const now = options.now ?? Date.now;
  const signerOrRefuse = () => {
    const signer = options.signer();
    if (signer === undefined) throw new RouteRefusal(503, "own_key_unpublished");
    return signer;
  };
  const snapshotOrRefuse = () => {
    const snapshot = options.registry();
    if (snapshot === undefined) throw new RouteRefusal(503, "registry_unavailable");
    return snapshot;
  };
  const routes: Record<string, (body: Record<string, unknown>) => unknown> = {
    sign: (body) => {
      const signer = signerOrRefuse();
      const jws = signDetached(signer, payloadOf(body, "payload", "payloadBase64url"), {
        nowSeconds: Math.floor(now() / 1000),
      });
      return { jws, kid: signer.kid };
    },
    verify: (body) => {
      if (typeof body.jws !== "string") throw new RouteRefusal(400, "malformed");
      const expected = typeof body.expectedSigner === "string" ? body.expectedSigner : undefined;
      const verified = verifyDetached(
        body.jws,
        payloadOf(body, "payload", "payloadBase64url"),
        snapshotOrRefuse().trust,
        {
          nowSeconds: Math.floor(now() / 1000),
          ...(expected === undefined ? {} : { expectedSigner: expected }),
        },
      );
      return { valid: true, signer: verified.serviceId, kid: verified.kid, issuedAt: verified.issuedAt };
    },
    seal: (body) => {
      const snapshot = snapshotOrRefuse();
      const recipients = body.recipients;
      if (!Array.isArray(recipients) || !recipients.every((id) => typeof id === "string")) {
        throw new RouteRefusal(400, "no_recipients");
      }
      let directory = directories.get(snapshot);
      if (directory === undefined) {
        directory = new RecipientDirectory(snapshot.registry, { now });
        directories.set(snapshot, directory);
      }
      const plaintext = payloadOf(body, "plaintext", "plaintextBase64url");
      const bytes =
        plaintext instanceof Uint8Array ? plaintext : Buffer.from(JSON.stringify(plaintext), "utf8");
      const contentType = typeof body.contentType === "string" ? body.contentType : undefined;
      return seal(bytes, directory.resolve(recipients as string[]), { contentType });
    },
    open: (body) => {
      const keys = options.openingKeys?.() ?? [signerOrRefuse()];
      if (keys.length === 0) throw new RouteRefusal(503, "own_key_unpublished");
      const opened = open(body, keys);
      return {
        plaintextBase64url: opened.plaintext.toString("base64url"),
        contentType: opened.contentType ?? null,
      };
    },
  };

  return async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const name = (request.url ?? "").split("?")[0]?.slice("/.custody/".length) ?? "";
    // Own properties only: `constructor`, `__proto__` and the like are not routes.
    const route = Object.hasOwn(routes, name) ? routes[name] : undefined;
    try {
      if (route === undefined) throw new RouteRefusal(404, "unknown_route");
      if (request.method !== "POST") throw new RouteRefusal(405, "method_not_allowed");
      const answer = JSON.stringify(route(await readJson(request)));
      response.writeHead(200, {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(answer),
        "cache-control": "no-store",
      });
      response.end(answer);
    } catch (error) {
      if (error instanceof RouteRefusal) {
        sendRefusal(response, { status: error.status, error: "key_service", reason: error.reason });
      } else if (error instanceof KeyServiceError) {
        sendRefusal(response, { status: 400, error: "key_service", reason: error.code });
      } else {
        sendRefusal(response, { status: 500, error: "key_service", reason: "internal_error" });
      }
    }
  };
}
