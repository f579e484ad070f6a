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

const SIDECAR_IMAGE = "registry.example/custody-sidecar:1.2.3";
const TOKEN_VOLUME = {
  name: "custody-token",
  projected: { sources: [{ serviceAccountToken: { audience: "custody", path: "token" } }] },
};
const SIDECAR = {
  name: "custody-sidecar",
  image: SIDECAR_IMAGE,
  args: ["sidecar"],
  restartPolicy: "Always",
  env: [{ name: "CUSTODY_APP_PORT", value: "8080" }],
  volumeMounts: [{ name: "custody-token", mountPath: "/var/run/secrets/custody" }],
};

/** A pod as the webhook leaves it (overridable piece by piece). */
function podOf(
  overrides: {
    uid?: string;
    serviceAccount?: string;
    annotations?: Record<string, string>;
    phase?: string;
    spec?: Record<string, unknown>;
  } = {},
) {
  return {
    metadata: {
      name: "cart-1",
      namespace: "shop",
      uid: overrides.uid ?? "u1",
      annotations: overrides.annotations ?? { "custody.dev/inject": "true", "custody.dev/injected": "cart" },
    },
    spec: {
      serviceAccountName: overrides.serviceAccount ?? "cart",
      initContainers: [SIDECAR],
      containers: [{ name: "app", image: "app" }],
      volumes: [TOKEN_VOLUME],
      ...overrides.spec,
    },
    status: { phase: overrides.phase ?? "Running" },
  };
}

/** Unsigned, but shaped like a pod-bound token for Custody's audience (the reviewer is a fake). */
function tokenLike(claims: Record<string, unknown> = {}): string {
  const payload = {
    aud: ["custody"],
    exp: Math.floor(Date.now() / 1000) + 600,
    "kubernetes.io": { namespace: "shop", pod: { name: "cart-1", uid: "u1" } },
    ...claims,
  };
  const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "RS256" })}.${part(payload)}.c2ln`;
}
const T = tokenLike();

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
    sidecarImage: SIDECAR_IMAGE,
    logger: pino({ level: "silent" }),
  });
}

describe("identity delivery", () => {
  it("hands the shared Redis over with the identity, when there is one", async () => {
    const delivery = new IdentityDelivery({
      reviewer: { review: async () => REVIEWED },
      pods: { pod: async () => podOf() },
      lookup: { identity: () => CART },
      secretOf: () => SECRET,
      sidecarImage: SIDECAR_IMAGE,
      redisUrl: "rediss://:pw@redis.custody-system.svc:6380",
      logger: pino({ level: "silent" }),
    });
    expect(await delivery.decide(T)).toMatchObject({
      ok: true,
      body: { redisUrl: "rediss://:pw@redis.custody-system.svc:6380" },
    });
  });

  it("delivers the identity's key, certificate, CA and next key to the pod it may go to", async () => {
    expect(await deliveryWith({}).decide(T)).toEqual({
      ok: true,
      identity: "shop/cart",
      body: { certificate: "CERT", key: "KEY", ca: "CA", nextKey: "NEXT" },
    });
  });

  it.each([
    ["no token", {}, undefined, 401, "token_missing"],
    ["a token the API server refuses", { reviewed: undefined }, T, 401, "token_invalid"],
    ["a pod that is gone", { pod: undefined }, T, 403, "pod_not_found"],
    ["a pod of the same name but another uid", { pod: podOf({ uid: "u2" }) }, T, 403, "pod_mismatch"],
    ["a pod now of another service account", { pod: podOf({ serviceAccount: "x" }) }, T, 403, "pod_mismatch"],
    [
      "a pod that opted out",
      { pod: podOf({ annotations: { "custody.dev/inject": "false" } }) },
      T,
      403,
      "injection_disabled",
    ],
    [
      "a pod that names an identity that does not exist",
      { pod: podOf({ annotations: { "custody.dev/inject": "true", "custody.dev/identity": "ghost" } }) },
      T,
      403,
      "identity_not_found",
    ],
    ["an identity not issued yet", { secret: undefined }, T, 503, "identity_not_issued"],
    [
      "an API server that fails",
      { reviewed: new Error("connection refused") },
      T,
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
        annotations: {
          "custody.dev/inject": "true",
          "custody.dev/identity": "cart",
          "custody.dev/injected": "cart",
        },
      }),
    });
    expect(await delivery.decide(T)).toMatchObject({ ok: false, reason: "service_account_mismatch" });
  });

  it.each([
    ["a finished pod", { pod: podOf({ phase: "Succeeded" }) }, "pod_finished"],
    [
      "a pod the webhook did not inject for this identity",
      { pod: podOf({ annotations: { "custody.dev/inject": "true" } }) },
      "sidecar_mismatch",
    ],
    [
      "a custody-sidecar of another image",
      {
        pod: podOf({
          spec: { initContainers: [{ ...SIDECAR, image: "evil.example/custody-sidecar:1.2.3" }] },
        }),
      },
      "sidecar_mismatch",
    ],
    [
      "a custody-sidecar that runs something else",
      {
        pod: podOf({
          spec: { initContainers: [{ ...SIDECAR, command: ["/nodejs/bin/node", "-e", "steal()"] }] },
        }),
      },
      "sidecar_mismatch",
    ],
    [
      "a custody-sidecar with NODE_OPTIONS",
      {
        pod: podOf({
          spec: {
            initContainers: [{ ...SIDECAR, env: [{ name: "NODE_OPTIONS", value: "--require /x.js" }] }],
          },
        }),
      },
      "sidecar_mismatch",
    ],
    [
      "an app container that mounts the token too",
      {
        pod: podOf({
          spec: {
            containers: [
              { name: "app", image: "app", volumeMounts: [{ name: "custody-token", mountPath: "/t" }] },
            ],
          },
        }),
      },
      "sidecar_mismatch",
    ],
    [
      "an ephemeral container with a token volume of its own",
      {
        pod: podOf({
          spec: {
            volumes: [TOKEN_VOLUME, { ...TOKEN_VOLUME, name: "mine" }],
            ephemeralContainers: [
              { name: "debug", image: "busybox", volumeMounts: [{ name: "mine", mountPath: "/t" }] },
            ],
          },
        }),
      },
      "sidecar_mismatch",
    ],
  ] as const)("refuses %s", async (_what, options, reason) => {
    expect(await deliveryWith(options).decide(T)).toMatchObject({ ok: false, status: 403, reason });
  });

  it("accepts the sidecar image's repository at any tag or digest (pods outlive an upgrade)", async () => {
    const pod = podOf({
      spec: { initContainers: [{ ...SIDECAR, image: "registry.example/custody-sidecar@sha256:ab" }] },
    });
    expect(await deliveryWith({ pod }).decide(T)).toMatchObject({ ok: true });
  });

  it("bounds each client's share of the work in flight", async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const slow = new IdentityDelivery({
      reviewer: {
        async review() {
          await gate;
          return REVIEWED;
        },
      },
      pods: { pod: async () => podOf() },
      lookup: { identity: () => CART },
      secretOf: () => SECRET,
      sidecarImage: SIDECAR_IMAGE,
      logger: pino({ level: "silent" }),
    });
    const pending = Array.from({ length: 8 }, (_, i) =>
      slow.decide(tokenLike({ jti: String(i) }), "10.0.0.9"),
    );
    expect(await slow.decide(tokenLike({ jti: "x" }), "10.0.0.9")).toMatchObject({
      status: 429,
      reason: "too_many_requests",
    });
    const other = slow.decide(tokenLike({ jti: "y" }), "10.0.0.10");
    release();
    expect((await Promise.all(pending)).every((outcome) => outcome.ok)).toBe(true);
    expect(await other).toMatchObject({ ok: true });
  });

  it("asks the API server once per token while its answer is cached", async () => {
    const reviews = { count: 0 };
    const delivery = deliveryWith({ reviews });
    const a = tokenLike({ jti: "a" });
    await delivery.decide(a);
    await delivery.decide(a);
    await delivery.decide(tokenLike({ jti: "b" }));
    expect(reviews.count).toBe(2);
    // A refused token is remembered too, and junk never reaches the API server.
    const refusing = { count: 0 };
    const refusals = deliveryWith({ reviewed: undefined, reviews: refusing });
    await refusals.decide(a);
    await refusals.decide(a);
    for (const junk of [
      "x",
      "a.b.c",
      tokenLike({ aud: "kubernetes" }),
      tokenLike({ exp: 1 }),
      tokenLike({ "kubernetes.io": {} }),
    ]) {
      expect(await refusals.decide(junk)).toMatchObject({ reason: "token_invalid" });
    }
    expect(refusing.count).toBe(1);
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
