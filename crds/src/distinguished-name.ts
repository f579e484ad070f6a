/**
 * RFC 4514 distinguished names, as written in `ServiceIdentity.spec.externalSubjects` to map a
 * certificate from a third-party CA to an identity ("CN=partner-client,O=Partner Ltd,C=GB").
 *
 * The token service compares subjects by their normalized form, so both sides must agree on it:
 * attribute types upper-cased (descriptors are case-insensitive), values unescaped and re-escaped
 * the one canonical way, whitespace around separators dropped, and the attributes of a
 * multi-valued RDN sorted. Values stay case-sensitive: exact matching fails closed.
 * RDN order is RFC 4514's (most specific first), as `openssl x509 -noout -subject -nameopt RFC2253`
 * prints it; that is the reverse of the order of OpenSSL's `-subj /C=GB/O=…/CN=…`.
 */
import { CustodyError } from "./errors.js";

export const MAX_DN_LENGTH = 1024;
export const MAX_DN_RDNS = 16;
export const MAX_DN_ATTRIBUTES_PER_RDN = 4;

export interface DnAttribute {
  /** Upper-cased descriptor (CN, O, OU, C, …) or a dotted OID. */
  readonly type: string;
  /** The unescaped value; for a `#hex` (BER-encoded) value, that text in lower case. */
  readonly value: string;
  readonly hex: boolean;
}

export type RelativeDistinguishedName = readonly DnAttribute[];

export class DistinguishedNameError extends CustodyError {
  constructor(message: string) {
    super("invalid_distinguished_name", message);
  }
}

const descriptorRegex = /^[A-Za-z][A-Za-z0-9-]{0,63}$/;
const numericOidRegex = /^(0|[1-9][0-9]{0,9})(\.(0|[1-9][0-9]{0,9})){1,31}$/;
const hexStringRegex = /^#([0-9A-Fa-f]{2})+$/;
/** Characters RFC 4514 §2.4 requires to be escaped anywhere in a value. */
const ALWAYS_ESCAPED = new Set(['"', "+", ",", ";", "<", ">", "\\"]);

/** Why `dn` is not an RFC 4514 distinguished name, or undefined when it is. */
export function distinguishedNameProblem(dn: string): string | undefined {
  try {
    parseDistinguishedName(dn);
    return undefined;
  } catch (error) {
    if (error instanceof DistinguishedNameError) return error.message;
    throw error;
  }
}

export function parseDistinguishedName(dn: string): RelativeDistinguishedName[] {
  if (dn.length > MAX_DN_LENGTH) {
    throw new DistinguishedNameError(`is longer than ${MAX_DN_LENGTH} characters`);
  }
  if (dn.trim() === "") {
    throw new DistinguishedNameError(
      'is empty: write a subject such as "CN=partner-client,O=Partner Ltd,C=GB"',
    );
  }
  const rdns: RelativeDistinguishedName[] = [];
  for (const rdnText of splitUnescaped(dn, ",")) {
    const attributes = splitUnescaped(rdnText, "+").map(parseAttribute);
    if (attributes.length > MAX_DN_ATTRIBUTES_PER_RDN) {
      throw new DistinguishedNameError(`has an RDN with more than ${MAX_DN_ATTRIBUTES_PER_RDN} attributes`);
    }
    rdns.push(attributes);
    if (rdns.length > MAX_DN_RDNS) {
      throw new DistinguishedNameError(`has more than ${MAX_DN_RDNS} RDNs`);
    }
  }
  return rdns;
}

/** The one spelling of `dn` that the token service compares certificate subjects against. */
export function normalizeDistinguishedName(dn: string): string {
  return parseDistinguishedName(dn)
    .map((rdn) =>
      [...rdn]
        .sort((a, b) => compareStrings(a.type, b.type) || compareStrings(a.value, b.value))
        .map(
          (attribute) =>
            `${attribute.type}=${attribute.hex ? attribute.value : escapeValue(attribute.value)}`,
        )
        .join("+"),
    )
    .join(",");
}

function parseAttribute(text: string): DnAttribute {
  if (text.trim() === "") throw new DistinguishedNameError("has an empty RDN (one ',' or '+' too many)");
  const equals = text.indexOf("=");
  if (equals < 0) {
    throw new DistinguishedNameError(`has "${text.trim()}" where TYPE=value was expected (e.g. CN=partner)`);
  }
  const rawType = text.slice(0, equals).trim();
  const type = parseAttributeType(rawType);
  const rawValue = trimUnescapedSpaces(text.slice(equals + 1));
  if (hexStringRegex.test(rawValue)) return { type, value: rawValue.toLowerCase(), hex: true };
  return { type, value: unescapeValue(rawValue, type), hex: false };
}

function parseAttributeType(raw: string): string {
  if (descriptorRegex.test(raw)) return raw.toUpperCase();
  const oid = raw.toUpperCase().startsWith("OID.") ? raw.slice(4) : raw;
  if (numericOidRegex.test(oid)) return oid;
  throw new DistinguishedNameError(
    `has attribute type "${raw}": use a name such as CN, O, OU, C or a dotted OID such as 2.5.4.3`,
  );
}

/** Splits on `separator` where it is not escaped with a backslash. */
function splitUnescaped(text: string, separator: string): string[] {
  const parts: string[] = [];
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (char === "\\") {
      i++;
    } else if (char === separator) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}

/** Drops leading and trailing spaces, but not a trailing space written as `\ `. */
function trimUnescapedSpaces(text: string): string {
  let end = text.length;
  while (end > 0 && text[end - 1] === " " && !isEscapedAt(text, end - 1)) end--;
  let start = 0;
  while (start < end && text[start] === " ") start++;
  return text.slice(start, end);
}

function isEscapedAt(text: string, index: number): boolean {
  let backslashes = 0;
  for (let i = index - 1; i >= 0 && text[i] === "\\"; i--) backslashes++;
  return backslashes % 2 === 1;
}

function unescapeValue(raw: string, type: string): string {
  if (raw === "") throw new DistinguishedNameError(`has an empty value for ${type}`);
  const bytes: number[] = [];
  const encoder = new TextEncoder();
  for (let i = 0; i < raw.length; i++) {
    const char = raw.charAt(i);
    if (char !== "\\") {
      if (ALWAYS_ESCAPED.has(char) || char === "\u0000") {
        throw new DistinguishedNameError(
          `has an unescaped "${char}" in the value of ${type}: write \\${char}`,
        );
      }
      const codePoint = raw.codePointAt(i) ?? 0;
      const text = String.fromCodePoint(codePoint);
      bytes.push(...encoder.encode(text));
      i += text.length - 1;
      continue;
    }
    const next = raw.charAt(i + 1);
    const hex = raw.slice(i + 1, i + 3);
    if (/^[0-9A-Fa-f]{2}$/.test(hex)) {
      bytes.push(Number.parseInt(hex, 16));
      i += 2;
    } else if (next !== "" && (ALWAYS_ESCAPED.has(next) || next === " " || next === "#" || next === "=")) {
      bytes.push(next.charCodeAt(0));
      i += 1;
    } else {
      throw new DistinguishedNameError(`has an invalid escape "\\${next}" in the value of ${type}`);
    }
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(bytes));
  } catch {
    throw new DistinguishedNameError(`has hex escapes in the value of ${type} that are not UTF-8`);
  }
}

/** RFC 4514 §2.4: escape what must be escaped, and nothing else. */
function escapeValue(value: string): string {
  let out = "";
  for (let i = 0; i < value.length; i++) {
    const char = value.charAt(i);
    const first = i === 0;
    const last = i === value.length - 1;
    if (ALWAYS_ESCAPED.has(char) || (first && (char === " " || char === "#")) || (last && char === " ")) {
      out += `\\${char}`;
    } else if (char === "\u0000") {
      out += "\\00";
    } else {
      out += char;
    }
  }
  return out;
}

function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
