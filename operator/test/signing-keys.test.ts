import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { temporaryDirectory } from "../../pki/test/support.js";
import {
  MAX_RETIRED_KEYS,
  SIGNING_KEYS_FILE,
  SigningKeyError,
  SigningKeyRing,
} from "../src/issuer/signing-keys.js";

const HOUR = 3_600_000;

describe("SigningKeyRing", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let clock = 0;
  const open = (overrides: { rotationPeriodMs?: number; maxTokenLifetimeMs?: number } = {}) =>
    SigningKeyRing.open({
      directory: directory.path,
      rotationPeriodMs: overrides.rotationPeriodMs ?? 24 * HOUR,
      maxTokenLifetimeMs: overrides.maxTokenLifetimeMs ?? HOUR,
      now: () => clock,
    });

  beforeEach(async () => {
    directory = await temporaryDirectory();
    clock = Date.UTC(2026, 10, 22);
  });
  afterEach(() => directory.cleanup());

  it("starts with a current and a next key, both published, state file mode 0600", async () => {
    const ring = await open();
    const kids = ring.jwks.keys.map((key) => key.kid);
    expect(kids).toHaveLength(2);
    expect(kids[0]).toBe(ring.signingKey.kid);
    expect(ring.jwks.keys.every((key) => key.alg === "ES256" && key.crv === "P-256" && !("d" in key))).toBe(
      true,
    );
    expect((await stat(join(directory.path, SIGNING_KEYS_FILE))).mode & 0o777).toBe(0o600);
  });

  it("reloads the same keys after a restart", async () => {
    const first = await open();
    const second = await open();
    expect(second.signingKey.kid).toBe(first.signingKey.kid);
    expect(second.jwks).toEqual(first.jwks);
  });

  it("rotates with overlap: the published next key signs, the old key stays published until its tokens expire", async () => {
    const ring = await open();
    const [oldCurrent, oldNext] = ring.jwks.keys.map((key) => key.kid);
    clock += 24 * HOUR - 1;
    expect(await ring.maintain()).toBe("unchanged");
    clock += 1;
    expect(await ring.maintain()).toBe("rotated");
    expect(ring.signingKey.kid).toBe(oldNext);
    const published = ring.jwks.keys.map((key) => key.kid);
    expect(published).toHaveLength(3);
    expect(published).toContain(oldCurrent);
    clock += HOUR - 1;
    await ring.maintain();
    expect(ring.jwks.keys.map((key) => key.kid)).toContain(oldCurrent);
    clock += 2;
    expect(await ring.maintain()).toBe("pruned");
    expect(ring.jwks.keys.map((key) => key.kid)).not.toContain(oldCurrent);
    expect((await open()).signingKey.kid).toBe(oldNext);
  });

  it("postpones rotation rather than publish more than the JWKS bound", async () => {
    const ring = await open({ rotationPeriodMs: 1_000, maxTokenLifetimeMs: HOUR });
    for (let i = 0; i < MAX_RETIRED_KEYS; i++) {
      clock += 1_000;
      expect(await ring.maintain()).toBe("rotated");
    }
    const signing = ring.signingKey.kid;
    clock += 1_000;
    expect(await ring.maintain()).toBe("postponed");
    expect(ring.signingKey.kid).toBe(signing);
    expect(ring.jwks.keys).toHaveLength(MAX_RETIRED_KEYS + 2);
  });

  it("refuses a corrupt state file and leaves it untouched", async () => {
    await open();
    const path = join(directory.path, SIGNING_KEYS_FILE);
    await writeFile(path, '{"version":1,"keys":[]}');
    await expect(open()).rejects.toBeInstanceOf(SigningKeyError);
    expect(await readFile(path, "utf8")).toBe('{"version":1,"keys":[]}');
  });

  it("refuses a state file whose kid does not match its key", async () => {
    await open();
    const path = join(directory.path, SIGNING_KEYS_FILE);
    const state = JSON.parse(await readFile(path, "utf8")) as { keys: { kid: string }[] };
    const [first] = state.keys;
    if (first !== undefined) first.kid = "forged";
    await writeFile(path, JSON.stringify(state));
    await expect(open()).rejects.toThrow(/does not match its key/);
  });
});
