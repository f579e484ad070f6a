/** The credential lifecycle, step by step on a fake clock, and what makes a Secret unusable. */
import { beforeAll, describe, expect, it } from "vitest";
import { validateServiceIdentity } from "../../crds/src/manifest.js";
import type { ServiceIdentity } from "../../crds/src/service-identity.js";
import type { CertificateAuthority } from "../../pki/src/ca.js";
import { issueCertificate } from "../../pki/src/issue.js";
import { privateKeyToPem } from "../../pki/src/keys.js";
import { certificateProfile, type PlanInput, planIdentity } from "../src/controllers/identity-plan.js";
import {
  type IdentityMaterial,
  identitySecretOf,
  type KeyMaterial,
  keyMaterialOf,
  readIdentityMaterial,
} from "../src/controllers/identity-secret.js";
import { createCa } from "./support/pki.js";

const HOUR = 3_600_000;
/**
 * The plan's fake clock. Any instant works because the CA below is created on this clock too; only
 * the "identity Secret" tests, which read material at the real time, use the real clock.
 */
const T0 = Date.UTC(2026, 10, 22, 12);
const OWNER = { namespace: "shop", name: "cart", uid: "uid-1" };
const EXPECTED = { trustDomain: "custody.local", serviceId: "cart.shop" };

describe("identity plan", () => {
  let ca: CertificateAuthority;
  let identity: ServiceIdentity;

  const issueAt = async (nowMs: number, id = "cart.shop", lifetimeMs = 24 * HOUR): Promise<KeyMaterial> => {
    const issued = await issueCertificate(ca, {
      id,
      lifetimeSeconds: lifetimeMs / 1000,
      now: new Date(nowMs),
    });
    return keyMaterialOf(issued.certificate, issued.privateKey, certificateProfile(identity));
  };
  const plan = (material: IdentityMaterial | undefined, nowMs: number, extra: Partial<PlanInput> = {}) =>
    planIdentity({
      identity,
      material,
      caPem: ca.certificate.pem,
      nowMs,
      propagationDelayMs: 2 * 60_000,
      isPublished: () => false,
      issue: () => issueAt(nowMs),
      ...extra,
    });

  beforeAll(async () => {
    ca = await createCa("custody.local", T0);
    // 24h certificates renewed 8h before expiry (a third, the default).
    identity = validateServiceIdentity({
      apiVersion: "custody.dev/v1alpha1",
      kind: "ServiceIdentity",
      metadata: { name: "cart", namespace: "shop" },
      spec: {},
    });
  });

  it("issues when there is nothing, and wakes at the renewal time", async () => {
    const first = await plan(undefined, T0);
    expect(first.changed).toBe(true);
    expect(first.events.map((event) => event.reason)).toEqual(["CertificateIssued"]);
    const notAfter = first.material.current.certificate.notAfter.getTime();
    expect(first.wakeAtMs).toBe(notAfter - 8 * HOUR);
  });

  it("does nothing before renewal; stages the next key at renewal; keeps the current one", async () => {
    const current = await issueAt(T0);
    const material = { current, caPem: ca.certificate.pem };
    const quiet = await plan(material, T0 + HOUR);
    expect(quiet.changed).toBe(false);
    const renewal = await plan(material, T0 + 17 * HOUR);
    expect(renewal.changed).toBe(true);
    expect(renewal.material.current.kid).toBe(current.kid);
    expect(renewal.material.next?.kid).toBeDefined();
    expect(renewal.material.next?.kid).not.toBe(current.kid);
    expect(renewal.material.nextPublishedAtMs).toBeUndefined();
    expect(renewal.events.map((event) => event.reason)).toEqual(["RotationStarted"]);
  });

  it("never switches to a next key that is not published, nor before the propagation delay", async () => {
    const current = await issueAt(T0);
    const next = await issueAt(T0 + 17 * HOUR);
    const staged: IdentityMaterial = { current, next, caPem: ca.certificate.pem };
    const unpublished = await plan(staged, T0 + 20 * HOUR);
    expect(unpublished.material.current.kid).toBe(current.kid);
    expect(unpublished.changed).toBe(false);

    const seen = await plan(staged, T0 + 17 * HOUR, { isPublished: (kid) => kid === next.kid });
    expect(seen.material.nextPublishedAtMs).toBe(T0 + 17 * HOUR);
    expect(seen.material.current.kid).toBe(current.kid);
    expect(seen.wakeAtMs).toBe(T0 + 17 * HOUR + 2 * 60_000);

    const early = await plan(seen.material, T0 + 17 * HOUR + 60_000, { isPublished: () => true });
    expect(early.material.current.kid).toBe(current.kid);

    const promoted = await plan(seen.material, T0 + 17 * HOUR + 2 * 60_000, { isPublished: () => true });
    expect(promoted.material.current.kid).toBe(next.kid);
    expect(promoted.material.next).toBeUndefined();
    expect(promoted.material.previous).toMatchObject({
      kid: current.kid,
      notAfterMs: current.certificate.notAfter.getTime(),
    });
    expect(promoted.events.map((event) => event.reason)).toEqual(["CertificateRotated"]);
  });

  it("withdraws the previous key when its certificate expires", async () => {
    const current = await issueAt(T0);
    const material: IdentityMaterial = {
      current,
      previous: { kid: "old", jwk: current.jwk, notAfterMs: T0 + HOUR },
      caPem: ca.certificate.pem,
    };
    expect((await plan(material, T0 + HOUR - 1)).material.previous?.kid).toBe("old");
    const after = await plan(material, T0 + HOUR);
    expect(after.material.previous).toBeUndefined();
    expect(after.events.map((event) => event.reason)).toEqual(["PreviousKeyWithdrawn"]);
  });

  it("re-issues an expired certificate at once, and rotates when the spec changes the profile", async () => {
    const current = await issueAt(T0);
    const expired = await plan({ current, caPem: ca.certificate.pem }, T0 + 25 * HOUR);
    expect(expired.material.current.kid).not.toBe(current.kid);
    expect(expired.events[0]).toMatchObject({ type: "Warning", reason: "CertificateIssued" });

    const changed = { ...current, profile: "RSA-2048/24h" };
    const rotation = await plan({ current: changed, caPem: ca.certificate.pem }, T0 + HOUR);
    expect(rotation.material.next).toBeDefined();
    expect(rotation.material.current.kid).toBe(current.kid);

    // Another service account: the pods of the previous one hold the current key, so it goes.
    expect(certificateProfile(identity)).not.toBe(
      certificateProfile({ ...identity, spec: { ...identity.spec, serviceAccountName: "other" } }),
    );
    const handedOver = await plan(
      {
        current: { ...current, profile: current.profile.replace(/sa=.*/, "sa=other") },
        caPem: ca.certificate.pem,
      },
      T0 + HOUR,
    );
    expect(handedOver.material.next).toBeDefined();
  });

  it("updates ca.crt when the trust bundle changes", async () => {
    const current = await issueAt(T0);
    const result = await plan({ current, caPem: "old bundle" }, T0 + HOUR);
    expect(result.changed).toBe(true);
    expect(result.material.caPem).toBe(ca.certificate.pem);
  });
});

describe("identity Secret", () => {
  let ca: CertificateAuthority;
  beforeAll(async () => {
    ca = await createCa();
  });

  it("round-trips its material", async () => {
    const issued = await issueCertificate(ca, { id: "cart.shop" });
    const current = keyMaterialOf(issued.certificate, issued.privateKey, "ECDSA-P256/24h");
    const secret = identitySecretOf("custody-system", OWNER, { current, caPem: ca.certificate.pem }, "7");
    expect(secret).toMatchObject({
      namespace: "custody-system",
      name: `custody-identity.${OWNER.namespace}.cart`,
      labels: { "custody.dev/identity": "cart", "custody.dev/identity-namespace": OWNER.namespace },
      annotations: { "custody.dev/identity-uid": OWNER.uid },
      type: "kubernetes.io/tls",
      resourceVersion: "7",
    });
    const read = readIdentityMaterial(secret, EXPECTED);
    expect("material" in read && read.material.current.kid).toBe(current.kid);
  });

  it("refuses a certificate of another identity, a key that is not the certificate's, and garbage", async () => {
    const mine = await issueCertificate(ca, { id: "cart.shop" });
    const other = await issueCertificate(ca, { id: "payments.shop" });
    const base = identitySecretOf(
      "custody-system",
      OWNER,
      { current: keyMaterialOf(mine.certificate, mine.privateKey, ""), caPem: ca.certificate.pem },
      "1",
    );
    const withData = (data: Record<string, string>) => ({ ...base, data: { ...base.data, ...data } });
    expect(
      readIdentityMaterial(
        withData({ "tls.crt": other.certificate.pem, "tls.key": privateKeyToPem(other.privateKey) }),
        EXPECTED,
      ),
    ).toEqual({ problem: "the Secret's certificate is not for cart.shop" });
    expect(
      readIdentityMaterial(withData({ "tls.key": privateKeyToPem(other.privateKey) }), EXPECTED),
    ).toEqual({
      problem: "the Secret's key does not belong to its certificate",
    });
    expect(readIdentityMaterial(withData({ "tls.crt": "not a certificate" }), EXPECTED)).toMatchObject({
      problem: expect.stringMatching(/does not parse|holds no certificate/),
    });
    const foreignDomain = await createCa("other.example");
    const stranger = await issueCertificate(foreignDomain, { id: "cart.shop" });
    expect(
      readIdentityMaterial(
        withData({ "tls.crt": stranger.certificate.pem, "tls.key": privateKeyToPem(stranger.privateKey) }),
        EXPECTED,
      ),
    ).toEqual({ problem: "the Secret's certificate is not for cart.shop" });
  });

  it("drops a broken next pair instead of the whole Secret", async () => {
    const mine = await issueCertificate(ca, { id: "cart.shop" });
    const base = identitySecretOf(
      "custody-system",
      OWNER,
      { current: keyMaterialOf(mine.certificate, mine.privateKey, ""), caPem: ca.certificate.pem },
      "1",
    );
    const read = readIdentityMaterial(
      { ...base, data: { ...base.data, "next.crt": "junk", "next.key": "junk" } },
      EXPECTED,
    );
    expect("material" in read && read.material.next).toBeUndefined();
    expect("material" in read && read.material.current.kid).toBeDefined();
  });
});
