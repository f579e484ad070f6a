import { OctetString } from "@peculiar/asn1-schema";
import { Extension } from "@peculiar/asn1-x509";
import { beforeAll, describe, expect, it } from "vitest";
import { CustodyError } from "../../crds/src/errors.js";
import { type CertificateAuthority, createCertificateAuthority } from "../src/ca.js";
import { caTrustDomain, parseCertificate, parseCertificatesPem, trustDomainOf } from "../src/certificate.js";
import { isSingleDerSequence } from "../src/der.js";
import { buildName, formatName, nameFromDer, nameToDer, printable } from "../src/dn.js";
import { generateKeyPair, privateKeyToPem } from "../src/keys.js";
import { basicConstraints } from "../src/template.js";
import { handBuilt } from "./support.js";

let ca: CertificateAuthority;
beforeAll(async () => {
  ca = await createCertificateAuthority();
});

function codeOf(action: () => unknown): string | undefined {
  try {
    action();
  } catch (error) {
    return error instanceof CustodyError ? error.code : `unexpected ${String(error)}`;
  }
  return undefined;
}

describe("parseCertificate", () => {
  it("reads what OpenSSL reads, and the same fingerprint", () => {
    const parsed = parseCertificate(ca.certificate.der);
    expect(parsed.fingerprint256).toBe(ca.certificate.x509.fingerprint256);
    expect(parsed.serialNumber).toBe(ca.certificate.x509.serialNumber);
    expect(parsed.notAfter.getTime()).toBe(new Date(ca.certificate.x509.validTo).getTime());
  });

  it("refuses trailing bytes and truncation", () => {
    expect(codeOf(() => parseCertificate(new Uint8Array([...ca.certificate.der, 0])))).toBe(
      "invalid_certificate",
    );
    expect(codeOf(() => parseCertificate(ca.certificate.der.subarray(0, 100)))).toBe("invalid_certificate");
  });

  it("records critical extensions it does not handle, and refuses duplicated extensions", async () => {
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const unknown = new Extension({
      extnID: "1.3.6.1.4.1.99999.1",
      critical: true,
      extnValue: new OctetString(2),
    });
    const odd = handBuilt({ issuer: ca, subjectKey: privateKey, commonName: "odd", extensions: [unknown] });
    expect(odd.unhandledCriticalExtensions).toEqual(["1.3.6.1.4.1.99999.1"]);
    // handBuilt parses what it signed, so the refusal surfaces there.
    const twice = () =>
      handBuilt({
        issuer: ca,
        subjectKey: privateKey,
        commonName: "twice",
        extensions: [basicConstraints(false), basicConstraints(false)],
      });
    expect(codeOf(twice)).toBe("invalid_certificate");
  });
});

describe("parseCertificatesPem", () => {
  it("names a non-certificate block without echoing it", async () => {
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const keyPem = privateKeyToPem(privateKey);
    let message = "";
    try {
      parseCertificatesPem(ca.certificate.pem + keyPem, { source: "bundle.pem", maxCertificates: 5 });
    } catch (error) {
      message = error instanceof CustodyError ? `${error.code}: ${error.message}` : String(error);
    }
    expect(message).toMatch(/^not_a_certificate: bundle\.pem \(certificate 2\) is a "PRIVATE KEY" block/);
    expect(message).not.toContain(keyPem.split("\n")[1]?.slice(0, 16));
  });

  it("refuses text without certificates", () => {
    expect(codeOf(() => parseCertificatesPem("nothing", { source: "x", maxCertificates: 5 }))).toBe(
      "certificate_not_found",
    );
  });
});

describe("trust domains", () => {
  it("reads the CA's trust domain and a SPIFFE id's", () => {
    expect(caTrustDomain(ca.certificate)).toBe("custody.local");
    expect(trustDomainOf("spiffe://custody.local/ns/shop/si/cart")).toBe("custody.local");
    expect(trustDomainOf("spiffe://UPPER/x")).toBeUndefined();
    expect(trustDomainOf("https://custody.local/x")).toBeUndefined();
  });
});

describe("names", () => {
  it("prints DER order with RFC 4514 escapes and no control characters", () => {
    const name = buildName([
      { type: "2.5.4.10", value: "Acme, Inc." },
      { type: "2.5.4.3", value: "line\nbreak\u202e" },
      { type: "1.2.3.4", value: " # lead" },
    ]);
    const printed = formatName(name);
    expect(printed).toBe("O=Acme\\, Inc., CN=line\\0abreak\\e2\\80\\ae, 1.2.3.4=\\ # lead");
    expect(printed).not.toMatch(/[\n\u202e]/);
    expect(printable("spiffe://a/\n")).toBe("spiffe://a/\\0a");
  });

  it("round-trips names through DER unchanged", () => {
    const der = nameToDer(buildName([{ type: "2.5.4.3", value: "x" }]));
    expect(Buffer.from(nameToDer(nameFromDer(der))).equals(Buffer.from(der))).toBe(true);
  });

  it("checks single DER sequences strictly", () => {
    expect(isSingleDerSequence(new Uint8Array([0x30, 0x00]))).toBe(true);
    expect(isSingleDerSequence(new Uint8Array([0x30, 0x01, 0x00, 0x00]))).toBe(false);
    expect(isSingleDerSequence(new Uint8Array([0x30, 0x80, 0x00, 0x00]))).toBe(false);
    expect(isSingleDerSequence(new Uint8Array([0x30, 0x81, 0x01, 0x00]))).toBe(false);
    expect(isSingleDerSequence(new Uint8Array([0x31, 0x00]))).toBe(false);
  });
});
