/**
 * Every error the PKI reports on purpose. Each class narrows `code` to the codes it can carry, so a
 * caller can `switch (error.code)` exhaustively; the codes are stable (scripts and tests match on
 * them) and the messages say what to do next.
 */
import { CustodyError } from "../../crds/src/errors.js";

export class PkiError extends CustodyError {}

/** Reading PEM text: nothing there, broken armor or base64, or more blocks than allowed. */
export class PemError extends PkiError {
  declare readonly code: "pem_not_found" | "pem_malformed" | "pem_too_many_blocks";
  constructor(code: PemError["code"], message: string) {
    super(code, message);
  }
}

export class FileError extends PkiError {
  declare readonly code:
    | "file_not_found"
    | "file_too_large"
    | "file_unreadable"
    | "file_unwritable"
    | "file_exists";
  constructor(code: FileError["code"], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

export class KeyError extends PkiError {
  declare readonly code: "key_not_found" | "encrypted_key" | "invalid_key" | "unsupported_key" | "weak_key";
  constructor(code: KeyError["code"], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** A certificate Custody was asked to use (not to verify) cannot be used. */
export class CertificateError extends PkiError {
  declare readonly code: "invalid_certificate" | "not_a_certificate" | "certificate_not_found";
  constructor(code: CertificateError["code"], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

export class CaError extends PkiError {
  declare readonly code: "ca_exists" | "ca_key_mismatch" | "not_a_ca" | "ca_expired" | "no_trust_domain";
  constructor(code: CaError["code"], message: string) {
    super(code, message);
  }
}

export class CsrError extends PkiError {
  declare readonly code: "invalid_csr" | "bad_csr_signature" | "unsupported_algorithm" | "empty_subject";
  constructor(code: CsrError["code"], message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/**
 * A request to issue something Custody will not issue: bad SAN, lifetime out of bounds, or a validity
 * window that does not overlap the CA's (before it begins, or after it ends).
 */
export class IssueError extends PkiError {
  declare readonly code:
    | "invalid_dns_name"
    | "invalid_ip_address"
    | "invalid_lifetime"
    | "too_many_names"
    | "ends_before_ca_valid"
    | "starts_after_ca_expires";
  constructor(code: IssueError["code"], message: string) {
    super(code, message);
  }
}

export class BundleError extends PkiError {
  declare readonly code: "empty_bundle" | "not_a_ca" | "duplicate_certificate" | "bundle_too_large";
  constructor(code: BundleError["code"], message: string) {
    super(code, message);
  }
}

export type VerificationCode =
  | "unknown_issuer"
  | "expired"
  | "not_yet_valid"
  | "bad_signature"
  | "not_client_auth"
  | "is_ca"
  | "malformed"
  | "trust_domain_mismatch"
  | "spiffe_id_not_mesh_issued"
  | "ambiguous_issuer";

export const VERIFICATION_CODES: readonly VerificationCode[] = [
  "unknown_issuer",
  "expired",
  "not_yet_valid",
  "bad_signature",
  "not_client_auth",
  "is_ca",
  "malformed",
  "trust_domain_mismatch",
  "spiffe_id_not_mesh_issued",
  "ambiguous_issuer",
];

/** Why a client certificate was not accepted: exactly one code per rejection. */
export class CertificateVerificationError extends PkiError {
  declare readonly code: VerificationCode;
  constructor(code: VerificationCode, message: string) {
    super(code, message);
  }
}
