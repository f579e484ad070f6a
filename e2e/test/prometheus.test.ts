/**
 * Custody's metrics as Prometheus sees them: `custody local up` on a copy of examples/shop, a few
 * real calls (customers' checkouts, and cart calling payments directly, which payments refuses),
 * every /metrics exposition (operator, token service, each sidecar) through `promtool check
 * metrics`, then a real Prometheus (the Debian package) scraping them all, read through its HTTP
 * API: every target up, and the `custody_*` series there with the labels the code defines.
 */
import { cp, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { callInbound, callOutbound, type Reply } from "../../local/src/demo/client.js";
import {
  createDemoIdp,
  type DemoIdp,
  mintUserToken,
  trustedIssuersDocument,
} from "../../local/src/demo/idp.js";
import type { RunningLocal } from "../../local/src/running.js";
import { startLocal } from "../../local/src/up.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import {
  type ActiveTarget,
  type PrometheusServer,
  type Sample,
  startPrometheus,
} from "../support/prometheus.js";
import { promtoolProblems, requireTool } from "../support/tools.js";

const HAS_PROMETHEUS = requireTool("prometheus");
const HAS_PROMTOOL = requireTool("promtool");
const EXAMPLE = fileURLToPath(new URL("../../examples/shop", import.meta.url));
const SERVICES = ["shop.shop", "cart.shop", "payments.shop"] as const;
/** Checkouts that must succeed after the mesh is ready, and direct calls from cart that must not. */
const CHECKOUTS = 3;
const DIRECT_CALLS = 2;
/** Generous: a slow machine scrapes late, never wrongly. */
const POLL = { timeout: 30_000, interval: 500 } as const;
/** Each test may poll twice for POLL.timeout, and then some. */
const TEST_TIMEOUT_MS = 90_000;

describe.skipIf(!HAS_PROMETHEUS || !HAS_PROMTOOL)("Prometheus scraping a local mesh", () => {
  let directory: { path: string; cleanup: () => Promise<void> } | undefined;
  let local: RunningLocal | undefined;
  let prometheus: PrometheusServer | undefined;
  let idp: DemoIdp;
  let ca: string;
  let orders = 0;

  const mesh = () => local as RunningLocal;
  const server = () => prometheus as PrometheusServer;
  const checkout = (): Promise<Reply> =>
    callInbound(
      {
        port: mesh().workload("shop.shop").inboundPort,
        ca,
        spiffeId: "spiffe://custody.local/ns/shop/si/shop",
      },
      {
        method: "POST",
        path: "/checkout",
        headers: {
          authorization: `Bearer ${mintUserToken(idp, { subject: "customer-7", scopes: ["shop.customer"] })}`,
        },
        body: JSON.stringify({ orderId: String(++orders), card: "4111 1111 1111 1111" }),
      },
    );
  const paid = (reply: Reply) => reply.status === 200 && reply.body.includes('"paid":true');
  /** What a compromised cart app can do: call payments through its own sidecar, with no chain. */
  const cartCallsPaymentsDirectly = () =>
    callOutbound(mesh().workload("cart.shop").appProxyUrl, "http://payments.shop/pay-for-order/1", {
      method: "POST",
      body: JSON.stringify({ orderId: "1" }),
    });
  const hostPort = (url: string) => new URL(url).host;
  const sum = (samples: readonly Sample[]) => samples.reduce((total, sample) => total + sample.value, 0);

  beforeAll(async () => {
    directory = await temporaryDirectory();
    const manifests = join(directory.path, "shop");
    await cp(EXAMPLE, manifests, { recursive: true });
    idp = createDemoIdp();
    const trustedIssuers = join(directory.path, "trusted-issuers.json");
    await writeFile(trustedIssuers, JSON.stringify(trustedIssuersDocument(idp)));
    local = await startLocal({
      directory: manifests,
      stateDirectory: join(directory.path, "state"),
      trustedIssuersPath: trustedIssuers,
      progress: () => undefined,
    });
    ca = await readFile(join(local.caDirectory, "ca.crt"), "utf8");
    // Until every sidecar knows every key and policy: the first checkout that goes through.
    await vi.waitFor(async () => expect(paid(await checkout())).toBe(true), {
      timeout: 60_000,
      interval: 250,
    });
    for (let index = 0; index < CHECKOUTS; index++) {
      const reply = await checkout();
      expect(paid(reply), `${reply.status} ${reply.body}`).toBe(true);
    }
    for (let index = 0; index < DIRECT_CALLS; index++) {
      const reply = await cartCallsPaymentsDirectly();
      expect(reply.status, reply.body).toBe(403);
      expect(reply.body).toContain("scope_missing");
    }
    prometheus = await startPrometheus([
      { name: "custody-operator", targets: [{ address: hostPort(local.operatorAdminUrl) }] },
      { name: "custody-issuer", targets: [{ address: hostPort(local.tokenAdminUrl) }] },
      {
        name: "custody-sidecar",
        targets: SERVICES.map((service) => ({
          address: hostPort(mesh().workload(service).adminUrl),
          labels: { service },
        })),
      },
    ]);
  }, 180_000);

  afterAll(async () => {
    await prometheus?.stop();
    await local?.close();
    await directory?.cleanup();
  }, 60_000);

  it(
    "every /metrics exposition passes promtool check metrics",
    async () => {
      const expositions: [string, string][] = [
        ["operator", `${mesh().operatorAdminUrl}/metrics`],
        ["token service", `${mesh().tokenAdminUrl}/metrics`],
        ...SERVICES.map((service): [string, string] => [
          `sidecar ${service}`,
          `${mesh().workload(service).adminUrl}/metrics`,
        ]),
      ];
      for (const [name, url] of expositions) {
        const response = await fetch(url, { signal: AbortSignal.timeout(10_000) });
        expect(response.status, name).toBe(200);
        const text = await response.text();
        expect(text, name).toContain("custody_");
        expect(promtoolProblems(text), name).toBe("");
      }
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "scrapes every target, and every one is up",
    async () => {
      await vi.waitFor(async () => {
        const { activeTargets } = await server().api<{ activeTargets: ActiveTarget[] }>("targets", {
          state: "active",
        });
        const health = activeTargets.map((target) =>
          [target.scrapePool, target.labels.service, target.health, target.lastError]
            .filter((part) => part !== undefined && part !== "")
            .join(" "),
        );
        expect(health.sort()).toEqual(
          [
            "custody-issuer up",
            "custody-operator up",
            ...SERVICES.map((service) => `custody-sidecar ${service} up`),
          ].sort(),
        );
      }, POLL);
      await vi.waitFor(async () => {
        const up = await server().query("up");
        expect(up).toHaveLength(2 + SERVICES.length);
        for (const sample of up) expect(sample.value, JSON.stringify(sample.metric)).toBe(1);
      }, POLL);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "custody_sidecar_requests_total: direction, decision and reason, split as the calls went",
    async () => {
      const requests = (selector: string) => server().query(`custody_sidecar_requests_total{${selector}}`);
      await vi.waitFor(async () => {
        // payments refused cart's direct calls: cart's identity token lacks the customer's scope.
        const refused = await requests(
          'service="payments.shop",direction="inbound",decision="deny",reason="scope_missing"',
        );
        expect(sum(refused)).toBeGreaterThanOrEqual(DIRECT_CALLS);
        // and let the checkouts through, as did cart and shop.
        for (const service of SERVICES) {
          expect(
            sum(await requests(`service="${service}",direction="inbound",decision="allow"`)),
            service,
          ).toBeGreaterThanOrEqual(CHECKOUTS + 1);
        }
        // cart's sidecar sent every call its app made: the checkouts' and the direct ones.
        expect(
          sum(await requests('service="cart.shop",direction="outbound",decision="allow",reason="sent"')),
        ).toBeGreaterThanOrEqual(CHECKOUTS + 1 + DIRECT_CALLS);
        expect(
          sum(await requests('service="shop.shop",direction="outbound",decision="allow",reason="sent"')),
        ).toBeGreaterThanOrEqual(CHECKOUTS + 1);
      }, POLL);

      const all = await requests("");
      expect(all.length).toBeGreaterThan(0);
      for (const { metric } of all) {
        expect(Object.keys(metric).sort(), JSON.stringify(metric)).toEqual(
          ["__name__", "decision", "direction", "instance", "job", "reason", "service"].sort(),
        );
        expect(metric.job).toBe("custody-sidecar");
        expect(SERVICES as readonly string[]).toContain(metric.service);
        expect(["inbound", "outbound"]).toContain(metric.direction);
        expect(["allow", "deny"]).toContain(metric.decision);
        expect(metric.reason).toMatch(/^[a-z][a-z0-9_]*$/);
      }
      // A call the sidecar sends on is counted as "sent" (the receiver decides, with its reason code);
      // one it refuses itself (none here, once the mesh is ready) with the refusal's code.
      const outbound = all.filter(({ metric }) => metric.direction === "outbound");
      expect(
        outbound.filter(({ metric }) => metric.decision === "allow").map(({ metric }) => metric.reason),
      ).toEqual(["sent", "sent"]);
      // Only payments refused for the scope: the customer's token carries it to shop and cart.
      const deniedForScope = all.filter(
        ({ metric }) => metric.decision === "deny" && metric.reason === "scope_missing",
      );
      expect(deniedForScope.map(({ metric }) => `${metric.service} ${metric.direction}`)).toEqual([
        "payments.shop inbound",
      ]);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "the other sidecar series: decision latency, chain depth, registry generation",
    async () => {
      await vi.waitFor(async () => {
        const depth = await server().query('custody_sidecar_chain_depth_count{service="payments.shop"}');
        expect(sum(depth)).toBeGreaterThanOrEqual(CHECKOUTS + 1);
        // Payments sees the longest chain of a checkout: the customer's token, shop's link, cart's.
        const threeElements = await server().query(
          'custody_sidecar_chain_depth_bucket{service="payments.shop",le="3"} - ignoring(le) custody_sidecar_chain_depth_bucket{service="payments.shop",le="2"}',
        );
        expect(sum(threeElements)).toBeGreaterThanOrEqual(CHECKOUTS + 1);
        for (const service of SERVICES) {
          const latency = await server().query(
            `custody_sidecar_inbound_decision_seconds_count{service="${service}"}`,
          );
          expect(sum(latency), service).toBeGreaterThanOrEqual(CHECKOUTS + 1);
          const generation = await server().query(
            `custody_sidecar_registry_generation{service="${service}"}`,
          );
          expect(generation, service).toHaveLength(1);
          expect(generation[0]?.value, service).toBeGreaterThan(0);
          const reloads = await server().query(
            `custody_sidecar_registry_reloads_total{service="${service}",result="loaded"}`,
          );
          expect(sum(reloads), service).toBeGreaterThan(0);
        }
      }, POLL);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "each sidecar's identity token expires in the future",
    async () => {
      await vi.waitFor(async () => {
        const expiries = await server().query("custody_sidecar_identity_token_expiry_timestamp_seconds");
        const nowSeconds = Date.now() / 1000;
        expect(expiries.map(({ metric }) => metric.service).sort()).toEqual([...SERVICES].sort());
        for (const { metric, value } of expiries) {
          expect(value, metric.service).toBeGreaterThan(nowSeconds);
        }
      }, POLL);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "the operator published a registry and issued the workloads' certificates",
    async () => {
      await vi.waitFor(async () => {
        const generation = await server().query(
          'custody_operator_registry_generation{job="custody-operator"}',
        );
        expect(generation).toHaveLength(1);
        expect(generation[0]?.value).toBeGreaterThan(0);
        const issued = await server().query(
          'custody_operator_certificates_issued_total{job="custody-operator"}',
        );
        expect(sum(issued)).toBeGreaterThanOrEqual(SERVICES.length);
        // Each identity's certificate expiry, in the future (what the expiry alert watches).
        const expiry = await server().query(
          'custody_operator_certificate_expiry_timestamp_seconds{job="custody-operator",namespace="shop"}',
        );
        expect(expiry.length).toBeGreaterThanOrEqual(SERVICES.length);
        for (const series of expiry) expect(series.value).toBeGreaterThan(Date.now() / 1000);
        const reconciles = await server().query(
          'custody_operator_reconciles_total{job="custody-operator",result="ok"}',
        );
        expect(reconciles.map(({ metric }) => metric.controller)).toEqual(
          expect.arrayContaining(["identity", "policy", "registry"]),
        );
      }, POLL);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    "the token service issued the sidecars' identity tokens",
    async () => {
      await vi.waitFor(async () => {
        const issued = await server().query(
          'custody_issuer_tokens_issued_total{job="custody-issuer",result="issued"}',
        );
        expect(issued.map(({ metric }) => metric.grant).sort()).toEqual(
          ["client_credentials", "token_exchange"].sort(),
        );
        const byCertificate = issued.find(({ metric }) => metric.grant === "client_credentials");
        expect(byCertificate?.value).toBeGreaterThanOrEqual(SERVICES.length);
        const identities = await server().query('custody_issuer_identities{job="custody-issuer"}');
        expect(identities[0]?.value).toBeGreaterThanOrEqual(SERVICES.length);
      }, POLL);
    },
    TEST_TIMEOUT_MS,
  );
});
