import { describe, expect, it } from "vitest";
import { PemError } from "../src/errors.js";
import { encodePem, readPemBlocks } from "../src/pem.js";

const bytes = new Uint8Array(Array.from({ length: 100 }, (_, index) => index));

function codeOf(action: () => unknown): string | undefined {
  try {
    action();
  } catch (error) {
    return error instanceof PemError ? error.code : `unexpected ${String(error)}`;
  }
  return undefined;
}

describe("encodePem / readPemBlocks", () => {
  it("round-trips bytes with 64-character lines", () => {
    const pem = encodePem("CERTIFICATE", bytes);
    expect(pem.split("\n").every((line) => line.length <= 64)).toBe(true);
    const [block] = readPemBlocks(pem, { maxBlocks: 1 });
    expect(block?.label).toBe("CERTIFICATE");
    expect(Buffer.from(block?.der ?? []).equals(Buffer.from(bytes))).toBe(true);
  });

  it("reads several blocks and ignores text between them (openssl -text output, comments)", () => {
    const text = `# first CA\nsubject=CN = a\n${encodePem("CERTIFICATE", bytes)}\r\nnoise\n${encodePem("X", bytes)}`;
    const blocks = readPemBlocks(text, { maxBlocks: 5 });
    expect(blocks.map((block) => block.label)).toEqual(["CERTIFICATE", "X"]);
  });

  it("returns no block for text without armor", () => {
    expect(readPemBlocks("just some text", { maxBlocks: 5 })).toEqual([]);
  });

  it("reads RFC 1421 headers of traditionally encrypted keys", () => {
    const body = encodePem("RSA PRIVATE KEY", bytes).split("\n");
    const text = [body[0], "Proc-Type: 4,ENCRYPTED", "DEK-Info: AES-128-CBC,00", "", ...body.slice(1)].join(
      "\n",
    );
    const [block] = readPemBlocks(text, { maxBlocks: 1 });
    expect(block?.headers.get("Proc-Type")).toBe("4,ENCRYPTED");
  });

  it("refuses a block without END (truncated file)", () => {
    const truncated = encodePem("CERTIFICATE", bytes).split("\n").slice(0, 2).join("\n");
    expect(codeOf(() => readPemBlocks(truncated, { maxBlocks: 1 }))).toBe("pem_malformed");
  });

  it("refuses mismatched END labels, bad base64 and empty bodies", () => {
    const pem = encodePem("CERTIFICATE", bytes);
    expect(codeOf(() => readPemBlocks(pem.replace("END CERTIFICATE", "END KEY"), { maxBlocks: 1 }))).toBe(
      "pem_malformed",
    );
    const lines = pem.split("\n");
    const corrupted = [lines[0], `${lines[1]?.slice(0, 10)}!!${lines[1]?.slice(12)}`, ...lines.slice(2)].join(
      "\n",
    );
    expect(codeOf(() => readPemBlocks(corrupted, { maxBlocks: 1 }))).toBe("pem_malformed");
    expect(codeOf(() => readPemBlocks("-----BEGIN X-----\n-----END X-----\n", { maxBlocks: 1 }))).toBe(
      "pem_malformed",
    );
    // Base64 whose length is not a multiple of 4 decodes "fine" in Node; it must not here.
    expect(codeOf(() => readPemBlocks("-----BEGIN X-----\nAAAAA\n-----END X-----\n", { maxBlocks: 1 }))).toBe(
      "pem_malformed",
    );
  });

  it("bounds the number of blocks", () => {
    const text = encodePem("CERTIFICATE", bytes).repeat(3);
    expect(codeOf(() => readPemBlocks(text, { maxBlocks: 2 }))).toBe("pem_too_many_blocks");
  });
});
