/** The building blocks against their specifications' test vectors. */
import { createPrivateKey, createPublicKey, type JsonWebKey } from "node:crypto";
import { describe, expect, it } from "vitest";
import { decodeBase64url } from "../src/keys/base64url.js";
import { canonicalJson } from "../src/keys/canonical-json.js";
import { aesKeyUnwrap, aesKeyWrap, agree, concatKdf } from "../src/keys/key-agreement.js";
import { refusal } from "./support/keys.js";

describe("Concat KDF (RFC 7518 Appendix C)", () => {
  const alice = {
    kty: "EC",
    crv: "P-256",
    x: "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
    y: "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps",
    d: "0_NxaRPUMQoAJt50Gz8YiTr8gRTwyEaCumd-MToTmIo",
  };
  const bob = {
    kty: "EC",
    crv: "P-256",
    x: "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ",
    y: "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck",
    d: "VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw",
  };

  it("derives the appendix's key from the appendix's ECDH agreement", () => {
    const z = agree(
      createPrivateKey({ key: alice as JsonWebKey, format: "jwk" }),
      createPublicKey({ key: { kty: "EC", crv: "P-256", x: bob.x, y: bob.y }, format: "jwk" }),
    );
    expect([...z]).toEqual([
      158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49, 110, 163, 218, 128,
      106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
    ]);
    const key = concatKdf(z, "A128GCM", 128, Buffer.from("Alice"), Buffer.from("Bob"));
    expect(key.toString("base64url")).toBe("VqqN6vgjbSBcIijNcacQGg");
  });

  it("gives 256-bit keys that depend on the algorithm id", () => {
    const z = Buffer.alloc(32, 7);
    const wrap = concatKdf(z, "ECDH-ES+A256KW", 256);
    expect(wrap).toHaveLength(32);
    expect(wrap.equals(concatKdf(z, "ECDH-ES+A128KW", 256))).toBe(false);
  });
});

describe("AES key wrap (RFC 3394 §4.6, 256-bit data with a 256-bit KEK)", () => {
  const kek = Buffer.from("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F", "hex");
  const data = Buffer.from("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F", "hex");
  const wrapped = "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21";

  it("wraps and unwraps like the RFC", () => {
    expect(aesKeyWrap(kek, data).toString("hex").toUpperCase()).toBe(wrapped);
    expect(aesKeyUnwrap(kek, Buffer.from(wrapped, "hex")).equals(data)).toBe(true);
  });

  it("refuses an altered wrap and a wrong KEK", () => {
    const altered = Buffer.from(wrapped, "hex");
    altered[20] = (altered[20] ?? 0) ^ 1;
    expect(() => aesKeyUnwrap(kek, altered)).toThrow();
    expect(() => aesKeyUnwrap(Buffer.alloc(32), Buffer.from(wrapped, "hex"))).toThrow();
  });
});

describe("JSON canonicalization (RFC 8785)", () => {
  it("matches the RFC's §3.2.2 example", () => {
    const input = JSON.parse(
      '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],' +
        '"string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", "literals": [null, true, false]}',
    );
    expect(canonicalJson(input)).toBe(
      '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],' +
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}',
    );
  });

  it("sorts members by UTF-16 code units (§3.2.3)", () => {
    const input = {
      "\u20ac": "Euro Sign",
      "\r": "Carriage Return",
      "\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One",
      "\ud83d\ude00": "Emoji: Grinning Face",
      "\u0080": "Control",
      "\u00f6": "Latin Small Letter O With Diaeresis",
    };
    // Integer-like names ("1") come first in a JS object, so compare the text, not re-parsed keys.
    const expected = [
      ["\\r", "Carriage Return"],
      ["1", "One"],
      ["\u0080", "Control"],
      ["\u00f6", "Latin Small Letter O With Diaeresis"],
      ["\u20ac", "Euro Sign"],
      ["\ud83d\ude00", "Emoji: Grinning Face"],
      ["\ufb33", "Hebrew Letter Dalet With Dagesh"],
    ];
    expect(canonicalJson(input)).toBe(
      `{${expected.map(([name, value]) => `"${name}":"${value}"`).join(",")}}`,
    );
  });

  it("gives the same text whatever the member order and spacing", () => {
    const a = JSON.parse('{ "b": [1, {"z": 0, "a": -0}], "a": "x" }');
    const b = JSON.parse('{"a":"x","b":[1.0,{"a":0,"z":0e5}]}');
    expect(canonicalJson(a)).toBe('{"a":"x","b":[1,{"a":0,"z":0}]}');
    expect(canonicalJson(b)).toBe(canonicalJson(a));
  });

  it("refuses what is not I-JSON instead of coercing it", () => {
    refusal(() => canonicalJson({ n: Number.NaN }), "invalid_payload");
    refusal(() => canonicalJson({ n: Number.POSITIVE_INFINITY }), "invalid_payload");
    refusal(() => canonicalJson({ s: "\ud800" }), "invalid_payload");
    refusal(() => canonicalJson({ "\udc00": 1 }), "invalid_payload");
    refusal(() => canonicalJson({ u: undefined }), "invalid_payload");
    refusal(() => canonicalJson({ d: new Date(0) }), "invalid_payload");
    refusal(() => canonicalJson({ b: 1n }), "invalid_payload");
    // biome-ignore lint/suspicious/noSparseArray: the point of the test
    refusal(() => canonicalJson([1, , 2]), "invalid_payload");
    let deep: unknown = 1;
    for (let i = 0; i < 100; i++) deep = [deep];
    refusal(() => canonicalJson(deep), "invalid_payload");
    refusal(() => canonicalJson({ s: "x".repeat(100) }, 50), "too_large");
  });
});

describe("base64url", () => {
  it("accepts only canonical text", () => {
    expect(decodeBase64url("AQ", "x")).toEqual(Buffer.from([1]));
    refusal(() => decodeBase64url("AR", "x"), "malformed");
    refusal(() => decodeBase64url("AQ==", "x"), "malformed");
    refusal(() => decodeBase64url("A+", "x"), "malformed");
    refusal(() => decodeBase64url("A", "x"), "malformed");
    refusal(() => decodeBase64url(1, "x"), "malformed");
  });
});
