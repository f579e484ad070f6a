/**
 * RFC 8785 JSON Canonicalization Scheme (JCS): the one byte sequence a JSON value is signed as.
 * Members sorted by their names' UTF-16 code units, no whitespace, strings escaped and numbers
 * written as ECMAScript does (which JCS adopts), so a verifier that only has the parsed value (a
 * body re-serialized by an intermediary, with other spacing or member order) rebuilds the same bytes.
 *
 * Input must be I-JSON (RFC 7493): plain objects, arrays, strings without lone surrogates, finite
 * numbers, booleans and null. Anything else is refused rather than silently dropped or coerced the
 * way JSON.stringify would (undefined members, toJSON, NaN → null).
 */
import { KeyServiceError } from "./errors.js";

export type JsonValue = null | boolean | number | string | readonly JsonValue[] | JsonObject;
export interface JsonObject {
  readonly [member: string]: JsonValue;
}

export const MAX_JSON_DEPTH = 64;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function invalid(message: string): never {
  throw new KeyServiceError("invalid_payload", message);
}

function isPlainObject(value: object): boolean {
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

function canonicalString(value: string): string {
  if (LONE_SURROGATE.test(value)) invalid("a string holds a lone surrogate (not I-JSON).");
  // JCS §3.2.2.2 specifies exactly ECMAScript's JSON.stringify escaping for well-formed strings.
  return JSON.stringify(value);
}

/**
 * The canonical text of `value`; stops as soon as it exceeds `maxLength` UTF-16 units (UTF-8 is never
 * shorter, so the caller's byte bound still holds), so an oversized value is not serialized in full.
 */
export function canonicalJson(value: unknown, maxLength = Number.MAX_SAFE_INTEGER): string {
  const parts: string[] = [];
  let length = 0;
  const push = (part: string) => {
    length += part.length;
    if (length > maxLength)
      throw new KeyServiceError("too_large", `JSON payload is longer than ${maxLength}.`);
    parts.push(part);
  };
  const write = (item: unknown, depth: number): void => {
    if (depth > MAX_JSON_DEPTH) invalid(`JSON payload is nested deeper than ${MAX_JSON_DEPTH}.`);
    switch (typeof item) {
      case "string":
        push(canonicalString(item));
        return;
      case "number":
        if (!Number.isFinite(item)) invalid("a number is not finite (not I-JSON).");
        // Number#toString is JCS's number serialization (ECMAScript 7.1.12.1); -0 becomes 0.
        push(JSON.stringify(item));
        return;
      case "boolean":
        push(item ? "true" : "false");
        return;
      case "object":
        break;
      default:
        invalid(`a ${typeof item} is not a JSON value.`);
    }
    if (item === null) {
      push("null");
      return;
    }
    if (Array.isArray(item)) {
      push("[");
      // An index loop, not forEach: a hole in a sparse array is refused (undefined), not skipped.
      for (let index = 0; index < item.length; index++) {
        if (index > 0) push(",");
        write(item[index], depth + 1);
      }
      push("]");
      return;
    }
    if (!isPlainObject(item)) invalid("only plain objects are JSON objects (not class instances).");
    const record = item as Record<string, unknown>;
    // Default sort compares UTF-16 code units, which is JCS's order (§3.2.3).
    const names = Object.keys(record).sort();
    push("{");
    names.forEach((name, index) => {
      if (index > 0) push(",");
      push(canonicalString(name));
      push(":");
      write(record[name], depth + 1);
    });
    push("}");
  };
  write(value, 0);
  return parts.join("");
}
