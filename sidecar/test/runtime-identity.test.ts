import { afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { type CertificateAuthority, createCertificateAuthority } from "../../pki/src/index.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import { loadIdentityFiles, type WorkloadIdentity } from "../src/runtime/identity-files.js";
import {
  backoffMs,
  type IdentityToken,
  IdentityTokenKeeper,
  readTokenResponse,
  refreshDelayMs,
} from "../src/runtime/identity-token.js";
import { writeIdentity } from "./support/identity.js";

describe("workload identity files", () => {
  let ca: CertificateAuthority;
  let directory: { path: string; cleanup: () => Promise<void> };
  beforeAll(async () => {
    ca = await createCertificateAuthority();
  });
  beforeEach(async () => {
    directory = await temporaryDirectory();
  });
  afterEach(() => directory.cleanup());

  it("reads certificate, key and CA, and names the service from the SPIFFE id", async () => {
    await writeIdentity(ca, directory.path, "cart.shop");
    const identity = await loadIdentityFiles(directory.path);
    expect(identity.serviceId).toBe("cart.shop");
    expect(identity.trustDomain).toBe("custody.local");
    expect(identity.notAfterMs).toBe(identity.leaf.notAfter.getTime());
  });

  it("refuses a key that does not belong to the certificate (a half-done rotation)", async () => {
    await writeIdentity(ca, directory.path, "cart.shop", "other.shop");
    await expect(loadIdentityFiles(directory.path)).rejects.toMatchObject({ code: "identity_invalid" });
  });

  it("refuses a directory with a file missing", async () => {
    await expect(loadIdentityFiles(directory.path)).rejects.toMatchObject({ code: "file_not_found" });
  });
});

describe("identity token refresh timing", () => {
  const token: IdentityToken = { token: "t", issuedAtMs: 0, expiresAtMs: 900_000 };

  it("refreshes at 2/3 of the life, jittered by at most 10 %", () => {
    expect(refreshDelayMs(token, 0, 0.5)).toBe(600_000);
    expect(refreshDelayMs(token, 0, 0)).toBe(510_000);
    expect(refreshDelayMs(token, 0, 1)).toBe(690_000);
    expect(refreshDelayMs(token, 800_000, 0.5)).toBe(0);
  });

  it("backs off exponentially up to the cap, jittered in the upper half", () => {
    expect(backoffMs(0, 1_000, 60_000, 1)).toBe(1_000);
    expect(backoffMs(0, 1_000, 60_000, 0)).toBe(500);
    expect(backoffMs(3, 1_000, 60_000, 1)).toBe(8_000);
    expect(backoffMs(40, 1_000, 60_000, 1)).toBe(60_000);
  });
});

describe("IdentityTokenKeeper", () => {
  const identity = { serviceId: "cart.shop" } as WorkloadIdentity;
  let clock = 1_000_000;
  beforeEach(() => {
    clock = 1_000_000;
  });

  it("keeps serving its token while the token service fails, until the token expires", async () => {
    const fetch = vi
      .fn<(identity: WorkloadIdentity) => Promise<IdentityToken>>()
      .mockResolvedValueOnce({ token: "first", issuedAtMs: clock, expiresAtMs: clock + 60_000 })
      .mockRejectedValue(new Error("token service down"));
    const failures: number[] = [];
    const keeper = new IdentityTokenKeeper({
      fetch,
      now: () => clock,
      random: () => 1,
      onFailure: (_e, retry) => failures.push(retry),
    });
    try {
      await keeper.setIdentity(identity);
      expect(keeper.token?.token).toBe("first");
      await keeper.refresh();
      await keeper.refresh();
      expect(failures).toEqual([1_000, 2_000]);
      expect(keeper.token?.token).toBe("first");
      clock += 60_000;
      expect(keeper.token).toBeUndefined();
    } finally {
      keeper.close();
    }
  });

  it("fetches again at once for a new certificate", async () => {
    let n = 0;
    const keeper = new IdentityTokenKeeper({
      fetch: async () => ({ token: `t${++n}`, issuedAtMs: clock, expiresAtMs: clock + 60_000 }),
      now: () => clock,
    });
    try {
      await keeper.setIdentity(identity);
      await keeper.setIdentity({ ...identity });
      expect(keeper.token?.token).toBe("t2");
    } finally {
      keeper.close();
    }
  });

  it("accepts only a Bearer identity token for this very service", () => {
    const jwt = (sub: string) =>
      `${Buffer.from('{"alg":"ES256"}').toString("base64url")}.${Buffer.from(JSON.stringify({ sub, exp: 2_000 })).toString("base64url")}.sig`;
    const body = (token: string, extra = {}) =>
      JSON.stringify({ access_token: token, token_type: "Bearer", expires_in: 600, ...extra });
    expect(readTokenResponse(body(jwt("cart.shop")), identity, 1_000_000).expiresAtMs).toBe(1_600_000);
    expect(() => readTokenResponse(body(jwt("shop.shop")), identity, 0)).toThrow(
      /not an identity token for cart.shop/,
    );
    expect(() => readTokenResponse(body(jwt("cart.shop"), { token_type: "DPoP" }), identity, 0)).toThrow(
      /Bearer/,
    );
    expect(() => readTokenResponse(body(jwt("cart.shop"), { expires_in: 0 }), identity, 0)).toThrow(
      /expires_in/,
    );
    expect(() => readTokenResponse("<html>", identity, 0)).toThrow(/not JSON/);
  });
});
