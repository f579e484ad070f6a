import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { compilePolicy } from "../../crds/src/compiled-policy.js";
import { parseManifests } from "../../crds/src/manifest.js";
import { mintLink } from "../src/chain/mint.js";
import { normalizeOperation } from "../src/chain/normalize.js";
import { type VerifiedChain, verifyChain } from "../src/chain/verify.js";
import { decide, provenanceOfChain } from "../src/policy/engine.js";
import { PatternCache } from "../src/policy/operation.js";
import {
  makeService,
  TestIssuer,
  type TestService,
  TestTrust,
  TOKEN_SERVICE,
  USER_IDP,
} from "./support/mesh.js";

const services = {
  shop: makeService("shop.shop", { edge: true, claims: { team: "storefront" } }),
  cart: makeService("cart.shop", { claims: { team: "checkout" } }),
  payments: makeService("payments.shop", { claims: { team: "payments", pci: "true" } }),
  ledger: makeService("ledger.shop"),
  audit: makeService("audit.shop"),
  mallory: makeService("mallory.shop"),
};
const idp = new TestIssuer(USER_IDP);
const tokenService = new TestIssuer(TOKEN_SERVICE);
const patterns = new PatternCache();
const trust = new TestTrust().addIssuer(idp).addIssuer(tokenService);
for (const service of Object.values(services)) trust.addService(service);

type Hop = [TestService, string, string]; // caller, METHOD, path — each hop calls the next one

/** The initial token with `scope`: a user's token at an edge origin, else the origin's identity token. */
function initialToken(origin: TestService | undefined, scope: string | undefined): string[] {
  if (scope === undefined || origin === undefined) return [];
  return origin.info.edge
    ? [idp.token({ sub: "marissa", aud: ["shop.shop"], scope })]
    : [tokenService.token({ sub: origin.info.id, aud: "custody", scope })];
}

/** Builds and verifies a real chain: hops[0] is the origin, the last hop calls `target`. */
async function chainTo(
  target: TestService,
  hops: Hop[],
  options: { scope?: string } = {},
): Promise<VerifiedChain> {
  let elements: readonly string[] = initialToken(hops[0]?.[0], options.scope);
  for (const [index, [from, method, path]] of hops.entries()) {
    const next = hops[index + 1]?.[0] ?? target;
    elements = mintLink(from.signer, {
      audience: next.info.id,
      operation: normalizeOperation(method, path),
      previous: elements,
    }).elements;
  }
  const [, method = "GET", path = "/"] = hops.at(-1) ?? [];
  return verifyChain(
    elements.join("~"),
    {
      self: target.info.id,
      operation: normalizeOperation(method, path),
      bodyHash: undefined,
      nowSeconds: Math.floor(Date.now() / 1000),
    },
    trust,
    { claim: async () => true },
  );
}

function policy(spec: Record<string, unknown>, name = "test") {
  return compilePolicy({
    apiVersion: "custody.dev/v1alpha1",
    kind: "AccessPolicy",
    metadata: { name, namespace: "shop" },
    spec: { target: "payments", ...spec },
  });
}

async function decideFor(
  policies: ReturnType<typeof policy>[],
  hops: Hop[],
  options: { scope?: string } = {},
) {
  const chain = await chainTo(services.payments, hops, options);
  const head = chain.head.operation;
  return decide(
    policies,
    { target: services.payments.info, operation: head, from: provenanceOfChain(chain) },
    { service: (id) => trust.service(id), patterns },
  );
}

const allows = async (policies: ReturnType<typeof policy>[], hops: Hop[]) =>
  (await decideFor(policies, hops)).allowed;

const talkPolicy = () => {
  const manifests = parseManifests(
    readFileSync("crds/examples/payments-policy.yaml", "utf8"),
    "payments-policy.yaml",
  );
  return manifests.map((manifest) => compilePolicy(manifest));
};

describe("the talk's Payments policy (slide 73)", () => {
  const checkout: Hop[] = [
    [services.shop, "POST", "/cart/confirm"],
    [services.cart, "POST", "/pay-for-order/12345"],
  ];

  it("allows shop → cart (POST /cart/confirm) → payments with scope shop.customer", async () => {
    const decision = await decideFor(talkPolicy(), checkout, { scope: "openid shop.customer" });
    expect(decision).toMatchObject({ allowed: true, reason: "allowed" });
    expect(decision.decidedBy).toMatchObject({ policy: "shop/payments", rule: "pay-for-order" });
    expect(decision.explanation).toBe("shop/payments rule pay-for-order allowed POST /pay-for-order/12345");
  });

  it("denies a user without the scope, and says which scope is missing", async () => {
    const decision = await decideFor(talkPolicy(), checkout, { scope: "openid" });
    expect(decision).toMatchObject({ allowed: false, reason: "scope_missing" });
    expect(decision.explanation).toContain("initial token lacks scope shop.customer (it has: openid)");
  });

  it("denies a chain without an initial token", async () => {
    expect(await decideFor(talkPolicy(), checkout)).toMatchObject({
      allowed: false,
      reason: "initial_token_required",
    });
  });

  it("denies cart calling payments directly (no shop hop)", async () => {
    const decision = await decideFor(talkPolicy(), [[services.cart, "POST", "/pay-for-order/12345"]], {
      scope: "shop.customer",
    });
    expect(decision).toMatchObject({ allowed: false, reason: "call_path" });
    expect(decision.explanation).toContain(
      "call path payments.shop ← cart.shop (POST /pay-for-order/12345) does not match comeFrom [cart.shop, shop.shop via POST /cart/confirm]",
    );
  });

  it("denies when the middle operation is wrong (shop called cart with GET /cart)", async () => {
    const decision = await decideFor(
      talkPolicy(),
      [
        [services.shop, "GET", "/cart"],
        [services.cart, "POST", "/pay-for-order/12345"],
      ],
      { scope: "shop.customer" },
    );
    expect(decision).toMatchObject({ allowed: false, reason: "call_path" });
  });

  it("denies an extra service upstream of shop (comeFrom matches the whole chain)", async () => {
    const decision = await decideFor(talkPolicy(), [[services.ledger, "GET", "/x"], ...checkout], {
      scope: "shop.customer",
    });
    expect(decision).toMatchObject({ allowed: false, reason: "call_path" });
  });

  it("applies defaultAction deny to an operation no rule matches", async () => {
    const decision = await decideFor(talkPolicy(), [[services.cart, "GET", "/refunds"]]);
    expect(decision).toMatchObject({ allowed: false, reason: "default_action" });
    expect(decision.explanation).toBe("shop/payments: no rule matches GET /refunds; defaultAction deny");
  });

  it("requires the whole path to match (/x/pay-for-order/1 is not /pay-for-order/.*)", async () => {
    const decision = await decideFor(
      talkPolicy(),
      [
        [services.shop, "POST", "/cart/confirm"],
        [services.cart, "POST", "/x/pay-for-order/1"],
      ],
      { scope: "shop.customer" },
    );
    expect(decision.reason).toBe("default_action");
  });
});

describe("rule language", () => {
  const allowIf = (require: Record<string, unknown>, operation: Record<string, unknown> = {}) =>
    policy({ rules: [{ operation, require }] });

  it("exact path: /pay matches only /pay", async () => {
    const exact = policy({ rules: [{ operation: { methods: ["GET"], path: "/pay" } }] });
    expect(await allows([exact], [[services.cart, "GET", "/pay"]])).toBe(true);
    expect(await allows([exact], [[services.cart, "GET", "/pay/1"]])).toBe(false);
    expect(await allows([exact], [[services.cart, "POST", "/pay"]])).toBe(false);
  });

  it("optional hop: matches with and without it", async () => {
    const rule = allowIf({ comeFrom: [{ service: "cart" }, { service: "shop", optional: true }] });
    expect(await allows([rule], [[services.cart, "GET", "/a"]])).toBe(true);
    expect(
      await allows(
        [rule],
        [
          [services.shop, "GET", "/b"],
          [services.cart, "GET", "/a"],
        ],
      ),
    ).toBe(true);
    expect(
      await allows(
        [rule],
        [
          [services.ledger, "GET", "/b"],
          [services.cart, "GET", "/a"],
        ],
      ),
    ).toBe(false);
  });

  it("any service: exactly one hop of any service", async () => {
    const rule = allowIf({ comeFrom: [{ service: "cart" }, { anyService: true }] });
    expect(
      await allows(
        [rule],
        [
          [services.mallory, "GET", "/b"],
          [services.cart, "GET", "/a"],
        ],
      ),
    ).toBe(true);
    expect(await allows([rule], [[services.cart, "GET", "/a"]])).toBe(false);
  });

  it.each([0, 1, 2])("any number of services: %i hops before the origin", async (extra) => {
    const rule = allowIf({
      comeFrom: [{ service: "cart" }, { anyNumberOfServices: true }, { service: "shop" }],
    });
    const middle: Hop[] = [services.ledger, services.audit]
      .slice(0, extra)
      .map((service) => [service, "GET", "/m"]);
    const hops: Hop[] = [[services.shop, "GET", "/s"], ...middle, [services.cart, "GET", "/a"]];
    expect((await decideFor([rule], hops)).allowed).toBe(true);
  });

  it("anyOf with via: the hop must be one of the services AND have made that call", async () => {
    const rule = allowIf({
      comeFrom: [{ anyOf: ["cart", "ledger"], via: { methods: ["POST"], path: "/charge/[0-9]+" } }],
    });
    expect(await allows([rule], [[services.ledger, "POST", "/charge/7"]])).toBe(true);
    expect(await allows([rule], [[services.cart, "POST", "/charge/8"]])).toBe(true);
    expect((await decideFor([rule], [[services.cart, "POST", "/charge/x"]])).reason).toBe("call_path");
    expect((await decideFor([rule], [[services.audit, "POST", "/charge/7"]])).reason).toBe("call_path");
  });

  it("hop claims and callerClaims come from the registry's identity claims", async () => {
    const byClaims = allowIf({ callerClaims: { team: "checkout" } });
    expect(await allows([byClaims], [[services.cart, "GET", "/a"]])).toBe(true);
    expect((await decideFor([byClaims], [[services.ledger, "GET", "/a"]])).reason).toBe("caller_claims");
    const hopClaims = allowIf({
      comeFrom: [{ service: "cart" }, { service: "shop", claims: { team: "storefront" } }],
    });
    expect(
      await allows(
        [hopClaims],
        [
          [services.shop, "GET", "/b"],
          [services.cart, "GET", "/a"],
        ],
      ),
    ).toBe(true);
  });

  it("initial token issuer, audience and claims", async () => {
    const rule = allowIf({
      initialToken: { issuer: USER_IDP, audienceContains: ["shop.shop"], claims: { sub: "marissa" } },
    });
    expect((await decideFor([rule], [[services.shop, "GET", "/a"]], { scope: "x" })).allowed).toBe(true);
    const otherIssuer = allowIf({ initialToken: { issuer: "https://other.example" } });
    expect((await decideFor([otherIssuer], [[services.shop, "GET", "/a"]], { scope: "x" })).reason).toBe(
      "initial_token_issuer",
    );
    const otherAudience = allowIf({ initialToken: { audienceContains: ["admin"] } });
    expect((await decideFor([otherAudience], [[services.shop, "GET", "/a"]], { scope: "x" })).reason).toBe(
      "audience_missing",
    );
    const otherClaim = allowIf({ initialToken: { claims: { sub: "mallory" } } });
    expect((await decideFor([otherClaim], [[services.shop, "GET", "/a"]], { scope: "x" })).reason).toBe(
      "initial_token_claims",
    );
  });

  it("the first rule whose operation matches decides, even when a later one would allow", async () => {
    const ordered = policy({
      rules: [
        { name: "no-admin", operation: { path: "/admin/.*" }, action: "deny" },
        { name: "everything", operation: { path: ".*" } },
      ],
    });
    const decision = await decideFor([ordered], [[services.cart, "GET", "/admin/users"]]);
    expect(decision).toMatchObject({ allowed: false, reason: "denied_by_rule" });
    expect(decision.decidedBy?.rule).toBe("no-admin");
    expect(await allows([ordered], [[services.cart, "GET", "/orders"]])).toBe(true);
  });

  it("every policy that targets the service must allow", async () => {
    const open = policy({ rules: [{ operation: { path: ".*" } }] }, "open");
    const onlyCart = policy({ rules: [{ require: { callerClaims: { team: "checkout" } } }] }, "only-cart");
    expect((await decideFor([open, onlyCart], [[services.cart, "GET", "/a"]])).allowed).toBe(true);
    const denied = await decideFor([open, onlyCart], [[services.ledger, "GET", "/a"]]);
    expect(denied).toMatchObject({ allowed: false, reason: "caller_claims" });
    expect(denied.decidedBy?.policy).toBe("shop/only-cart");
  });

  it("audit mode reports the denial and lets the call through", async () => {
    const audited = policy({ mode: "audit", rules: [{ require: { callerClaims: { team: "checkout" } } }] });
    const decision = await decideFor([audited], [[services.ledger, "GET", "/a"]]);
    expect(decision.allowed).toBe(true);
    expect(decision.audited).toHaveLength(1);
    expect(decision.explanation).toContain("audit mode would have denied");
  });

  it("environments: a policy for staging does not apply in prod; no policy then fails closed", async () => {
    const staging = policy({ environments: ["staging"], rules: [{ operation: { path: ".*" } }] });
    const decision = await decideFor([staging], [[services.cart, "GET", "/a"]]);
    expect(decision).toMatchObject({ allowed: false, reason: "no_policy" });
    expect(decision.explanation).toContain("no AccessPolicy targets payments.shop in environment prod");
  });

  it("defaultAction allow lets unmatched operations through", async () => {
    const permissive = policy({
      defaultAction: "allow",
      rules: [{ operation: { path: "/admin" }, action: "deny" }],
    });
    expect(await allows([permissive], [[services.cart, "GET", "/x"]])).toBe(true);
  });

  it("reports the quota of the allow rule that decided", async () => {
    const limited = policy({ rules: [{ quota: { requestsPerSecond: 5, burst: 10 } }] });
    const decision = await decideFor([limited], [[services.cart, "GET", "/a"]]);
    expect(decision.decidedBy?.quota).toEqual({ requestsPerSecond: 5, burst: 10 });
  });

  it("policies match the normalized operation, as signed", async () => {
    const exact = policy({ rules: [{ operation: { path: "/pay/1" } }] });
    const chain = await chainTo(services.payments, [[services.cart, "GET", "//pay/./1"]]);
    expect(chain.head.op).toBe("GET /pay/1");
    expect(
      decide(
        [exact],
        { target: services.payments.info, operation: chain.head.operation, from: provenanceOfChain(chain) },
        {
          service: (id) => trust.service(id),
          patterns,
        },
      ).allowed,
    ).toBe(true);
  });
});
