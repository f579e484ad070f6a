import type { PeerCertificate } from "node:tls";
import { describe, expect, it } from "vitest";
import { TrustBundle } from "../src/bundle.js";
import { type CertificateAuthority, createCertificateAuthority } from "../src/ca.js";
import { CertificateVerificationError } from "../src/errors.js";
import { issueCertificate, type LeafOptions } from "../src/issue.js";
import { ServerIdentityMismatchError, spiffeServerCheck, VerifiedCertificateCache } from "../src/peer.js";

/** A CA valid since yesterday, so a certificate can be checked past its notAfter. */
const createCa = (trustDomain = "custody.local") =>
  createCertificateAuthority({ trustDomain, now: new Date(Date.now() - 86_400_000) });
const custodyClient = (ca: CertificateAuthority, id: string, options: LeafOptions = {}) =>
  issueCertificate(ca, { id, usage: "client", ...options });

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

describe("spiffeServerCheck", () => {
  const presenting = (subjectaltname: string | undefined) => ({ subjectaltname }) as PeerCertificate;
  const check = spiffeServerCheck("spiffe://custody.local/ns/shop/si/cart");

  it("accepts a certificate naming the expected SPIFFE id among its names", () => {
    expect(
      check("127.0.0.1", presenting("DNS:localhost, URI:spiffe://custody.local/ns/shop/si/cart")),
    ).toBeUndefined();
  });

  it("refuses another service's id, a prefix of it, and a certificate without names", () => {
    for (const names of [
      "URI:spiffe://custody.local/ns/shop/si/stray",
      "URI:spiffe://custody.local/ns/shop/si/cart/extra",
      "DNS:spiffe://custody.local/ns/shop/si/cart",
      undefined,
    ]) {
      expect(check("127.0.0.1", presenting(names))).toBeInstanceOf(ServerIdentityMismatchError);
    }
  });
});
