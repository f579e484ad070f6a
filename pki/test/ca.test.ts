import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { AsnConvert } from "@peculiar/asn1-schema";
import { Certificate } from "@peculiar/asn1-x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CustodyError } from "../../crds/src/errors.js";
import {
  type CertificateAuthority,
  caPaths,
  createCertificateAuthority,
  loadCertificateAuthority,
  writeCertificateAuthority,
} from "../src/ca.js";
import { KEY_USAGE } from "../src/certificate.js";
import { generateKeyPair, privateKeyToPem } from "../src/keys.js";
import { basicConstraints } from "../src/template.js";
import { DAY, selfSigned, temporaryDirectory } from "./support.js";

let directory: { path: string; cleanup: () => Promise<void> };
let rsaCa: CertificateAuthority;
beforeAll(async () => {
  directory = await temporaryDirectory();
  rsaCa = await createCertificateAuthority({ keyAlgorithm: "rsa-2048" });
});
afterAll(async () => {
  await directory.cleanup();
});

async function codeOf(action: () => Promise<unknown>): Promise<string | undefined> {
  try {
    await action();
  } catch (error) {
    return error instanceof CustodyError ? error.code : `unexpected ${String(error)}`;
  }
  return undefined;
}

function criticalFlags(der: Uint8Array): Record<string, boolean> {
  const parsed = AsnConvert.parse(der, Certificate);
  return Object.fromEntries((parsed.tbsCertificate.extensions ?? []).map((e) => [e.extnID, e.critical]));
}

describe("createCertificateAuthority", () => {
  it("makes a self-signed SPIFFE CA with the default profile", async () => {
    const now = new Date("2030-01-01T00:00:00Z");
    const ca = await createCertificateAuthority({ now });
    const certificate = ca.certificate;
    expect(ca.trustDomain).toBe("custody.local");
    expect(certificate.subject).toBe("O=Custody, CN=Custody CA custody.local");
    expect(certificate.issuer).toBe(certificate.subject);
    expect(certificate.isCa).toBe(true);
    expect(certificate.pathLength).toBe(0);
    expect(certificate.keyUsage).toBe(KEY_USAGE.keyCertSign | KEY_USAGE.cRLSign);
    expect(certificate.uris).toEqual(["spiffe://custody.local"]);
    expect(certificate.subjectKeyId).toMatch(/^[0-9a-f]{40}$/);
    expect(certificate.notBefore.toISOString()).toBe("2029-12-31T23:59:00.000Z");
    expect(certificate.notAfter.getTime() - now.getTime()).toBe(365 * DAY);
    expect(certificate.x509.verify(certificate.publicKey)).toBe(true);
    expect(criticalFlags(certificate.der)).toEqual({
      "2.5.29.19": true,
      "2.5.29.15": true,
      "2.5.29.14": false,
      "2.5.29.17": false,
    });
    expect(ca.privateKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
  });

  it("supports RSA and Ed25519 CAs and other trust domains", async () => {
    const ed = await createCertificateAuthority({ keyAlgorithm: "ed25519", trustDomain: "shop.example" });
    expect(ed.certificate.x509.verify(ed.certificate.publicKey)).toBe(true);
    expect(ed.certificate.uris).toEqual(["spiffe://shop.example"]);
    expect(rsaCa.certificate.x509.verify(rsaCa.certificate.publicKey)).toBe(true);
    expect(rsaCa.certificate.signatureAlgorithm).toBe("1.2.840.113549.1.1.11");
  });

  it("refuses invalid trust domains and lifetimes", async () => {
    expect(await codeOf(() => createCertificateAuthority({ trustDomain: "Not A Domain" }))).toBe(
      "invalid_trust_domain",
    );
    expect(await codeOf(() => createCertificateAuthority({ lifetimeSeconds: 10 }))).toBe("invalid_lifetime");
    expect(await codeOf(() => createCertificateAuthority({ lifetimeSeconds: 3651 * 86_400 }))).toBe(
      "invalid_lifetime",
    );
  });
});

describe("writeCertificateAuthority / loadCertificateAuthority", () => {
  it("writes ca.key with mode 0600 in a 0700 directory, and loads it back", async () => {
    const out = join(directory.path, "ca-write");
    const ca = await createCertificateAuthority();
    await writeCertificateAuthority(out, ca, { force: false });
    const paths = caPaths(out);
    expect((await stat(paths.key)).mode & 0o777).toBe(0o600);
    expect((await stat(paths.certificate)).mode & 0o777).toBe(0o644);
    expect((await stat(out)).mode & 0o777).toBe(0o700);
    const loaded = await loadCertificateAuthority(out);
    expect(loaded.certificate.fingerprint256).toBe(ca.certificate.fingerprint256);
    expect(loaded.trustDomain).toBe("custody.local");
  });

  it("refuses to overwrite an existing CA unless forced, and leaves it intact", async () => {
    const out = join(directory.path, "ca-overwrite");
    const first = await createCertificateAuthority();
    await writeCertificateAuthority(out, first, { force: false });
    const before = await readFile(caPaths(out).key, "utf8");
    const second = await createCertificateAuthority();
    await expect(writeCertificateAuthority(out, second, { force: false })).rejects.toThrow(/--force/);
    expect(await codeOf(() => writeCertificateAuthority(out, second, { force: false }))).toBe("ca_exists");
    expect(await readFile(caPaths(out).key, "utf8")).toBe(before);
    await writeCertificateAuthority(out, second, { force: true });
    expect((await loadCertificateAuthority(out)).certificate.fingerprint256).toBe(
      second.certificate.fingerprint256,
    );
  });

  it("refuses a key that does not belong to the certificate", async () => {
    const out = join(directory.path, "ca-mismatch");
    await writeCertificateAuthority(out, await createCertificateAuthority(), { force: false });
    const other = await generateKeyPair("ecdsa-p256");
    await writeFile(caPaths(out).key, privateKeyToPem(other.privateKey));
    expect(await codeOf(() => loadCertificateAuthority(out))).toBe("ca_key_mismatch");
  });

  it("refuses a certificate that is not a CA", async () => {
    const out = join(directory.path, "ca-not-ca");
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const leaf = selfSigned(privateKey, "not a ca", [basicConstraints(false)]);
    await writeCertificateAuthority(out, { ...leaf, trustDomain: undefined }, { force: false });
    expect(await codeOf(() => loadCertificateAuthority(out))).toBe("not_a_ca");
  });

  it("refuses an encrypted CA key with a way out", async () => {
    const out = join(directory.path, "ca-encrypted");
    await writeCertificateAuthority(out, rsaCa, { force: false });
    const encrypted = rsaCa.privateKey.export({
      type: "pkcs8",
      format: "pem",
      cipher: "aes-256-cbc",
      passphrase: "pass",
    });
    await writeFile(caPaths(out).key, String(encrypted));
    expect(await codeOf(() => loadCertificateAuthority(out))).toBe("encrypted_key");
  });

  it("reports a missing CA directory clearly", async () => {
    expect(await codeOf(() => loadCertificateAuthority(join(directory.path, "nowhere")))).toBe(
      "file_not_found",
    );
  });
});
