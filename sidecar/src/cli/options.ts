/**
 * Flags shared by `custody token inspect` and `custody policy check`: the chain (argument or
 * stdin), the registry, the time, the request and its body. Every problem with them is a
 * UsageError (exit 2) that says what to write instead: a check that could not run as asked must
 * never look like a denial (exit 1) in someone's CI.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import type { CommandIO } from "../../../cli/src/kit.js";
import { CustodyError, UsageError } from "../../../crds/src/errors.js";
import { loadRegistry } from "../../../crds/src/registry.js";
import type { Registry } from "../../../crds/src/registry-schema.js";
import { normalizeOperation, type Operation, OperationError } from "../chain/normalize.js";
import { type RegistrySnapshot, readRegistryTexts, snapshotOf } from "../runtime/registry-source.js";
import { chainText, InspectError, MAX_INSPECT_BYTES } from "./inspect.js";

/** A CommandIO that may bring its own stdin (tests); commands otherwise read the process's. */
export interface InputIO extends CommandIO {
  readonly stdin?: AsyncIterable<Uint8Array | string> | undefined;
}

/** Room for a pasted `Custody-Chain:` name and blank lines around the value. */
const STDIN_SLACK_BYTES = 1024;

async function readStdin(command: string, io: InputIO): Promise<string> {
  let source = io.stdin;
  if (source === undefined) {
    if (process.stdin.isTTY) {
      throw new UsageError(
        `${command}: give the chain as an argument, or pipe it in (e.g. \`pbpaste | custody ${command}\`).`,
      );
    }
    source = process.stdin;
  }
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of source) {
    const bytes = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : Buffer.from(chunk);
    length += bytes.length;
    if (length > MAX_INSPECT_BYTES + STDIN_SLACK_BYTES) {
      throw new InspectError("chain_too_large", `stdin holds more than ${MAX_INSPECT_BYTES} bytes.`);
    }
    chunks.push(bytes);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** The chain: `value` itself, or stdin when it is absent or `-`; trimmed and bounded (chainText). */
export async function readChain(command: string, value: string | undefined, io: InputIO): Promise<string> {
  const text = value === undefined || value === "-" ? await readStdin(command, io) : value;
  try {
    return chainText(text);
  } catch (error) {
    if (error instanceof InspectError && error.code === "empty_chain") {
      throw new UsageError(`${command}: ${error.message} Give a Custody-Chain value (e0~e1~…~en).`);
    }
    throw error;
  }
}

/**
 * `--bearer`: the token itself, or stdin for `-` (a token in argv is visible to every local user
 * through the process list); a pasted `Authorization: Bearer` prefix is removed.
 */
export async function readBearer(command: string, value: string, io: InputIO): Promise<string> {
  const text = value === "-" ? await readStdin(command, io) : value;
  const token = text.trim().replace(/^(authorization\s*:\s*)?bearer\s+/i, "");
  if (token === "")
    throw new UsageError(`${command}: --bearer is empty; give the token, or - to read it from stdin.`);
  return token;
}

const ISO_INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;

/** `--at`: an ISO 8601 instant with its zone, or whole seconds since the epoch; default now. */
export function parseAt(command: string, value: string | undefined): number {
  if (value === undefined) return Math.floor(Date.now() / 1000);
  if (/^\d{1,12}$/.test(value)) return Number(value);
  const ms = ISO_INSTANT.test(value) ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(ms)) {
    throw new UsageError(
      `${command}: --at must be an instant such as 2025-06-01T10:00:05Z or seconds since the epoch such as 1748772005.`,
    );
  }
  return Math.floor(ms / 1000);
}

/** `--request "POST /pay-for-order/7"`: a method and an origin-form target, normalized as signed. */
export function parseRequest(command: string, value: string): Operation {
  const match = /^\s*(\S+)\s+(\S+)\s*$/.exec(value);
  if (match === null) {
    throw new UsageError(
      `${command}: --request must be "METHOD /path?query", e.g. --request "POST /pay-for-order/7".`,
    );
  }
  try {
    return normalizeOperation(match[1] ?? "", match[2] ?? "");
  } catch (error) {
    if (error instanceof OperationError) {
      throw new UsageError(`${command}: --request ${JSON.stringify(value)}: ${error.message}`);
    }
    throw error;
  }
}

async function hashFile(command: string, path: string): Promise<string | undefined> {
  const hash = createHash("sha256");
  let length = 0;
  try {
    // Streamed: a body of any size costs one chunk of memory.
    for await (const chunk of createReadStream(path)) {
      const bytes = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      length += bytes.length;
      hash.update(bytes);
    }
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new UsageError(`${command}: --body-file ${path} cannot be read: ${reason}`);
  }
  // An empty body is no body: a link then carries no bdh (chain/mint.ts, runtime/body.ts).
  return length === 0 ? undefined : hash.digest("base64url");
}

/**
 * The body the request carries, from `--body-file` or `--body-sha256` (base64url or hex SHA-256);
 * undefined when neither is given: the head's body binding is then not checked.
 */
export async function parseBody(
  command: string,
  file: string | undefined,
  sha256: string | undefined,
): Promise<{ sha256: string | undefined } | undefined> {
  if (file !== undefined && sha256 !== undefined) {
    throw new UsageError(`${command}: give --body-file or --body-sha256, not both.`);
  }
  if (file !== undefined) return { sha256: await hashFile(command, file) };
  if (sha256 === undefined) return undefined;
  if (/^[A-Za-z0-9_-]{43}$/.test(sha256)) return { sha256 };
  if (/^[0-9a-fA-F]{64}$/.test(sha256)) return { sha256: Buffer.from(sha256, "hex").toString("base64url") };
  throw new UsageError(
    `${command}: --body-sha256 must be a SHA-256 in base64url (43 characters) or hex (64), e.g. from \`sha256sum\`.`,
  );
}

/** The registry at `path` (a file, or a directory of registry-<i>.json shards), as a sidecar reads it. */
export async function readRegistry(command: string, path: string): Promise<Registry> {
  try {
    return loadRegistry(await readRegistryTexts(path));
  } catch (error) {
    throw registryUsage(command, path, error);
  }
}

/** The registry as the sidecar holds it, with keys judged at `nowSeconds`. */
export async function readSnapshot(
  command: string,
  path: string,
  nowSeconds: number,
): Promise<RegistrySnapshot> {
  const registry = await readRegistry(command, path);
  try {
    return snapshotOf(registry, { now: () => nowSeconds * 1000, cacheSize: 0 });
  } catch (error) {
    throw registryUsage(command, path, error);
  }
}

function registryUsage(command: string, path: string, error: unknown): UsageError {
  if (!(error instanceof Error)) throw error;
  const code = error instanceof CustodyError ? ` [${error.code}]` : "";
  if (!(error instanceof CustodyError) && !("code" in error)) throw error;
  return new UsageError(`${command}: --registry ${path} cannot be used${code}: ${error.message}`);
}
