/**
 * `custody local up` on the shipped example, driven over HTTP only (the demo's scenarios run in
 * local/test/demo.test.ts on the same machinery): offline operation with the operator stopped, a
 * rotation under continuous traffic with no failed request, a new policy file taking effect within
 * seconds (and its removal), a malformed manifest reported and changing nothing, and the seed's
 * `openssl` recipe: a partner's certificate from its own CA exchanged for a JWT and an order placed
 * through the edge service into the mesh.
 */
import { X509Certificate } from "node:crypto";
import { cp, mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { parseAllDocuments, stringify } from "yaml";
import { callInbound, type Reply } from "../../local/src/demo/client.js";
import {
  createDemoIdp,
  type DemoIdp,
  mintUserToken,
  trustedIssuersDocument,
} from "../../local/src/demo/idp.js";
import type { RunningLocal } from "../../local/src/running.js";
import { startLocal } from "../../local/src/up.js";
import { kidOfCertificate } from "../../operator/test/support/reconcile-suite.js";
import { seedCa, seedClient } from "../../pki/test/seed-recipe.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import { requireTool } from "../support/tools.js";

const HAS_OPENSSL = requireTool("openssl");
const EXAMPLE = fileURLToPath(new URL("../../examples/shop", import.meta.url));
const spiffe = (name: string) => `spiffe://custody.local/ns/shop/si/${name}`;

describe("custody local up on examples/shop", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let manifests: string;
  let local: RunningLocal;
  let idp: DemoIdp;
  let ca: string;
  let partner: { cert: string; key: string } | undefined;
  let orders = 0;

  /** Writes a manifest file the way editors do: aside, then renamed into place. */
  const put = async (name: string, text: string) => {
    await writeFile(join(directory.path, name), text);
    await rename(join(directory.path, name), join(manifests, name));
  };
  const checkout = (
    client?: { cert: string; key: string },
    bearer?: string,
    path = "/checkout",
  ): Promise<Reply> =>
    callInbound(
      { port: local.workload("shop.shop").inboundPort, ca, spiffeId: spiffe("shop"), client },
      {
        method: "POST",
        path,
        headers: {
          authorization: `Bearer ${bearer ?? mintUserToken(idp, { subject: "customer-7", scopes: ["shop.customer"] })}`,
        },
        body: JSON.stringify({ orderId: String(++orders), card: "4111 1111 1111 1111" }),
      },
    );
  const paid = (reply: Reply) => reply.status === 200 && reply.body.includes('"paid":true');
  const secretKid = async (name: string) =>
    kidOfCertificate(await readFile(join(local.secretDirectory(`${name}.shop`), "tls.crt"), "utf8"));

  beforeAll(async () => {
    directory = await temporaryDirectory();
    manifests = join(directory.path, "shop");
    await cp(EXAMPLE, manifests, { recursive: true });
    idp = createDemoIdp();
    const trustedIssuers = join(directory.path, "trusted-issuers.json");
    await writeFile(trustedIssuers, JSON.stringify(trustedIssuersDocument(idp)));
    let trustBundlePath: string | undefined;
    if (HAS_OPENSSL) {
      partner = await partnerCertificate(directory.path);
      trustBundlePath = join(directory.path, "pki", "CA", "ca_partner.crt");
      await put(
        "partner.yaml",
        stringify({
          apiVersion: "custody.dev/v1alpha1",
          kind: "ServiceIdentity",
          metadata: { name: "partner", namespace: "shop" },
          // A partner with its own CA: its certificate's subject DN, issued by that CA, maps it here.
          spec: {
            externalSubjects: [
              {
                issuer: "CN=Partner Client CA,O=Partner Ltd,C=GB",
                subject: "CN=partner-client,O=Partner Ltd,C=GB",
              },
            ],
            scopes: ["shop.customer"],
          },
        }),
      );
      // shop also takes orders from the partner itself (its identity JWT, bound to its certificate).
      const policies = parseAllDocuments(await readFile(join(manifests, "policies.yaml"), "utf8")).map(
        (document) => document.toJS() as { metadata: { name: string }; spec: { rules: unknown[] } },
      );
      const shop = policies.find((policy) => policy.metadata.name === "shop");
      shop?.spec.rules.push({
        name: "partner-orders",
        operation: { methods: ["POST"], path: "/partner/checkout" },
        require: { comeFrom: [{ service: "partner" }] },
        action: "allow",
      });
      await put("policies.yaml", policies.map((policy) => stringify(policy)).join("---\n"));
    }
    local = await startLocal({
      directory: manifests,
      stateDirectory: join(directory.path, "state"),
      trustedIssuersPath: trustedIssuers,
      ...(trustBundlePath === undefined ? {} : { trustBundlePath }),
      propagationDelayMs: 1_000,
      progress: () => undefined,
    });
    ca = await readFile(join(local.caDirectory, "ca.crt"), "utf8");
    await vi.waitFor(async () => expect(paid(await checkout())).toBe(true), {
      timeout: 30_000,
      interval: 250,
    });
  }, 90_000);
  afterAll(async () => {
    await local?.close();
    await directory?.cleanup();
  });

  it("keeps serving with the operator and token service stopped", async () => {
    await local.stopOperator();
    for (let index = 0; index < 5; index++) expect(paid(await checkout())).toBe(true);
    await local.startOperator();
  });

  it("rotates payments' key under continuous traffic without a failed request", async () => {
    const before = await secretKid("payments");
    const identities = await readFile(join(manifests, "identities.yaml"), "utf8");
    // A new certificate duration is a new certificate profile: the operator rotates now.
    await put(
      "identities.yaml",
      identities.replace("keyAlgorithm: ECDSA-P256", "keyAlgorithm: ECDSA-P256\n    duration: 48h"),
    );
    const failures: string[] = [];
    let requests = 0;
    const deadline = Date.now() + 30_000;
    while ((await secretKid("payments")) === before && Date.now() < deadline) {
      const reply = await checkout();
      requests++;
      if (!paid(reply)) failures.push(`${reply.status} ${reply.body}`);
    }
    expect(await secretKid("payments")).not.toBe(before);
    // And for a while after the switch, while payments' sidecar reloads its identity.
    for (let index = 0; index < 20; index++) {
      const reply = await checkout();
      requests++;
      if (!paid(reply)) failures.push(`${reply.status} ${reply.body}`);
    }
    expect(requests).toBeGreaterThan(20);
    expect(failures).toEqual([]);
  }, 60_000);

  it("a new AccessPolicy file takes effect within seconds, and so does its removal", async () => {
    // All policies of a target must allow: one that allows nothing freezes payments.
    await put(
      "freeze.yaml",
      stringify({
        apiVersion: "custody.dev/v1alpha1",
        kind: "AccessPolicy",
        metadata: { name: "payments-freeze", namespace: "shop" },
        spec: { target: "payments", defaultAction: "deny", rules: [] },
      }),
    );
    await vi.waitFor(async () => expect((await checkout()).status).toBe(403), {
      timeout: 10_000,
      interval: 200,
    });
    await rm(join(manifests, "freeze.yaml"));
    await vi.waitFor(async () => expect(paid(await checkout())).toBe(true), {
      timeout: 10_000,
      interval: 200,
    });
  }, 30_000);

  it("a malformed manifest is reported and changes nothing", async () => {
    const registryFile = join(local.registryDirectory("shop"), "registry-0.json");
    const generation = () =>
      readFile(registryFile, "utf8").then((text) => (JSON.parse(text) as { generation: number }).generation);
    const before = await generation();
    await put(
      "broken.yaml",
      "apiVersion: custody.dev/v1alpha1\nkind: AccessPolicy\nmetadata: [not, a, mapping\n",
    );
    await vi.waitFor(
      async () => {
        const log = await readFile(join(local.stateDirectory, "logs", "operator.log"), "utf8");
        expect(log).toMatch(/"event":"manifest_skipped"[^\n]*broken\.yaml/);
      },
      { timeout: 10_000, interval: 200 },
    );
    expect(await generation()).toBe(before);
    expect(paid(await checkout())).toBe(true);
    await rm(join(manifests, "broken.yaml"));
  }, 30_000);

  it.skipIf(!HAS_OPENSSL)(
    "the seed's openssl recipe: a partner's certificate → JWT → an order through the edge",
    async () => {
      const client = partner as { cert: string; key: string };
      const token = await exchange(local.tokenUrl, ca, client);
      expect(token.token_type).toBe("Bearer");
      const claims = JSON.parse(
        Buffer.from(token.access_token.split(".")[1] ?? "", "base64url").toString(),
      ) as {
        sub: string;
        scope: string;
      };
      expect(claims).toMatchObject({ sub: "partner.shop", scope: "shop.customer" });
      const reply = await checkout(client, token.access_token, "/partner/checkout");
      expect(reply.status, reply.body).toBe(200);
      expect(paid(reply)).toBe(true);
      // The identity JWT is bound to the partner's certificate: without it, it is refused.
      const stolen = await checkout(undefined, token.access_token, "/partner/checkout");
      expect(stolen.status).toBe(401);
    },
  );
});

/** The seed's recipe, as it is written: the partner's own CA, its client key and CSR, signed by that CA. */
async function partnerCertificate(base: string): Promise<{ cert: string; key: string }> {
  await mkdir(join(base, "pki", "CA"), { recursive: true });
  await seedCa(base, "ca_partner", "/C=GB/O=Partner Ltd/CN=Partner Client CA");
  await seedClient(base, "partner", "ca_partner", "/C=GB/O=Partner Ltd/CN=partner-client");
  const cert = await readFile(join(base, "pki", "partner.crt"), "utf8");
  expect(new X509Certificate(cert).subject).toContain("CN=partner-client");
  return { cert, key: await readFile(join(base, "pki", "partner.key"), "utf8") };
}

/** RFC 8705 client_credentials with the partner's certificate. */
function exchange(tokenUrl: string, ca: string, client: { cert: string; key: string }) {
  return new Promise<{ access_token: string; token_type: string }>((resolve, reject) => {
    const url = new URL(tokenUrl);
    const body = "grant_type=client_credentials";
    const outgoing = httpsRequest(
      {
        host: url.hostname,
        port: Number(url.port),
        path: url.pathname,
        method: "POST",
        ca,
        cert: client.cert,
        key: client.key,
        agent: false,
        headers: {
          "content-type": "application/x-www-form-urlencoded",
          "content-length": Buffer.byteLength(body),
        },
      },
      (response) => {
        let text = "";
        response.on("data", (chunk: Buffer) => {
          text += chunk.toString();
        });
        response.on("end", () =>
          response.statusCode === 200
            ? resolve(JSON.parse(text))
            : reject(new Error(`${response.statusCode} ${text}`)),
        );
      },
    );
    outgoing.on("error", reject);
    outgoing.end(body);
  });
}
