/**
 * Base64url without padding, decoded strictly: only the alphabet, and canonical (the unused low bits
 * of the last character must be zero), so one value has exactly one text. A non-canonical text would
 * otherwise be a second, different serialization of the same signed or encrypted bytes.
 */
import { KeyServiceError } from "./errors.js";

const BASE64URL = /^[A-Za-z0-9_-]*$/;
const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

export function encodeBase64url(data: Uint8Array | string): string {
  return (typeof data === "string" ? Buffer.from(data, "utf8") : Buffer.from(data)).toString("base64url");
}

/** Longest text that decodes to at most `bytes` bytes. */
export function base64urlLength(bytes: number): number {
  return Math.ceil((bytes * 4) / 3);
}

/** Decodes `text` (named `what` in errors); empty text is empty bytes. */
export function decodeBase64url(text: unknown, what: string): Buffer {
  if (typeof text !== "string") throw new KeyServiceError("malformed", `${what} must be a base64url string.`);
  const remainder = text.length % 4;
  if (!BASE64URL.test(text) || remainder === 1) {
    throw new KeyServiceError("malformed", `${what} is not base64url.`);
  }
  if (remainder !== 0) {
    const unusedBits = remainder === 2 ? 0b1111 : 0b11;
    if ((ALPHABET.indexOf(text.charAt(text.length - 1)) & unusedBits) !== 0) {
      throw new KeyServiceError("malformed", `${what} is not canonical base64url.`);
    }
  }
  return Buffer.from(text, "base64url");
}

/** A base64url JSON object (a protected header). */
export function decodeJsonObject(text: unknown, what: string): Record<string, unknown> {
  const bytes = decodeBase64url(text, what);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new KeyServiceError("malformed", `${what} is not UTF-8 JSON.`);
  }
  if (!isPlainRecord(value)) throw new KeyServiceError("malformed", `${what} is not a JSON object.`);
  return value;
}

export function isPlainRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Refuses members outside `allowed` (named in the error), so nothing unchecked rides along. */
export function onlyMembers(object: Record<string, unknown>, allowed: ReadonlySet<string>, what: string) {
  for (const key of Object.keys(object)) {
    if (!allowed.has(key)) {
      throw new KeyServiceError("malformed", `${what} member "${key.slice(0, 64)}" is not allowed.`);
    }
  }
}
