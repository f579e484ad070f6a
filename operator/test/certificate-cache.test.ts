import { describe, expect, it } from "vitest";
import { TrustBundle } from "../../pki/src/bundle.js";
import { CertificateVerificationError } from "../../pki/src/errors.js";
import { VerifiedCertificateCache } from "../src/issuer/certificate-cache.js";
import { createCa, custodyClient } from "./support/pki.js";

describe("VerifiedCertificateCache", () => {
  it("answers a repeated chain from the cache, but never past the certificate's notAfter", async () => {
    const ca = await createCa();
    const client = await custodyClient(ca, "cart.shop", {
      lifetimeSeconds: 120,
      notBefore: new Date(Date.now() - 1_000),
    });
    const bundle = TrustBundle.fromPem([{ name: "ca", pem: ca.certificate.pem }]);
    const cache = new VerifiedCertificateCache();
    const now = new Date();
    const first = cache.verify(bundle, [client.certificate.der], now);
    expect(cache.verify(bundle, [client.certificate.der], now)).toBe(first);
    const later = new Date(client.certificate.notAfter.getTime() + 1_000);
    expect(() => cache.verify(bundle, [client.certificate.der], later)).toThrow(CertificateVerificationError);
  });

  it("verifies afresh against a new trust bundle (a CA removed from it no longer counts)", async () => {
    const [ca, other] = await Promise.all([createCa(), createCa("other.example")]);
    const client = await custodyClient(ca, "cart.shop");
    const cache = new VerifiedCertificateCache();
    cache.verify(
      TrustBundle.fromPem([{ name: "ca", pem: ca.certificate.pem }]),
      [client.certificate.der],
      new Date(),
    );
    const without = TrustBundle.fromPem([{ name: "other", pem: other.certificate.pem }]);
    expect(() => cache.verify(without, [client.certificate.der], new Date())).toThrow(
      CertificateVerificationError,
    );
  });
});
