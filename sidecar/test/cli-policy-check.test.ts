import { readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { main } from "../../cli/src/main.js";
import { compilePolicy } from "../../crds/src/compiled-policy.js";
import { parseManifests } from "../../crds/src/manifest.js";
import { createCertificateAuthority } from "../../pki/src/index.js";
import { captureIO, temporaryDirectory } from "../../pki/test/support.js";
import { sha256Base64url } from "../src/chain/jws.js";
import type { InputIO } from "../src/cli/options.js";
import { checkPolicy, type PolicyCheckResult } from "../src/cli/policy-check.js";
import { snapshotOf } from "../src/runtime/registry-source.js";
import { makeService, TestIssuer, TOKEN_SERVICE, USER_IDP } from "./support/mesh.js";
import { type RegistryParts, registryDocument, testRegistry } from "./support/registry.js";
import { PAY_OPERATION, talkChain } from "./support/talk.js";

const shop = makeService("shop.shop", { edge: true });
const cart = makeService("cart.shop", { claims: { team: "checkout" } });
const payments = makeService("payments.shop");
const idp = new TestIssuer(USER_IDP);
const tokenService = new TestIssuer(TOKEN_SERVICE);
const BODY = '{"amount":1200}';
const NOW = Math.floor(Date.now() / 1000);
const pay = PAY_OPERATION;

const talkPolicy = () =>
  parseManifests(readFileSync("crds/examples/payments-policy.yaml", "utf8"), "payments-policy.yaml").map(
    (manifest) => compilePolicy(manifest),
  );

/** An audit-mode policy on payments that would deny every caller but billing. */
const auditPolicy = () =>
  compilePolicy({
    apiVersion: "custody.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: { name: "billing-only", namespace: "shop" },
    spec: {
      target: "payments",
      mode: "audit",
      defaultAction: "deny",
      rules: [
        {
          name: "billing",
          operation: { methods: ["POST"], path: "/pay-for-order/.*" },
          require: { callerClaims: { team: "billing" } },
          action: "allow",
        },
      ],
    },
  });

/** shop (a user's token) → cart → payments; the user's scope decides the talk's policy. */
function checkout(scope = "openid shop.customer", path = "/cart/confirm") {
  return talkChain({ idp, shop, cart, payments }, { body: BODY, nowSeconds: NOW, scope, cartPath: path })
    .header;
}

let parts: RegistryParts;
let directory: { path: string; cleanup: () => Promise<void> };
const file = (name: string) => join(directory.path, name);

beforeAll(async () => {
  parts = {
    trustBundle: (await createCertificateAuthority()).certificate.pem,
    tokenService,
    trustedIssuers: [{ issuer: idp }],
    services: [shop, cart, payments],
  };
  directory = await temporaryDirectory();
  const write = (name: string, policies: unknown[]) =>
    writeFile(file(name), JSON.stringify(registryDocument(parts, { policies })));
  await write("registry.json", talkPolicy());
  await write("audit.json", [...talkPolicy(), auditPolicy()]);
  await writeFile(file("body.json"), BODY);
});
afterAll(() => directory.cleanup());

async function check(args: readonly string[], stdin: readonly string[] = []) {
  const out = captureIO();
  const io: InputIO = { ...out.io, stdin: Readable.from(stdin) };
  const code = await main(["policy", "check", ...args], io);
  return { code, stdout: out.stdout(), stderr: out.stderr() };
}

const payArgs = (registry = "registry.json") => [
  "--registry",
  file(registry),
  "--target",
  "payments.shop",
  "--request",
  "POST /pay-for-order/7",
  "--at",
  String(NOW),
];

describe("checkPolicy", () => {
  it("decides through the sidecar's own steps: allowed, naming policy and rule", async () => {
    const snapshot = snapshotOf(testRegistry(parts, { policies: talkPolicy() }));
    const result = await checkPolicy(snapshot, {
      target: "payments.shop",
      operation: pay,
      chain: checkout(),
      body: { sha256: sha256Base64url(BODY) },
      nowSeconds: NOW,
    });
    expect(result).toMatchObject<Partial<PolicyCheckResult>>({
      decision: "allow",
      status: 200,
      reason: "allowed",
      policy: "shop/payments",
      mode: "enforce",
      rule: "pay-for-order",
      caller: "cart.shop",
      callPath: "payments.shop ← cart.shop (POST /pay-for-order/7) ← shop.shop (POST /cart/confirm)",
    });
    expect(result.initialToken).toEqual({
      kind: "user",
      issuer: USER_IDP,
      subject: "marissa",
      scopes: ["openid", "shop.customer"],
    });
    expect(result.unchecked).toEqual([
      "replay (a dry run spends no jti)",
      "the TLS peer (the head's signer must be the one connected)",
    ]);
  });

  it("refuses a target the registry does not know", async () => {
    const snapshot = snapshotOf(testRegistry(parts));
    await expect(
      checkPolicy(snapshot, { target: "vault.shop", operation: pay, chain: checkout(), nowSeconds: NOW }),
    ).rejects.toMatchObject({ code: "unknown_target" });
  });
});

describe("custody policy check", () => {
  it("allows the talk's happy path and names the policy and rule (exit 0)", async () => {
    const { code, stdout, stderr } = await check([
      ...payArgs(),
      "--chain",
      checkout(),
      "--body-file",
      file("body.json"),
    ]);
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(stdout).toContain(
      "decision: allow\nreason:   allowed\npolicy:   shop/payments (enforce), rule pay-for-order\n",
    );
    expect(stdout).toContain(
      "path:     payments.shop ← cart.shop (POST /pay-for-order/7) ← shop.shop (POST /cart/confirm)",
    );
    expect(stdout).toContain(`token:    user token of marissa from ${USER_IDP}, scope openid shop.customer`);
    expect(stdout).toContain("answer:   the sidecar would answer 200");
    expect(stdout).not.toContain("body binding");
  });

  it("denies without the scope, with the policy's reason (exit 1)", async () => {
    const { code, stdout } = await check([...payArgs(), "--chain", checkout("openid")]);
    expect(code).toBe(1);
    expect(stdout).toContain(
      "decision: deny\nreason:   scope_missing\npolicy:   shop/payments (enforce), rule pay-for-order\n",
    );
    expect(stdout).toContain("lacks scope shop.customer");
    expect(stdout).toContain("answer:   the sidecar would answer 403");
  });

  it("denies a call path the policy does not allow: call_path", async () => {
    const { code, stdout } = await check([...payArgs(), "--chain", checkout(undefined, "/cart/peek")]);
    expect(code).toBe(1);
    expect(stdout).toMatch(/^reason: {3}call_path$/m);
  });

  it("denies a chain that does not verify, with the chain's reason and element (exit 1)", async () => {
    const elements = checkout().split("~");
    const [header, , signature] = (elements[1] ?? "").split(".");
    const forged = Buffer.from(JSON.stringify({ iss: "shop.shop" })).toString("base64url");
    elements[1] = `${header}.${forged}.${signature}`;
    const { code, stdout } = await check([...payArgs(), "--chain", elements.join("~")]);
    expect(code).toBe(1);
    expect(stdout).toContain("decision: deny\nreason:   malformed (element e1)\n");
    expect(stdout).toContain("answer:   the sidecar would answer 401");
    expect(stdout).not.toContain("policy:");
  });

  it("checks the body when given one, and says so when it did not", async () => {
    const wrong = sha256Base64url("{}");
    const mismatch = await check([...payArgs(), "--chain", checkout(), "--body-sha256", wrong]);
    expect(mismatch.code).toBe(1);
    expect(mismatch.stdout).toContain("reason:   body_mismatch (element e2)");
    const hex = Buffer.from(sha256Base64url(BODY), "base64url").toString("hex");
    expect((await check([...payArgs(), "--chain", checkout(), "--body-sha256", hex])).code).toBe(0);
    const unchecked = await check([...payArgs(), "--chain", checkout()]);
    expect(unchecked.code).toBe(0);
    expect(unchecked.stdout).toContain(
      "the body binding (the head binds a body; give --body-file or --body-sha256)",
    );
  });

  it("decides as of --at: an expired head is denied", async () => {
    const args = payArgs();
    args[args.length - 1] = String(NOW + 60);
    const { code, stdout } = await check([...args, "--chain", checkout()]);
    expect(code).toBe(1);
    expect(stdout).toContain("reason:   expired (element e2)");
  });

  it("reports audit mode: allowed, with the audit policy that would have denied (exit 0)", async () => {
    const { code, stdout } = await check([...payArgs("audit.json"), "--chain", checkout(), "--json"]);
    expect(code).toBe(0);
    const result = JSON.parse(stdout) as PolicyCheckResult;
    expect(result).toMatchObject({
      decision: "audit",
      status: 200,
      reason: "caller_claims",
      policy: "shop/billing-only",
      mode: "audit",
      rule: "billing",
    });
    expect(result.explanation).toContain("audit mode would have denied");
    expect(result.verdicts.map((verdict) => [verdict.policy, verdict.allowed])).toEqual([
      ["shop/payments", true],
      ["shop/billing-only", false],
    ]);
    const text = await check([...payArgs("audit.json"), "--chain", checkout()]);
    expect(text.stdout).toContain("decision: audit\n");
    expect(text.stdout).toContain("  shop/billing-only (audit): would deny (caller_claims) by rule billing");
  });

  it("reads the chain from stdin with --chain -", async () => {
    const { code, stdout } = await check([...payArgs(), "--chain", "-"], [`Custody-Chain: ${checkout()}\n`]);
    expect(code).toBe(0);
    expect(stdout).toContain("decision: allow");
  });

  it("checks a bearer token at an edge service, under --when-no-policy", async () => {
    const token = idp.token({ sub: "marissa", aud: ["shop.shop"], scope: "openid" });
    const args = ["--registry", file("registry.json"), "--target", "shop.shop", "--request", "GET /cart"];
    const denied = await check([...args, "--bearer", "-"], [`Authorization: Bearer ${token}\n`]);
    expect(denied.code).toBe(1);
    expect(denied.stdout).toContain("decision: deny\nreason:   no_policy\npolicy:   none\n");
    expect(denied.stdout).toContain("request:  GET /cart to shop.shop (bearer token)");
    const allowed = await check([...args, "--bearer", token, "--when-no-policy", "allow"]);
    expect(allowed.code).toBe(0);
    expect(allowed.stdout).toContain(`token:    user token of marissa from ${USER_IDP}, scope openid`);
  });

  it.each([
    [[], /--registry is required\. See `custody policy check --help`/, "stderr"],
    [["--registry", "r"], /--target is required/, "stderr"],
    [["--registry", "r", "--target", "payments.shop"], /--request is required/, "stderr"],
    [
      ["--registry", "r", "--target", "t", "--request", "POST"],
      /--request must be "METHOD \/path\?query"/,
      "stderr",
    ],
    [
      ["--registry", "r", "--target", "t", "--request", "POST /a/%2F"],
      /--request "POST \/a\/%2F": /,
      "stderr",
    ],
    [
      ["--registry", "r", "--target", "t", "--request", "GET /"],
      /--chain VALUE \(or --chain - to read it from stdin\), or --bearer TOKEN/,
      "stderr",
    ],
    [
      ["--registry", "r", "--target", "t", "--request", "GET /", "--chain", "x", "--bearer", "y"],
      /give the request's credential/,
      "stderr",
    ],
    [
      ["--registry", "/nonexistent", "--target", "t", "--request", "GET /", "--chain", "x"],
      /--registry \/nonexistent cannot be used/,
      "stderr",
    ],
    [
      ["--registry", "r", "--target", "t", "--request", "GET /", "--chain", "x", "--when-no-policy", "maybe"],
      /--when-no-policy must be deny or allow/,
      "stderr",
    ],
    [
      ["--registry", "r", "--target", "t", "--request", "GET /", "--chain", "x", "--body-sha256", "abc"],
      /--body-sha256 must be a SHA-256/,
      "stderr",
    ],
  ])("%j exits 2 and says what to do", async (args, message, stream) => {
    const result = await check(args);
    expect(result.code).toBe(2);
    expect(stream === "stdout" ? result.stdout : result.stderr).toMatch(message);
  });

  it("exits 2 for a target not in the registry, listing the services it has", async () => {
    const { code, stderr } = await check([
      "--registry",
      file("registry.json"),
      "--target",
      "payment.shop",
      "--request",
      "GET /",
      "--chain",
      checkout(),
    ]);
    expect(code).toBe(2);
    expect(stderr).toContain("--target payment.shop is not a service of registry generation 7");
    expect(stderr).toContain("(it has: shop.shop, cart.shop, payments.shop)");
  });

  it("exits 2 for an empty chain on stdin", async () => {
    const { code, stderr } = await check([...payArgs(), "--chain", "-"], ["\n"]);
    expect(code).toBe(2);
    expect(stderr).toContain("the Custody-Chain value is empty.");
  });

  it("without a subcommand prints its usage and exits 2", async () => {
    const out = captureIO();
    expect(await main(["policy"], out.io)).toBe(2);
    expect(out.stdout()).toContain("Usage: custody policy <command>");
  });

  it("prints its help and is listed by custody --help", async () => {
    expect((await check(["--help"])).stdout).toContain("Usage: custody policy check --registry PATH");
    const out = captureIO();
    await main(["--help"], out.io);
    expect(out.stdout()).toMatch(/^ {2}policy {2,}/m);
    expect(out.stdout()).toMatch(/^ {2}token {2,}/m);
  });
});
