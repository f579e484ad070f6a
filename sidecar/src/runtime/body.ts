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
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
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
  /** The body again, from memory or from its file; call once. */
  stream(): Readable;
  dispose(): Promise<void>;
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
  const digest = length === 0 ? undefined : hash.digest("base64url");
  if (file === undefined) {
    const buffer = Buffer.concat(chunks, length);
    return {
      length,
      hash: digest,
      stream: () => Readable.from(length === 0 ? [] : [buffer]),
      dispose: async () => undefined,
    };
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
    stream: () => spooled.createReadStream({ start: 0, highWaterMark: 64 * 1024, autoClose: false }),
    dispose: close,
  };
}
