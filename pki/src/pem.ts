/**
 * PEM armor (RFC 7468), read strictly inside a block and leniently outside: text between blocks is
 * ignored, as OpenSSL does, so `openssl x509 -text` output and commented bundles still load.
 */
import { PemError } from "./errors.js";

export interface PemBlock {
  readonly label: string;
  /** RFC 1421 headers, e.g. `Proc-Type: 4,ENCRYPTED` on a traditionally encrypted key. */
  readonly headers: ReadonlyMap<string, string>;
  readonly der: Uint8Array;
}

export interface PemReadOptions {
  /** More blocks than this is an error rather than unbounded work. */
  readonly maxBlocks: number;
  /** Names the input in error messages (a file path, "CSR", …). */
  readonly source?: string;
}

const BEGIN = /^-----BEGIN ([A-Z0-9 ]{1,64})-----$/;
const END = /^-----END ([A-Z0-9 ]{1,64})-----$/;
const BASE64_LINE = /^[A-Za-z0-9+/]*={0,2}$/;
const HEADER = /^([A-Za-z0-9-]{1,64}):\s*(.*)$/;

export function readPemBlocks(text: string, options: PemReadOptions): PemBlock[] {
  const source = options.source ?? "input";
  const lines = text.split(/\r?\n/);
  const blocks: PemBlock[] = [];
  let index = 0;
  while (index < lines.length) {
    const begin = BEGIN.exec((lines[index] ?? "").trim());
    index += 1;
    if (begin === null) continue;
    const label = begin[1] ?? "";
    if (blocks.length >= options.maxBlocks) {
      throw new PemError(
        "pem_too_many_blocks",
        `${source} holds more than ${options.maxBlocks} PEM blocks, the most Custody reads from one input.`,
      );
    }
    const body: string[] = [];
    let closed = false;
    for (; index < lines.length; index += 1) {
      const line = (lines[index] ?? "").trim();
      const end = END.exec(line);
      if (end !== null) {
        if (end[1] !== label) {
          throw new PemError("pem_malformed", `${source}: "BEGIN ${label}" is closed by "END ${end[1]}".`);
        }
        closed = true;
        index += 1;
        break;
      }
      if (BEGIN.test(line)) break;
      body.push(line);
    }
    if (!closed) {
      throw new PemError(
        "pem_malformed",
        `${source}: "BEGIN ${label}" has no matching END line (truncated?).`,
      );
    }
    blocks.push({ label, ...decodeBody(body, label, source) });
  }
  return blocks;
}

function decodeBody(
  lines: readonly string[],
  label: string,
  source: string,
): { headers: Map<string, string>; der: Uint8Array } {
  const headers = new Map<string, string>();
  let start = 0;
  // Headers only exist when a blank line separates them from the base64 (RFC 1421 §4.4).
  const blank = lines.indexOf("");
  if (blank > 0 && lines.slice(0, blank).every((line) => HEADER.test(line))) {
    for (const line of lines.slice(0, blank)) {
      const match = HEADER.exec(line);
      if (match?.[1] !== undefined) headers.set(match[1], match[2] ?? "");
    }
    start = blank + 1;
  }
  const base64Lines = lines.slice(start).filter((line) => line !== "");
  if (!base64Lines.every((line) => BASE64_LINE.test(line))) {
    throw new PemError("pem_malformed", `${source}: the "${label}" block is not valid base64.`);
  }
  const base64 = base64Lines.join("");
  const der = Buffer.from(base64, "base64");
  // Buffer.from silently skips what it cannot decode; a round trip catches bad padding and stray '='.
  if (base64.length === 0 || base64.length % 4 !== 0 || der.toString("base64") !== base64) {
    throw new PemError("pem_malformed", `${source}: the "${label}" block is not valid base64.`);
  }
  return { headers, der: new Uint8Array(der.buffer, der.byteOffset, der.byteLength) };
}

export function encodePem(label: string, der: Uint8Array): string {
  const base64 = Buffer.from(der).toString("base64");
  const lines = base64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}
