import { OctetString } from "@peculiar/asn1-schema";
import { Extension } from "@peculiar/asn1-x509";
import { beforeAll, describe, expect, it } from "vitest";
import { TrustBundle } from "../src/bundle.js";
import { type CertificateAuthority, createCertificateAuthority } from "../src/ca.js";
import { EKU_SERVER_AUTH, KEY_USAGE, type ParsedCertificate } from "../src/certificate.js";
import { nameFromDer } from "../src/dn.js";
import { CertificateVerificationError, VERIFICATION_CODES, type VerificationCode } from "../src/errors.js";
import { issueCertificate } from "../src/issue.js";
import { generateKeyPair, type KeyPair, publicKeyDer } from "../src/keys.js";
import { encodePem } from "../src/pem.js";
import {
  basicConstraints,
  keyIdentifier,
  keyUsage,
  signCertificate,
  subjectAltName,
  subjectKeyIdentifier,
} from "../src/template.js";
import { MAX_CHAIN_CERTIFICATES, verifyClientCertificate } from "../src/verify.js";
import { DAY, handBuilt, selfSigned } from "./support.js";

let ca: CertificateAuthority;
let other: CertificateAuthority;
let bundle: TrustBundle;
let key: KeyPair;
let client: ParsedCertificate;

beforeAll(async () => {
  ca = await createCertificateAuthority();
  other = await createCertificateAuthority();
  bundle = TrustBundle.fromPem([{ name: "ca.crt", pem: ca.certificate.pem }]);
  key = await generateKeyPair("ecdsa-p256");
  client = (await issueCertificate(ca, { id: "cart.shop", usage: "client" })).certificate;
});

function rejection(
  chain: string | readonly Uint8Array[],
  now?: Date,
  trust: TrustBundle = bundle,
): VerificationCode {
  try {
    verifyClientCertificate(trust, chain, now === undefined ? {} : { now });
  } catch (error) {
    if (error instanceof CertificateVerificationError) return error.code;
    throw error;
  }
  throw new Error("the certificate was accepted");
}

/** A look-alike CA: the bundle CA's name and key identifier, but another key. */
function lookAlikeCa(): { certificate: ParsedCertificate; privateKey: KeyPair["privateKey"] } {
  const real = ca.certificate;
  const certificate = signCertificate(
    {
      issuerName: real.subjectName,
      subject: nameFromDer(real.subjectName),
      subjectPublicKeyInfo: publicKeyDer(key.publicKey),
      notBefore: new Date(Date.now() - DAY),
      notAfter: new Date(Date.now() + DAY),
      extensions: [
        basicConstraints(true, 0),
        keyUsage(KEY_USAGE.keyCertSign),
        subjectKeyIdentifier(Buffer.from(real.subjectKeyId ?? "", "hex")),
      ],
    },
    key.privateKey,
  );
  return { certificate, privateKey: key.privateKey };
}

describe("verifyClientCertificate: accepted", () => {
  it("accepts a Custody client certificate and reports its identity", () => {
    const result = verifyClientCertificate(bundle, client.pem);
    expect(result.subject).toBe("CN=cart.shop");
    expect(result.spiffeId).toBe("spiffe://custody.local/ns/shop/si/cart");
    expect(result.issuer).toBe(ca.certificate.subject);
    expect(result.fingerprint256).toBe(client.fingerprint256);
    expect(result.path.map((c) => c.fingerprint256)).toEqual([
      client.fingerprint256,
      ca.certificate.fingerprint256,
    ]);
  });

  it("accepts DER certificates as a TLS stack hands them over", () => {
    expect(verifyClientCertificate(bundle, [client.der]).spiffeId).toBe(
      "spiffe://custody.local/ns/shop/si/cart",
    );
  });

  it("accepts a leaf without any EKU (RFC 5280: any purpose), as openssl x509 -req makes them", () => {
    const bare = handBuilt({
      issuer: ca,
      subjectKey: key.privateKey,
      commonName: "seed client",
      extensions: [],
    });
    expect(bare.extendedKeyUsage).toBeUndefined();
    expect(verifyClientCertificate(bundle, bare.pem).spiffeId).toBeUndefined();
  });

  it("follows presented intermediates up to a bundle root", async () => {
    const rootKey = await generateKeyPair("ecdsa-p256");
    const root = selfSigned(rootKey.privateKey, "Root", [
      basicConstraints(true, 1),
      keyUsage(KEY_USAGE.keyCertSign),
    ]);
    const intermediateKey = await generateKeyPair("ecdsa-p256");
    const intermediate = handBuilt({
      issuer: root,
      subjectKey: intermediateKey.privateKey,
      commonName: "Intermediate",
      extensions: [basicConstraints(true, 0), keyUsage(KEY_USAGE.keyCertSign)],
    });
    const leaf = handBuilt({
      issuer: { certificate: intermediate, privateKey: intermediateKey.privateKey },
      subjectKey: key.privateKey,
      commonName: "leaf",
      extensions: [basicConstraints(false)],
    });
    const rootBundle = TrustBundle.fromPem([{ name: "root", pem: root.certificate.pem }]);
    const result = verifyClientCertificate(rootBundle, leaf.pem + intermediate.pem);
    expect(result.path.map((c) => c.subject)).toEqual(["CN=leaf", "CN=Intermediate", "CN=Root"]);
    expect(rejection(leaf.pem, undefined, rootBundle)).toBe("unknown_issuer");
    // A root limited to pathLen 0 may not have an intermediate below it.
    const strictRoot = selfSigned(rootKey.privateKey, "Root", [
      basicConstraints(true, 0),
      keyUsage(KEY_USAGE.keyCertSign),
    ]);
    const strictBundle = TrustBundle.fromPem([{ name: "strict", pem: strictRoot.certificate.pem }]);
    expect(rejection(leaf.pem + intermediate.pem, undefined, strictBundle)).toBe("unknown_issuer");
  });
});

describe("verifyClientCertificate: every rejection code", () => {
  it("has a test below for each code", () => {
    expect(VERIFICATION_CODES).toEqual([
      "unknown_issuer",
      "expired",
      "not_yet_valid",
      "bad_signature",
      "not_client_auth",
      "is_ca",
      "malformed",
      "trust_domain_mismatch",
      // Roles of trust anchors, not of one bundle: produced and tested in anchors.test.ts.
      "spiffe_id_not_mesh_issued",
      "ambiguous_issuer",
    ]);
  });

  it("unknown_issuer: a certificate from a CA outside the bundle", async () => {
    const stranger = await issueCertificate(other, { id: "cart.shop", usage: "client" });
    expect(rejection(stranger.certificate.pem)).toBe("unknown_issuer");
  });

  it("expired: past notAfter (at the verification time)", async () => {
    const past = new Date(Date.now() - 400 * DAY);
    const oldCa = await createCertificateAuthority({ now: past, lifetimeSeconds: 3650 * 86_400 });
    const old = await issueCertificate(oldCa, { id: "cart.shop", now: past, lifetimeSeconds: 86_400 });
    const oldBundle = TrustBundle.fromPem([{ name: "old", pem: oldCa.certificate.pem }]);
    expect(rejection(old.certificate.pem, undefined, oldBundle)).toBe("expired");
    expect(rejection(client.pem, new Date(Date.now() + 31 * DAY))).toBe("expired");
  });

  it("expired: a bundle CA that has expired fails its leaves too", async () => {
    const leaf = handBuilt({
      issuer: ca,
      subjectKey: key.privateKey,
      commonName: "long",
      extensions: [],
      notAfter: new Date(ca.certificate.notAfter.getTime() + 10 * DAY),
    });
    expect(rejection(leaf.pem, new Date(ca.certificate.notAfter.getTime() + DAY))).toBe("expired");
  });

  it("not_yet_valid: notBefore in the future", async () => {
    const future = await issueCertificate(ca, { id: "cart.shop", notBefore: new Date(Date.now() + DAY) });
    expect(rejection(future.certificate.pem)).toBe("not_yet_valid");
  });

  it("bad_signature: a certificate whose signature was altered", () => {
    const der = Buffer.from(client.der);
    der[der.length - 1] = (der[der.length - 1] ?? 0) ^ 0x01;
    expect(rejection(encodePem("CERTIFICATE", new Uint8Array(der)))).toBe("bad_signature");
  });

  it("bad_signature: issued by a look-alike CA with the bundle CA's name and key id", () => {
    const forged = handBuilt({
      issuer: lookAlikeCa(),
      subjectKey: key.privateKey,
      commonName: "admin.payments",
      extensions: [basicConstraints(false)],
    });
    expect(forged.issuer).toBe(ca.certificate.subject);
    expect(rejection(forged.pem)).toBe("bad_signature");
  });

  it("not_client_auth: server-only usage, and a keyUsage without digitalSignature", async () => {
    const server = await issueCertificate(ca, { id: "cart.shop", usage: "server" });
    expect(server.certificate.extendedKeyUsage).toEqual([EKU_SERVER_AUTH]);
    expect(rejection(server.certificate.pem)).toBe("not_client_auth");
    const encipherOnly = handBuilt({
      issuer: ca,
      subjectKey: key.privateKey,
      commonName: "kx",
      extensions: [keyUsage(KEY_USAGE.keyEncipherment)],
    });
    expect(rejection(encipherOnly.pem)).toBe("not_client_auth");
  });

  it("is_ca: a CA certificate presented as a client certificate", () => {
    expect(rejection(ca.certificate.pem)).toBe("is_ca");
  });

  it("malformed: garbage, truncated PEM, bad DER", () => {
    expect(rejection("garbage")).toBe("malformed");
    expect(rejection(client.pem.slice(0, client.pem.length / 2))).toBe("malformed");
    const lines = client.pem.split("\n");
    expect(rejection([...lines.slice(0, 4), ...lines.slice(-2)].join("\n"))).toBe("malformed");
    expect(rejection([new Uint8Array([0x30, 0x03, 1, 2, 3])])).toBe("malformed");
    expect(rejection([])).toBe("malformed");
  });

  it("malformed: an unrecognized critical extension", () => {
    const unknown = new Extension({
      extnID: "1.3.6.1.4.1.99999.7",
      critical: true,
      extnValue: new OctetString(2),
    });
    const odd = handBuilt({
      issuer: ca,
      subjectKey: key.privateKey,
      commonName: "odd",
      extensions: [unknown],
    });
    expect(rejection(odd.pem)).toBe("malformed");
  });

  it("malformed: a chain longer than the bound", () => {
    expect(rejection(client.pem.repeat(MAX_CHAIN_CERTIFICATES + 1))).toBe("malformed");
    expect(rejection(Array.from({ length: MAX_CHAIN_CERTIFICATES + 1 }, () => client.der))).toBe("malformed");
  });

  it("malformed: two SPIFFE ids", () => {
    const names = subjectAltName({
      uris: ["spiffe://custody.local/ns/a/si/a", "spiffe://custody.local/ns/b/si/b"],
    });
    const two = handBuilt({
      issuer: ca,
      subjectKey: key.privateKey,
      commonName: "two",
      extensions: names ? [names] : [],
    });
    expect(rejection(two.pem)).toBe("malformed");
  });

  it("trust_domain_mismatch: a partner CA in the bundle minting a Custody SPIFFE id", async () => {
    const partnerKey = await generateKeyPair("ecdsa-p256");
    const partner = selfSigned(partnerKey.privateKey, "Partner CA", [
      basicConstraints(true, 0),
      keyUsage(KEY_USAGE.keyCertSign),
    ]);
    const names = subjectAltName({ uris: ["spiffe://custody.local/ns/payments/si/admin"] });
    const minted = handBuilt({
      issuer: partner,
      subjectKey: key.privateKey,
      commonName: "admin.payments",
      extensions: names ? [names] : [],
    });
    const shared = TrustBundle.fromPem([
      { name: "ca.crt", pem: ca.certificate.pem },
      { name: "partner.crt", pem: partner.certificate.pem },
    ]);
    expect(rejection(minted.pem, undefined, shared)).toBe("trust_domain_mismatch");
    const otherDomain = await createCertificateAuthority({ trustDomain: "partner.example" });
    const crossed = handBuilt({
      issuer: otherDomain,
      subjectKey: key.privateKey,
      commonName: "x",
      extensions: names ? [names] : [],
    });
    const both = TrustBundle.fromPem([
      { name: "ca.crt", pem: ca.certificate.pem },
      { name: "other.crt", pem: otherDomain.certificate.pem },
    ]);
    expect(rejection(crossed.pem, undefined, both)).toBe("trust_domain_mismatch");
    // The partner's own DN-identified clients are fine.
    const plain = handBuilt({
      issuer: partner,
      subjectKey: key.privateKey,
      commonName: "partner-client",
      extensions: [],
    });
    expect(verifyClientCertificate(shared, plain.pem).subject).toBe("CN=partner-client");
  });

  it("is fast enough to run on every mTLS connection", () => {
    const started = performance.now();
    // About 1 ms each on a laptop core (parsing dominates); the bound only catches pathologies.
    for (let index = 0; index < 100; index += 1) verifyClientCertificate(bundle, [client.der]);
    expect(performance.now() - started).toBeLessThan(2_000);
  });

  it("uses the key identifier of the key, as OpenSSL computes it", () => {
    expect(client.subjectKeyId).toBe(
      Buffer.from(keyIdentifier(publicKeyDer(client.publicKey))).toString("hex"),
    );
  });
});
