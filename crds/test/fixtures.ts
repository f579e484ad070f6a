/** Shared test material: example manifests, a test CA, freshly generated public JWKs, registries. */
import { generateKeyPairSync, type JsonWebKey } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { expect } from "vitest";
import { ValidationError, type ValidationIssue } from "../src/errors.js";
import type { PublicJwk } from "../src/jwk.js";
import { parseYamlDocuments } from "../src/manifest.js";
import type { Registry, RegistryDocument, RegistryService } from "../src/registry-schema.js";

export const examplesDirectory = new URL("../examples/", import.meta.url);
export const crdsDirectory = new URL("../", import.meta.url);

export interface ExampleDocument {
  readonly file: string;
  readonly index: number;
  readonly value: unknown;
}

export function exampleDocuments(): ExampleDocument[] {
  return readdirSync(examplesDirectory)
    .filter((file) => file.endsWith(".yaml"))
    .sort()
    .flatMap((file) =>
      parseYamlDocuments(readFileSync(new URL(file, examplesDirectory), "utf8"), file).map(
        (value, index) => ({
          file,
          index,
          value,
        }),
      ),
    );
}

export function exampleText(file: string): string {
  return readFileSync(new URL(file, examplesDirectory), "utf8");
}

/** A self-signed CA certificate (public part only; its key was thrown away). */
export const TEST_CA_PEM = `-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUWv9od1qvw2OkguO4cWSsmNk+OHYwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPQ3VzdG9keSBUZXN0IENBMCAXDTI2MTEyMjA3MzIwOVoYDzIx
MjYxMDI5MDczMjA5WjAaMRgwFgYDVQQDDA9DdXN0b2R5IFRlc3QgQ0EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAQiitVXXF5nCzyYW5qxRt+XPtJmqEaPt6mdGwB4
hvaNOC+/AcU51ICF17ng0gEI9vxlfJcIg6bBo0gh0UEbLHBKo2MwYTAdBgNVHQ4E
FgQUmQmNijeeonkuMXn7+jkV/wTGCJYwHwYDVR0jBBgwFoAUmQmNijeeonkuMXn7
+jkV/wTGCJYwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwCgYIKoZI
zj0EAwIDSAAwRQIgB2bfd0uATQkiQ6EGPT8dFcv1UvckXuMXVFGaZGhD6p0CIQDq
l9VkAf9pJVCi4n4nKjnDgO6pKgOyNVA8imxZMPkNMQ==
-----END CERTIFICATE-----
`;

/** A self-signed certificate with basicConstraints CA:FALSE. */
export const TEST_LEAF_PEM = `-----BEGIN CERTIFICATE-----
MIIBWDCB/6ADAgECAhQKRypnoHt3WB4ocoIG3JWjcsA+5jAKBggqhkjOPQQDAjAT
MREwDwYDVQQDDAhub3QtYS1jYTAgFw0yNjExMjIwNzMyMDlaGA8yMTI2MTAyOTA3
MzIwOVowEzERMA8GA1UEAwwIbm90LWEtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMB
BwNCAAR36/5BWgED1J4bOvHMKKtRmYwnEx1vYhUhatShkadFWgEcpQ7sepRfYMX4
dPrXrwkQHQiCkMZXzJdLUGW7O6uOoy8wLTAMBgNVHRMBAf8EAjAAMB0GA1UdDgQW
BBSt7hSpVJQ4TBtRgIOjG7/nOhx+wTAKBggqhkjOPQQDAgNIADBFAiEA1wOwsKBd
VdJAAsEMT0n5BjHBlPN2C695Md8XckpqapgCIB33GHzVzXjlcjg9nmBrH/vJNSsd
hJ4n3kZR1V2GbeN7
-----END CERTIFICATE-----
`;

export type KeyKind = "EC" | "OKP" | "RSA";

/** A fresh key pair as JWKs: the public one (with alg and kid) and the private one, for negative tests. */
export function generateJwk(kind: KeyKind, kid: string): { publicJwk: PublicJwk; privateJwk: JsonWebKey } {
  const pair =
    kind === "EC"
      ? generateKeyPairSync("ec", { namedCurve: "P-256" })
      : kind === "OKP"
        ? generateKeyPairSync("ed25519")
        : generateKeyPairSync("rsa", { modulusLength: 2048 });
  const alg = kind === "EC" ? "ES256" : kind === "OKP" ? "EdDSA" : "RS256";
  const publicJwk = { ...pair.publicKey.export({ format: "jwk" }), alg, kid } as PublicJwk;
  const privateJwk = { ...pair.privateKey.export({ format: "jwk" }), alg, kid };
  return { publicJwk, privateJwk };
}

export function registryService(id: string, kind: KeyKind = "EC"): RegistryService {
  const kid = `${id.replace(".", "-")}-1`;
  return {
    id,
    environment: "prod",
    claims: { team: id.split(".")[0] ?? "x" },
    scopes: [],
    edge: id.startsWith("shop."),
    location: `${id}.svc:15006`,
    keys: [
      { kid, status: "current", notAfter: "2030-01-01T00:00:00Z", jwk: generateJwk(kind, kid).publicJwk },
    ],
  };
}

/** RSA key generation is slow; one trusted-issuer key serves every fixture. */
const trustedIssuerKey = generateJwk("RSA", "uaa-1").publicJwk;

/** A small valid registry shard (index 0 of 1) holding `services`. */
export function registryDocument(
  services: RegistryService[] = [registryService("shop.shop"), registryService("cart.shop")],
): RegistryDocument {
  return {
    apiVersion: "custody.dev/v1alpha1",
    kind: "Registry",
    generation: 7,
    shard: { index: 0, count: 1 },
    trustDomain: "custody.local",
    trustBundle: TEST_CA_PEM,
    tokenService: {
      issuer: "https://custody-token.custody-system.svc:8443",
      jwks: { keys: [generateJwk("EC", "token-1").publicJwk] },
    },
    trustedIssuers: [
      {
        issuer: "https://uaa.shop.com/oauth/token",
        jwks: { keys: [trustedIssuerKey] },
        audiences: ["shop"],
      },
    ],
    services,
    policies: [],
  };
}

export function withoutShard(document: RegistryDocument): Registry {
  const { shard: _shard, ...registry } = document;
  return registry;
}

/** Runs `action`, expects a ValidationError, and returns its issues. */
export function issuesOf(action: () => unknown, code = "invalid_manifest"): readonly ValidationIssue[] {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(ValidationError);
    if (!(error instanceof ValidationError)) throw error;
    expect(error.code).toBe(code);
    return error.issues;
  }
  throw new Error("expected a ValidationError, but the input was accepted");
}

/** Asserts that some issue has exactly this path and a message matching `message`. */
export function expectIssue(
  issues: readonly ValidationIssue[],
  path: string,
  message: string | RegExp,
): void {
  const atPath = issues.filter((issue) => issue.path === path);
  const matches = atPath.some((issue) =>
    typeof message === "string" ? issue.message === message : message.test(issue.message),
  );
  if (!matches) {
    const listed = issues.map((issue) => `  ${issue.path}: ${issue.message}`).join("\n");
    throw new Error(`expected an issue at ${path} matching ${String(message)}; got:\n${listed}`);
  }
}

/** A deep copy with `edit` applied, for "this one field is wrong" tests. */
export function edited<T>(value: T, edit: (copy: T) => void): T {
  const copy = structuredClone(value);
  edit(copy);
  return copy;
}
