/**
 * Compact JWS (RFC 7515) as Custody uses it, shared by the token service and the sidecar: strict
 * parsing (canonical base64url, JSON objects only) and signatures with an allow-list of three
 * algorithms, each bound to the one key type it may use. Written against node:crypto directly so a
 * verification costs one native signature check and no key import.
 */
import { createHash, type KeyObject, sign, verify } from "node:crypto";
import { CustodyError } from "../../crds/src/errors.js";

export const JWS_ALGORITHMS = ["ES256", "EdDSA", "RS256"] as const;
export type JwsAlgorithm = (typeof JWS_ALGORITHMS)[number];

/** A JWS that cannot be read (`malformed`) or is unsigned / signed with an algorithm refused here. */
export class JwsError extends CustodyError {
  declare readonly code: "malformed" | "alg_not_allowed";
  constructor(code: JwsError["code"], message: string) {
    super(code, message);
  }
}

export interface ParsedJws {
  /** The exact text received: hash links are computed over it, never over a re-encoding. */
  readonly text: string;
  readonly header: Readonly<Record<string, unknown>>;
  readonly payload: Readonly<Record<string, unknown>>;
  readonly signingInput: string;
  readonly signature: Buffer;
}

const BASE64URL = /^[A-Za-z0-9_-]+$/;

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/**
 * Decodes base64url and insists on the canonical form: otherwise flipping the unused low bits of the
 * last character would give a different text with the same bytes (and the same valid signature).
 * Only the last character can carry unused bits: 4 of them when length % 4 == 2, 2 when it is 3.
 */
function decodeSegment(segment: string, what: string): Buffer {
  const remainder = segment.length % 4;
  if (!BASE64URL.test(segment) || remainder === 1) {
    throw new JwsError("malformed", `${what} is not base64url.`);
  }
  if (remainder !== 0) {
    const unusedBits = remainder === 2 ? 0b1111 : 0b11;
    if ((ALPHABET.indexOf(segment.charAt(segment.length - 1)) & unusedBits) !== 0) {
      throw new JwsError("malformed", `${what} is not canonical base64url.`);
    }
  }
  return Buffer.from(segment, "base64url");
}

function decodeJsonObject(segment: string, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(decodeSegment(segment, what).toString("utf8"));
  } catch (error) {
    if (error instanceof JwsError) throw error;
    throw new JwsError("malformed", `${what} is not JSON.`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new JwsError("malformed", `${what} is not a JSON object.`);
  }
  return value as Record<string, unknown>;
}

export function parseCompactJws(text: string): ParsedJws {
  const parts = text.split(".");
  if (parts.length !== 3) {
    throw new JwsError("malformed", "is not a compact JWS (three dot-separated parts).");
  }
  const [headerPart = "", payloadPart = "", signaturePart = ""] = parts;
  if (signaturePart === "") {
    throw new JwsError("alg_not_allowed", "is unsigned (empty signature).");
  }
  return {
    text,
    header: decodeJsonObject(headerPart, "header"),
    payload: decodeJsonObject(payloadPart, "payload"),
    signingInput: `${headerPart}.${payloadPart}`,
    signature: decodeSegment(signaturePart, "signature"),
  };
}

/** The algorithm that goes with a key, or undefined for key types Custody never signs with. */
export function algorithmForKey(key: KeyObject): JwsAlgorithm | undefined {
  const details = key.asymmetricKeyDetails;
  switch (key.asymmetricKeyType) {
    case "ec":
      return details?.namedCurve === "prime256v1" ? "ES256" : undefined;
    case "ed25519":
      return "EdDSA";
    case "rsa":
      return (details?.modulusLength ?? 0) >= 2048 ? "RS256" : undefined;
    default:
      return undefined;
  }
}

function expectedSignatureLength(alg: JwsAlgorithm, key: KeyObject): number {
  if (alg === "RS256") return (key.asymmetricKeyDetails?.modulusLength ?? 0) / 8;
  return 64;
}

/**
 * Verifies a signature over bytes with a key whose algorithm must be exactly `alg`: a header cannot
 * talk a verifier into using a key with another algorithm (the classic RS/HS confusion).
 */
export function verifyBytes(alg: JwsAlgorithm, key: KeyObject, data: Buffer, signature: Buffer): boolean {
  if (algorithmForKey(key) !== alg || signature.length !== expectedSignatureLength(alg, key)) return false;
  try {
    switch (alg) {
      case "ES256":
        return verify("sha256", data, { key, dsaEncoding: "ieee-p1363" }, signature);
      case "EdDSA":
        return verify(null, data, key, signature);
      case "RS256":
        return verify("sha256", data, key, signature);
    }
  } catch {
    return false;
  }
}

/** verifyBytes over a compact JWS signing input (`header.payload`, ASCII). */
export function verifySignature(alg: JwsAlgorithm, key: KeyObject, signingInput: string, signature: Buffer) {
  return verifyBytes(alg, key, Buffer.from(signingInput, "ascii"), signature);
}

/** Signs bytes with `alg`, which must be the algorithm that goes with `privateKey`. */
export function signBytes(alg: JwsAlgorithm, privateKey: KeyObject, data: Buffer): Buffer {
  if (algorithmForKey(privateKey) !== alg) {
    throw new JwsError("alg_not_allowed", `the key cannot sign with algorithm ${alg}.`);
  }
  switch (alg) {
    case "ES256":
      return sign("sha256", data, { key: privateKey, dsaEncoding: "ieee-p1363" });
    case "EdDSA":
      return sign(null, data, privateKey);
    case "RS256":
      return sign("sha256", data, privateKey);
  }
}

function encodeJson(value: unknown): string {
  return Buffer.from(JSON.stringify(value), "utf8").toString("base64url");
}

/** Signs a compact JWS with the algorithm that goes with `privateKey`. */
export function signCompactJws(
  header: Readonly<Record<string, unknown>>,
  payload: Readonly<Record<string, unknown>>,
  privateKey: KeyObject,
): string {
  const alg = header.alg;
  if (alg !== "ES256" && alg !== "EdDSA" && alg !== "RS256") {
    throw new JwsError("alg_not_allowed", `cannot sign with algorithm ${String(alg)}.`);
  }
  const signingInput = `${encodeJson(header)}.${encodeJson(payload)}`;
  const signature = signBytes(alg, privateKey, Buffer.from(signingInput, "ascii"));
  return `${signingInput}.${signature.toString("base64url")}`;
}

/** base64url(SHA-256(data)): chain hash links, body hashes, certificate thumbprints. */
export function sha256Base64url(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("base64url");
}
