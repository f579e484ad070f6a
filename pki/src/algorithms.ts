/**
 * Signature algorithms by OID: which one a key signs with, and checking a signature made by someone
 * else (a CSR). Deliberately a closed list: SHA-1, RSA-PSS and anything unlisted are refused.
 */
import { type KeyObject, sign, verify } from "node:crypto";
import { AlgorithmIdentifier } from "@peculiar/asn1-x509";

export interface SignatureAlgorithm {
  /** JOSE name, for messages and for the token service that maps certificate keys to JWS algorithms. */
  readonly name: "ES256" | "ES384" | "ES512" | "RS256" | "RS384" | "RS512" | "EdDSA";
  readonly oid: string;
  /** Digest passed to node:crypto; null for EdDSA, which hashes internally. */
  readonly hash: "sha256" | "sha384" | "sha512" | null;
  readonly keyType: "ec" | "rsa" | "ed25519";
}

const ALGORITHMS: readonly SignatureAlgorithm[] = [
  { name: "ES256", oid: "1.2.840.10045.4.3.2", hash: "sha256", keyType: "ec" },
  { name: "ES384", oid: "1.2.840.10045.4.3.3", hash: "sha384", keyType: "ec" },
  { name: "ES512", oid: "1.2.840.10045.4.3.4", hash: "sha512", keyType: "ec" },
  { name: "RS256", oid: "1.2.840.113549.1.1.11", hash: "sha256", keyType: "rsa" },
  { name: "RS384", oid: "1.2.840.113549.1.1.12", hash: "sha384", keyType: "rsa" },
  { name: "RS512", oid: "1.2.840.113549.1.1.13", hash: "sha512", keyType: "rsa" },
  { name: "EdDSA", oid: "1.3.101.112", hash: null, keyType: "ed25519" },
];

export function signatureAlgorithmByOid(oid: string): SignatureAlgorithm | undefined {
  return ALGORITHMS.find((algorithm) => algorithm.oid === oid);
}

/** The algorithm Custody signs with for a key it accepted with assertSigningKey. */
export function signingAlgorithmFor(key: KeyObject): SignatureAlgorithm {
  const name = key.asymmetricKeyType === "ec" ? "ES256" : key.asymmetricKeyType === "rsa" ? "RS256" : "EdDSA";
  const algorithm = ALGORITHMS.find((candidate) => candidate.name === name);
  if (algorithm === undefined || algorithm.keyType !== key.asymmetricKeyType) {
    throw new TypeError(`no signing algorithm for a ${key.asymmetricKeyType ?? key.type} key`);
  }
  return algorithm;
}

/** RSA identifiers carry an explicit NULL parameter (RFC 4055 §5); ECDSA and EdDSA none (RFC 5758, 8410). */
export function algorithmIdentifier(algorithm: SignatureAlgorithm): AlgorithmIdentifier {
  return algorithm.keyType === "rsa"
    ? new AlgorithmIdentifier({ algorithm: algorithm.oid, parameters: null })
    : new AlgorithmIdentifier({ algorithm: algorithm.oid });
}

/** ECDSA signatures come out DER-encoded (node's default), which is what X.509 and PKCS#10 carry. */
export function signBytes(key: KeyObject, data: Uint8Array): Uint8Array {
  return new Uint8Array(sign(signingAlgorithmFor(key).hash, data, key));
}

export function verifyBytes(
  algorithm: SignatureAlgorithm,
  key: KeyObject,
  data: Uint8Array,
  signature: Uint8Array,
): boolean {
  if (key.asymmetricKeyType !== algorithm.keyType) return false;
  try {
    return verify(algorithm.hash, data, key, signature);
  } catch {
    // node throws rather than returning false for structurally invalid signatures.
    return false;
  }
}
