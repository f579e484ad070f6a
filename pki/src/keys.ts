/**
 * Key pairs: the algorithms Custody generates, reading and writing private keys as PEM, and the
 * signature algorithm each key signs certificates with. Keys stay node:crypto KeyObjects, whose
 * inspection never shows key material, so a stray log line cannot leak one.
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPair as generateNodeKeyPair,
  type KeyObject,
} from "node:crypto";
import { KeyError } from "./errors.js";
import { readPemBlocks } from "./pem.js";

export const KEY_ALGORITHMS = ["ecdsa-p256", "ed25519", "rsa-2048"] as const;
export type KeyAlgorithm = (typeof KEY_ALGORITHMS)[number];
export const DEFAULT_KEY_ALGORITHM: KeyAlgorithm = "ecdsa-p256";

export function isKeyAlgorithm(value: string): value is KeyAlgorithm {
  return (KEY_ALGORITHMS as readonly string[]).includes(value);
}

export interface KeyPair {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
}

export function generateKeyPair(algorithm: KeyAlgorithm): Promise<KeyPair> {
  // The callback form runs key generation off the main thread (RSA takes tens of milliseconds).
  return new Promise((resolve, reject) => {
    const done = (error: Error | null, publicKey: KeyObject, privateKey: KeyObject) =>
      error === null ? resolve({ privateKey, publicKey }) : reject(error);
    switch (algorithm) {
      case "ecdsa-p256":
        generateNodeKeyPair("ec", { namedCurve: "P-256" }, done);
        return;
      case "ed25519":
        generateNodeKeyPair("ed25519", {}, done);
        return;
      case "rsa-2048":
        generateNodeKeyPair("rsa", { modulusLength: 2048, publicExponent: 0x10001 }, done);
        return;
    }
  });
}

/** RSA keys below this are refused; above MAX they are refused too, as verifying with them is a DoS lever. */
const MIN_RSA_BITS = 2048;
const MAX_RSA_BITS = 8192;

/** Curves accepted for a certified (subject) key; only P-256 is used to sign (ES256). */
const SUBJECT_CURVES: ReadonlySet<string> = new Set(["prime256v1", "secp384r1"]);

/** What a key is, for messages: "ECDSA P-256", "RSA 2048", "Ed25519". */
export function describeKey(key: KeyObject): string {
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case "ec":
      return `ECDSA ${curveLabel(details.namedCurve)}`;
    case "rsa":
      return `RSA ${details.modulusLength ?? "?"}`;
    case "ed25519":
      return "Ed25519";
    default:
      return key.asymmetricKeyType ?? key.type;
  }
}

function curveLabel(curve: string | undefined): string {
  if (curve === "prime256v1") return "P-256";
  if (curve === "secp384r1") return "P-384";
  return curve ?? "unknown curve";
}

/** A key Custody can sign certificates with: ECDSA P-256, RSA 2048–8192 or Ed25519. */
export function assertSigningKey(key: KeyObject, source: string): void {
  const type = key.asymmetricKeyType;
  if (type === "ec" && key.asymmetricKeyDetails?.namedCurve === "prime256v1") return;
  if (type === "ed25519") return;
  if (type === "rsa") {
    assertRsaSize(key, source);
    return;
  }
  throw new KeyError(
    "unsupported_key",
    `${source} is an ${describeKey(key)} key; Custody signs with ECDSA P-256, RSA (2048–8192 bits) or Ed25519.`,
  );
}

/** A public key Custody will certify: the signing algorithms, plus ECDSA P-384 from CSRs. */
export function assertSubjectKey(key: KeyObject, source: string): void {
  const type = key.asymmetricKeyType;
  if (type === "ec" && SUBJECT_CURVES.has(key.asymmetricKeyDetails?.namedCurve ?? "")) return;
  if (type === "ed25519") return;
  if (type === "rsa") {
    assertRsaSize(key, source);
    return;
  }
  throw new KeyError(
    "unsupported_key",
    `${source} has an ${describeKey(key)} key; Custody certifies ECDSA P-256/P-384, RSA (2048–8192 bits) and Ed25519 keys.`,
  );
}

function assertRsaSize(key: KeyObject, source: string): void {
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < MIN_RSA_BITS) {
    throw new KeyError(
      "weak_key",
      `${source} is an RSA ${bits} key; Custody requires at least ${MIN_RSA_BITS} bits.`,
    );
  }
  if (bits > MAX_RSA_BITS) {
    throw new KeyError(
      "unsupported_key",
      `${source} is an RSA ${bits} key; Custody accepts at most ${MAX_RSA_BITS} bits.`,
    );
  }
}

const KEY_LABELS: Readonly<Record<string, "pkcs8" | "pkcs1" | "sec1">> = {
  "PRIVATE KEY": "pkcs8",
  "RSA PRIVATE KEY": "pkcs1",
  "EC PRIVATE KEY": "sec1",
};

/**
 * Reads an unencrypted private key: PKCS#8 ("PRIVATE KEY") or the traditional OpenSSL forms ("RSA
 * PRIVATE KEY", "EC PRIVATE KEY", possibly after an "EC PARAMETERS" block). Encrypted keys are
 * refused with a way out rather than a passphrase prompt: a server cannot answer one.
 */
export function privateKeyFromPem(text: string, source: string): KeyObject {
  const blocks = readPemBlocks(text, { maxBlocks: 8, source });
  const encrypted = blocks.some(
    (block) =>
      block.label === "ENCRYPTED PRIVATE KEY" ||
      (block.label in KEY_LABELS && (block.headers.get("Proc-Type") ?? "").includes("ENCRYPTED")),
  );
  if (encrypted) {
    throw new KeyError(
      "encrypted_key",
      `${source} is encrypted with a passphrase. Custody reads unencrypted keys; write a decrypted copy with ` +
        "`openssl pkey -in ENCRYPTED.key -out PLAIN.key` (mode 0600) and pass that instead.",
    );
  }
  const block = blocks.find((candidate) => candidate.label in KEY_LABELS);
  const type = block === undefined ? undefined : KEY_LABELS[block.label];
  if (block === undefined || type === undefined) {
    throw new KeyError("key_not_found", `${source} holds no private key ("BEGIN PRIVATE KEY" block).`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: Buffer.from(block.der), format: "der", type });
  } catch (error) {
    // The OpenSSL message is about structure only; it never contains key bytes.
    throw new KeyError("invalid_key", `${source} is not a valid ${block.label}.`, { cause: error });
  }
  assertSigningKey(key, source);
  return key;
}

/** PKCS#8 PEM, the one format every tool reads. */
export function privateKeyToPem(key: KeyObject): string {
  return String(key.export({ type: "pkcs8", format: "pem" }));
}

/** DER SubjectPublicKeyInfo of a public key, or of the public half of a private key. */
export function publicKeyDer(key: KeyObject): Uint8Array {
  const publicKey = key.type === "private" ? createPublicKey(key) : key;
  return new Uint8Array(publicKey.export({ type: "spki", format: "der" }));
}

export function sameKey(a: KeyObject, b: KeyObject): boolean {
  return Buffer.from(publicKeyDer(a)).equals(publicKeyDer(b));
}
