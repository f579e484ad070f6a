/**
 * A trust bundle: the CA certificates a verifier accepts, parsed once and reused for every
 * verification. Only CA certificates get in, each once.
 */
import { type ParsedCertificate, parseCertificatesPem } from "./certificate.js";
import { BundleError, PemError } from "./errors.js";

/** Far above any real deployment (a handful of CAs, a few more during rotation); bounds parsing work. */
export const MAX_BUNDLE_CERTIFICATES = 100;

export interface BundleSource {
  /** Names the source in error messages: a file path, usually. */
  readonly name: string;
  readonly pem: string;
}

export class TrustBundle {
  readonly certificates: readonly ParsedCertificate[];

  private constructor(certificates: readonly ParsedCertificate[]) {
    this.certificates = certificates;
  }

  /**
   * Every certificate of every source, in order. Refuses a source without certificates or holding
   * other PEM blocks (CertificateError), and a non-CA certificate, a certificate seen before, or more
   * than MAX_BUNDLE_CERTIFICATES in all (BundleError).
   */
  static fromPem(sources: readonly BundleSource[]): TrustBundle {
    const certificates: ParsedCertificate[] = [];
    const origins = new Map<string, string>();
    for (const source of sources) {
      for (const certificate of readSource(source, MAX_BUNDLE_CERTIFICATES - certificates.length)) {
        const where = `${source.name}: "${certificate.subject}"`;
        if (!certificate.isCa) {
          throw new BundleError(
            "not_a_ca",
            `${where} is not a CA certificate (basicConstraints CA is absent or false); a bundle holds only CAs.`,
          );
        }
        const first = origins.get(certificate.fingerprint256);
        if (first !== undefined) {
          throw new BundleError(
            "duplicate_certificate",
            `${where} is already in the bundle from ${first} (SHA-256 ${certificate.fingerprint256}).`,
          );
        }
        origins.set(certificate.fingerprint256, source.name);
        certificates.push(certificate);
      }
    }
    if (certificates.length === 0) {
      throw new BundleError("empty_bundle", "a trust bundle needs at least one CA.");
    }
    return new TrustBundle(certificates);
  }

  /**
   * Bundle CAs that could have issued `certificate`: matching name, and matching key identifiers
   * when both are present (OpenSSL's X509_check_issued). The signature is not checked here.
   */
  issuersOf(certificate: ParsedCertificate): readonly ParsedCertificate[] {
    return this.certificates.filter((candidate) => certificate.x509.checkIssued(candidate.x509));
  }

  /** Concatenated PEM, the form `ca_certs.pem`, Node's `tls` `ca` option and `openssl -CAfile` take. */
  toPem(): string {
    return this.certificates.map((certificate) => certificate.pem).join("");
  }
}

function readSource(source: BundleSource, room: number): ParsedCertificate[] {
  if (room <= 0) throw tooLarge();
  try {
    return parseCertificatesPem(source.pem, { source: source.name, maxCertificates: room });
  } catch (error) {
    if (error instanceof PemError && error.code === "pem_too_many_blocks") throw tooLarge();
    throw error;
  }
}

function tooLarge(): BundleError {
  return new BundleError(
    "bundle_too_large",
    `a trust bundle holds at most ${MAX_BUNDLE_CERTIFICATES} certificates.`,
  );
}
