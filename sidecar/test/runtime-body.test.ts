import { createHash } from "node:crypto";
import { readdir } from "node:fs/promises";
import { Readable } from "node:stream";
import { text } from "node:stream/consumers";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { temporaryDirectory } from "../../pki/test/support.js";
import { BodyError, declaresNoBody, type SpooledBody, spoolBody } from "../src/runtime/body.js";

const sha = (data: string) => createHash("sha256").update(data).digest("base64url");
/** What a proxy would send on: bytes in hand, a stream from the spool file, or nothing. */
const sent = async (body: SpooledBody): Promise<string> => {
  const payload = body.payload();
  if (payload === null) return "";
  return Buffer.isBuffer(payload) ? payload.toString() : text(payload);
};
const chunked = (data: string, size: number) =>
  Readable.from(
    Array.from({ length: Math.ceil(data.length / size) }, (_, i) =>
      Buffer.from(data.slice(i * size, (i + 1) * size)),
    ),
  );

describe("spoolBody", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  beforeEach(async () => {
    directory = await temporaryDirectory();
  });
  afterEach(() => directory.cleanup());

  it("hashes a small body in memory and gives it back", async () => {
    const body = await spoolBody(chunked("hello world", 3), { directory: directory.path });
    expect(body.length).toBe(11);
    expect(body.hash).toBe(sha("hello world"));
    expect(await sent(body)).toBe("hello world");
    expect(await readdir(directory.path)).toEqual([]);
  });

  it("has no hash for an empty body (the link then carries no bdh)", async () => {
    const body = await spoolBody(Readable.from([]), { directory: directory.path });
    expect([body.length, body.hash]).toEqual([0, undefined]);
    expect(body.payload()).toBeNull();
  });

  it("keeps a body held in memory as bytes, sent with the request head", async () => {
    const body = await spoolBody(chunked("abc", 1), { directory: directory.path });
    expect(body.payload()).toEqual(Buffer.from("abc"));
  });

  it("spools a large body to an already-unlinked file and streams it back intact", async () => {
    const data = "x".repeat(300_000) + "y".repeat(300_000);
    const body = await spoolBody(chunked(data, 65_536), { directory: directory.path, memoryBytes: 100_000 });
    expect(await readdir(directory.path)).toEqual([]);
    expect(body.hash).toBe(sha(data));
    expect(await sent(body)).toBe(data);
    await body.dispose();
    await body.dispose();
  });

  it("refuses a body over the bound and leaves nothing behind", async () => {
    const error = await spoolBody(chunked("z".repeat(50_000), 1_000), {
      directory: directory.path,
      memoryBytes: 10_000,
      maxBytes: 20_000,
    }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(BodyError);
    expect((error as BodyError).code).toBe("body_too_large");
    expect(await readdir(directory.path)).toEqual([]);
  });
});

describe("declaresNoBody", () => {
  it("is true only without Transfer-Encoding and with no or a zero Content-Length", () => {
    expect(declaresNoBody({})).toBe(true);
    expect(declaresNoBody({ "content-length": "0" })).toBe(true);
    expect(declaresNoBody({ "content-length": "1" })).toBe(false);
    expect(declaresNoBody({ "content-length": "00" })).toBe(false);
    expect(declaresNoBody({ "transfer-encoding": "chunked" })).toBe(false);
    expect(declaresNoBody({ "transfer-encoding": "chunked", "content-length": "0" })).toBe(false);
  });
});
