/**
 * The demo's pieces that need no running system: the table, reading outcomes, the expectations
 * (checked against the sidecar's own reason codes and policy engine), the identity provider's
 * tokens, the working copy's policy edit, and the example manifests themselves.
 */
import { execFile } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { compilePolicy } from "../../crds/src/compiled-policy.js";
import { parseManifests } from "../../crds/src/manifest.js";
import { issuerKeySetOf, loadTrustedIssuers } from "../../operator/src/issuer/trusted-issuers.js";
import { verifyJwt } from "../../pki/src/jwt.js";
import { CHAIN_REASONS } from "../../sidecar/src/chain/errors.js";
import { mintLink } from "../../sidecar/src/chain/mint.js";
import { normalizeOperation } from "../../sidecar/src/chain/normalize.js";
import type { InitialToken } from "../../sidecar/src/chain/verify.js";
import { decide, POLICY_REASONS, type Provenance } from "../../sidecar/src/policy/engine.js";
import { PatternCache } from "../../sidecar/src/policy/operation.js";
import { renderCapturedChain } from "../src/demo/chain-view.js";
import { SCENARIO_IDS, SCENARIOS, scenarioSpec } from "../src/demo/expectations.js";
import {
  CUSTOMER_SCOPE,
  createDemoIdp,
  DEMO_AUDIENCE,
  DEMO_ISSUER,
  mintUserToken,
  trustedIssuersDocument,
} from "../src/demo/idp.js";
import {
  auditOutcome,
  capturedCallOf,
  checkoutOutcome,
  matches,
  reasonOf,
  refusalOutcome,
} from "../src/demo/outcomes.js";
import { renderReport, verdictLine } from "../src/demo/report.js";
import { PLAY_ORDER, type ScenarioResult, untilAborted } from "../src/demo/scenarios.js";
import { cell, renderTable } from "../src/demo/table.js";
import { copyExample, findExampleDirectory, setPolicyMode } from "../src/demo/workspace.js";
import { readWorkloads } from "../src/workloads.js";

const EXAMPLE = new URL("../../examples/shop/", import.meta.url);
const exampleFile = (name: string) => readFile(new URL(name, EXAMPLE), "utf8");

const scratch: string[] = [];
async function temporary(): Promise<string> {
  const path = await mkdtemp(join(tmpdir(), "custody-demo-test-"));
  scratch.push(path);
  return path;
}
afterEach(async () => {
  for (const path of scratch.splice(0)) await rm(path, { recursive: true, force: true });
});

describe("table", () => {
  it("aligns columns and underlines the header", () => {
    const text = renderTable(
      ["", "scenario", "got"],
      [
        ["ok", "a", "200 paid"],
        ["FAIL", "longer scenario", "401 replayed"],
      ],
    );
    expect(text.split("\n")).toEqual([
      "      scenario         got",
      "----  ---------------  ------------",
      "ok    a                200 paid",
      "FAIL  longer scenario  401 replayed",
    ]);
  });

  it("keeps every row on one line and bounds cells", () => {
    expect(cell("a\nb\u001b[31m")).toBe("a b [31m");
    expect(cell("x".repeat(100), 10)).toBe(`${"x".repeat(9)}…`);
    expect(renderTable(["h"], [["line\nbreak"]]).split("\n")).toHaveLength(3);
  });
});

describe("outcomes", () => {
  const paymentsAnswer = {
    step: "payments",
    paid: true,
    orderId: "1001",
    last4: "4242",
    caller: "cart.shop",
    decision: "allow policy=shop/payments rule=pay-for-order",
    chain: "e0~e1~e2",
    body: '{"sealedCard":{}}',
  };
  const happy = {
    step: "shop",
    downstream: { step: "cart", cartCouldRead: false, downstream: paymentsAnswer },
  };

  it("finds a refusal however deep the apps wrapped it", () => {
    const refusal = { error: "forbidden", reason: "scope_missing" };
    expect(reasonOf(refusal)).toBe("scope_missing");
    expect(reasonOf({ step: "shop", downstream: { step: "cart", downstream: refusal } })).toBe(
      "scope_missing",
    );
    expect(reasonOf({ step: "cart", error: "invalid_order_id" })).toBe("invalid_order_id");
    expect(refusalOutcome(403, JSON.stringify(refusal))).toEqual({ status: 403, reason: "scope_missing" });
    expect(refusalOutcome(502, "<html>")).toEqual({ status: 502, reason: "no_reason_given" });
    expect(refusalOutcome(200, JSON.stringify(paymentsAnswer))).toEqual({ status: 200, reason: "paid" });
  });

  it("calls the checkout paid only with the right card, unread by cart", () => {
    expect(checkoutOutcome(200, JSON.stringify(happy), "4242")).toEqual({ status: 200, reason: "paid" });
    expect(checkoutOutcome(200, JSON.stringify(happy), "0002").reason).toBe("wrong_card");
    const readByCart = structuredClone(happy);
    readByCart.downstream.cartCouldRead = true;
    expect(checkoutOutcome(200, JSON.stringify(readByCart), "4242").reason).toBe("cart_could_read");
    const unpaid = structuredClone(happy);
    unpaid.downstream.downstream.paid = false;
    expect(checkoutOutcome(200, JSON.stringify(unpaid), "4242").reason).toBe("not_paid");
    expect(
      checkoutOutcome(401, '{"error":"unauthenticated","reason":"initial_token_invalid"}', "4242"),
    ).toEqual({
      status: 401,
      reason: "initial_token_invalid",
    });
  });

  it("recognizes an audit-mode pass by the sidecar's decision header", () => {
    const audited = {
      ...paymentsAnswer,
      decision: "allow policy=shop/payments rule=pay-for-order audited=deny",
    };
    expect(auditOutcome(200, JSON.stringify(audited))).toEqual({ status: 200, reason: "audited=deny" });
    expect(auditOutcome(200, JSON.stringify(paymentsAnswer)).reason).toBe(
      `decision: ${paymentsAnswer.decision}`,
    );
    expect(auditOutcome(403, '{"error":"forbidden","reason":"scope_missing"}')).toEqual({
      status: 403,
      reason: "scope_missing",
    });
  });

  it("captures the chain and body payments received, with the customer's token back in place of its seal", () => {
    expect(capturedCallOf(JSON.stringify(happy), 1000, "token")).toEqual({
      chain: "token~e1~e2",
      body: '{"sealedCard":{}}',
      path: "/pay-for-order/1001",
      decision: paymentsAnswer.decision,
      caller: "cart.shop",
      receivedAt: 1000,
    });
    expect(capturedCallOf('{"error":"forbidden"}', 1000, "token")).toBeUndefined();
  });

  it("compares status and reason", () => {
    expect(matches({ status: 401, reason: "replayed" }, { status: 401, reason: "replayed" })).toBe(true);
    expect(matches({ status: 401, reason: "replayed" }, { status: 401, reason: "expired" })).toBe(false);
    expect(matches({ status: 401, reason: "replayed" }, { status: 403, reason: "replayed" })).toBe(false);
  });
});

describe("expectations", () => {
  it("uses the sidecar's own reason codes, with the status that goes with each", () => {
    for (const { id, expected } of SCENARIOS) {
      if (expected.status === 401) expect(CHAIN_REASONS, id).toContain(expected.reason);
      else if (expected.status === 403) expect(POLICY_REASONS, id).toContain(expected.reason);
      else expect(["paid", "audited=deny"], id).toContain(expected.reason);
    }
  });

  it("plays every scenario exactly once", () => {
    expect([...PLAY_ORDER].sort()).toEqual([...SCENARIO_IDS].sort());
    expect(SCENARIOS.map((spec) => spec.id)).toEqual([...SCENARIO_IDS]);
    // The replay must come right after the happy path, while the head link is still unexpired.
    expect(PLAY_ORDER.slice(0, 2)).toEqual(["checkout", "replay"]);
  });

  it("agrees with the policy engine on the example's policies", async () => {
    const manifests = parseManifests(await exampleFile("policies.yaml"), "policies.yaml");
    const policies = manifests.map((manifest) => compilePolicy(manifest));
    const payments = { id: "payments.shop", environment: "dev", claims: {}, edge: false };
    const token = (issuer: string, subject: string, scopes: string[]): InitialToken => ({
      index: 0,
      text: "",
      hash: "",
      issuer,
      subject,
      kind: issuer === DEMO_ISSUER ? "user" : "identity",
      actor: undefined,
      scopes,
      audiences: [],
      expiresAt: 0,
      claims: {},
    });
    const pay = normalizeOperation("POST", "/pay-for-order/1");
    const decideFor = (from: Provenance, mode: "enforce" | "audit" = "enforce") =>
      decide(
        policies.map((policy) => (policy.name === "payments" ? { ...policy, mode } : policy)),
        { target: payments, operation: pay, from },
        { service: () => undefined, patterns: new PatternCache() },
      );
    const viaShop: Provenance = {
      caller: "cart.shop",
      hops: [
        { service: "cart.shop", operation: pay },
        { service: "shop.shop", operation: normalizeOperation("POST", "/cart/confirm") },
      ],
      initial: token(DEMO_ISSUER, "customer-42", [CUSTOMER_SCOPE]),
    };
    expect(decideFor(viaShop).allowed).toBe(true);
    // cart alone: its own identity token (scope cart.write) starts the chain.
    const cartAlone: Provenance = {
      caller: "cart.shop",
      hops: [{ service: "cart.shop", operation: pay }],
      initial: token("https://issuer.custody.local", "cart.shop", ["cart.write"]),
    };
    const denied = decideFor(cartAlone);
    expect({ allowed: denied.allowed, reason: denied.reason }).toEqual({
      allowed: false,
      reason: scenarioSpec("cart-direct").expected.reason,
    });
    const audited = decideFor(cartAlone, "audit");
    expect(audited.allowed).toBe(true);
    expect(audited.audited.map((verdict) => verdict.reason)).toEqual(["scope_missing"]);
  });
});

describe("identity provider", () => {
  it("signs customers' tokens that verify against the trusted-issuers file it writes", async () => {
    const idp = createDemoIdp();
    const path = join(await temporary(), "trusted-issuers.json");
    await writeFile(path, JSON.stringify(trustedIssuersDocument(idp)));
    const issuers = await loadTrustedIssuers(path);
    expect(issuers.map((entry) => [entry.issuer, entry.audiences])).toEqual([[DEMO_ISSUER, [DEMO_AUDIENCE]]]);
    const keys = issuerKeySetOf(issuers);
    const now = Math.floor(Date.now() / 1000);
    const verified = verifyJwt(
      mintUserToken(idp, { subject: "customer-42", scopes: [CUSTOMER_SCOPE, "x"] }),
      {
        keyFor: (issuer, kid) => keys.keyFor(issuer, kid),
        algorithms: ["ES256"],
        nowSeconds: now,
        skewSeconds: 5,
      },
    );
    expect(verified).toMatchObject({
      issuer: DEMO_ISSUER,
      subject: "customer-42",
      audiences: [DEMO_AUDIENCE],
      scopes: [CUSTOMER_SCOPE, "x"],
    });
    expect(verified.expiresAt - now).toBeGreaterThan(60);
    // Another run's key is another key: a token from it does not verify.
    expect(() =>
      verifyJwt(mintUserToken(createDemoIdp(), { subject: "c", scopes: [] }), {
        keyFor: (issuer, kid) => keys.keyFor(issuer, kid),
        algorithms: ["ES256"],
        nowSeconds: now,
        skewSeconds: 5,
      }),
    ).toThrow();
  });

  it("is the issuer shop's policy names", async () => {
    const shop = parseManifests(await exampleFile("policies.yaml")).find(
      (manifest) => manifest.kind === "AccessPolicy" && manifest.metadata.name === "shop",
    );
    expect(JSON.stringify(shop)).toContain(`"issuer":"${DEMO_ISSUER}"`);
  });
});

describe("working copy", () => {
  it("finds examples/shop and switches one policy's mode in a copy, never in the original", async () => {
    const example = await findExampleDirectory();
    const original = await exampleFile("policies.yaml");
    const copy = join(await temporary(), "shop");
    await copyExample(example, copy);
    await setPolicyMode(copy, { name: "payments", mode: "audit" });
    const modes = () =>
      readFile(join(copy, "policies.yaml"), "utf8").then((text) =>
        parseManifests(text).map((manifest) =>
          manifest.kind === "AccessPolicy" ? `${manifest.metadata.name}:${manifest.spec.mode}` : "",
        ),
      );
    expect(await modes()).toEqual(["shop:enforce", "cart:enforce", "payments:audit"]);
    expect(await readFile(join(copy, "policies.yaml"), "utf8")).toContain("# The talk's policy for payments");
    expect(await readdir(copy)).not.toContain(".policies.yaml.tmp");
    await setPolicyMode(copy, { name: "payments", mode: "enforce" });
    expect(await modes()).toEqual(["shop:enforce", "cart:enforce", "payments:enforce"]);
    expect(await exampleFile("policies.yaml")).toBe(original);
    await expect(setPolicyMode(copy, { name: "nope", mode: "audit" })).rejects.toMatchObject({
      code: "demo_policy_not_found",
    });
  });

  it("refuses to find an example that is not there", async () => {
    const elsewhere = new URL(`file://${await temporary()}/a/b/c/module.js`).href;
    await expect(findExampleDirectory(elsewhere)).rejects.toMatchObject({ code: "demo_example_missing" });
  });
});

describe("examples/shop", () => {
  it("holds valid identities and policies, and one LocalWorkload per identity", async () => {
    const identities = parseManifests(await exampleFile("identities.yaml"));
    expect(identities.map((manifest) => manifest.metadata.name)).toEqual(["shop", "cart", "payments"]);
    const { workloads, problems } = await readWorkloads(new URL(".", EXAMPLE).pathname);
    expect(problems).toEqual([]);
    expect(workloads.map((workload) => workload.serviceId).sort()).toEqual([
      "cart.shop",
      "payments.shop",
      "shop.shop",
    ]);
  });

  it("has apps that are valid JavaScript", async () => {
    const apps = (await readdir(new URL("apps/", EXAMPLE))).filter((name) => name.endsWith(".mjs"));
    expect(apps.sort()).toEqual(["cart.mjs", "mesh.mjs", "payments.mjs", "shop.mjs"]);
    for (const app of apps) {
      await promisify(execFile)(process.execPath, ["--check", new URL(`apps/${app}`, EXAMPLE).pathname]);
    }
  });
});

describe("report", () => {
  const result = (matched: boolean): ScenarioResult => ({
    spec: scenarioSpec("replay"),
    got: { status: 401, reason: matched ? "replayed" : "expired" },
    matched,
  });

  it("says PASS only when every outcome matched", () => {
    expect(verdictLine([result(true), result(true)])).toBe("PASS: 2 of 2 outcomes as expected");
    expect(verdictLine([result(true), result(false)])).toBe("FAIL: 1 of 2 outcomes as expected");
    expect(verdictLine([])).toMatch(/^FAIL/);
    const text = renderReport(
      [
        result(false),
        { spec: scenarioSpec("link-removed"), got: undefined, matched: false, note: "no chain" },
      ],
      undefined,
      undefined,
    );
    expect(text).toContain("FAIL  replayed call");
    expect(text).toContain("401 expired");
    expect(text).toContain("(not played)  no chain");
  });

  it("draws the captured chain as custody token inspect does", async () => {
    const key = () => generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    const idp = createDemoIdp();
    const user = mintUserToken(idp, { subject: "customer-42", scopes: [CUSTOMER_SCOPE] });
    const body = '{"sealedCard":{}}';
    const first = mintLink(
      { serviceId: "shop.shop", kid: "shop-1", privateKey: key() },
      {
        audience: "cart.shop",
        operation: normalizeOperation("POST", "/cart/confirm"),
        body: "{}",
        previous: [user],
      },
    );
    const chain = mintLink(
      { serviceId: "cart.shop", kid: "cart-1", privateKey: key() },
      {
        audience: "payments.shop",
        operation: normalizeOperation("POST", "/pay-for-order/1001"),
        body,
        previous: first.elements,
      },
    ).header;
    const tree = await renderCapturedChain(
      { chain, body, path: "/pay-for-order/1001", decision: undefined, caller: undefined, receivedAt: 0 },
      "payments.shop",
      undefined,
    );
    expect(tree).toContain("e0 initial token");
    expect(tree).toContain("e1 shop.shop → cart.shop  POST /cart/confirm");
    expect(tree).toContain("e2 cart.shop → payments.shop  POST /pay-for-order/1001");
  });
});

describe("untilAborted", () => {
  it("stops waiting at abort and swallows what the work does later", async () => {
    const controller = new AbortController();
    let fail: (error: Error) => void = () => undefined;
    const work = new Promise<number>((_, reject) => {
      fail = reject;
    });
    const waiting = untilAborted(work, controller.signal);
    controller.abort();
    await expect(waiting).rejects.toMatchObject({ code: "demo_aborted" });
    fail(new Error("later"));
    await expect(untilAborted(Promise.resolve(7), new AbortController().signal)).resolves.toBe(7);
  });
});
