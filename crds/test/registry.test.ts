import { describe, expect, it } from "vitest";
import { compilePolicy } from "../src/compiled-policy.js";
import { parseManifest } from "../src/manifest.js";
import {
  loadRegistry,
  mergeRegistryShards,
  parseRegistry,
  RegistryError,
  registryConfigMapName,
  registryFileName,
  serializeRegistryDocument,
  splitRegistry,
} from "../src/registry.js";
import type { RegistryDocument } from "../src/registry-schema.js";
import {
  edited,
  exampleText,
  expectIssue,
  generateJwk,
  issuesOf,
  registryDocument,
  registryService,
  TEST_CA_PEM,
  TEST_LEAF_PEM,
  withoutShard,
} from "./fixtures.js";

const talkPolicy = compilePolicy(parseManifest(exampleText("payments-policy.yaml")));

function registryIssues(document: unknown) {
  return issuesOf(() => parseRegistry(JSON.stringify(document)), "invalid_registry");
}

function registryError(action: () => unknown): RegistryError {
  try {
    action();
  } catch (error) {
    if (error instanceof RegistryError) return error;
    throw error;
  }
  throw new Error("expected a RegistryError");
}

describe("parseRegistry", () => {
  it("accepts a shard with EC, Ed25519 and RSA keys and compiled policies", () => {
    const document = registryDocument([
      registryService("shop.shop", "EC"),
      registryService("cart.shop", "OKP"),
      registryService("payments.shop", "RSA"),
    ]);
    document.policies = [talkPolicy];
    expect(parseRegistry(serializeRegistryDocument(document))).toEqual(document);
  });

  it("refuses malformed JSON with a typed error", () => {
    const issues = issuesOf(
      () => parseRegistry('{"apiVersion": "custody.dev/v1alpha1",'),
      "invalid_registry",
    );
    expectIssue(issues, "", /^is not valid JSON: /);
  });

  it("refuses a private JWK member", () => {
    const { privateJwk } = generateJwk("EC", "leak");
    const document = edited(registryDocument(), (copy) => {
      const [service] = copy.services;
      const [key] = service?.keys ?? [];
      if (key === undefined) throw new Error("fixture has no key");
      Object.assign(key, { kid: "leak", jwk: privateJwk });
    });
    expectIssue(
      registryIssues(document),
      "services[0].keys[0].jwk.d",
      /^is a private key member: the registry publishes public keys only/,
    );
    const rsa = generateJwk("RSA", "uaa-1").privateJwk;
    const issues = registryIssues(
      edited(registryDocument(), (copy) => {
        Object.assign(copy.trustedIssuers[0] ?? {}, { jwks: { keys: [rsa] } });
      }),
    );
    for (const member of ["d", "p", "q", "dp", "dq", "qi"]) {
      expectIssue(issues, `trustedIssuers[0].jwks.keys[0].${member}`, /^is a private key member/);
    }
  });

  it("refuses key types and algorithms outside the allow-list", () => {
    const document = registryDocument();
    const [key] = document.tokenService.jwks.keys;
    const issues = registryIssues(
      edited(document, (copy) => {
        copy.tokenService.jwks.keys = [
          { kty: "oct", k: "c2VjcmV0", alg: "HS256", kid: "hmac" } as never,
          { ...key, alg: "RS256" } as never,
          { ...key, crv: "P-384", kid: "b" } as never,
          { ...key, alg: "none", kid: "c" } as never,
        ];
      }),
    );
    expectIssue(
      issues,
      "tokenService.jwks.keys[0].kty",
      "must be EC (P-256, ES256), OKP (Ed25519, EdDSA) or RSA (RS256)",
    );
    expectIssue(issues, "tokenService.jwks.keys[1].alg", 'must be "ES256" (got "RS256")');
    expectIssue(issues, "tokenService.jwks.keys[2].crv", 'must be "P-256" (got "P-384")');
    expectIssue(issues, "tokenService.jwks.keys[3].alg", 'must be "ES256" (got "none")');
  });

  it("refuses a point that is not on the curve, a short RSA modulus, unknown JWK members", () => {
    const ec = generateJwk("EC", "k").publicJwk;
    const other = generateJwk("EC", "k").publicJwk;
    const rsa = generateJwk("RSA", "r").publicJwk;
    const issues = registryIssues(
      edited(registryDocument(), (copy) => {
        copy.tokenService.jwks.keys = [
          { ...ec, y: other.kty === "EC" ? other.y : "" } as never,
          { ...rsa, n: rsa.kty === "RSA" ? rsa.n.slice(0, 300) : "" } as never,
          { ...other, kid: "x", x5c: ["MII..."] } as never,
        ];
      }),
    );
    expectIssue(issues, "tokenService.jwks.keys[0]", "is not a point on the P-256 curve");
    expectIssue(issues, "tokenService.jwks.keys[1].n", "must be an RSA modulus of at least 2048 bits");
    expectIssue(issues, "tokenService.jwks.keys[2].x5c", "unknown field");
  });

  it("refuses a trust bundle with a private key or a non-CA certificate", () => {
    const privateKey = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
    expectIssue(
      registryIssues(
        edited(registryDocument(), (copy) => Object.assign(copy, { trustBundle: TEST_CA_PEM + privateKey })),
      ),
      "trustBundle",
      "contains a private key (PRIVATE KEY): the trust bundle holds CA certificates only",
    );
    expectIssue(
      registryIssues(
        edited(registryDocument(), (copy) => Object.assign(copy, { trustBundle: TEST_LEAF_PEM })),
      ),
      "trustBundle",
      /^certificate 1 \(CN=not-a-ca\) is not a CA certificate$/,
    );
  });

  it("refuses duplicate service ids, a shard without a current key, and a bad location", () => {
    const issues = registryIssues(
      edited(registryDocument([registryService("cart.shop"), registryService("cart.shop")]), (copy) => {
        const [first] = copy.services;
        if (first === undefined) throw new Error("fixture");
        first.location = "cart:99999";
        const [key] = first.keys;
        if (key !== undefined) key.status = "next";
      }),
    );
    expectIssue(issues, "services[1]", "service id cart.shop is also services[0]");
    expectIssue(issues, "services[0].keys", "must include the current key");
    expectIssue(issues, "services[0].location", "port must be at most 65535");
  });

  it("re-checks compiled policies (regexes included): a sidecar accepts nothing unsafe", () => {
    const unsafe = edited(talkPolicy, (copy) => {
      const [rule] = copy.rules;
      if (rule !== undefined) rule.operation.path = "(a)\\1";
    });
    expectIssue(
      registryIssues(edited(registryDocument(), (copy) => Object.assign(copy, { policies: [unsafe] }))),
      "policies[0].rules[0].operation.path",
      /backreferences/,
    );
  });

  it("refuses a shard over the ConfigMap limit", () => {
    expectIssue(
      issuesOf(() => parseRegistry(" ".repeat(1024 * 1024 + 1)), "invalid_registry"),
      "",
      /bytes; a shard is at most/,
    );
  });
});

describe("sharding", () => {
  function manyServices(count: number) {
    return Array.from({ length: count }, (_, index) =>
      registryService(`svc-${String(index).padStart(3, "0")}.shop`),
    );
  }

  /** Bytes of a shard holding nothing, plus room for about `entries` services. */
  function shardBytes(entries: number): number {
    const empty = Buffer.byteLength(serializeRegistryDocument(registryDocument([])));
    const one = Buffer.byteLength(JSON.stringify(registryService("svc-000.shop")));
    return empty + entries * (one + 1) + 16;
  }

  it("splits to fit, and merging gives the registry back", () => {
    const registry = withoutShard(registryDocument(manyServices(40)));
    registry.policies = [talkPolicy];
    const maxBytes = shardBytes(4);
    const shards = splitRegistry(registry, maxBytes);
    expect(shards.length).toBeGreaterThanOrEqual(10);
    for (const [index, shard] of shards.entries()) {
      const text = serializeRegistryDocument(shard);
      expect(Buffer.byteLength(text)).toBeLessThanOrEqual(maxBytes);
      expect(shard.shard).toEqual({ index, count: shards.length });
      expect(parseRegistry(text)).toEqual(shard);
    }
    const merged = loadRegistry([...shards].reverse().map(serializeRegistryDocument));
    expect(merged).toEqual(registry);
  });

  it("keeps a small registry in one shard", () => {
    const registry = withoutShard(registryDocument());
    expect(splitRegistry(registry)).toHaveLength(1);
  });

  it("refuses an entry that cannot fit in any shard", () => {
    const error = registryError(() => splitRegistry(withoutShard(registryDocument()), shardBytes(0)));
    expect(error.code).toBe("registry_entry_too_large");
    expect(error.message).toMatch(/^service cart\.shop alone needs \d+ bytes in a shard, more than \d+$/);
    const header = registryError(() => splitRegistry(withoutShard(registryDocument()), 100));
    expect(header.code).toBe("registry_too_large");
  });

  it("refuses mixed generations", () => {
    const shards = splitRegistry(withoutShard(registryDocument(manyServices(10))), shardBytes(4));
    const [first, second] = shards;
    if (first === undefined || second === undefined) throw new Error("expected two shards");
    const error = registryError(() =>
      mergeRegistryShards([first, { ...second, generation: 8 }, ...shards.slice(2)]),
    );
    expect(error.code).toBe("registry_mixed_generations");
    expect(error.message).toMatch(/^registry shards come from different generations \(7, 8\)/);
  });

  it("refuses missing and repeated shards, and shards that disagree", () => {
    const shards = splitRegistry(withoutShard(registryDocument(manyServices(10))), shardBytes(4));
    const [first, second] = shards;
    if (first === undefined || second === undefined) throw new Error("expected two shards");
    expect(registryError(() => mergeRegistryShards(shards.slice(1))).code).toBe("registry_missing_shard");
    expect(registryError(() => mergeRegistryShards([...shards, first])).code).toBe(
      "registry_duplicate_shard",
    );
    expect(registryError(() => mergeRegistryShards([])).code).toBe("registry_missing_shard");
    const otherBundle: RegistryDocument = { ...second, trustDomain: "other.local" };
    expect(registryError(() => mergeRegistryShards([first, otherBundle, ...shards.slice(2)])).code).toBe(
      "registry_shard_mismatch",
    );
  });

  it("refuses a service id that appears in two shards", () => {
    const cart = registryService("cart.shop");
    const base = registryDocument([cart]);
    const shard0: RegistryDocument = { ...base, shard: { index: 0, count: 2 } };
    const shard1: RegistryDocument = { ...base, shard: { index: 1, count: 2 } };
    const error = registryError(() => mergeRegistryShards([shard0, shard1]));
    expect(error.code).toBe("registry_duplicate_service");
    expect(error.message).toBe("service cart.shop appears in more than one registry shard");
  });

  it("names ConfigMaps and files per shard", () => {
    expect([0, 1, 2].map(registryConfigMapName)).toEqual([
      "custody-registry",
      "custody-registry-1",
      "custody-registry-2",
    ]);
    expect(registryFileName(3)).toBe("registry-3.json");
  });
});
