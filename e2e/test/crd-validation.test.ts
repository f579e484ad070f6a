/**
 * The CRDs as the real kube-apiserver enforces them: every CEL rule (`x-kubernetes-validations`)
 * of crds/*.yaml refuses one object written to break exactly it, with the rule's message, and the
 * table below is checked to cover every rule the CRDs carry; the examples and a server-side apply
 * are accepted. Custody's own validation (zod) says the same earlier (crds/test), but only the API
 * server stands between a `kubectl apply` and etcd.
 */
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { type Cluster, startCluster } from "../support/cluster.js";
import { requireControlPlane } from "../support/control-plane.js";
import { requireTool } from "../support/tools.js";

const HAS_CLUSTER = requireTool("kubectl") && requireControlPlane();
const RESERVED = "reserved claim names";
const LONG_NAME = "x".repeat(64);

interface Rule {
  readonly file: string;
  readonly path: string;
  readonly message: string;
}

/** Every CEL rule of a CRD's schema, with where it sits (`.spec.rules[]`, …). */
function rulesOf(file: string, crd: Record<string, unknown>): Rule[] {
  const rules: Rule[] = [];
  const walk = (schema: unknown, path: string) => {
    if (typeof schema !== "object" || schema === null) return;
    const node = schema as Record<string, unknown>;
    for (const validation of (node["x-kubernetes-validations"] as { message: string }[] | undefined) ?? []) {
      rules.push({ file, path, message: validation.message });
    }
    for (const [key, child] of Object.entries((node.properties as Record<string, unknown>) ?? {})) {
      walk(child, `${path}.${key}`);
    }
    if (node.items !== undefined) walk(node.items, `${path}[]`);
  };
  const versions = (crd.spec as { versions: { schema: { openAPIV3Schema: unknown } }[] }).versions;
  walk(versions[0]?.schema.openAPIV3Schema, "");
  return rules;
}

const identity = (spec: Record<string, unknown>, name = "broken") => ({
  apiVersion: "custody.dev/v1alpha1",
  kind: "ServiceIdentity",
  metadata: { name, namespace: "shop" },
  spec,
});
const policy = (rules: unknown[]) => ({
  apiVersion: "custody.dev/v1alpha1",
  kind: "AccessPolicy",
  metadata: { name: "broken", namespace: "shop" },
  spec: { target: "payments", rules },
});
const allowRule = (require: Record<string, unknown>) => ({
  name: "r",
  operation: { path: "/x" },
  require,
  action: "allow",
});

/** One object per rule: [CRD file, rule path, message, the object that breaks only that rule]. */
const BROKEN: readonly [file: string, path: string, message: string, object: unknown][] = [
  [
    "custody.dev_serviceidentities.yaml",
    "",
    "a ServiceIdentity name must be a DNS label",
    identity({}, "cart.v2"),
  ],
  [
    "custody.dev_serviceidentities.yaml",
    ".spec",
    "edgeAudiences applies only to an edge",
    identity({ edge: false, edgeAudiences: ["https://api.shop.example"] }),
  ],
  [
    "custody.dev_serviceidentities.yaml",
    ".spec.claims",
    "claim names must be at most 63 characters",
    identity({ claims: { [LONG_NAME]: "v" } }),
  ],
  ["custody.dev_serviceidentities.yaml", ".spec.claims", RESERVED, identity({ claims: { sub: "admin" } })],
  [
    "custody.dev_serviceidentities.yaml",
    ".spec.certificate",
    "renewBefore must be shorter than duration",
    identity({ certificate: { duration: "2h", renewBefore: "2h" } }),
  ],
  [
    "custody.dev_serviceidentities.yaml",
    ".spec.certificate.duration",
    "must be between 1h and 2160h",
    identity({ certificate: { duration: "30m" } }),
  ],
  [
    "custody.dev_serviceidentities.yaml",
    ".spec.certificate.renewBefore",
    "must be between 5m and 2159h",
    identity({ certificate: { duration: "2h", renewBefore: "1m" } }),
  ],
  [
    "custody.dev_serviceidentities.yaml",
    ".spec.tokenTTL",
    "must be between 1m and 24h",
    identity({ tokenTTL: "48h" }),
  ],
  [
    "custody.dev_accesspolicies.yaml",
    ".spec.rules",
    "rule names must be unique",
    policy([
      { name: "same", operation: { path: "/a" }, action: "allow" },
      { name: "same", operation: { path: "/b" }, action: "allow" },
    ]),
  ],
  [
    "custody.dev_accesspolicies.yaml",
    ".spec.rules[]",
    "a deny rule takes no require or quota",
    policy([
      { name: "d", operation: { path: "/x" }, require: { callerClaims: { team: "a" } }, action: "deny" },
    ]),
  ],
  [
    "custody.dev_accesspolicies.yaml",
    ".spec.rules[].require.initialToken.claims",
    "claim names must be at most 63 characters",
    policy([allowRule({ initialToken: { claims: { [LONG_NAME]: "v" } } })]),
  ],
  [
    "custody.dev_accesspolicies.yaml",
    ".spec.rules[].require.comeFrom[]",
    "via and claims apply only to a service or anyOf hop",
    policy([allowRule({ comeFrom: [{ anyService: true, via: { path: "/y" } }] })]),
  ],
  [
    "custody.dev_accesspolicies.yaml",
    ".spec.rules[].require.comeFrom[]",
    "anyNumberOfServices already matches zero hops: remove optional",
    policy([allowRule({ comeFrom: [{ anyNumberOfServices: true, optional: true }] })]),
  ],
  [
    "custody.dev_accesspolicies.yaml",
    ".spec.rules[].require.comeFrom[].claims",
    "claim names must be at most 63 characters",
    policy([allowRule({ comeFrom: [{ service: "cart", claims: { [LONG_NAME]: "v" } }] })]),
  ],
  [
    "custody.dev_accesspolicies.yaml",
    ".spec.rules[].require.comeFrom[].claims",
    RESERVED,
    policy([allowRule({ comeFrom: [{ service: "cart", claims: { iss: "x" } }] })]),
  ],
  [
    "custody.dev_accesspolicies.yaml",
    ".spec.rules[].require.callerClaims",
    "claim names must be at most 63 characters",
    policy([allowRule({ callerClaims: { [LONG_NAME]: "v" } })]),
  ],
  [
    "custody.dev_accesspolicies.yaml",
    ".spec.rules[].require.callerClaims",
    RESERVED,
    policy([allowRule({ callerClaims: { scope: "x" } })]),
  ],
];

describe.skipIf(!HAS_CLUSTER)("the CRDs on the real API server", () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await startCluster();
  }, 120_000);
  afterAll(async () => {
    await cluster?.close();
  });

  it("the table covers every CEL rule of the CRDs", async () => {
    const rules: Rule[] = [];
    for (const file of ["custody.dev_serviceidentities.yaml", "custody.dev_accesspolicies.yaml"]) {
      rules.push(...rulesOf(file, parse(await readFile(`crds/${file}`, "utf8")) as Record<string, unknown>));
    }
    for (const rule of rules) {
      const covering = BROKEN.filter(
        ([file, path, message]) =>
          file === rule.file && path === rule.path && rule.message.startsWith(message),
      );
      expect(covering, `${rule.file} ${rule.path}: ${rule.message}`).toHaveLength(1);
    }
    expect(BROKEN).toHaveLength(rules.length);
  });

  for (const [file, path, message, object] of BROKEN) {
    it(`refuses what breaks ${file.replace(/^custody\.dev_|\.yaml$/g, "")} ${path || "(root)"}: ${message}`, async () => {
      const refused = await cluster.kubectl(["create", "-f", "-"], stringify(object));
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toContain(message);
      expect(refused.stderr).toMatch(/is invalid/);
    });
  }

  it("accepts the examples, with kubectl apply and with a server-side apply", async () => {
    const applied = await cluster.kubectl(["apply", "-f", "crds/examples/"]);
    expect(applied.code, applied.stderr).toBe(0);
    const serverSide = await cluster.kubectl([
      "apply",
      "--server-side",
      "--field-manager=custody-test",
      "-f",
      "crds/examples/payments-policy.yaml",
    ]);
    expect(serverSide.code, serverSide.stderr).toBe(0);
    const defaulted = JSON.parse(
      (await cluster.kubectl(["get", "si", "cart", "-n", "shop", "-o", "json"])).stdout,
    ) as { spec: Record<string, unknown> };
    // The schema's defaults are applied by the API server, as zod applies them.
    expect(defaulted.spec).toMatchObject({ edge: false, tokenTTL: expect.any(String) });
  });
});
