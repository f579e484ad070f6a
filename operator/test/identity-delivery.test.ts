/**
 * Identity delivery's decision, each check refusing with its reason code (the same checks run
 * against the real API server in e2e/test/identity-delivery.test.ts), plus what the API server is
 * spared: one TokenReview per token while it is cached, a bound on work in flight.
 */
import pino from "pino";
import { describe, expect, it } from "vitest";
import { validateServiceIdentity } from "../../crds/src/manifest.js";
import type { StoredSecret } from "../src/store/store.js";
import {
  bearerToken,
  IdentityDelivery,
  type ReviewedToken,
  reviewedTokenOf,
} from "../src/webhook/identity-delivery.js";

const CART = validateServiceIdentity({
  apiVersion: "custody.dev/v1alpha1",
  kind: "ServiceIdentity",
  metadata: { name: "cart", namespace: "shop" },
  spec: { environment: "prod" },
});
const SECRET: StoredSecret = {
  namespace: "custody-system",
  name: "custody-identity.shop.cart",
  type: "kubernetes.io/tls",
  labels: {},
  annotations: {},
  data: { "tls.crt": "CERT", "tls.key": "KEY", "ca.crt": "CA", "next.key": "NEXT" },
};
const REVIEWED: ReviewedToken = {
  namespace: "shop",
  serviceAccount: "cart",
  podName: "cart-1",
  podUid: "u1",
};

function podOf(
  overrides: { uid?: string; serviceAccount?: string; annotations?: Record<string, string> } = {},
) {
  return {
    metadata: {
      name: "cart-1",
      namespace: "shop",
      uid: overrides.uid ?? "u1",
      annotations: overrides.annotations ?? { "custody.dev/inject": "true" },
    },
    spec: {
      serviceAccountName: overrides.serviceAccount ?? "cart",
      containers: [{ name: "app", image: "app" }],
    },
  };
}

function deliveryWith(options: {
  reviewed?: ReviewedToken | undefined | Error;
  pod?: unknown;
  secret?: StoredSecret | undefined;
  reviews?: { count: number };
}) {
  return new IdentityDelivery({
    reviewer: {
      async review() {
        if (options.reviews !== undefined) options.reviews.count++;
        if (options.reviewed instanceof Error) throw options.reviewed;
        return "reviewed" in options ? options.reviewed : REVIEWED;
      },
    },
    pods: { pod: async () => ("pod" in options ? options.pod : podOf()) },
    lookup: { identity: (namespace, name) => (namespace === "shop" && name === "cart" ? CART : undefined) },
    secretOf: () => ("secret" in options ? options.secret : SECRET),
    logger: pino({ level: "silent" }),
  });
}

describe("identity delivery", () => {
  it("delivers the identity's key, certificate, CA and next key to the pod it may go to", async () => {
    expect(await deliveryWith({}).decide("token")).toEqual({
      ok: true,
      identity: "shop/cart",
      body: { certificate: "CERT", key: "KEY", ca: "CA", nextKey: "NEXT" },
    });
  });

  it.each([
    ["no token", {}, undefined, 401, "token_missing"],
    ["a token the API server refuses", { reviewed: undefined }, "t", 401, "token_invalid"],
    ["a pod that is gone", { pod: undefined }, "t", 403, "pod_not_found"],
    ["a pod of the same name but another uid", { pod: podOf({ uid: "u2" }) }, "t", 403, "pod_mismatch"],
    [
      "a pod now of another service account",
      { pod: podOf({ serviceAccount: "x" }) },
      "t",
      403,
      "pod_mismatch",
    ],
    [
      "a pod that opted out",
      { pod: podOf({ annotations: { "custody.dev/inject": "false" } }) },
      "t",
      403,
      "injection_disabled",
    ],
    [
      "a pod that names an identity that does not exist",
      { pod: podOf({ annotations: { "custody.dev/inject": "true", "custody.dev/identity": "ghost" } }) },
      "t",
      403,
      "identity_not_found",
    ],
    ["an identity not issued yet", { secret: undefined }, "t", 503, "identity_not_issued"],
    [
      "an API server that fails",
      { reviewed: new Error("connection refused") },
      "t",
      503,
      "delivery_unavailable",
    ],
  ] as const)("refuses %s", async (_what, options, token, status, reason) => {
    expect(await deliveryWith(options).decide(token)).toMatchObject({ ok: false, status, reason });
  });

  it("refuses a pod of another service account that names the identity (the admission rule, again)", async () => {
    const delivery = deliveryWith({
      reviewed: { ...REVIEWED, serviceAccount: "other" },
      pod: podOf({
        serviceAccount: "other",
        annotations: { "custody.dev/inject": "true", "custody.dev/identity": "cart" },
      }),
    });
    expect(await delivery.decide("t")).toMatchObject({ ok: false, reason: "service_account_mismatch" });
  });

  it("asks the API server once per token while its answer is cached", async () => {
    const reviews = { count: 0 };
    const delivery = deliveryWith({ reviews });
    await delivery.decide("a");
    await delivery.decide("a");
    await delivery.decide("b");
    expect(reviews.count).toBe(2);
  });

  it("reads bearer tokens strictly, and TokenReview users only when they name a pod", () => {
    expect(bearerToken("Bearer abc.def-ghi_")).toBe("abc.def-ghi_");
    for (const header of [
      undefined,
      "",
      "Basic abc",
      "Bearer ",
      "Bearer a b",
      `Bearer ${"a".repeat(20_000)}`,
    ]) {
      expect(bearerToken(header)).toBeUndefined();
    }
    const extra = {
      "authentication.kubernetes.io/pod-name": ["cart-1"],
      "authentication.kubernetes.io/pod-uid": ["u1"],
    };
    expect(reviewedTokenOf({ username: "system:serviceaccount:shop:cart", extra })).toEqual(REVIEWED);
    expect(reviewedTokenOf({ username: "system:serviceaccount:shop:cart" })).toBeUndefined();
    expect(reviewedTokenOf({ username: "alice", extra })).toBeUndefined();
  });
});
