/** Public API of the Custody PKI. Everything else in pki/src is internal. */
export type { SignatureAlgorithm } from "./algorithms.js";
export {
  type AuthenticatedPeer,
  type ExternalPeer,
  type MeshPeer,
  type TrustAnchorSources,
  TrustAnchors,
} from "./anchors.js";
export { type BundleSource, MAX_BUNDLE_CERTIFICATES, TrustBundle } from "./bundle.js";
export {
  CA_CERTIFICATE_FILE,
  CA_KEY_FILE,
  type CertificateAuthority,
  type CreateCaOptions,
  caPaths,
  certificateAuthorityFrom,
  createCertificateAuthority,
  DEFAULT_CA_LIFETIME_SECONDS,
  loadCertificateAuthority,
  writeCertificateAuthority,
} from "./ca.js";
export {
  caTrustDomain,
  EKU_CLIENT_AUTH,
  EKU_SERVER_AUTH,
  KEY_USAGE,
  type ParsedCertificate,
  parseCertificate,
  parseCertificatesPem,
  spiffeUris,
  trustDomainOf,
} from "./certificate.js";
export { createCertificateRequest, type ParsedCsr, parseCsr, parseCsrPem } from "./csr.js";
export { normalizedDistinguishedName } from "./dn.js";
export {
  BundleError,
  CaError,
  CertificateError,
  CertificateVerificationError,
  CsrError,
  FileError,
  IssueError,
  KeyError,
  PemError,
  PkiError,
  VERIFICATION_CODES,
  type VerificationCode,
} from "./errors.js";
export { readBoundedFile, writeFilesAtomically } from "./files.js";
export {
  CERTIFICATE_USAGES,
  type CertificateUsage,
  DEFAULT_LEAF_LIFETIME_SECONDS,
  type IssuedCertificate,
  type IssueOptions,
  issueCertificate,
  type LeafOptions,
  MAX_LEAF_LIFETIME_SECONDS,
  type SignCsrOptions,
  signCertificateRequest,
} from "./issue.js";
export { type IssuerKey, IssuerKeySet, importPublicJwk, JwkImportError } from "./jwks.js";
export {
  algorithmForKey,
  JWS_ALGORITHMS,
  type JwsAlgorithm,
  JwsError,
  type ParsedJws,
  parseCompactJws,
  sha256Base64url,
  signCompactJws,
  verifySignature,
} from "./jws.js";
export {
  FORBIDDEN_JWT_HEADERS,
  JwtError,
  type JwtErrorCode,
  type JwtKey,
  type JwtVerifyOptions,
  type VerifiedJwt,
  verifyJwt,
  verifyParsedJwt,
} from "./jwt.js";
export {
  DEFAULT_KEY_ALGORITHM,
  generateKeyPair,
  KEY_ALGORITHMS,
  type KeyAlgorithm,
  type KeyPair,
  privateKeyFromPem,
  privateKeyToPem,
} from "./keys.js";
export { encodePem, type PemBlock, readPemBlocks } from "./pem.js";
export {
  MAX_CHAIN_CERTIFICATES,
  type VerifiedClientCertificate,
  type VerifyOptions,
  verifyClientCertificate,
} from "./verify.js";
