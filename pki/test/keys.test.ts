import { generateKeyPairSync, type KeyObject, sign, verify } from "node:crypto";
import { inspect } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { KeyError } from "../src/errors.js";
import {
  describeKey,
  generateKeyPair,
  KEY_ALGORITHMS,
  type KeyPair,
  privateKeyFromPem,
  privateKeyToPem,
  sameKey,
} from "../src/keys.js";

let rsa: KeyPair;
beforeAll(async () => {
  rsa = await generateKeyPair("rsa-2048");
});

function codeOf(action: () => unknown): string | undefined {
  try {
    action();
  } catch (error) {
    return error instanceof KeyError ? error.code : `unexpected ${String(error)}`;
  }
  return undefined;
}

function signsLike(privateKey: KeyObject, publicKey: KeyObject): boolean {
  const data = Buffer.from("custody");
  const hash = privateKey.asymmetricKeyType === "ed25519" ? null : "sha256";
  return verify(hash, data, publicKey, sign(hash, data, privateKey));
}

describe("generateKeyPair", () => {
  it.each(KEY_ALGORITHMS)("generates a working %s key pair", async (algorithm) => {
    const pair = algorithm === "rsa-2048" ? rsa : await generateKeyPair(algorithm);
    expect(signsLike(pair.privateKey, pair.publicKey)).toBe(true);
    expect(describeKey(pair.privateKey)).toBe(
      { "ecdsa-p256": "ECDSA P-256", ed25519: "Ed25519", "rsa-2048": "RSA 2048" }[algorithm],
    );
  });

  it("never shows key material when a key is inspected or stringified", async () => {
    const { privateKey } = await generateKeyPair("ecdsa-p256");
    const body = privateKeyToPem(privateKey).split("\n")[1] ?? "";
    expect(inspect(privateKey)).not.toContain(body.slice(0, 20));
    expect(JSON.stringify({ privateKey })).not.toContain(body.slice(0, 20));
  });
});

describe("privateKeyFromPem", () => {
  it.each([
    ["PKCS#8", "pkcs8"],
    ["traditional RSA", "pkcs1"],
  ] as const)("reads an RSA key as %s", (_, type) => {
    const pem = String(rsa.privateKey.export({ type, format: "pem" }));
    expect(sameKey(privateKeyFromPem(pem, "key.pem"), rsa.publicKey)).toBe(true);
  });

  it("reads a traditional EC key, also after an EC PARAMETERS block (openssl ecparam -genkey)", () => {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const sec1 = String(privateKey.export({ type: "sec1", format: "pem" }));
    expect(sec1).toContain("BEGIN EC PRIVATE KEY");
    const withParameters = `-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n${sec1}`;
    expect(sameKey(privateKeyFromPem(withParameters, "key.pem"), publicKey)).toBe(true);
  });

  it("round-trips Ed25519 through PKCS#8 PEM", async () => {
    const { privateKey, publicKey } = await generateKeyPair("ed25519");
    const pem = privateKeyToPem(privateKey);
    expect(pem).toContain("BEGIN PRIVATE KEY");
    expect(sameKey(privateKeyFromPem(pem, "key.pem"), publicKey)).toBe(true);
  });

  it("refuses encrypted keys, PKCS#8 and traditional, telling how to decrypt", () => {
    const pkcs8 = String(
      rsa.privateKey.export({ type: "pkcs8", format: "pem", cipher: "aes-256-cbc", passphrase: "secret" }),
    );
    const pkcs1 = String(
      rsa.privateKey.export({ type: "pkcs1", format: "pem", cipher: "aes-256-cbc", passphrase: "secret" }),
    );
    expect(codeOf(() => privateKeyFromPem(pkcs8, "ca.key"))).toBe("encrypted_key");
    expect(codeOf(() => privateKeyFromPem(pkcs1, "ca.key"))).toBe("encrypted_key");
    expect(() => privateKeyFromPem(pkcs8, "ca.key")).toThrow(/openssl pkey/);
  });

  it("refuses files without a key, corrupt keys, weak and unsupported keys", () => {
    expect(
      codeOf(() => privateKeyFromPem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "x")),
    ).toBe("key_not_found");
    expect(
      codeOf(() => privateKeyFromPem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "x")),
    ).toBe("invalid_key");
    const weak = generateKeyPairSync("rsa", { modulusLength: 1024 }).privateKey;
    expect(codeOf(() => privateKeyFromPem(privateKeyToPem(weak), "x"))).toBe("weak_key");
    const p384 = generateKeyPairSync("ec", { namedCurve: "P-384" }).privateKey;
    expect(codeOf(() => privateKeyFromPem(privateKeyToPem(p384), "x"))).toBe("unsupported_key");
  });

  it("does not echo key material in its errors", () => {
    const pem = privateKeyToPem(rsa.privateKey);
    const broken = pem.replace(/\n[A-Za-z0-9+/]{64}\n/, "\nAAAA\n");
    let message = "";
    try {
      privateKeyFromPem(broken, "x");
    } catch (error) {
      message = error instanceof KeyError ? `${error.code}: ${error.message}` : String(error);
    }
    expect(message).toMatch(/^invalid_key: /);
    for (const line of pem.split("\n").slice(1, -2)) expect(message).not.toContain(line.slice(0, 16));
  });
});
