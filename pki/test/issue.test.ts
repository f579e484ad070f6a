import { generateKeyPairSync, sign } from "node:crypto";
import { Attributes, CertificationRequest, CertificationRequestInfo } from "@peculiar/asn1-csr";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import {
  Attribute,
  BasicConstraints,
  Extension,
  Extensions,
  id_ce_basicConstraints,
  SubjectPublicKeyInfo,
} from "@peculiar/asn1-x509";
import { beforeAll, describe, expect, it } from "vitest";
import { CustodyError } from "../../crds/src/errors.js";
import { algorithmIdentifier, signBytes, signingAlgorithmFor } from "../src/algorithms.js";
import { type CertificateAuthority, createCertificateAuthority } from "../src/ca.js";
import { EKU_CLIENT_AUTH, EKU_SERVER_AUTH, KEY_USAGE } from "../src/certificate.js";
import { createCertificateRequest, parseCsr, parseCsrPem } from "../src/csr.js";
import { buildName, OID_COMMON_NAME, OID_ORGANIZATION } from "../src/dn.js";
import { issueCertificate, signCertificateRequest } from "../src/issue.js";
import { generateKeyPair, type KeyPair, publicKeyDer } from "../src/keys.js";
import { encodePem, readPemBlocks } from "../src/pem.js";
import { basicConstraints, keyUsage } from "../src/template.js";
import { DAY, selfSigned } from "./support.js";

let ca: CertificateAuthority;
let rsaLeafKey: KeyPair;
beforeAll(async () => {
  ca = await createCertificateAuthority();
  rsaLeafKey = await generateKeyPair("rsa-2048");
});

async function codeOf(action: () => unknown): Promise<string | undefined> {
  try {
    await action();
  } catch (error) {
    return error instanceof CustodyError ? error.code : `unexpected ${String(error)}`;
  }
  return undefined;
}

describe("issueCertificate", () => {
  it("issues the workload profile for a service id", async () => {
    const now = new Date();
    const { certificate, privateKey, notAfterClamped } = await issueCertificate(ca, {
      id: "cart.shop",
      dnsNames: ["Cart.Shop.svc", "cart.shop.svc", "localhost"],
      ipAddresses: ["127.0.0.1", "::1"],
      now,
    });
    expect(certificate.subject).toBe("CN=cart.shop");
    expect(certificate.issuer).toBe(ca.certificate.subject);
    expect(certificate.uris).toEqual(["spiffe://custody.local/ns/shop/si/cart"]);
    expect(certificate.dnsNames).toEqual(["cart.shop.svc", "localhost"]);
    expect(certificate.ipAddresses).toEqual(["127.0.0.1", "::1"]);
    expect(certificate.isCa).toBe(false);
    expect(certificate.keyUsage).toBe(KEY_USAGE.digitalSignature);
    expect(certificate.extendedKeyUsage).toEqual([EKU_SERVER_AUTH, EKU_CLIENT_AUTH]);
    expect(certificate.authorityKeyId).toBe(ca.certificate.subjectKeyId);
    expect(certificate.subjectKeyId).toMatch(/^[0-9a-f]{40}$/);
    expect(certificate.x509.checkIssued(ca.certificate.x509)).toBe(true);
    expect(certificate.x509.checkPrivateKey(privateKey)).toBe(true);
    expect(notAfterClamped).toBe(false);
    // Backdated a minute for clock skew; 30 days by default; whole seconds.
    const start = Math.floor(now.getTime() / 1000) * 1000;
    expect(certificate.notBefore.getTime()).toBe(
      Math.max(start - 60_000, ca.certificate.notBefore.getTime()),
    );
    expect(certificate.notAfter.getTime()).toBe(start + 30 * DAY);
  });

  it("uses random positive serial numbers of up to 128 bits", async () => {
    const serials = await Promise.all(
      [1, 2, 3, 4].map(async () => (await issueCertificate(ca, { id: "a.b" })).certificate.serialNumber),
    );
    expect(new Set(serials).size).toBe(4);
    for (const serial of serials) {
      const bytes = Buffer.from(serial.length % 2 === 0 ? serial : `0${serial}`, "hex");
      expect(bytes.length).toBeLessThanOrEqual(17);
      expect(bytes.length).toBeGreaterThanOrEqual(8);
    }
  });

  it.each([
    ["client", [EKU_CLIENT_AUTH]],
    ["server", [EKU_SERVER_AUTH]],
    ["both", [EKU_SERVER_AUTH, EKU_CLIENT_AUTH]],
  ] as const)("sets EKU for %s usage", async (usage, purposes) => {
    const { certificate } = await issueCertificate(ca, { id: "cart.shop", usage });
    expect(certificate.extendedKeyUsage).toEqual(purposes);
  });

  it("adds keyEncipherment for RSA keys and works with every key algorithm", async () => {
    const rsa = await issueCertificate(ca, { id: "cart.shop", keyAlgorithm: "rsa-2048" });
    expect(rsa.certificate.keyUsage).toBe(KEY_USAGE.digitalSignature | KEY_USAGE.keyEncipherment);
    const ed = await issueCertificate(ca, { id: "cart.shop", keyAlgorithm: "ed25519" });
    expect(ed.certificate.publicKey.asymmetricKeyType).toBe("ed25519");
    const edCa = await createCertificateAuthority({ keyAlgorithm: "ed25519" });
    const fromEd = await issueCertificate(edCa, { id: "cart.shop" });
    expect(fromEd.certificate.x509.verify(edCa.certificate.publicKey)).toBe(true);
  });

  it("clamps notAfter to the CA's notAfter and says so", async () => {
    const shortCa = await createCertificateAuthority({ lifetimeSeconds: 2 * 86_400 });
    const issued = await issueCertificate(shortCa, { id: "cart.shop" });
    expect(issued.notAfterClamped).toBe(true);
    expect(issued.certificate.notAfter.getTime()).toBe(shortCa.certificate.notAfter.getTime());
  });

  it("can start in the future (not yet valid)", async () => {
    const notBefore = new Date(Date.now() + DAY);
    const { certificate } = await issueCertificate(ca, { id: "cart.shop", notBefore, lifetimeSeconds: 3600 });
    expect(certificate.notBefore.getTime()).toBe(Math.floor(notBefore.getTime() / 1000) * 1000);
    expect(certificate.notAfter.getTime() - certificate.notBefore.getTime()).toBe(3_600_000);
  });

  it("refuses bad ids, names, lifetimes, an expired CA and a CA without trust domain", async () => {
    expect(await codeOf(() => issueCertificate(ca, { id: "Cart" }))).toBe("invalid_service_id");
    expect(await codeOf(() => issueCertificate(ca, { id: "cart.shop", dnsNames: ["bad_name"] }))).toBe(
      "invalid_dns_name",
    );
    expect(await codeOf(() => issueCertificate(ca, { id: "cart.shop", dnsNames: ["*"] }))).toBe(
      "invalid_dns_name",
    );
    expect(await codeOf(() => issueCertificate(ca, { id: "cart.shop", ipAddresses: ["300.1.1.1"] }))).toBe(
      "invalid_ip_address",
    );
    expect(await codeOf(() => issueCertificate(ca, { id: "cart.shop", lifetimeSeconds: 399 * 86_400 }))).toBe(
      "invalid_lifetime",
    );
    const later = new Date(ca.certificate.notAfter.getTime() + 1000);
    expect(await codeOf(() => issueCertificate(ca, { id: "cart.shop", now: later }))).toBe("ca_expired");
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const plain = selfSigned(privateKey, "Partner CA", [
      basicConstraints(true),
      keyUsage(KEY_USAGE.keyCertSign),
    ]);
    expect(
      await codeOf(() => issueCertificate({ ...plain, trustDomain: undefined }, { id: "cart.shop" })),
    ).toBe("no_trust_domain");
  });

  it("tells a certificate wholly before the CA's validity from one wholly after it", async () => {
    const caStart = ca.certificate.notBefore.getTime();
    const before = issueCertificate(ca, {
      id: "cart.shop",
      now: new Date(caStart - 2 * DAY),
      lifetimeSeconds: DAY / 1000,
    });
    await expect(before).rejects.toMatchObject({
      code: "ends_before_ca_valid",
      message: expect.stringContaining("before the CA"),
    });
    const after = issueCertificate(ca, {
      id: "cart.shop",
      now: new Date(caStart + 60_000),
      notBefore: new Date(ca.certificate.notAfter.getTime() + DAY),
      lifetimeSeconds: DAY / 1000,
    });
    await expect(after).rejects.toMatchObject({
      code: "starts_after_ca_expires",
      message: expect.stringContaining("after the CA"),
    });
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const csr = parseCsrPem(createCertificateRequest(privateKey, "Partner"), "test CSR");
    expect(
      await codeOf(() =>
        signCertificateRequest(ca, csr, { now: new Date(caStart - 2 * DAY), lifetimeSeconds: DAY / 1000 }),
      ),
    ).toBe("ends_before_ca_valid");
  });

  it("accepts a wildcard as the left-most DNS label only", async () => {
    const { certificate } = await issueCertificate(ca, { id: "cart.shop", dnsNames: ["*.shop.svc"] });
    expect(certificate.dnsNames).toEqual(["*.shop.svc"]);
    expect(await codeOf(() => issueCertificate(ca, { id: "cart.shop", dnsNames: ["a.*.svc"] }))).toBe(
      "invalid_dns_name",
    );
  });
});

/** A CSR that asks for CA:true through the PKCS#9 extensionRequest attribute. */
function csrAskingForCa(key: KeyPair): string {
  const extensions = new Extensions([
    new Extension({
      extnID: id_ce_basicConstraints,
      critical: true,
      extnValue: new OctetString(AsnConvert.serialize(new BasicConstraints({ cA: true }))),
    }),
  ]);
  const info = new CertificationRequestInfo({
    version: 0,
    subject: buildName([
      { type: OID_ORGANIZATION, value: "Evil" },
      { type: OID_COMMON_NAME, value: "wants-to-be-a-ca" },
    ]),
    subjectPKInfo: AsnConvert.parse(publicKeyDer(key.publicKey), SubjectPublicKeyInfo),
    attributes: new Attributes([
      new Attribute({ type: "1.2.840.113549.1.9.14", values: [AsnConvert.serialize(extensions)] }),
    ]),
  });
  const signature = signBytes(key.privateKey, new Uint8Array(AsnConvert.serialize(info)));
  const request = new CertificationRequest({
    certificationRequestInfo: info,
    signatureAlgorithm: algorithmIdentifier(signingAlgorithmFor(key.privateKey)),
    signature: new Uint8Array(signature).buffer,
  });
  return encodePem("CERTIFICATE REQUEST", new Uint8Array(AsnConvert.serialize(request)));
}

describe("signCertificateRequest", () => {
  it("keeps the requested subject DN byte for byte without --id, adds no SAN, defaults to client", async () => {
    const csr = parseCsrPem(csrAskingForCa(rsaLeafKey), "partner.csr");
    expect(csr.subject).toBe("O=Evil, CN=wants-to-be-a-ca");
    const { certificate } = signCertificateRequest(ca, csr);
    expect(certificate.subject).toBe("O=Evil, CN=wants-to-be-a-ca");
    expect(Buffer.from(certificate.subjectName).equals(Buffer.from(csr.subjectName))).toBe(true);
    expect(certificate.uris).toEqual([]);
    expect(certificate.extendedKeyUsage).toEqual([EKU_CLIENT_AUTH]);
    expect(certificate.keyUsage).toBe(KEY_USAGE.digitalSignature | KEY_USAGE.keyEncipherment);
  });

  it("never copies requested extensions: a CSR asking for CA:true gets an end-entity certificate", async () => {
    const { certificate } = signCertificateRequest(ca, parseCsrPem(csrAskingForCa(rsaLeafKey), "evil.csr"));
    expect(certificate.isCa).toBe(false);
    expect(certificate.x509.ca).toBe(false);
  });

  it("with an id, sets CN=id and the SPIFFE id", async () => {
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const csr = parseCsrPem(createCertificateRequest(privateKey, "whatever"), "x.csr");
    const { certificate } = signCertificateRequest(ca, csr, { id: "partner.ext", usage: "both" });
    expect(certificate.subject).toBe("CN=partner.ext");
    expect(certificate.uris).toEqual(["spiffe://custody.local/ns/ext/si/partner"]);
    expect(certificate.extendedKeyUsage).toEqual([EKU_SERVER_AUTH, EKU_CLIENT_AUTH]);
    expect(certificate.x509.checkPrivateKey(privateKey)).toBe(true);
  });

  it("refuses an empty subject without an id", async () => {
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const info = new CertificationRequestInfo({
      version: 0,
      subject: buildName([]),
      subjectPKInfo: AsnConvert.parse(publicKeyDer(privateKey), SubjectPublicKeyInfo),
      attributes: new Attributes(),
    });
    const signature = signBytes(privateKey, new Uint8Array(AsnConvert.serialize(info)));
    const der = AsnConvert.serialize(
      new CertificationRequest({
        certificationRequestInfo: info,
        signatureAlgorithm: algorithmIdentifier(signingAlgorithmFor(privateKey)),
        signature: new Uint8Array(signature).buffer,
      }),
    );
    const csr = parseCsr(new Uint8Array(der), "empty.csr");
    expect(await codeOf(() => signCertificateRequest(ca, csr))).toBe("empty_subject");
    expect(signCertificateRequest(ca, csr, { id: "a.b" }).certificate.subject).toBe("CN=a.b");
  });
});

describe("parseCsr", () => {
  it("reads a CSR made by createCertificateRequest for every key algorithm", async () => {
    for (const pair of [rsaLeafKey, await generateKeyPair("ed25519"), await generateKeyPair("ecdsa-p256")]) {
      const csr = parseCsrPem(createCertificateRequest(pair.privateKey, "cart.shop"), "x.csr");
      expect(csr.subject).toBe("CN=cart.shop");
      expect(csr.publicKey.asymmetricKeyType).toBe(pair.publicKey.asymmetricKeyType);
    }
  });

  it("accepts a P-384 subject key", () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-384" });
    // Custody never signs with P-384, so sign this request by hand with ES384.
    const info = new CertificationRequestInfo({
      version: 0,
      subject: buildName([{ type: OID_COMMON_NAME, value: "p384" }]),
      subjectPKInfo: AsnConvert.parse(publicKeyDer(privateKey), SubjectPublicKeyInfo),
      attributes: new Attributes(),
    });
    const signature = sign("sha384", new Uint8Array(AsnConvert.serialize(info)), privateKey);
    const der = AsnConvert.serialize(
      new CertificationRequest({
        certificationRequestInfo: info,
        signatureAlgorithm: algorithmIdentifier({
          name: "ES384",
          oid: "1.2.840.10045.4.3.3",
          hash: "sha384",
          keyType: "ec",
        }),
        signature: new Uint8Array(signature).buffer,
      }),
    );
    expect(parseCsr(new Uint8Array(der), "p384.csr").signatureAlgorithm.name).toBe("ES384");
  });

  it("refuses a tampered CSR (bad_csr_signature)", async () => {
    const pem = createCertificateRequest(rsaLeafKey.privateKey, "honest");
    const [block] = readPemBlocks(pem, { maxBlocks: 1 });
    const der = Buffer.from(block?.der ?? []);
    const at = der.indexOf(Buffer.from("honest"));
    der.write("forged", at);
    expect(await codeOf(() => parseCsr(new Uint8Array(der), "tampered.csr"))).toBe("bad_csr_signature");
  });

  it("refuses garbage, several CSRs, trailing data and unsupported signature algorithms", async () => {
    expect(await codeOf(() => parseCsrPem("not a csr", "x.csr"))).toBe("invalid_csr");
    const pem = createCertificateRequest(rsaLeafKey.privateKey, "a");
    expect(await codeOf(() => parseCsrPem(pem + pem, "x.csr"))).toBe("invalid_csr");
    const [block] = readPemBlocks(pem, { maxBlocks: 1 });
    const der = new Uint8Array([...(block?.der ?? []), 0]);
    expect(await codeOf(() => parseCsr(der, "x.csr"))).toBe("invalid_csr");
    const sha1 = Buffer.from(block?.der ?? []);
    // sha256WithRSAEncryption (…01 0b) → sha1WithRSAEncryption (…01 05) in the outer algorithm.
    const oid = Buffer.from("2a864886f70d01010b", "hex");
    sha1[sha1.lastIndexOf(oid) + oid.length - 1] = 0x05;
    expect(await codeOf(() => parseCsr(new Uint8Array(sha1), "x.csr"))).toBe("unsupported_algorithm");
  });

  it("refuses weak RSA keys", async () => {
    const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 1024 });
    expect(await codeOf(() => parseCsrPem(createCertificateRequest(privateKey, "weak"), "x.csr"))).toBe(
      "weak_key",
    );
  });
});
