/** Registry documents for tests: the services and issuers of support/mesh.ts, published as the operator would. */
import type { KeyObject } from "node:crypto";
import { loadRegistry } from "../../../crds/src/registry.js";
import type { Registry } from "../../../crds/src/registry-schema.js";
import { algorithmForKey } from "../../src/chain/jws.js";
import type { TestIssuer, TestService } from "./mesh.js";

const DAY = 86_400_000;

export function jwk(key: KeyObject, kid: string) {
  return { ...key.export({ format: "jwk" }), alg: algorithmForKey(key), kid };
}

export function serviceEntry(service: TestService, notAfter = new Date(Date.now() + DAY).toISOString()) {
  return {
    id: service.info.id,
    environment: service.info.environment,
    claims: service.info.claims,
    scopes: [],
    edge: service.info.edge,
    location: `${service.info.id.split(".")[0]}.shop.svc:15006`,
    keys: [
      {
        kid: service.signer.kid,
        status: "current",
        notAfter,
        jwk: jwk(service.publicKey, service.signer.kid),
      },
    ],
  };
}

export interface RegistryParts {
  readonly trustBundle: string;
  readonly tokenService: TestIssuer;
  readonly trustedIssuers?: readonly {
    readonly issuer: TestIssuer;
    readonly audiences?: readonly string[];
  }[];
  readonly services: readonly TestService[];
}

/** One shard's JSON document; `overrides` replace top-level fields. */
export function registryDocument(
  parts: RegistryParts,
  overrides: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "Registry",
    generation: 7,
    shard: { index: 0, count: 1 },
    trustDomain: "custody.local",
    trustBundle: parts.trustBundle,
    tokenService: {
      issuer: parts.tokenService.issuer,
      jwks: { keys: [jwk(parts.tokenService.pair.publicKey, parts.tokenService.kid)] },
    },
    trustedIssuers: (parts.trustedIssuers ?? []).map(({ issuer, audiences }) => ({
      issuer: issuer.issuer,
      jwks: { keys: [jwk(issuer.pair.publicKey, issuer.kid)] },
      ...(audiences === undefined ? {} : { audiences }),
    })),
    services: parts.services.map((service) => serviceEntry(service)),
    policies: [],
    ...overrides,
  };
}

export function testRegistry(parts: RegistryParts, overrides: Record<string, unknown> = {}): Registry {
  return loadRegistry([JSON.stringify(registryDocument(parts, overrides))]);
}
