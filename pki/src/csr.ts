/**
 * PKCS#10 certificate requests: reading one (self-signature checked, algorithm on the closed list,
 * key acceptable) and making one. What a request asks for beyond its subject and key (extensions,
 * attributes) is never read: the CA decides those.
 */
import { createPublicKey, type KeyObject } from "node:crypto";
import { Attributes, CertificationRequest, CertificationRequestInfo } from "@peculiar/asn1-csr";
import { AsnConvert } from "@peculiar/asn1-schema";
import { SubjectPublicKeyInfo } from "@peculiar/asn1-x509";
import {
  algorithmIdentifier,
  type SignatureAlgorithm,
  signatureAlgorithmByOid,
  signBytes,
  signingAlgorithmFor,
  verifyBytes,
} from "./algorithms.js";
import { isSingleDerSequence } from "./der.js";
import { buildName, formatName, nameToDer, OID_COMMON_NAME } from "./dn.js";
import { CsrError, KeyError } from "./errors.js";
import { assertSubjectKey, publicKeyDer } from "./keys.js";
import { encodePem, readPemBlocks } from "./pem.js";

export interface ParsedCsr {
  readonly der: Uint8Array;
  /** One line, DER order; empty string for an empty subject. */
  readonly subject: string;
  /** DER of the subject name, kept byte for byte when a certificate keeps the requested subject. */
  readonly subjectName: Uint8Array;
  readonly subjectPublicKeyInfo: Uint8Array;
  readonly publicKey: KeyObject;
  readonly signatureAlgorithm: SignatureAlgorithm;
}

const CSR_LABELS: ReadonlySet<string> = new Set(["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"]);

/** Exactly one CSR block (`openssl req -new` output). */
export function parseCsrPem(text: string, source: string): ParsedCsr {
  const blocks = readPemBlocks(text, { maxBlocks: 4, source }).filter((block) => CSR_LABELS.has(block.label));
  const [block, ...others] = blocks;
  if (block === undefined) {
    throw new CsrError("invalid_csr", `${source} holds no "BEGIN CERTIFICATE REQUEST" block.`);
  }
  if (others.length > 0) {
    throw new CsrError("invalid_csr", `${source} holds ${blocks.length} certificate requests; pass one.`);
  }
  return parseCsr(block.der, source);
}

export function parseCsr(der: Uint8Array, source: string): ParsedCsr {
  if (!isSingleDerSequence(der)) {
    throw new CsrError("invalid_csr", `${source} is not a single DER-encoded certificate request.`);
  }
  let request: CertificationRequest;
  try {
    request = AsnConvert.parse(der, CertificationRequest);
  } catch (error) {
    throw new CsrError("invalid_csr", `${source} is not a valid PKCS#10 certificate request.`, {
      cause: error,
    });
  }
  const info = request.certificationRequestInfo;
  const signed = request.certificationRequestInfoRaw;
  if (info.version !== 0 || signed === undefined) {
    throw new CsrError("invalid_csr", `${source} is not a version 1 PKCS#10 certificate request.`);
  }
  const signatureAlgorithm = signatureAlgorithmByOid(request.signatureAlgorithm.algorithm);
  if (signatureAlgorithm === undefined) {
    throw new CsrError(
      "unsupported_algorithm",
      `${source} is signed with algorithm ${request.signatureAlgorithm.algorithm}; Custody accepts ` +
        "ECDSA, RSA PKCS#1 v1.5 (SHA-256/384/512) and Ed25519.",
    );
  }
  const subjectPublicKeyInfo = new Uint8Array(AsnConvert.serialize(info.subjectPKInfo));
  const publicKey = publicKeyFrom(subjectPublicKeyInfo, source);
  assertSubjectKey(publicKey, source);
  if (
    !verifyBytes(signatureAlgorithm, publicKey, new Uint8Array(signed), new Uint8Array(request.signature))
  ) {
    throw new CsrError(
      "bad_csr_signature",
      `${source}: the request's signature does not verify with its own key; it was altered or is corrupt.`,
    );
  }
  return {
    der,
    subject: formatName(info.subject),
    subjectName: nameToDer(info.subject),
    subjectPublicKeyInfo,
    publicKey,
    signatureAlgorithm,
  };
}

function publicKeyFrom(spki: Uint8Array, source: string): KeyObject {
  try {
    return createPublicKey({ key: Buffer.from(spki), format: "der", type: "spki" });
  } catch (error) {
    throw new KeyError("invalid_key", `${source} carries a public key Custody cannot read.`, {
      cause: error,
    });
  }
}

/** A CSR for `CN=<commonName>`, signed with the key it requests a certificate for. */
export function createCertificateRequest(privateKey: KeyObject, commonName: string): string {
  const info = new CertificationRequestInfo({
    version: 0,
    subject: buildName([{ type: OID_COMMON_NAME, value: commonName }]),
    subjectPKInfo: AsnConvert.parse(publicKeyDer(privateKey), SubjectPublicKeyInfo),
    attributes: new Attributes(),
  });
  const signature = signBytes(privateKey, new Uint8Array(AsnConvert.serialize(info)));
  const request = new CertificationRequest({
    certificationRequestInfo: info,
    signatureAlgorithm: algorithmIdentifier(signingAlgorithmFor(privateKey)),
    signature: new Uint8Array(signature).buffer,
  });
  return encodePem("CERTIFICATE REQUEST", new Uint8Array(AsnConvert.serialize(request)));
}
