import { describe, expect, it } from "vitest";
import type { AccessPolicyInput } from "../src/access-policy.js";
import { compilePolicy } from "../src/compiled-policy.js";
import { parseManifest, validateAccessPolicy } from "../src/manifest.js";
import { edited, exampleText, expectIssue, issuesOf } from "./fixtures.js";

const talkPolicy = parseManifest(exampleText("payments-policy.yaml"));

type Loose = { spec: { target?: unknown; rules: Record<string, unknown>[] } & Record<string, unknown> };

const base: AccessPolicyInput = {
  apiVersion: "custody.dev/v1alpha1",
  kind: "AccessPolicy",
  metadata: { name: "payments", namespace: "shop" },
  spec: { target: "payments", rules: [{ name: "r", operation: { methods: ["POST"], path: "/x" } }] },
};

function rejects(edit: (policy: Loose) => void) {
  return issuesOf(() => validateAccessPolicy(edited(base as unknown as Loose, edit)));
}

function ruleWith(fields: Record<string, unknown>) {
  return (policy: Loose) => {
    policy.spec.rules = [{ name: "r", ...fields }];
  };
}

describe("the talk's Payments policy (slide 73)", () => {
  it("is expressible and validates", () => {
    expect(talkPolicy.kind).toBe("AccessPolicy");
  });

  it("compiles to the registry form: ids resolved, defaults applied", () => {
    expect(compilePolicy(talkPolicy)).toEqual({
      name: "payments",
      namespace: "shop",
      target: "payments.shop",
      mode: "enforce",
      defaultAction: "deny",
      rules: [
        {
          name: "pay-for-order",
          operation: { methods: ["POST"], path: "/pay-for-order/.*" },
          require: {
            initialToken: { scopesContain: ["shop.customer"] },
            comeFrom: [
              { match: "service", services: ["cart.shop"], optional: false },
              {
                match: "service",
                services: ["shop.shop"],
                via: { methods: ["POST"], path: "/cart/confirm" },
                optional: false,
              },
            ],
          },
          action: "allow",
        },
      ],
    });
  });
});

describe("compilePolicy", () => {
  it("resolves every kind of reference and fills in quota burst and rule labels", () => {
    const compiled = compilePolicy({
      ...base,
      metadata: { name: "p", namespace: "billing", generation: 3 },
      spec: {
        target: "payments.billing",
        mode: "audit",
        environments: ["prod"],
        rules: [
          { operation: { path: "/admin/.*" }, action: "deny" },
          {
            quota: { requestsPerSecond: 5 },
            require: {
              comeFrom: [
                { anyOf: ["cart", "cart.shop", "checkout.other"], claims: { team: "checkout" } },
                { anyService: true, optional: true },
                { anyNumberOfServices: true },
              ],
              callerClaims: { team: "checkout" },
            },
          },
        ],
      },
    });
    expect(compiled).toEqual({
      name: "p",
      namespace: "billing",
      generation: 3,
      target: "payments.billing",
      mode: "audit",
      defaultAction: "deny",
      environments: ["prod"],
      rules: [
        { name: "rules[0]", operation: { path: "/admin/.*" }, require: {}, action: "deny" },
        {
          name: "rules[1]",
          operation: {},
          require: {
            comeFrom: [
              {
                match: "service",
                services: ["cart.billing", "cart.shop", "checkout.other"],
                claims: { team: "checkout" },
                optional: false,
              },
              { match: "anyService", optional: true },
              { match: "anyNumberOfServices" },
            ],
            callerClaims: { team: "checkout" },
          },
          quota: { requestsPerSecond: 5, burst: 5, per: "caller" },
          action: "allow",
        },
      ],
    });
  });

  it("takes the namespace from an option when the manifest has none, and refuses to guess", () => {
    const { namespace: _namespace, ...metadata } = base.metadata;
    const withoutNamespace = { ...base, metadata };
    expect(compilePolicy(withoutNamespace, { namespace: "billing" }).target).toBe("payments.billing");
    expectIssue(
      issuesOf(() => compilePolicy(withoutNamespace)),
      "metadata.namespace",
      /^is required to resolve service names/,
    );
  });

  it("only lets a policy govern services of its own namespace", () => {
    const foreign = edited(base, (copy) => Object.assign(copy.spec, { target: "payments.billing" }));
    const message = "must be a service of the policy's own namespace (shop): write its name, or <name>.shop";
    expectIssue(
      issuesOf(() => validateAccessPolicy(foreign)),
      "spec.target",
      message,
    );
    const { namespace: _namespace, ...metadata } = foreign.metadata;
    expectIssue(
      issuesOf(() => compilePolicy({ ...foreign, metadata }, { namespace: "shop" })),
      "spec.target",
      message,
    );
  });

  it("validates what it compiles", () => {
    expectIssue(
      issuesOf(() => compilePolicy(edited(base, (copy) => Object.assign(copy.spec, { target: "A" })))),
      "spec.target",
      /^must be a ServiceIdentity name \(cart\) or a service id/,
    );
  });
});

describe("AccessPolicy rejections", () => {
  it("hop matcher with two kinds", () => {
    const issues = rejects(ruleWith({ require: { comeFrom: [{ service: "cart", anyService: true }] } }));
    expectIssue(
      issues,
      "spec.rules[0].require.comeFrom[0]",
      "set exactly one of service, anyOf, anyService, anyNumberOfServices (found service and anyService)",
    );
  });

  it("hop matcher with no kind", () => {
    const issues = rejects(ruleWith({ require: { comeFrom: [{ service: "cart" }, { optional: true }] } }));
    expectIssue(
      issues,
      "spec.rules[0].require.comeFrom[1]",
      "set exactly one of service, anyOf, anyService, anyNumberOfServices (found none)",
    );
  });

  it("via / claims on a hop that names no service, optional on anyNumberOfServices", () => {
    const issues = rejects(
      ruleWith({
        require: {
          comeFrom: [
            { anyService: true, via: { methods: ["GET"] } },
            { anyNumberOfServices: true, optional: true },
          ],
        },
      }),
    );
    expectIssue(issues, "spec.rules[0].require.comeFrom[0].via", "applies only to a service or anyOf hop");
    expectIssue(
      issues,
      "spec.rules[0].require.comeFrom[1].optional",
      "anyNumberOfServices already matches zero hops: remove optional",
    );
  });

  it("invalid regex", () => {
    const issues = rejects(ruleWith({ operation: { path: "/pay-for-order/(.*" } }));
    expectIssue(issues, "spec.rules[0].operation.path", "invalid regular expression: missing closing )");
  });

  it("unsafe regex: backreference, lookahead, lookbehind, too long", () => {
    const backreference = rejects(ruleWith({ operation: { path: "(a)\\1" } }));
    expectIssue(
      backreference,
      "spec.rules[0].operation.path",
      /^invalid regular expression: backreferences such as \\1 are not supported/,
    );
    const lookahead = rejects(ruleWith({ operation: { path: "/(?=admin).*" } }));
    expectIssue(
      lookahead,
      "spec.rules[0].operation.path",
      /^invalid regular expression: lookahead \(\?= is not supported/,
    );
    const lookbehind = rejects(ruleWith({ operation: { path: "/x(?<!admin)" } }));
    expectIssue(
      lookbehind,
      "spec.rules[0].operation.path",
      /^invalid regular expression: lookbehind \(\?<! is not supported/,
    );
    const tooLong = rejects(ruleWith({ operation: { path: `/${"a".repeat(600)}` } }));
    expectIssue(tooLong, "spec.rules[0].operation.path", "must be at most 512 characters");
    const inVia = rejects(
      ruleWith({ require: { comeFrom: [{ service: "shop", via: { path: "(x+)\\1" } }] } }),
    );
    expectIssue(inVia, "spec.rules[0].require.comeFrom[0].via.path", /backreferences/);
  });

  it("bad method", () => {
    const issues = rejects(ruleWith({ operation: { methods: ["post", "TRACE"] } }));
    expectIssue(
      issues,
      "spec.rules[0].operation.methods[0]",
      'must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (got "post")',
    );
    expectIssue(issues, "spec.rules[0].operation.methods[1]", /\(got "TRACE"\)$/);
  });

  it("bad service reference", () => {
    const issues = rejects((policy) => {
      policy.spec.target = "payments.shop.svc";
      policy.spec.rules = [{ require: { comeFrom: [{ service: "Cart" }, { anyOf: ["shop", "shop_v2"] }] } }];
    });
    const message =
      /^must be a ServiceIdentity name \(cart\) or a service id <name>\.<namespace> \(cart\.shop\)$/;
    expectIssue(issues, "spec.target", message);
    expectIssue(issues, "spec.rules[0].require.comeFrom[0].service", message);
    expectIssue(issues, "spec.rules[0].require.comeFrom[1].anyOf[1]", message);
  });

  it("require or quota on a deny rule", () => {
    const issues = rejects(ruleWith({ action: "deny", quota: { requestsPerSecond: 1 } }));
    expectIssue(issues, "spec.rules[0].quota", /^a deny rule denies every call its operation matches/);
  });

  it("duplicate rule names, too many rules, unknown fields", () => {
    expectIssue(
      rejects((policy) => {
        policy.spec.rules = [{ name: "a" }, { name: "a" }];
      }),
      "spec.rules[1].name",
      "is also the name of rules[0]",
    );
    expectIssue(
      rejects((policy) => {
        policy.spec.rules = Array.from({ length: 65 }, () => ({}));
      }),
      "spec.rules",
      "must have at most 64 entries",
    );
    expectIssue(rejects(ruleWith({ opertion: {} })), "spec.rules[0].opertion", "unknown field");
  });

  it("mode, defaultAction, quota bounds, initial token fields", () => {
    const issues = rejects((policy) => {
      policy.spec.mode = "permissive";
      policy.spec.defaultAction = "maybe";
      policy.spec.rules = [
        {
          quota: { requestsPerSecond: 0, per: "service" },
          require: { initialToken: { issuer: "ftp://issuer", scopesContain: [] } },
        },
      ];
    });
    expectIssue(issues, "spec.mode", 'must be one of enforce, audit (got "permissive")');
    expectIssue(issues, "spec.defaultAction", 'must be one of allow, deny (got "maybe")');
    expectIssue(issues, "spec.rules[0].quota.requestsPerSecond", "must be at least 1");
    expectIssue(issues, "spec.rules[0].quota.per", 'must be "caller" (got "service")');
    expectIssue(issues, "spec.rules[0].require.initialToken.issuer", "must be an http or https URL");
    expectIssue(issues, "spec.rules[0].require.initialToken.scopesContain", "must not be empty");
  });

  it("reserved names in identity claim matchers", () => {
    const issues = rejects(ruleWith({ require: { callerClaims: { env: "prod" } } }));
    expectIssue(issues, "spec.rules[0].require.callerClaims.env", /^is a reserved claim name/);
  });
});
