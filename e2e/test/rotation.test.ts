/**
 * Key rotation under traffic, as the operator performs it: publish the next key, then swap the
 * Secret, then demote the old key to previous and finally withdraw it. Calls keep flowing from shop
 * to cart the whole time, while either of them rotates, and none may fail.
 */
import { X509Certificate } from "node:crypto";
import { readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { connect } from "node:tls";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { issueCertificate, privateKeyToPem } from "../../pki/src/index.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import { callThrough, Mesh, type ServiceSpec } from "../support/mesh.js";

const SPECS: ServiceSpec[] = [
  { name: "shop", namespace: "shop", scopes: ["shop.checkout"], edge: true },
  { name: "cart", namespace: "shop" },
];

const CART_POLICY = {
  apiVersion: "custody.dev/v1alpha1",
  kind: "AccessPolicy",
  metadata: { name: "cart", namespace: "shop" },
  spec: {
    target: "cart",
    defaultAction: "deny",
    rules: [
      { name: "from-shop", operation: { path: "/items/.*" }, require: { comeFrom: [{ service: "shop" }] } },
    ],
  },
};

const kidOfHead = (chain: unknown) => {
  const head = String(chain).split("~").at(-1) ?? "";
  return JSON.parse(Buffer.from(head.split(".")[0] ?? "", "base64url").toString()).kid as string;
};

describe("rotation of the caller's key while traffic flows", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let mesh: Mesh;

  beforeAll(async () => {
    directory = await temporaryDirectory();
    mesh = new Mesh(directory.path);
    await mesh.start(SPECS, [CART_POLICY]);
  }, 30_000);
  afterAll(async () => {
    await mesh?.close();
    await directory?.cleanup();
  });

  /** Calls from shop to cart in four lanes, until stopped; every answer that is not 200 is kept. */
  const startTraffic = () => {
    const sidecar = mesh.sidecarOf("shop.shop");
    const traffic = { calls: 0, failures: [] as string[], running: true, done: Promise.resolve() };
    const lane = async (lane: number) => {
      for (let i = 0; traffic.running; i++) {
        const answer = await callThrough(sidecar, `http://cart.shop/items/${lane}-${i}`, {
          method: "POST",
          body: JSON.stringify({ lane, i }),
        });
        traffic.calls++;
        if (answer.status !== 200) traffic.failures.push(`${answer.status} ${answer.body}`);
      }
    };
    traffic.done = Promise.all([0, 1, 2, 3].map(lane)).then(() => undefined);
    return traffic;
  };

  /** The operator's rotation of one service's certificate, with `inUse` telling when the sidecar switched. */
  async function rotate(id: string, inUse: (certificatePem: string, kid: string) => Promise<void>) {
    const service = mesh.service(id);
    const oldCertificate = await readFile(join(service.identityDirectory, "tls.crt"), "utf8");

    // 1. The next certificate's key is published before the Secret changes.
    const next = await issueCertificate(mesh.ca, { id, dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"] });
    const nextKey = Mesh.registryKeyOf(next.certificate.pem, "next");
    mesh.extraKeys.set(id, [nextKey]);
    await mesh.publishRegistry(mesh.specs);
    await mesh.converged();

    // 2. The Secret changes (each file replaced atomically, as a volume update would).
    await writeFile(join(directory.path, "tls.key.new"), privateKeyToPem(next.privateKey));
    await writeFile(join(directory.path, "tls.crt.new"), next.certificate.pem);
    await rename(join(directory.path, "tls.key.new"), join(service.identityDirectory, "tls.key"));
    await rename(join(directory.path, "tls.crt.new"), join(service.identityDirectory, "tls.crt"));
    await inUse(next.certificate.pem, nextKey.kid);

    // 3. The new key is current (publishRegistry derives it from tls.crt); the old one stays as previous.
    mesh.extraKeys.set(id, [Mesh.registryKeyOf(oldCertificate, "previous")]);
    await mesh.publishRegistry(mesh.specs);
    await mesh.converged();

    // 4. The old key is withdrawn.
    mesh.extraKeys.delete(id);
    await mesh.publishRegistry(mesh.specs);
    await mesh.converged();
  }

  async function underTraffic(action: () => Promise<void>) {
    const traffic = startTraffic();
    try {
      await vi.waitFor(() => expect(traffic.calls).toBeGreaterThan(10), { timeout: 10_000 });
      await action();
      const before = traffic.calls;
      await vi.waitFor(() => expect(traffic.calls).toBeGreaterThan(before + 20), { timeout: 10_000 });
    } finally {
      traffic.running = false;
      await traffic.done;
    }
    expect(traffic.failures).toEqual([]);
  }

  it("the caller's key: its links switch to the next kid, and no call fails", async () => {
    const cart = mesh.service("cart.shop");
    await underTraffic(() =>
      rotate("shop.shop", async (_pem, kid) => {
        await vi.waitFor(() => expect(kidOfHead(cart.received.at(-1)?.headers["custody-chain"])).toBe(kid), {
          timeout: 10_000,
          interval: 20,
        });
      }),
    );
  }, 60_000);

  it("the callee's certificate: its inbound port serves the new one, and no call fails", async () => {
    const port = mesh.service("cart.shop").inboundPort;
    await underTraffic(() =>
      rotate("cart.shop", async (pem) => {
        const expected = new X509Certificate(pem).fingerprint256;
        await vi.waitFor(async () => expect(await servedFingerprint(port)).toBe(expected), {
          timeout: 10_000,
          interval: 50,
        });
      }),
    );
  }, 60_000);

  it("never goes back: an older certificate in place of the current one is refused", async () => {
    const service = mesh.service("cart.shop");
    const before = await servedFingerprint(service.inboundPort);
    const writePair = async (nowMs: number) => {
      const issued = await issueCertificate(mesh.ca, {
        id: "cart.shop",
        dnsNames: ["localhost"],
        now: new Date(nowMs),
      });
      await writeFile(join(service.identityDirectory, "tls.key"), privateKeyToPem(issued.privateKey));
      await writeFile(join(service.identityDirectory, "tls.crt"), issued.certificate.pem);
      return issued.certificate.pem;
    };
    const older = await writePair(Date.now() - 3_600_000);
    // Several polls (200 ms) later, the older pair is still not served.
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect(await servedFingerprint(service.inboundPort)).toBe(before);
    expect(new X509Certificate(older).fingerprint256).not.toBe(before);
    // A newer one is taken as ever.
    await mesh.issueIdentity("cart.shop", service.identityDirectory);
    await vi.waitFor(async () => expect(await servedFingerprint(service.inboundPort)).not.toBe(before), {
      timeout: 10_000,
      interval: 50,
    });
  }, 30_000);
});

/** The fingerprint of the certificate a TLS server presents. */
function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port, rejectUnauthorized: false }, () => {
      resolve(socket.getPeerCertificate().fingerprint256);
      socket.destroy();
    });
    socket.on("error", reject);
  });
}
