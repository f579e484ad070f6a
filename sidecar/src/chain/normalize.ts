/**
 * One normalization of an HTTP operation, shared by minting, verifying and policy matching: if the
 * three disagreed, a path could be signed as one thing and authorized as another. The inbound proxy
 * forwards the normalized path, so the application also sees exactly what was authorized.
 *
 * Rules (RFC 3986 §6.2.2 plus fail-closed choices):
 * - percent-encoded unreserved characters are decoded (`%7E` → `~`), other escapes get upper-case hex;
 * - escapes whose meaning differs between components are refused, never guessed: in the path `%2F`
 *   (`/`) and `%5C` (`\`); anywhere, control characters (`%00`–`%1F`, `%7F`) and malformed escapes;
 * - runs of `/` become one; `.` and `..` segments are removed; `..` above the root is refused;
 * - characters outside RFC 3986 `pchar` (raw spaces, backslashes, non-ASCII, `#`) are refused.
 *
 * And paths that common application servers read as *another* path than the one a policy matched
 * are refused, never passed on (a deny rule written for `/admin` must not be walked around):
 * - `;` (or `%3B`) in the path: Tomcat, Jetty and Spring strip `;param` segments (`/admin;x=1`
 *   serves `/admin`), as Spring Security's strict firewall refuses them too;
 * - `%25` (an encoded `%`): an app or framework that decodes twice sees another path;
 * - percent-encoded bytes that are not well-formed UTF-8 (`%C0%AE`, an overlong `.`): lenient
 *   decoders turn them into separators or dots;
 * - a segment ending in `.` or an encoded space (`/admin.`, `/admin%20`): Windows and IIS drop them.
 * Case is not normalized: policies match it exactly, so where an app routes without regard to case
 * (ASP.NET, a case-insensitive file system), write deny rules with `(?i)`.
 */
import { CustodyError } from "../../../crds/src/errors.js";

export const MAX_TARGET_LENGTH = 4096;
export const MAX_METHOD_LENGTH = 20;

export class OperationError extends CustodyError {}

export interface Operation {
  readonly method: string;
  /** Normalized path, always starting with `/`. */
  readonly path: string;
  /** Query string without `?`, escapes normalized; empty when absent. */
  readonly query: string;
}

const METHOD = /^[A-Z][A-Z-]*$/;
const HEX = /^[0-9A-Fa-f]{2}$/;
// RFC 3986 unreserved
const UNRESERVED = /^[A-Za-z0-9\-._~]$/;
// pchar without pct-encoded: unreserved / sub-delims / ":" / "@"
const PCHAR = /^[A-Za-z0-9\-._~!$&'()*+,;=:@]$/;

function reject(code: string, message: string): never {
  throw new OperationError(code, message);
}

/** Decodes unreserved escapes, upper-cases the rest, refuses the ambiguous ones. */
function normalizeEscapes(text: string, allowed: (char: string) => boolean, where: "path" | "query"): string {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const char = text.charAt(i);
    if (char !== "%") {
      if (!allowed(char))
        reject("invalid_character", `${where} contains a character that must be percent-encoded.`);
      out += char;
      continue;
    }
    const hex = text.slice(i + 1, i + 3);
    if (!HEX.test(hex)) reject("malformed_escape", `${where} has a '%' not followed by two hex digits.`);
    const code = Number.parseInt(hex, 16);
    if (code < 0x20 || code === 0x7f) reject("ambiguous_encoding", `${where} encodes a control character.`);
    // A query is never split on '/', so an encoded separator there is unambiguous data.
    if (where === "path" && (code === 0x2f || code === 0x5c)) {
      reject(
        "ambiguous_encoding",
        `${where} encodes a path separator (%2F or %5C); send it unencoded or not at all.`,
      );
    }
    const decoded = String.fromCharCode(code);
    out += code < 0x80 && UNRESERVED.test(decoded) ? decoded : `%${hex.toUpperCase()}`;
    i += 2;
  }
  return out;
}

function removeDotSegments(path: string): string {
  const output: string[] = [];
  const segments = path.split("/").slice(1);
  for (const [index, segment] of segments.entries()) {
    const last = index === segments.length - 1;
    if (segment === "" && !last) continue; // merged duplicate slash
    if (segment === ".") {
      if (last) output.push("");
      continue;
    }
    if (segment === "..") {
      if (output.length === 0) reject("path_traversal", "path climbs above the root with '..'.");
      output.pop();
      if (last) output.push("");
      continue;
    }
    output.push(segment);
  }
  return `/${output.join("/")}`;
}

/** Refuses what application servers would read as another path than the normalized one. */
function refuseServerAmbiguity(path: string): void {
  if (path.includes(";") || path.includes("%3B")) {
    reject(
      "path_parameter",
      "path carries a ';' parameter, which application servers strip: send the path without it.",
    );
  }
  if (path.includes("%25")) {
    reject("ambiguous_encoding", "path encodes a '%' (%25): a second decoding would make it another path.");
  }
  for (const run of path.match(/(?:%[89A-F][0-9A-F])+/g) ?? []) {
    const bytes = Buffer.from(run.replaceAll("%", ""), "hex");
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      reject("ambiguous_encoding", "path has percent-encoded bytes that are not well-formed UTF-8.");
    }
  }
  for (const segment of path.split("/")) {
    if (segment.endsWith(".") || segment.endsWith("%20")) {
      reject(
        "ambiguous_segment",
        "a path segment ends in '.' or an encoded space, which some servers drop: send it without.",
      );
    }
  }
}

/** Normalizes the path of an origin-form request target (`/a/b`). */
export function normalizePath(rawPath: string): string {
  if (!rawPath.startsWith("/")) reject("invalid_path", "path must start with '/'.");
  const escaped = normalizeEscapes(rawPath, (char) => char === "/" || PCHAR.test(char), "path");
  const path = removeDotSegments(escaped);
  refuseServerAmbiguity(path);
  return path;
}

function normalizeQuery(rawQuery: string): string {
  return normalizeEscapes(rawQuery, (char) => char === "/" || char === "?" || PCHAR.test(char), "query");
}

export function normalizeMethod(method: string): string {
  if (method.length === 0 || method.length > MAX_METHOD_LENGTH || !METHOD.test(method)) {
    reject("invalid_method", "method must be an upper-case HTTP method token.");
  }
  return method;
}

/** Parses and normalizes an origin-form request target (`/path?query`) with its method. */
export function normalizeOperation(method: string, target: string): Operation {
  if (target.length > MAX_TARGET_LENGTH) {
    reject("target_too_long", `request target is longer than ${MAX_TARGET_LENGTH} characters.`);
  }
  const question = target.indexOf("?");
  const rawPath = question === -1 ? target : target.slice(0, question);
  const rawQuery = question === -1 ? "" : target.slice(question + 1);
  return { method: normalizeMethod(method), path: normalizePath(rawPath), query: normalizeQuery(rawQuery) };
}

/** The request target (origin form) of a normalized operation: exactly what was signed or authorized. */
export function requestTargetOf(operation: Operation): string {
  return operation.query === "" ? operation.path : `${operation.path}?${operation.query}`;
}

/** The `op` claim of a link: `METHOD /normalized/path` plus `?query` when there is one. */
export function formatOperation(operation: Operation): string {
  return `${operation.method} ${requestTargetOf(operation)}`;
}

/** Parses an `op` claim back, requiring it to be in normalized form already (a signer that did not
 * normalize is refused rather than normalized on its behalf). */
export function parseOperationClaim(op: string): Operation {
  const space = op.indexOf(" ");
  if (space <= 0) reject("invalid_operation", "op must be 'METHOD /path'.");
  const operation = normalizeOperation(op.slice(0, space), op.slice(space + 1));
  if (formatOperation(operation) !== op) reject("invalid_operation", "op is not in normalized form.");
  return operation;
}
