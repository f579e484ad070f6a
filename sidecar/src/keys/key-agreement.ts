/**
 * The primitives of ECDH-ES+A256KW (RFC 7518 §4.6), all from node:crypto: ephemeral-static ECDH on
 * P-256 or X25519, the Concat KDF (NIST SP 800-56A, as RFC 7518 §4.6.2 profiles it with SHA-256) and
 * AES key wrap (RFC 3394, OpenSSL's `id-aes256-wrap`).
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type JsonWebKey,
  type KeyObject,
} from "node:crypto";

/** RFC 3394 §2.2.3.1 default initial value: checked on unwrap, it is the wrap's integrity check. */
const KEY_WRAP_IV = Buffer.from("A6A6A6A6A6A6A6A6", "hex");

/** Curves a recipient key may be on; everything else (Ed25519, RSA, other curves) cannot agree keys here. */
export type AgreementCurve = "P-256" | "X25519";

export function agreementCurve(key: KeyObject): AgreementCurve | undefined {
  if (key.asymmetricKeyType === "ec" && key.asymmetricKeyDetails?.namedCurve === "prime256v1") return "P-256";
  if (key.asymmetricKeyType === "x25519") return "X25519";
  return undefined;
}

/** An ephemeral public key as the JWE `epk` header carries it: public members only, fixed order. */
export type EphemeralJwk =
  | { readonly kty: "EC"; readonly crv: "P-256"; readonly x: string; readonly y: string }
  | { readonly kty: "OKP"; readonly crv: "X25519"; readonly x: string };

export function generateEphemeral(curve: AgreementCurve): { privateKey: KeyObject; jwk: EphemeralJwk } {
  if (curve === "P-256") {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const { x = "", y = "" } = publicKey.export({ format: "jwk" });
    return { privateKey, jwk: { kty: "EC", crv: "P-256", x, y } };
  }
  const { privateKey, publicKey } = generateKeyPairSync("x25519");
  const { x = "" } = publicKey.export({ format: "jwk" });
  return { privateKey, jwk: { kty: "OKP", crv: "X25519", x } };
}

/** node:crypto checks that an EC point is on the curve: an invalid-curve point never reaches ECDH. */
export function importEphemeral(jwk: EphemeralJwk): KeyObject {
  return createPublicKey({ key: { ...jwk } as JsonWebKey, format: "jwk" });
}

/** The shared secret Z; refuses the all-zero result of a small-order X25519 point. */
export function agree(privateKey: KeyObject, publicKey: KeyObject): Buffer {
  const z = diffieHellman({ privateKey, publicKey });
  if (z.every((byte) => byte === 0)) throw new Error("all-zero shared secret");
  return z;
}

function uint32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value);
  return buffer;
}

function lengthPrefixed(data: Uint8Array): Buffer {
  return Buffer.concat([uint32(data.length), data]);
}

/**
 * Concat KDF (RFC 7518 §4.6.2): hash rounds of counter ‖ Z ‖ OtherInfo, where OtherInfo =
 * AlgorithmID ‖ PartyUInfo ‖ PartyVInfo (each length-prefixed) ‖ SuppPubInfo (key length in bits).
 * AlgorithmID is the `alg` for key wrapping (ECDH-ES+A256KW), the `enc` for direct agreement.
 */
export function concatKdf(
  z: Uint8Array,
  algorithmId: string,
  keyBits: number,
  apu: Uint8Array = new Uint8Array(0),
  apv: Uint8Array = new Uint8Array(0),
): Buffer {
  const otherInfo = Buffer.concat([
    lengthPrefixed(Buffer.from(algorithmId, "ascii")),
    lengthPrefixed(apu),
    lengthPrefixed(apv),
    uint32(keyBits),
  ]);
  const rounds = Math.ceil(keyBits / 256);
  const output: Buffer[] = [];
  for (let counter = 1; counter <= rounds; counter++) {
    output.push(createHash("sha256").update(uint32(counter)).update(z).update(otherInfo).digest());
  }
  return Buffer.concat(output).subarray(0, keyBits / 8);
}

/** RFC 3394 wrap of a 256-bit key with a 256-bit KEK: 40 bytes out. */
export function aesKeyWrap(kek: Uint8Array, key: Uint8Array): Buffer {
  const cipher = createCipheriv("id-aes256-wrap", kek, KEY_WRAP_IV);
  return Buffer.concat([cipher.update(key), cipher.final()]);
}

/** Throws when the integrity check fails (wrong KEK or altered input). */
export function aesKeyUnwrap(kek: Uint8Array, wrapped: Uint8Array): Buffer {
  const decipher = createDecipheriv("id-aes256-wrap", kek, KEY_WRAP_IV);
  return Buffer.concat([decipher.update(wrapped), decipher.final()]);
}
