import { beforeAll, describe, expect, it } from "vitest";
import { CustodyError } from "../../crds/src/errors.js";
import { MAX_BUNDLE_CERTIFICATES, TrustBundle } from "../src/bundle.js";
import { type CertificateAuthority, createCertificateAuthority } from "../src/ca.js";
import { issueCertificate } from "../src/issue.js";
import { generateKeyPair, privateKeyToPem } from "../src/keys.js";

let first: CertificateAuthority;
let second: CertificateAuthority;
beforeAll(async () => {
  first = await createCertificateAuthority();
  second = await createCertificateAuthority({ trustDomain: "partner.example", keyAlgorithm: "ed25519" });
});

function failure(action: () => unknown): string {
  try {
    action();
  } catch (error) {
    return error instanceof CustodyError ? `${error.code}: ${error.message}` : `unexpected ${String(error)}`;
  }
  return "no error";
}

describe("TrustBundle.fromPem", () => {
  it("concatenates CA certificates from several sources, in order", () => {
    const bundle = TrustBundle.fromPem([
      { name: "ca.crt", pem: first.certificate.pem },
      { name: "ca_alternative.crt", pem: second.certificate.pem },
    ]);
    expect(bundle.certificates.map((c) => c.fingerprint256)).toEqual([
      first.certificate.fingerprint256,
      second.certificate.fingerprint256,
    ]);
    expect(bundle.toPem()).toBe(first.certificate.pem + second.certificate.pem);
  });

  it("reads several certificates from one source, e.g. a previous bundle", () => {
    const bundle = TrustBundle.fromPem([
      { name: "ca_certs.pem", pem: first.certificate.pem + second.certificate.pem },
    ]);
    expect(bundle.certificates).toHaveLength(2);
  });

  it("refuses a non-CA certificate, naming file and subject", async () => {
    const { certificate } = await issueCertificate(first, { id: "cart.shop" });
    expect(failure(() => TrustBundle.fromPem([{ name: "client.crt", pem: certificate.pem }]))).toMatch(
      /^not_a_ca: client\.crt: "CN=cart\.shop" is not a CA certificate/,
    );
  });

  it("refuses duplicates, naming both files and the subject", () => {
    const message = failure(() =>
      TrustBundle.fromPem([
        { name: "a.crt", pem: first.certificate.pem },
        { name: "b.crt", pem: first.certificate.pem },
      ]),
    );
    expect(message).toMatch(
      /^duplicate_certificate: b\.crt: "O=Custody, CN=Custody CA custody\.local" .* from a\.crt/,
    );
    expect(message).toContain(first.certificate.fingerprint256);
  });

  it("refuses empty input, private keys and too many certificates", async () => {
    expect(failure(() => TrustBundle.fromPem([]))).toMatch(/^empty_bundle: /);
    expect(failure(() => TrustBundle.fromPem([{ name: "empty.pem", pem: "" }]))).toMatch(
      /^certificate_not_found: /,
    );
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    expect(
      failure(() => TrustBundle.fromPem([{ name: "oops.key", pem: privateKeyToPem(privateKey) }])),
    ).toMatch(/^not_a_certificate: oops\.key is a "PRIVATE KEY" block/);
    const many = first.certificate.pem.repeat(MAX_BUNDLE_CERTIFICATES + 1);
    expect(failure(() => TrustBundle.fromPem([{ name: "many.pem", pem: many }]))).toMatch(
      /^bundle_too_large: /,
    );
  });

  it("finds issuer candidates by name and key identifier", async () => {
    const bundle = TrustBundle.fromPem([
      { name: "a", pem: first.certificate.pem },
      { name: "b", pem: second.certificate.pem },
    ]);
    const { certificate } = await issueCertificate(second, { id: "cart.shop" });
    expect(bundle.issuersOf(certificate).map((c) => c.fingerprint256)).toEqual([
      second.certificate.fingerprint256,
    ]);
  });
});
