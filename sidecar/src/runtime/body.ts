/**
 * Request bodies, hashed before anything is sent on: a link binds the body's SHA-256 (`bdh`), so
 * the outbound side must know the hash before it writes the header, and the inbound side must check
 * it before the app sees a byte. Small bodies stay in memory; beyond `memoryBytes` the body is
 * spooled to a private temporary file (mode 0600, unlinked as soon as it is opened, so nothing is
 * left behind even if the process dies), and a 10 MB upload costs the sidecar a fixed amount of
 * memory. `maxBytes` bounds it either way.
 */
import { createHash, randomBytes } from "node:crypto";
import { type FileHandle, open, unlink } from "node:fs/promises";
import type { IncomingHttpHeaders, IncomingMessage } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { CustodyError } from "../../../crds/src/errors.js";

export const DEFAULT_MEMORY_BODY_BYTES = 256 * 1024;
export const DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024;

export class BodyError extends CustodyError {
  declare readonly code: "body_too_large";
  constructor(code: BodyError["code"], message: string) {
    super(code, message);
  }
}

export interface SpooledBody {
  readonly length: number;
  /** base64url SHA-256, or undefined for an empty body (a link then carries no `bdh`). */
  readonly hash: string | undefined;
  /**
   * The body again, to send on: its bytes when it is held in memory (null when empty), else a
   * stream from its file; call once. Bytes in hand are written with the request head, in one write.
   */
  payload(): Buffer | Readable | null;
  dispose(): Promise<void>;
}

const EMPTY_BODY: SpooledBody = {
  length: 0,
  hash: undefined,
  payload: () => null,
  dispose: async () => undefined,
};

/**
 * Whether a request says it has no body: no Transfer-Encoding, and no Content-Length or 0 (RFC 9112
 * §6.3: such a request's body is empty). Most calls (GET, DELETE) are like this, and they skip the
 * stream machinery entirely.
 */
export function declaresNoBody(headers: IncomingHttpHeaders): boolean {
  const length = headers["content-length"];
  return headers["transfer-encoding"] === undefined && (length === undefined || length === "0");
}

/** A received request's body, spooled and hashed; a request that declares none is not read at all. */
export function spoolRequestBody(request: IncomingMessage, options: SpoolOptions = {}): Promise<SpooledBody> {
  if (!declaresNoBody(request.headers)) return spoolBody(request, options);
  // Nothing will arrive, but the stream must still end so the connection can carry the next request.
  request.resume();
  return Promise.resolve(EMPTY_BODY);
}

export interface SpoolOptions {
  readonly memoryBytes?: number;
  readonly maxBytes?: number;
  readonly directory?: string;
}

export async function spoolBody(
  source: AsyncIterable<Uint8Array>,
  options: SpoolOptions = {},
): Promise<SpooledBody> {
  const memoryBytes = options.memoryBytes ?? DEFAULT_MEMORY_BODY_BYTES;
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BODY_BYTES;
  const hash = createHash("sha256");
  const chunks: Buffer[] = [];
  let length = 0;
  let file: FileHandle | undefined;
  try {
    for await (const chunk of source) {
      length += chunk.length;
      if (length > maxBytes)
        throw new BodyError("body_too_large", `the body is larger than ${maxBytes} bytes.`);
      hash.update(chunk);
      if (file === undefined && length <= memoryBytes) {
        chunks.push(Buffer.from(chunk));
        continue;
      }
      if (file === undefined) {
        const path = join(options.directory ?? tmpdir(), `custody-body-${randomBytes(12).toString("hex")}`);
        file = await open(path, "wx+", 0o600);
        await unlink(path);
        for (const held of chunks.splice(0)) await file.write(held);
      }
      await file.write(chunk);
    }
  } catch (error) {
    await file?.close();
    throw error;
  }
  if (length === 0) return EMPTY_BODY;
  const digest = hash.digest("base64url");
  if (file === undefined) {
    const buffer = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, length);
    return { length, hash: digest, payload: () => buffer, dispose: async () => undefined };
  }
  const spooled = file;
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await spooled.close().catch(() => undefined);
  };
  return {
    length,
    hash: digest,
    payload: () => spooled.createReadStream({ start: 0, highWaterMark: 64 * 1024, autoClose: false }),
    dispose: close,
  };
}
