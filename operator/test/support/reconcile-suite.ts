/**
 * The operator's reconcile behaviour, written once and run against each store: the local
 * directory (operator/test/reconcile-local.test.ts) and Kubernetes through the test API server
 * (e2e/test/operator-kubernetes.test.ts). A harness applies manifests the way a user would
 * (a file in the manifest directory; kubectl apply) and reads back through the store.
 */
import { createPublicKey, X509Certificate } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { mergeRegistryShards, parseRegistry } from "../../../crds/src/registry.js";
import type { Registry } from "../../../crds/src/registry-schema.js";
import { publishedKeyOf } from "../../../pki/src/thumbprint.js";
import type { RunningOperator } from "../../src/operator.js";
import { IDENTITY, POLICY, type ResourceKind, type StoredSecret } from "../../src/store/store.js";

export interface ReconcileHarness {
  readonly operator: () => RunningOperator;
  /** Creates or updates a ServiceIdentity / AccessPolicy as a user would. */
  apply(manifest: Record<string, unknown>): Promise<void>;
  remove(kind: ResourceKind, namespace: string, name: string): Promise<void>;
  /** Reads straight from the backing store (not the operator's cache). */
  secret(namespace: string, name: string): Promise<StoredSecret | undefined>;
  registryTexts(namespace: string): Promise<string[]>;
  status(kind: ResourceKind, namespace: string, name: string): Promise<Record<string, unknown> | undefined>;
  /** Stops the operator abruptly (no orderly shutdown) and starts a new one on the same state. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

const NS = "shop";
/** The operator's own namespace, where every identity's Secret lives. */
const STATE_NS = "custody-system";
const WAIT = { timeout: 20_000, interval: 100 };

export function identity(name: string, spec: Record<string, unknown> = {}, namespace = NS) {
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "ServiceIdentity",
    metadata: {
      name,
      namespace,
      annotations: { "custody.dev/location": `127.0.0.1:${15000 + name.length}` },
    },
    spec: { environment: "prod", ...spec },
  };
}

export function policy(name: string, target: string, path: string, namespace = NS) {
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: { name, namespace },
    spec: {
      target,
      rules: [
        {
          name: "orders",
          operation: { methods: ["POST"], path },
          require: { comeFrom: [{ service: "shop" }] },
          action: "allow",
        },
      ],
    },
  };
}

export function kidOfCertificate(pem: string): string {
  return publishedKeyOf(
    createPublicKey(new X509Certificate(pem).publicKey.export({ format: "pem", type: "spki" })),
  ).kid;
}

export function conditionOf(status: Record<string, unknown> | undefined, type: string) {
  const conditions = (status?.conditions ?? []) as {
    type: string;
    status: string;
    reason: string;
    message: string;
  }[];
  return conditions.find((condition) => condition.type === type);
}

export function describeReconcile(name: string, start: () => Promise<ReconcileHarness>): void {
  describe(`reconcile (${name})`, () => {
    let harness: ReconcileHarness;
    const registry = async (namespace = NS): Promise<Registry | undefined> => {
      const texts = await harness.registryTexts(namespace);
      if (texts.length === 0) return undefined;
      try {
        return mergeRegistryShards(texts.map(parseRegistry));
      } catch {
        return undefined;
      }
    };
    const kidsOf = async (serviceId: string) =>
      ((await registry())?.services.find((service) => service.id === serviceId)?.keys ?? []).map(
        (key) => `${key.status}:${key.kid}`,
      );

    beforeAll(async () => {
      harness = await start();
    });
    afterAll(async () => {
      await harness?.close();
    });

    it("an identity gets its Secret, its key in the registry, and status Ready", async () => {
      await harness.apply(identity("cart", { claims: { team: "checkout" }, scopes: ["cart.write"] }));
      const secret = await waitFor(async () => {
        const found = await harness.secret(STATE_NS, `custody-identity.${NS}.cart`);
        expect(found).toBeDefined();
        return found as StoredSecret;
      });
      expect(secret.type).toBe("kubernetes.io/tls");
      expect(Object.keys(secret.data).sort()).toEqual(["ca.crt", "tls.crt", "tls.key"]);
      // In the operator's namespace, tied to this very identity object by uid; nothing with a key
      // in the workload's namespace, where any pod could mount it.
      expect(secret.labels).toMatchObject({
        "custody.dev/identity": "cart",
        "custody.dev/identity-namespace": NS,
      });
      expect(secret.annotations["custody.dev/identity-uid"]).toEqual(expect.any(String));
      expect(await harness.secret(NS, "custody-identity-cart")).toBeUndefined();
      const certificate = new X509Certificate(secret.data["tls.crt"] ?? "");
      expect(certificate.subjectAltName).toContain("URI:spiffe://custody.local/ns/shop/si/cart");
      const kid = kidOfCertificate(secret.data["tls.crt"] ?? "");

      const status = await waitFor(async () => {
        const found = await harness.status(IDENTITY, NS, "cart");
        expect(conditionOf(found, "Ready")?.status).toBe("True");
        return found;
      });
      expect(conditionOf(status, "CertificateIssued")).toMatchObject({ status: "True", reason: "Issued" });
      expect(conditionOf(status, "Published")).toMatchObject({ status: "True", reason: "Published" });
      expect(status?.keyId).toBe(kid);
      expect(status?.certificate).toMatchObject({
        serialNumber: certificate.serialNumber.toLowerCase().replace(/^(00)+/, ""),
        fingerprintSHA256: certificate.fingerprint256.replaceAll(":", "").toLowerCase(),
      });
      expect(status?.observedGeneration).toBeGreaterThanOrEqual(1);

      const published = await registry();
      const entry = published?.services.find((service) => service.id === "cart.shop");
      expect(entry).toMatchObject({
        environment: "prod",
        claims: { team: "checkout" },
        scopes: ["cart.write"],
        edge: false,
        location: "127.0.0.1:15004",
      });
      expect(entry?.keys.map((key) => [key.status, key.kid])).toEqual([["current", kid]]);
      expect(published?.trustDomain).toBe("custody.local");
      expect(published?.tokenService.jwks.keys.length).toBeGreaterThanOrEqual(2);
    });

    it("a policy is compiled into the registry of its namespace; an invalid update keeps the old one", async () => {
      await harness.apply(identity("shop"));
      await harness.apply(policy("cart-orders", "cart", "/orders/.*"));
      await waitFor(async () => {
        const status = await harness.status(POLICY, NS, "cart-orders");
        expect(conditionOf(status, "Ready")?.status).toBe("True");
      });
      const compiled = (await registry())?.policies.find((entry) => entry.name === "cart-orders");
      expect(compiled).toMatchObject({ namespace: NS, target: "cart.shop", defaultAction: "deny" });
      expect(compiled?.rules[0]?.operation.path).toBe("/orders/.*");

      // A target in another namespace is refused with a message naming the field.
      await harness.apply({
        ...policy("cart-orders", "cart.elsewhere", "/orders/v2/.*"),
      });
      const status = await waitFor(async () => {
        const found = await harness.status(POLICY, NS, "cart-orders");
        expect(conditionOf(found, "Accepted")?.status).toBe("False");
        return found;
      });
      expect(conditionOf(status, "Accepted")?.reason).toBe("InvalidPolicy");
      expect(conditionOf(status, "Accepted")?.message).toMatch(
        /spec\.target: must be a service of the policy's own namespace \(shop\)/,
      );
      expect(conditionOf(status, "Accepted")?.message).toMatch(
        /last valid version \(generation \d+\) stays in force/,
      );
      expect(conditionOf(status, "Ready")?.status).toBe("False");
      const kept = (await registry())?.policies.find((entry) => entry.name === "cart-orders");
      expect(kept?.target).toBe("cart.shop");
      expect(kept?.rules[0]?.operation.path).toBe("/orders/.*");

      // Fixed: the new version replaces the old one.
      await harness.apply(policy("cart-orders", "cart", "/orders/v2/.*"));
      await waitFor(async () => {
        const found = (await registry())?.policies.find((entry) => entry.name === "cart-orders");
        expect(found?.rules[0]?.operation.path).toBe("/orders/v2/.*");
        expect(conditionOf(await harness.status(POLICY, NS, "cart-orders"), "Ready")?.status).toBe("True");
      });
    });

    it("publishes a metadata-only change (the location annotation)", async () => {
      const moved = identity("shop");
      moved.metadata.annotations["custody.dev/location"] = "127.0.0.1:25999";
      await harness.apply(moved);
      await waitFor(async () => {
        const entry = (await registry())?.services.find((service) => service.id === "shop.shop");
        expect(entry?.location).toBe("127.0.0.1:25999");
      });
    });

    it("writes the registry only when it changes", async () => {
      const before = await harness.registryTexts(NS);
      const generation = parseRegistry(before[0] ?? "").generation;
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      await harness.operator().manager.idle();
      harness.operator().manager.resyncAll();
      await new Promise((resolve) => setTimeout(resolve, 500));
      await harness.operator().manager.idle();
      const after = await harness.registryTexts(NS);
      expect(parseRegistry(after[0] ?? "").generation).toBe(generation);
      expect(after).toEqual(before);
    });

    it("rotates with no gap: the next key is published before the Secret switches, the previous stays", async () => {
      // Renewal is due 5 s after issuance (1h certificate, renew 59m55s before expiry).
      await harness.apply(identity("payments", { certificate: { duration: "1h", renewBefore: "59m55s" } }));
      const first = await waitFor(async () => {
        const secret = await harness.secret(STATE_NS, `custody-identity.${NS}.payments`);
        expect(secret?.data["tls.crt"]).toBeDefined();
        const kid = kidOfCertificate(secret?.data["tls.crt"] ?? "");
        // A first certificate is written before it is published (nothing used it yet); the test
        // is about rotations, which start from a published key.
        expect(await kidsOf("payments.shop")).toContain(`current:${kid}`);
        return kid;
      });
      const timeline: { at: number; secretKid: string; registryKids: string[] }[] = [];
      let rotated: string | undefined;
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline) {
        const secret = await harness.secret(STATE_NS, `custody-identity.${NS}.payments`);
        const secretKid = kidOfCertificate(secret?.data["tls.crt"] ?? "");
        const registryKids = await kidsOf("payments.shop");
        timeline.push({ at: Date.now(), secretKid, registryKids });
        if (secretKid !== first) {
          rotated = secretKid;
          break;
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      expect(rotated, "the certificate was not rotated within 30 s").toBeDefined();
      // The new key was in the registry (as next) before any sample showed it in the Secret.
      const firstSeenInRegistry = timeline.find((sample) => sample.registryKids.includes(`next:${rotated}`));
      expect(firstSeenInRegistry).toBeDefined();
      expect(firstSeenInRegistry?.secretKid).toBe(first);
      // After the switch: the new key is current and the old one stays published as previous.
      await waitFor(async () => {
        const kids = await kidsOf("payments.shop");
        expect(kids).toContain(`current:${rotated}`);
        expect(kids).toContain(`previous:${first}`);
      });
      // Never a moment where the Secret's key was unpublished.
      for (const sample of timeline) {
        expect(sample.registryKids.some((kid) => kid.endsWith(`:${sample.secretKid}`))).toBe(true);
      }
      const status = await harness.status(IDENTITY, NS, "payments");
      expect(conditionOf(status, "Ready")?.status).toBe("True");
      // Stop rotating every few seconds for the rest of the suite.
      await harness.apply(identity("payments", { certificate: { duration: "24h" } }));
    });

    it("a restart converges without issuing again", async () => {
      await harness.operator().manager.idle();
      const before = await harness.secret(STATE_NS, `custody-identity.${NS}.cart`);
      const registryBefore = await registry();
      await harness.restart();
      await harness.operator().manager.idle();
      await new Promise((resolve) => setTimeout(resolve, 500));
      await harness.operator().manager.idle();
      const after = await harness.secret(STATE_NS, `custody-identity.${NS}.cart`);
      expect(after?.data["tls.crt"]).toBe(before?.data["tls.crt"]);
      expect(after?.data["tls.key"]).toBe(before?.data["tls.key"]);
      const registryAfter = await registry();
      const cartKeys = (published: Registry | undefined) =>
        published?.services.find((service) => service.id === "cart.shop")?.keys;
      expect(cartKeys(registryAfter)).toEqual(cartKeys(registryBefore));
      expect(conditionOf(await harness.status(IDENTITY, NS, "cart"), "Ready")?.status).toBe("True");
      // The token service kept its signing keys.
      expect(registryAfter?.tokenService.jwks).toEqual(registryBefore?.tokenService.jwks);
    });

    it("deleting an identity removes its Secret and withdraws its keys", async () => {
      await harness.remove(IDENTITY, NS, "cart");
      await waitFor(async () => {
        expect((await registry())?.services.map((service) => service.id)).not.toContain("cart.shop");
        expect(await harness.secret(STATE_NS, `custody-identity.${NS}.cart`)).toBeUndefined();
      });
    });
  });
}

/** vi.waitFor with the suite's patience, returning the callback's value. */
function waitFor<T>(callback: () => Promise<T>): Promise<T> {
  return vi.waitFor(callback, WAIT);
}
