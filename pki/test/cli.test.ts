import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { OctetString } from "@peculiar/asn1-schema";
import { Extension } from "@peculiar/asn1-x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EXIT_OK, EXIT_REJECTED, EXIT_USAGE } from "../../cli/src/kit.js";
import { loadCertificateAuthority } from "../src/ca.js";
import { pkiCommand } from "../src/cli.js";
import { createCertificateRequest } from "../src/csr.js";
import { issueCertificate } from "../src/issue.js";
import { generateKeyPair } from "../src/keys.js";
import { encodePem, readPemBlocks } from "../src/pem.js";
import { subjectAltName } from "../src/template.js";
import { captureIO, DAY, handBuilt, temporaryDirectory } from "./support.js";

let directory: { path: string; cleanup: () => Promise<void> };
/** Everything any command printed in this file, checked for key material at the end. */
const printed: string[] = [];
const keyFiles: string[] = [];

beforeAll(async () => {
  directory = await temporaryDirectory();
});
afterAll(async () => {
  await directory.cleanup();
});

async function pki(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const captured = captureIO();
  const code = await pkiCommand(args, captured.io);
  printed.push(captured.stdout(), captured.stderr());
  return { code, stdout: captured.stdout(), stderr: captured.stderr() };
}

const at = (...parts: string[]) => join(directory.path, ...parts);

describe("custody pki (help and usage)", () => {
  it("lists the commands with --help, and exits 2 without a command", async () => {
    const help = await pki("--help");
    expect(help.code).toBe(EXIT_OK);
    for (const name of ["init", "issue", "sign-csr", "bundle", "verify"]) expect(help.stdout).toContain(name);
    expect((await pki()).code).toBe(EXIT_USAGE);
    const unknown = await pki("frobnicate");
    expect(unknown.code).toBe(EXIT_USAGE);
    expect(unknown.stderr).toContain('unknown command "frobnicate"');
  });

  it.each(["init", "issue", "sign-csr", "bundle", "verify"])("shows help for %s", async (name) => {
    const result = await pki(name, "--help");
    expect(result.code).toBe(EXIT_OK);
    expect(result.stdout).toContain(`Usage: custody pki ${name}`);
    expect(result.stdout).toContain("Example:");
  });

  it("reports bad flags as usage errors (exit 2)", async () => {
    expect((await pki("init")).stderr).toContain("--out is required");
    expect((await pki("init", "--out", at("x"), "--days", "0")).code).toBe(EXIT_USAGE);
    expect((await pki("init", "--out", at("x"), "--days", "3651")).code).toBe(EXIT_USAGE);
    expect((await pki("init", "--out", at("x"), "--key-algorithm", "dsa")).code).toBe(EXIT_USAGE);
    expect((await pki("init", "--out", at("x"), "--trust-domain", "Bad Domain")).code).toBe(EXIT_USAGE);
    expect((await pki("init", "--out", at("x"), "--bogus")).code).toBe(EXIT_USAGE);
    expect(
      (await pki("issue", "--ca", at("x"), "--id", "a.b", "--out", at("y"), "--usage", "all")).code,
    ).toBe(EXIT_USAGE);
    expect((await pki("issue", "--ca", at("x"), "--id", "a.b", "--out", at("y"), "--days", "399")).code).toBe(
      EXIT_USAGE,
    );
    expect((await pki("bundle")).code).toBe(EXIT_USAGE);
    expect((await pki("verify", "--bundle", at("b"))).code).toBe(EXIT_USAGE);
    expect((await pki("verify", "--bundle", at("b"), "one", "two")).code).toBe(EXIT_USAGE);
  });
});

describe("custody pki init", () => {
  it("writes ca.crt and ca.key (mode 0600) and refuses to overwrite without --force", async () => {
    const out = at("ca");
    const first = await pki("init", "--out", out, "--trust-domain", "shop.example", "--days", "30");
    expect(first.code).toBe(EXIT_OK);
    expect(first.stdout).toContain("trust domain shop.example");
    keyFiles.push(join(out, "ca.key"));
    expect((await stat(join(out, "ca.key"))).mode & 0o777).toBe(0o600);
    const ca = await loadCertificateAuthority(out);
    expect(ca.trustDomain).toBe("shop.example");
    expect(ca.certificate.notAfter.getTime() - ca.certificate.notBefore.getTime()).toBe(30 * DAY + 60_000);

    const keyBefore = await readFile(join(out, "ca.key"), "utf8");
    const again = await pki("init", "--out", out);
    expect(again.code).toBe(EXIT_REJECTED);
    expect(again.stderr).toMatch(/^error\[ca_exists\]: .*--force/);
    expect(await readFile(join(out, "ca.key"), "utf8")).toBe(keyBefore);

    const forced = await pki("init", "--out", out, "--force");
    expect(forced.code).toBe(EXIT_OK);
    expect(await readFile(join(out, "ca.key"), "utf8")).not.toBe(keyBefore);
  });
});

describe("custody pki issue / sign-csr / bundle / verify", () => {
  const caDir = () => at("main-ca");
  const bundleFile = () => at("main-ca", "ca.crt");

  beforeAll(async () => {
    expect((await pki("init", "--out", caDir())).code).toBe(EXIT_OK);
    keyFiles.push(join(caDir(), "ca.key"));
  });

  it("issue writes a Kubernetes tls Secret shape: tls.crt, tls.key (0600), ca.crt", async () => {
    const out = at("cart");
    const result = await pki(
      "issue",
      "--ca",
      caDir(),
      "--id",
      "cart.shop",
      "--out",
      out,
      "--dns",
      "cart.shop.svc",
    );
    expect(result.code).toBe(EXIT_OK);
    expect(result.stdout).toContain(
      'Issued "CN=cart.shop" [spiffe://custody.local/ns/shop/si/cart, cart.shop.svc]',
    );
    keyFiles.push(join(out, "tls.key"));
    expect((await stat(join(out, "tls.key"))).mode & 0o777).toBe(0o600);
    expect(await readFile(join(out, "ca.crt"), "utf8")).toBe(await readFile(bundleFile(), "utf8"));
    const verified = await pki("verify", "--bundle", bundleFile(), join(out, "tls.crt"));
    expect(verified.code).toBe(EXIT_OK);
    expect(verified.stdout.trim().split("\n")).toHaveLength(1);
    expect(verified.stdout).toMatch(
      /^verified: subject="CN=cart\.shop" spiffe_id=spiffe:\/\/custody\.local\/ns\/shop\/si\/cart issuer="O=Custody, CN=Custody CA custody\.local" not_after=\S+Z sha256=[0-9A-F:]{95}\n$/,
    );
  });

  it("issue with every key algorithm", async () => {
    for (const algorithm of ["ecdsa-p256", "ed25519", "rsa-2048"]) {
      const out = at(`alg-${algorithm}`);
      const result = await pki(
        "issue",
        "--ca",
        caDir(),
        "--id",
        "a.b",
        "--out",
        out,
        "--key-algorithm",
        algorithm,
      );
      expect(result.code).toBe(EXIT_OK);
      keyFiles.push(join(out, "tls.key"));
      expect((await pki("verify", "--bundle", bundleFile(), join(out, "tls.crt"))).code).toBe(EXIT_OK);
    }
  });

  it("issue refuses a bad id or SAN with a reason code", async () => {
    const bad = await pki("issue", "--ca", caDir(), "--id", "cart", "--out", at("bad"));
    expect(bad.code).toBe(EXIT_REJECTED);
    expect(bad.stderr).toMatch(/^error\[invalid_service_id\]/);
    const badIp = await pki("issue", "--ca", caDir(), "--id", "a.b", "--out", at("bad"), "--ip", "nope");
    expect(badIp.stderr).toMatch(/^error\[invalid_ip_address\]/);
  });

  it("sign-csr signs a CSR, keeping its subject, and verify accepts the result", async () => {
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    await writeFile(at("partner.csr"), createCertificateRequest(privateKey, "partner-client"));
    const signed = await pki(
      "sign-csr",
      "--ca",
      caDir(),
      "--csr",
      at("partner.csr"),
      "--out",
      at("partner.crt"),
    );
    expect(signed.code).toBe(EXIT_OK);
    const verified = await pki("verify", "--bundle", bundleFile(), at("partner.crt"));
    expect(verified.code).toBe(EXIT_OK);
    expect(verified.stdout).toContain('subject="CN=partner-client"');
    expect(verified.stdout).not.toContain("spiffe_id=");

    await pki(
      "sign-csr",
      "--ca",
      caDir(),
      "--csr",
      at("partner.csr"),
      "--out",
      at("as-id.crt"),
      "--id",
      "p.ext",
    );
    expect((await pki("verify", "--bundle", bundleFile(), at("as-id.crt"))).stdout).toContain(
      "spiffe_id=spiffe://custody.local/ns/ext/si/p",
    );
  });

  it("sign-csr refuses a tampered CSR", async () => {
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const [block] = readPemBlocks(createCertificateRequest(privateKey, "honest"), { maxBlocks: 1 });
    const der = Buffer.from(block?.der ?? []);
    der.write("forged", der.indexOf(Buffer.from("honest")));
    await writeFile(at("tampered.csr"), encodePem("CERTIFICATE REQUEST", new Uint8Array(der)));
    const result = await pki("sign-csr", "--ca", caDir(), "--csr", at("tampered.csr"), "--out", at("t.crt"));
    expect(result.code).toBe(EXIT_REJECTED);
    expect(result.stderr).toMatch(/^error\[bad_csr_signature\]/);
    await expect(stat(at("t.crt"))).rejects.toThrow();
  });

  it("bundle concatenates CAs to stdout or --out, and refuses non-CAs and duplicates", async () => {
    expect((await pki("init", "--out", at("alt-ca"), "--key-algorithm", "ed25519")).code).toBe(EXIT_OK);
    keyFiles.push(at("alt-ca", "ca.key"));
    const toStdout = await pki("bundle", bundleFile(), at("alt-ca", "ca.crt"));
    expect(toStdout.code).toBe(EXIT_OK);
    expect(toStdout.stdout).toBe(
      (await readFile(bundleFile(), "utf8")) + (await readFile(at("alt-ca", "ca.crt"), "utf8")),
    );
    const toFile = await pki("bundle", bundleFile(), at("alt-ca", "ca.crt"), "--out", at("ca_certs.pem"));
    expect(toFile.stdout).toContain("Wrote 2 CA certificate(s)");
    expect(await readFile(at("ca_certs.pem"), "utf8")).toBe(toStdout.stdout);

    const nonCa = await pki("bundle", bundleFile(), at("cart", "tls.crt"));
    expect(nonCa.code).toBe(EXIT_REJECTED);
    expect(nonCa.stderr).toMatch(/^error\[not_a_ca\]: .*tls\.crt: "CN=cart\.shop" is not a CA/);
    const duplicate = await pki("bundle", bundleFile(), at("ca_certs.pem"));
    expect(duplicate.stderr).toMatch(/^error\[duplicate_certificate\]: .*ca_certs\.pem: "O=Custody/);
    const key = await pki("bundle", at("cart", "tls.key"));
    expect(key.stderr).toMatch(/^error\[not_a_certificate\]: .*tls\.key is a "PRIVATE KEY" block/);
  });

  it("verify prints exactly one reason code for each kind of rejection", async () => {
    const ca = await loadCertificateAuthority(caDir());
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const write = async (name: string, pem: string) => {
      await writeFile(at(name), pem);
      return at(name);
    };
    const names = subjectAltName({ uris: ["spiffe://elsewhere.example/ns/a/si/b"] });
    const critical = new Extension({
      extnID: "1.3.6.1.4.1.99999.3",
      critical: true,
      extnValue: new OctetString(2),
    });
    const tampered = Buffer.from((await issueCertificate(ca, { id: "a.b" })).certificate.der);
    tampered[tampered.length - 1] = (tampered[tampered.length - 1] ?? 0) ^ 0xff;
    const cases: [string, string][] = [
      ["unknown_issuer", at("cart", "tls.crt")],
      ["is_ca", bundleFile()],
      [
        "not_client_auth",
        await write(
          "server.crt",
          (await issueCertificate(ca, { id: "a.b", usage: "server" })).certificate.pem,
        ),
      ],
      [
        "not_yet_valid",
        await write(
          "future.crt",
          (await issueCertificate(ca, { id: "a.b", notBefore: new Date(Date.now() + DAY) })).certificate.pem,
        ),
      ],
      [
        "expired",
        await write(
          "expired.crt",
          handBuilt({
            issuer: ca,
            subjectKey: privateKey,
            commonName: "old",
            extensions: [],
            notBefore: new Date(Date.now() - 3 * DAY),
            notAfter: new Date(Date.now() - DAY),
          }).pem,
        ),
      ],
      ["bad_signature", await write("tampered.crt", encodePem("CERTIFICATE", new Uint8Array(tampered)))],
      [
        "malformed",
        await write("garbage.crt", "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"),
      ],
      [
        "malformed",
        await write(
          "critical.crt",
          handBuilt({ issuer: ca, subjectKey: privateKey, commonName: "c", extensions: [critical] }).pem,
        ),
      ],
      [
        "trust_domain_mismatch",
        await write(
          "crossed.crt",
          handBuilt({ issuer: ca, subjectKey: privateKey, commonName: "x", extensions: names ? [names] : [] })
            .pem,
        ),
      ],
    ];
    const unknownIssuerBundle = at("alt-ca", "ca.crt");
    for (const [code, file] of cases) {
      const bundle = code === "unknown_issuer" ? unknownIssuerBundle : bundleFile();
      const result = await pki("verify", "--bundle", bundle, file);
      expect(result.code, `${code} via ${file}`).toBe(EXIT_REJECTED);
      expect(result.stdout).toBe("");
      const lines = result.stderr.trim().split("\n");
      expect(lines, result.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(new RegExp(`^error\\[${code}\\]: `));
    }
  });
});

describe("private keys", () => {
  it("never appear in anything a command printed", async () => {
    expect(keyFiles.length).toBeGreaterThan(3);
    const output = printed.join("");
    expect(output).not.toContain("PRIVATE KEY-----");
    for (const file of keyFiles) {
      const lines = (await readFile(file, "utf8"))
        .split("\n")
        .filter((line) => /^[A-Za-z0-9+/=]{20,}$/.test(line));
      expect(lines.length).toBeGreaterThan(0);
      for (const line of lines) expect(output).not.toContain(line.slice(0, 24));
    }
  });
});
