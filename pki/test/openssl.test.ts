/**
 * Interop with the real openssl binary: the design seed's recipe must keep working with Custody's
 * bundle and verify, and Custody's certificates must satisfy `openssl verify`.
 */
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EXIT_OK, EXIT_REJECTED } from "../../cli/src/kit.js";
import { requireTool } from "../../e2e/support/tools.js";
import { pkiCommand } from "../src/cli.js";
import { openssl, seedCa as seedCaIn, seedClient as seedClientIn } from "./seed-recipe.js";
import { captureIO, temporaryDirectory } from "./support.js";

const hasOpenssl = requireTool("openssl");

async function pki(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const captured = captureIO();
  const code = await pkiCommand(args, captured.io);
  return { code, stdout: captured.stdout(), stderr: captured.stderr() };
}

/** `openssl verify` prints "FILE: OK" and exits 0 on success; anything else is a failure. */
async function opensslVerifies(cwd: string, ...args: string[]): Promise<boolean> {
  try {
    return (await openssl(cwd, "verify", ...args)).trim().endsWith(": OK");
  } catch {
    return false;
  }
}

describe.skipIf(!hasOpenssl)("the design seed's openssl recipe", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  const seed = (...parts: string[]) => join(directory.path, "pki", ...parts);

  const seedCa = (name: string, subject: string) => seedCaIn(directory.path, name, subject);
  const seedClient = (name: string, ca: string, subject: string) =>
    seedClientIn(directory.path, name, ca, subject);

  beforeAll(async () => {
    directory = await temporaryDirectory();
    await mkdir(seed("CA"), { recursive: true });
    await Promise.all([
      seedCa("ca", "/C=US/O=Shop/CN=Shop Client CA"),
      seedCa("ca_alternative", "/C=US/O=Partner/CN=Partner Client CA"),
      seedCa("ca_third", "/C=US/O=Stranger/CN=Stranger CA"),
    ]);
    await Promise.all([
      seedClient("client", "ca", "/C=US/O=Shop/CN=client"),
      seedClient("client_alternative", "ca_alternative", "/C=US/O=Partner/CN=client_alternative"),
      seedClient("client_third", "ca_third", "/C=US/O=Stranger/CN=client_third"),
    ]);
    // The seed's last step: cat pki/CA/ca.crt pki/CA/ca_alternative.crt > pki/CA/ca_certs.pem
    const concatenated =
      (await readFile(seed("CA", "ca.crt"), "utf8")) +
      (await readFile(seed("CA", "ca_alternative.crt"), "utf8"));
    await writeFile(seed("CA", "ca_certs.pem"), concatenated);
  }, 60_000);
  afterAll(async () => {
    await directory?.cleanup();
  });

  it("custody pki bundle builds the same bundle as cat", async () => {
    const result = await pki(
      "bundle",
      seed("CA", "ca.crt"),
      seed("CA", "ca_alternative.crt"),
      "--out",
      seed("CA", "ca_certs_custody.pem"),
    );
    expect(result.code).toBe(EXIT_OK);
    const custody = await readFile(seed("CA", "ca_certs_custody.pem"), "utf8");
    const strip = (pem: string) => pem.replace(/\s+/g, "");
    expect(strip(custody)).toBe(strip(await readFile(seed("CA", "ca_certs.pem"), "utf8")));
  });

  it.each(["ca_certs.pem", "ca_certs_custody.pem"])("both seed clients verify against %s", async (bundle) => {
    for (const client of ["client.crt", "client_alternative.crt"]) {
      const result = await pki("verify", "--bundle", seed("CA", bundle), seed(client));
      expect(result.code, `${client}: ${result.stderr}`).toBe(EXIT_OK);
      expect(result.stdout).toMatch(/^verified: subject="C=US, O=(Shop|Partner), CN=client(_alternative)?" /);
      expect(result.stdout).not.toContain("spiffe_id=");
    }
  });

  it("a client of a third CA is refused with unknown_issuer", async () => {
    const result = await pki("verify", "--bundle", seed("CA", "ca_certs.pem"), seed("client_third.crt"));
    expect(result.code).toBe(EXIT_REJECTED);
    expect(result.stderr).toMatch(/^error\[unknown_issuer\]: /);
  });

  it("a look-alike CA with the same DN (but another key) yields bad_signature", async () => {
    await mkdir(seed("forged", "CA"), { recursive: true });
    await openssl(
      seed("forged"),
      "req",
      "-new",
      "-x509",
      "-days",
      "30",
      "-noenc",
      "-keyout",
      "CA/ca.key",
      "-out",
      "CA/ca.crt",
      "-subj",
      "/C=US/O=Shop/CN=Shop Client CA",
    );
    await openssl(
      seed("forged"),
      "x509",
      "-req",
      "-in",
      "../client.csr",
      "-CA",
      "CA/ca.crt",
      "-CAkey",
      "CA/ca.key",
      "-CAcreateserial",
      "-out",
      "client.crt",
      "-days",
      "10",
      "-sha256",
    );
    const result = await pki("verify", "--bundle", seed("CA", "ca_certs.pem"), seed("forged", "client.crt"));
    expect(result.code).toBe(EXIT_REJECTED);
    expect(result.stderr).toMatch(/^error\[bad_signature\]: /);
  });

  it("sign-csr accepts the seed's client.csr and the result verifies (openssl agrees)", async () => {
    expect((await pki("init", "--out", seed("custody-ca"))).code).toBe(EXIT_OK);
    const signed = await pki(
      "sign-csr",
      "--ca",
      seed("custody-ca"),
      "--csr",
      seed("client.csr"),
      "--out",
      seed("client-custody.crt"),
    );
    expect(signed.code, signed.stderr).toBe(EXIT_OK);
    const verified = await pki(
      "verify",
      "--bundle",
      seed("custody-ca", "ca.crt"),
      seed("client-custody.crt"),
    );
    expect(verified.code, verified.stderr).toBe(EXIT_OK);
    const csrSubject = await openssl(directory.path, "req", "-in", seed("client.csr"), "-noout", "-subject");
    const crtSubject = await openssl(
      directory.path,
      "x509",
      "-in",
      seed("client-custody.crt"),
      "-noout",
      "-subject",
    );
    expect(crtSubject).toBe(csrSubject);
    expect(
      await opensslVerifies(
        directory.path,
        "-CAfile",
        seed("custody-ca", "ca.crt"),
        "-purpose",
        "sslclient",
        seed("client-custody.crt"),
      ),
    ).toBe(true);
    // And the key that made the CSR is the one certified.
    const modulus = (file: string, kind: "x509" | "rsa") =>
      openssl(directory.path, kind, "-in", file, "-noout", "-modulus");
    expect(await modulus(seed("client-custody.crt"), "x509")).toBe(await modulus(seed("client.key"), "rsa"));
  });

  it("sign-csr ignores a request for CA:true", async () => {
    await openssl(
      directory.path,
      "req",
      "-new",
      "-key",
      seed("client.key"),
      "-out",
      seed("evil.csr"),
      "-subj",
      "/CN=evil",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign",
    );
    expect(await openssl(directory.path, "req", "-in", seed("evil.csr"), "-noout", "-text")).toContain(
      "CA:TRUE",
    );
    expect(
      (
        await pki(
          "sign-csr",
          "--ca",
          seed("custody-ca"),
          "--csr",
          seed("evil.csr"),
          "--out",
          seed("evil.crt"),
        )
      ).code,
    ).toBe(EXIT_OK);
    const text = await openssl(directory.path, "x509", "-in", seed("evil.crt"), "-noout", "-text");
    expect(text).toContain("CA:FALSE");
    expect(text).not.toContain("CA:TRUE");
    expect(text).not.toContain("Certificate Sign");
  });

  it("the seed's encrypted CA key is refused with encrypted_key; decrypted with openssl pkey, it signs", async () => {
    const refused = await pki(
      "sign-csr",
      "--ca",
      seed("CA"),
      "--csr",
      seed("client.csr"),
      "--out",
      seed("x.crt"),
    );
    expect(refused.code).toBe(EXIT_REJECTED);
    expect(refused.stderr).toMatch(/^error\[encrypted_key\]: .*openssl pkey/);

    await mkdir(seed("plain-ca"));
    await copyFile(seed("CA", "ca.crt"), seed("plain-ca", "ca.crt"));
    await openssl(
      directory.path,
      "pkey",
      "-in",
      seed("CA", "ca.key"),
      "-passin",
      "pass:seed-secret",
      "-out",
      seed("plain-ca", "ca.key"),
    );
    const signed = await pki(
      "sign-csr",
      "--ca",
      seed("plain-ca"),
      "--csr",
      seed("client.csr"),
      "--out",
      seed("resigned.crt"),
    );
    expect(signed.code, signed.stderr).toBe(EXIT_OK);
    expect((await pki("verify", "--bundle", seed("CA", "ca_certs.pem"), seed("resigned.crt"))).code).toBe(
      EXIT_OK,
    );
    // A seed CA has no SPIFFE trust domain, so it cannot mint SPIFFE ids.
    const spiffe = await pki("issue", "--ca", seed("plain-ca"), "--id", "cart.shop", "--out", seed("nope"));
    expect(spiffe.stderr).toMatch(/^error\[no_trust_domain\]/);
  });
});

describe.skipIf(!hasOpenssl)("openssl accepts Custody's certificates", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  beforeAll(async () => {
    directory = await temporaryDirectory();
  });
  afterAll(async () => {
    await directory?.cleanup();
  });

  it.each(["ecdsa-p256", "ed25519", "rsa-2048"])(
    "%s: CA and leaf pass openssl verify and show the profile",
    async (algorithm) => {
      const caDir = join(directory.path, algorithm, "ca");
      const out = join(directory.path, algorithm, "cart");
      expect((await pki("init", "--out", caDir, "--key-algorithm", algorithm)).code).toBe(EXIT_OK);
      const issued = await pki(
        "issue",
        "--ca",
        caDir,
        "--id",
        "cart.shop",
        "--out",
        out,
        "--key-algorithm",
        algorithm,
        "--dns",
        "cart.shop.svc",
        "--ip",
        "10.0.0.7",
      );
      expect(issued.code, issued.stderr).toBe(EXIT_OK);
      const caFile = join(caDir, "ca.crt");
      const leaf = join(out, "tls.crt");
      expect(await opensslVerifies(directory.path, "-CAfile", caFile, "-purpose", "sslclient", leaf)).toBe(
        true,
      );
      expect(await opensslVerifies(directory.path, "-CAfile", caFile, "-purpose", "sslserver", leaf)).toBe(
        true,
      );
      expect(await opensslVerifies(directory.path, "-CAfile", caFile, "-x509_strict", leaf)).toBe(true);

      const leafText = await openssl(directory.path, "x509", "-in", leaf, "-noout", "-text");
      expect(leafText).toContain("Subject: CN = cart.shop");
      expect(leafText).toContain(
        "URI:spiffe://custody.local/ns/shop/si/cart, DNS:cart.shop.svc, IP Address:10.0.0.7",
      );
      expect(leafText).toContain("TLS Web Server Authentication, TLS Web Client Authentication");
      expect(leafText).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
      expect(leafText).toMatch(
        new RegExp(
          `Key Usage: critical\\s+Digital Signature${algorithm === "rsa-2048" ? ", Key Encipherment" : "\\n"}`,
        ),
      );
      expect(leafText).toContain("X509v3 Authority Key Identifier");
      expect(leafText).toContain("X509v3 Subject Key Identifier");

      const caText = await openssl(directory.path, "x509", "-in", caFile, "-noout", "-text");
      expect(caText).toMatch(/Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
      expect(caText).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);
      expect(caText).toContain("URI:spiffe://custody.local");

      // openssl reads the PKCS#8 keys, and they match the certificates.
      await openssl(directory.path, "pkey", "-in", join(out, "tls.key"), "-noout");
      const pub = (args: string[]) => openssl(directory.path, ...args);
      expect(await pub(["pkey", "-in", join(out, "tls.key"), "-pubout"])).toBe(
        await pub(["x509", "-in", leaf, "-noout", "-pubkey"]),
      );
    },
  );

  it("a server-only certificate fails openssl's sslclient purpose too", async () => {
    const caDir = join(directory.path, "server-only", "ca");
    const out = join(directory.path, "server-only", "leaf");
    await pki("init", "--out", caDir);
    await pki("issue", "--ca", caDir, "--id", "web.shop", "--out", out, "--usage", "server");
    const caFile = join(caDir, "ca.crt");
    expect(
      await opensslVerifies(directory.path, "-CAfile", caFile, "-purpose", "sslclient", join(out, "tls.crt")),
    ).toBe(false);
    expect(
      await opensslVerifies(directory.path, "-CAfile", caFile, "-purpose", "sslserver", join(out, "tls.crt")),
    ).toBe(true);
  });

  it("a CSR made with openssl for an EC key is signed and verified", async () => {
    const caDir = join(directory.path, "ec-csr", "ca");
    await pki("init", "--out", caDir);
    const dir = join(directory.path, "ec-csr");
    await openssl(dir, "ecparam", "-genkey", "-name", "prime256v1", "-out", "ec.key");
    await openssl(dir, "req", "-new", "-key", "ec.key", "-out", "ec.csr", "-subj", "/O=Partner/CN=ec-client");
    const signed = await pki(
      "sign-csr",
      "--ca",
      caDir,
      "--csr",
      join(dir, "ec.csr"),
      "--out",
      join(dir, "ec.crt"),
      "--id",
      "ec.partner",
    );
    expect(signed.code, signed.stderr).toBe(EXIT_OK);
    expect(
      await opensslVerifies(
        dir,
        "-CAfile",
        join(caDir, "ca.crt"),
        "-purpose",
        "sslclient",
        join(dir, "ec.crt"),
      ),
    ).toBe(true);
  });
});
