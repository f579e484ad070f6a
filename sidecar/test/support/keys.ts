/** Fixtures for the key service tests: services with RSA keys, and byte-level tampering of base64url text. */
import { generateKeyPairSync } from "node:crypto";
import { expect } from "vitest";
import { KeyServiceError, type KeyServiceReason } from "../../src/keys/errors.js";
import { kidOf, type TestService } from "./mesh.js";

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

export function rsaService(id: string): TestService {
  const pair = generateKeyPairSync("rsa", { modulusLength: 2048 });
  return {
    info: { id, environment: "prod", claims: {}, edge: false },
    signer: { serviceId: id, kid: kidOf(pair.publicKey), privateKey: pair.privateKey },
    publicKey: pair.publicKey,
  };
}

/** Every text obtained by replacing one character of `text` with another base64url character. */
export function* oneCharacterChanges(text: string): Generator<{ position: number; text: string }> {
  for (let position = 0; position < text.length; position++) {
    const original = text.charAt(position);
    // Two replacements per position: the neighbour in the alphabet flips a low bit, the far one high bits.
    const index = ALPHABET.indexOf(original);
    const replacements = new Set([ALPHABET.charAt((index + 1) % 64), ALPHABET.charAt((index + 32) % 64)]);
    for (const replacement of replacements) {
      if (replacement === original) continue;
      yield { position, text: text.slice(0, position) + replacement + text.slice(position + 1) };
    }
  }
}

/** Runs `action`, expecting a KeyServiceError (with `code` when given); returns its code. */
export function refusal(action: () => unknown, code?: KeyServiceReason): KeyServiceReason {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(KeyServiceError);
    const reason = (error as KeyServiceError).code;
    if (code !== undefined) expect(reason, (error as Error).message).toBe(code);
    return reason;
  }
  throw new Error(`expected a refusal${code === undefined ? "" : ` (${code})`}, but it succeeded`);
}
