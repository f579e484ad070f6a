/**
 * The operator's output is the sidecar's input: real sidecars read the identity Secrets and the
 * registry the local operator writes (volume-shaped directories, ..data swaps, projected shards),
 * get identity tokens from the operator's token service, and enforce the compiled policy. Then the
 * operator rotates the callee's key while calls flow, and no call fails.
 */
import { mkdir, rename, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { stringify } from "yaml";
import type { RunningOperator } from "../../operator/src/operator.js";
import { LocalStore } from "../../operator/src/store/local.js";
import { IDENTITY } from "../../operator/src/store/store.js";
import { startTestOperator } from "../../operator/test/support/operator.js";
import { conditionOf, kidOfCertificate } from "../../operator/test/support/reconcile-suite.js";
import { createCertificateAuthority, writeCertificateAuthority } from "../../pki/src/index.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import { DEFAULT_LIMITS } from "../../sidecar/src/chain/limits.js";
import { type RunningSidecar, startSidecar } from "../../sidecar/src/runtime/sidecar.js";
import { callThrough } from "../support/mesh.js";
import { freePort } from "../support/net.js";

const NS = "shop";
const quiet = pino({ level: process.env.LOG_LEVEL ?? "silent" });

describe("operator → sidecars (local store)", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let manifests: string;
  let store: LocalStore;
  let operator: RunningOperator;
  let app: Server;
  const sidecars: RunningSidecar[] = [];
  const ports = { shop: 0, cart: 0 };

  const identity = (name: string, spec: Record<string, unknown> = {}) => ({
    apiVersion: "custody.dev/v1alpha1",
    kind: "ServiceIdentity",
    metadata: {
      name,
      namespace: NS,
      annotations: { "custody.dev/location": `127.0.0.1:${ports[name as "shop" | "cart"]}` },
    },
    spec: { environment: "prod", scopes: ["orders"], ...spec },
  });
  const apply = async (file: string, documents: Record<string, unknown>[]) => {
    // Written aside and renamed into place, as editors and `kubectl`-like tools do.
    await writeFile(
      join(directory.path, file),
      documents.map((document) => stringify(document)).join("---\n"),
    );
    await rename(join(directory.path, file), join(manifests, file));
    await store.reload();
  };
  const secretText = (name: string) =>
    store.secret({ namespace: "custody-system", name: `custody-identity.${NS}.${name}` })?.data["tls.crt"] ??
    "";
  const sidecarFor = async (name: string, appPort: number) => {
    const sidecar = await startSidecar({
      identityDirectory: store.secretDirectory({
        namespace: "custody-system",
        name: `custody-identity.${NS}.${name}`,
      }),
      registryPath: store.registryDirectory(NS),
      appPort,
      tokenUrl: operator.issuer.tokenUrl,
      outbound: { host: "127.0.0.1", port: 0 },
      inbound: { host: "127.0.0.1", port: ports[name as "shop" | "cart"] },
      admin: { host: "127.0.0.1", port: 0 },
      limits: DEFAULT_LIMITS,
      whenNoPolicy: "deny",
      replay: { redisUrl: undefined, failureMode: "closed" },
      spool: {},
      pollIntervalMs: 100,
      logger: quiet.child({ service: name }),
    });
    sidecars.push(sidecar);
    return sidecar;
  };

  beforeAll(async () => {
    directory = await temporaryDirectory();
    manifests = join(directory.path, "manifests");
    await mkdir(manifests);
    const caDirectory = join(directory.path, "ca");
    await writeCertificateAuthority(
      caDirectory,
      await createCertificateAuthority({ trustDomain: "custody.local" }),
      {
        force: false,
      },
    );
    ports.shop = await freePort();
    ports.cart = await freePort();
    store = new LocalStore({
      manifestsDirectory: manifests,
      stateDirectory: join(directory.path, "state"),
      pollIntervalMs: 100,
      logger: quiet,
    });
    operator = await startTestOperator(store, caDirectory, { propagationDelayMs: 500 });
    await apply("identities.yaml", [identity("shop"), identity("cart")]);
    await apply("policy.yaml", [
      {
        apiVersion: "custody.dev/v1alpha1",
        kind: "AccessPolicy",
        metadata: { name: "cart", namespace: NS },
        spec: {
          target: "cart",
          rules: [
            {
              name: "orders",
              operation: { methods: ["POST"], path: "/orders" },
              require: { comeFrom: [{ service: "shop" }] },
              action: "allow",
            },
          ],
        },
      },
    ]);
    await vi.waitFor(
      () => {
        for (const resource of store.resources(IDENTITY)) {
          expect(conditionOf(resource.object.status as Record<string, unknown>, "Ready")?.status).toBe(
            "True",
          );
        }
      },
      { timeout: 20_000, interval: 100 },
    );
    app = createServer((request, response) => {
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ caller: request.headers["custody-caller"] ?? null }));
    });
    await new Promise<void>((resolve) => app.listen(0, "127.0.0.1", resolve));
    const appPort = (app.address() as { port: number }).port;
    await sidecarFor("cart", appPort);
    await sidecarFor("shop", appPort);
  }, 60_000);
  afterAll(async () => {
    await Promise.all(sidecars.map((sidecar) => sidecar.close(0)));
    app?.close();
    await operator?.close(0);
    await directory?.cleanup();
  });

  it("a call allowed by the compiled policy goes through; one it does not allow is refused", async () => {
    const shop = sidecars[1] as RunningSidecar;
    const allowed = await vi.waitFor(
      async () => {
        const answer = await callThrough(shop, "http://cart.shop/orders", { method: "POST", body: "{}" });
        expect(answer.status, answer.body).toBe(200);
        return answer;
      },
      { timeout: 10_000, interval: 100 },
    );
    expect(JSON.parse(allowed.body)).toEqual({ caller: "shop.shop" });
    const denied = await callThrough(shop, "http://cart.shop/admin", { method: "POST", body: "{}" });
    expect(denied.status).toBe(403);
  });

  it("the operator rotates the callee's key while calls flow: none fails", async () => {
    const shop = sidecars[1] as RunningSidecar;
    const before = kidOfCertificate(secretText("cart"));
    // A new duration is a new certificate profile: the operator rotates at once.
    await apply("identities.yaml", [
      identity("shop"),
      identity("cart", { certificate: { duration: "48h" } }),
    ]);
    const failures: string[] = [];
    let calls = 0;
    const deadline = Date.now() + 20_000;
    while (kidOfCertificate(secretText("cart")) === before && Date.now() < deadline) {
      const answer = await callThrough(shop, "http://cart.shop/orders", { method: "POST", body: "{}" });
      calls++;
      if (answer.status !== 200) failures.push(`${answer.status} ${answer.body}`);
    }
    expect(kidOfCertificate(secretText("cart"))).not.toBe(before);
    // Keep calling while the sidecar picks up the new certificate from the swapped volume.
    for (let index = 0; index < 30; index++) {
      const answer = await callThrough(shop, "http://cart.shop/orders", { method: "POST", body: "{}" });
      calls++;
      if (answer.status !== 200) failures.push(`${answer.status} ${answer.body}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(calls).toBeGreaterThan(30);
    expect(failures).toEqual([]);
  });
});
