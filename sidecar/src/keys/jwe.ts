/**
 * JWE in the General JSON Serialization (RFC 7516 §7.2.1) for one or several recipient services:
 * content encrypted once with A256GCM under a random key (CEK), the CEK wrapped for each recipient
 * with ECDH-ES+A256KW (RFC 7518 §4.6): a fresh ephemeral key per recipient, Concat KDF with empty
 * PartyUInfo/PartyVInfo, AES key wrap. Plain ECDH-ES (direct agreement) is not offered: it derives
 * the CEK itself, so it can only ever serve one recipient.
 *
 *   {"protected": b64u({"enc":"A256GCM"[,"cty"]}),
 *    "recipients": [{"header": {"alg":"ECDH-ES+A256KW","kid","epk"}, "encrypted_key"}, …],
 *    ["aad",] "iv", "ciphertext", "tag"}
 *
 * Integrity: AES-GCM authenticates the ciphertext, iv, protected header and aad (the tag is exactly
 * 128 bits: node would otherwise accept a truncated one); each recipient's header and encrypted_key
 * are not covered by the tag, but any change to them changes the KEK or the wrapped bytes, and the
 * RFC 3394 integrity check refuses the unwrap. Every crypto failure is one code, `decryption_failed`.
 * Parsing is strict: only the members above, only these algorithms (no `zip`, no `crit`, no shared
 * unprotected header), canonical base64url, exact lengths, bounded sizes.
 *
 * Confidentiality only: anyone may seal to a service. To prove who wrote the plaintext, sign it
 * (detached-jws.ts) and seal the signed object.
 */
import { createCipheriv, createDecipheriv, type KeyObject, randomBytes } from "node:crypto";
import {
  base64urlLength,
  decodeBase64url,
  decodeJsonObject,
  encodeBase64url,
  isPlainRecord,
  onlyMembers,
} from "./base64url.js";
import { KeyServiceError } from "./errors.js";
import {
  type AgreementCurve,
  aesKeyUnwrap,
  aesKeyWrap,
  agree,
  agreementCurve,
  concatKdf,
  type EphemeralJwk,
  generateEphemeral,
  importEphemeral,
} from "./key-agreement.js";

export const JWE_ENCRYPTION = "A256GCM";
export const JWE_KEY_MANAGEMENT = "ECDH-ES+A256KW";
export const MAX_RECIPIENTS = 16;
export const MAX_PLAINTEXT_BYTES = 1024 * 1024;
export const MAX_AAD_BYTES = 8 * 1024;
/** Upper bound of a serialization: the base64url plaintext and aad plus 16 recipients, with room. */
export const MAX_JWE_LENGTH = 1536 * 1024;
const MAX_PROTECTED_LENGTH = 1024;

const CEK_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
const WRAPPED_CEK_BYTES = CEK_BYTES + 8;
const KID = /^[A-Za-z0-9_.:-]{1,128}$/;
const CONTENT_TYPE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}(\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62})?$/;

const JWE_MEMBERS: ReadonlySet<string> = new Set([
  "protected",
  "recipients",
  "aad",
  "iv",
  "ciphertext",
  "tag",
]);
const PROTECTED_MEMBERS: ReadonlySet<string> = new Set(["enc", "cty"]);
const RECIPIENT_MEMBERS: ReadonlySet<string> = new Set(["header", "encrypted_key"]);
const RECIPIENT_HEADER_MEMBERS: ReadonlySet<string> = new Set(["alg", "kid", "epk"]);
const EC_EPK_MEMBERS: ReadonlySet<string> = new Set(["kty", "crv", "x", "y"]);
const OKP_EPK_MEMBERS: ReadonlySet<string> = new Set(["kty", "crv", "x"]);

/** A recipient's public key: EC P-256 or X25519 (see recipients.ts to resolve one from the registry). */
export interface JweRecipient {
  readonly kid: string;
  readonly publicKey: KeyObject;
  /** For error messages. */
  readonly serviceId?: string | undefined;
}

export interface SealOptions {
  /** Protected `cty`, e.g. "json" or "application/json"; authenticated with the content. */
  readonly contentType?: string | undefined;
  /** Additional authenticated data (the JWE `aad` member): bound to the content, not encrypted. */
  readonly aad?: Uint8Array | undefined;
}

export interface JweRecipientEntry {
  readonly header: {
    readonly alg: typeof JWE_KEY_MANAGEMENT;
    readonly kid: string;
    readonly epk: EphemeralJwk;
  };
  readonly encrypted_key: string;
}

export interface GeneralJwe {
  readonly protected: string;
  readonly recipients: readonly JweRecipientEntry[];
  readonly aad?: string;
  readonly iv: string;
  readonly ciphertext: string;
  readonly tag: string;
}

/** The opener's own key; a LinkSigner fits. */
export interface RecipientKey {
  readonly kid: string;
  readonly privateKey: KeyObject;
}

export interface OpenedJwe {
  readonly plaintext: Buffer;
  /** The recipient entry (key) that opened it. */
  readonly kid: string;
  readonly contentType: string | undefined;
  readonly aad: Buffer | undefined;
}

function recipientName(recipient: JweRecipient): string {
  return recipient.serviceId === undefined
    ? `key ${recipient.kid}`
    : `${recipient.serviceId} (key ${recipient.kid})`;
}

function additionalData(protectedPart: string, aadPart: string | undefined): Buffer {
  return Buffer.from(aadPart === undefined ? protectedPart : `${protectedPart}.${aadPart}`, "ascii");
}

function keyEncryptionKey(z: Buffer): Buffer {
  const kek = concatKdf(z, JWE_KEY_MANAGEMENT, 256);
  z.fill(0);
  return kek;
}

function checkRecipients(recipients: readonly JweRecipient[]): AgreementCurve[] {
  if (recipients.length === 0)
    throw new KeyServiceError("no_recipients", "seal needs at least one recipient.");
  if (recipients.length > MAX_RECIPIENTS) {
    throw new KeyServiceError("too_many_recipients", `at most ${MAX_RECIPIENTS} recipients.`);
  }
  const kids = new Set<string>();
  return recipients.map((recipient) => {
    if (!KID.test(recipient.kid)) throw new KeyServiceError("malformed", "a recipient kid is not a key id.");
    if (kids.has(recipient.kid)) {
      throw new KeyServiceError("duplicate_recipient", `${recipientName(recipient)} is listed twice.`);
    }
    kids.add(recipient.kid);
    if (recipient.publicKey.type !== "public") {
      throw new KeyServiceError("unsupported_key", `${recipientName(recipient)}: pass a public key.`);
    }
    const curve = agreementCurve(recipient.publicKey);
    if (curve === undefined) {
      throw new KeyServiceError(
        "no_encryption_key",
        `${recipientName(recipient)} has a ${recipient.publicKey.asymmetricKeyType ?? "?"} key; ECDH-ES needs P-256 or X25519.`,
      );
    }
    return curve;
  });
}

export function seal(
  plaintext: Uint8Array,
  recipients: readonly JweRecipient[],
  options: SealOptions = {},
): GeneralJwe {
  if (!(plaintext instanceof Uint8Array))
    throw new KeyServiceError("invalid_payload", "plaintext must be bytes.");
  if (plaintext.byteLength > MAX_PLAINTEXT_BYTES) {
    throw new KeyServiceError("too_large", `plaintext is larger than ${MAX_PLAINTEXT_BYTES} bytes.`);
  }
  if (options.aad !== undefined && options.aad.byteLength > MAX_AAD_BYTES) {
    throw new KeyServiceError("too_large", `aad is larger than ${MAX_AAD_BYTES} bytes.`);
  }
  const { contentType } = options;
  if (contentType !== undefined && !CONTENT_TYPE.test(contentType)) {
    throw new KeyServiceError(
      "malformed",
      "contentType must be a media type such as json or application/json.",
    );
  }
  const curves = checkRecipients(recipients);

  const protectedPart = encodeBase64url(
    JSON.stringify(
      contentType === undefined ? { enc: JWE_ENCRYPTION } : { enc: JWE_ENCRYPTION, cty: contentType },
    ),
  );
  const aadPart = options.aad === undefined ? undefined : encodeBase64url(options.aad);
  const cek = randomBytes(CEK_BYTES);
  const iv = randomBytes(IV_BYTES);
  try {
    const entries = recipients.map((recipient, index): JweRecipientEntry => {
      const ephemeral = generateEphemeral(curves[index] as AgreementCurve);
      const kek = keyEncryptionKey(agree(ephemeral.privateKey, recipient.publicKey));
      const wrapped = aesKeyWrap(kek, cek);
      kek.fill(0);
      return {
        header: { alg: JWE_KEY_MANAGEMENT, kid: recipient.kid, epk: ephemeral.jwk },
        encrypted_key: wrapped.toString("base64url"),
      };
    });
    const cipher = createCipheriv("aes-256-gcm", cek, iv, { authTagLength: TAG_BYTES });
    cipher.setAAD(additionalData(protectedPart, aadPart));
    const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return {
      protected: protectedPart,
      recipients: entries,
      ...(aadPart === undefined ? {} : { aad: aadPart }),
      iv: iv.toString("base64url"),
      ciphertext: ciphertext.toString("base64url"),
      tag: cipher.getAuthTag().toString("base64url"),
    };
  } finally {
    cek.fill(0);
  }
}

interface ParsedRecipient {
  readonly kid: string;
  readonly epk: EphemeralJwk;
  readonly encryptedKey: Buffer;
}

interface ParsedJwe {
  readonly protectedPart: string;
  readonly contentType: string | undefined;
  readonly recipients: readonly ParsedRecipient[];
  readonly aadPart: string | undefined;
  readonly aad: Buffer | undefined;
  readonly iv: Buffer;
  readonly ciphertext: Buffer;
  readonly tag: Buffer;
}

function record(value: unknown, what: string): Record<string, unknown> {
  if (!isPlainRecord(value)) throw new KeyServiceError("malformed", `${what} must be a JSON object.`);
  return value;
}

function boundedBytes(text: unknown, what: string, maxBytes: number): Buffer {
  if (typeof text === "string" && text.length > base64urlLength(maxBytes)) {
    throw new KeyServiceError("too_large", `${what} is larger than ${maxBytes} bytes.`);
  }
  return decodeBase64url(text, what);
}

function exactBytes(text: unknown, what: string, bytes: number): Buffer {
  const decoded = decodeBase64url(text, what);
  if (decoded.length !== bytes) throw new KeyServiceError("malformed", `${what} must be ${bytes} bytes.`);
  return decoded;
}

function parseEpk(value: unknown, where: string): EphemeralJwk {
  const epk = record(value, `${where} epk`);
  if (epk.kty === "EC" && epk.crv === "P-256") {
    onlyMembers(epk, EC_EPK_MEMBERS, `${where} epk`);
    exactBytes(epk.x, `${where} epk x`, 32);
    exactBytes(epk.y, `${where} epk y`, 32);
    return { kty: "EC", crv: "P-256", x: epk.x as string, y: epk.y as string };
  }
  if (epk.kty === "OKP" && epk.crv === "X25519") {
    onlyMembers(epk, OKP_EPK_MEMBERS, `${where} epk`);
    exactBytes(epk.x, `${where} epk x`, 32);
    return { kty: "OKP", crv: "X25519", x: epk.x as string };
  }
  throw new KeyServiceError("malformed", `${where} epk must be an EC P-256 or OKP X25519 public key.`);
}

function parseRecipient(value: unknown, index: number): ParsedRecipient {
  const where = `recipients[${index}]`;
  const entry = record(value, where);
  onlyMembers(entry, RECIPIENT_MEMBERS, where);
  const header = record(entry.header, `${where} header`);
  if (header.alg !== JWE_KEY_MANAGEMENT) {
    throw new KeyServiceError("alg_not_allowed", `${where} alg must be ${JWE_KEY_MANAGEMENT}.`);
  }
  onlyMembers(header, RECIPIENT_HEADER_MEMBERS, `${where} header`);
  if (typeof header.kid !== "string" || !KID.test(header.kid)) {
    throw new KeyServiceError("malformed", `${where} header needs a kid.`);
  }
  return {
    kid: header.kid,
    epk: parseEpk(header.epk, where),
    encryptedKey: exactBytes(entry.encrypted_key, `${where} encrypted_key`, WRAPPED_CEK_BYTES),
  };
}

function parseProtected(text: unknown): string | undefined {
  if (typeof text === "string" && text.length > MAX_PROTECTED_LENGTH) {
    throw new KeyServiceError("too_large", "protected header is too long.");
  }
  const header = decodeJsonObject(text, "protected header");
  if (header.enc !== JWE_ENCRYPTION) {
    throw new KeyServiceError("alg_not_allowed", `enc must be ${JWE_ENCRYPTION}.`);
  }
  if ("zip" in header || "crit" in header || "alg" in header) {
    throw new KeyServiceError("alg_not_allowed", "zip, crit and a shared alg are not accepted.");
  }
  onlyMembers(header, PROTECTED_MEMBERS, "protected header");
  const { cty } = header;
  if (cty !== undefined && (typeof cty !== "string" || !CONTENT_TYPE.test(cty))) {
    throw new KeyServiceError("malformed", "cty must be a media type.");
  }
  return cty;
}

function parseJwe(input: unknown): ParsedJwe {
  let value = input;
  if (typeof input === "string") {
    if (input.length > MAX_JWE_LENGTH) {
      throw new KeyServiceError("too_large", `the JWE is longer than ${MAX_JWE_LENGTH} characters.`);
    }
    try {
      value = JSON.parse(input);
    } catch {
      throw new KeyServiceError("malformed", "the JWE is not JSON.");
    }
  }
  const jwe = record(value, "the JWE");
  onlyMembers(jwe, JWE_MEMBERS, "the JWE");
  const contentType = parseProtected(jwe.protected);
  const list = jwe.recipients;
  if (!Array.isArray(list) || list.length === 0) {
    throw new KeyServiceError("malformed", "recipients must be a non-empty array.");
  }
  if (list.length > MAX_RECIPIENTS) {
    throw new KeyServiceError("too_many_recipients", `at most ${MAX_RECIPIENTS} recipients.`);
  }
  const recipients = list.map((entry: unknown, index) => parseRecipient(entry, index));
  if (new Set(recipients.map((recipient) => recipient.kid)).size !== recipients.length) {
    throw new KeyServiceError("malformed", "two recipients have the same kid.");
  }
  const aadPart = jwe.aad === undefined ? undefined : jwe.aad;
  const aad = aadPart === undefined ? undefined : boundedBytes(aadPart, "aad", MAX_AAD_BYTES);
  return {
    protectedPart: jwe.protected as string,
    contentType,
    recipients,
    aadPart: aadPart as string | undefined,
    aad,
    iv: exactBytes(jwe.iv, "iv", IV_BYTES),
    ciphertext: boundedBytes(jwe.ciphertext, "ciphertext", MAX_PLAINTEXT_BYTES),
    tag: exactBytes(jwe.tag, "tag", TAG_BYTES),
  };
}

function unwrapFor(entry: ParsedRecipient, privateKey: KeyObject): Buffer | undefined {
  const curve = agreementCurve(privateKey);
  if (curve === undefined || privateKey.type !== "private" || entry.epk.crv !== curve) return undefined;
  try {
    const kek = keyEncryptionKey(agree(privateKey, importEphemeral(entry.epk)));
    try {
      const cek = aesKeyUnwrap(kek, entry.encryptedKey);
      return cek.length === CEK_BYTES ? cek : undefined;
    } finally {
      kek.fill(0);
    }
  } catch {
    // Invalid point, small-order point or failed integrity check: all the same to the caller.
    return undefined;
  }
}

function isKeyList(keys: RecipientKey | readonly RecipientKey[]): keys is readonly RecipientKey[] {
  return Array.isArray(keys);
}

/**
 * Opens a JWE (its JSON text or the parsed object) with this service's key, or with several (during
 * a rotation: the current key and the one before it). Fails closed: `not_a_recipient` when none of
 * the kids is listed, `decryption_failed` on any cryptographic failure.
 */
export function open(input: unknown, keys: RecipientKey | readonly RecipientKey[]): OpenedJwe {
  const jwe = parseJwe(input);
  const ring = isKeyList(keys) ? keys : [keys];
  const candidates = ring.flatMap((key) => {
    const entry = jwe.recipients.find((recipient) => recipient.kid === key.kid);
    return entry === undefined ? [] : [{ entry, key }];
  });
  if (candidates.length === 0) {
    throw new KeyServiceError("not_a_recipient", "none of this service's keys is a recipient of the JWE.");
  }
  for (const { entry, key } of candidates) {
    const cek = unwrapFor(entry, key.privateKey);
    if (cek === undefined) continue;
    let output: Buffer | undefined;
    try {
      const decipher = createDecipheriv("aes-256-gcm", cek, jwe.iv, { authTagLength: TAG_BYTES });
      decipher.setAAD(additionalData(jwe.protectedPart, jwe.aadPart));
      decipher.setAuthTag(jwe.tag);
      output = decipher.update(jwe.ciphertext);
      const plaintext = Buffer.concat([output, decipher.final()]);
      return { plaintext, kid: entry.kid, contentType: jwe.contentType, aad: jwe.aad };
    } catch {
      // The CEK unwrapped, so the content itself was altered: no other key can do better.
      output?.fill(0);
      break;
    } finally {
      cek.fill(0);
    }
  }
  throw new KeyServiceError(
    "decryption_failed",
    "the JWE does not decrypt: altered, or sealed to another key.",
  );
}
