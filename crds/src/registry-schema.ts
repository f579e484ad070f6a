/**
 * The registry document: what the operator publishes (ConfigMap custody-registry) and every
 * sidecar trusts to verify call chains offline. One document is one *shard*; all shards of one
 * generation together form the registry (see registry.ts). A shard carries the same header
 * (generation, trust domain, trust bundle, token service, trusted issuers) as its siblings and a
 * slice of the services and compiled policies.
 */
import { X509Certificate } from "node:crypto";
import { z } from "zod";
import { issuerSchema } from "./access-policy.js";
import { compiledPolicySchema, serviceIdSchema } from "./compiled-policy.js";
import { jwkKidSchema, jwkSchema, jwksSchema } from "./jwk.js";
import { API_GROUP_VERSION, TRUST_DOMAIN_PATTERN } from "./names.js";
import { claimMap, dnsLabel, reportDuplicates, scopeTokenSchema, timestampSchema } from "./schema-kit.js";
import {
  MAX_AUDIENCE_LENGTH,
  MAX_EDGE_AUDIENCES,
  MAX_EXTERNAL_SUBJECTS,
  MAX_IDENTITY_CLAIMS,
  MAX_IDENTITY_SCOPES,
} from "./service-identity.js";

export const REGISTRY_KIND = "Registry";
export const MAX_REGISTRY_SHARDS = 64;
export const MAX_SERVICES_PER_SHARD = 4096;
export const MAX_POLICIES_PER_SHARD = 4096;
export const MAX_TRUSTED_ISSUERS = 16;
export const MAX_TRUST_BUNDLE_BYTES = 256 * 1024;
export const MAX_TRUST_BUNDLE_CERTIFICATES = 64;
export const KEY_STATUSES = ["current", "next", "previous"] as const;
export type KeyStatus = (typeof KEY_STATUSES)[number];

export const trustBundleSchema = z
  .string()
  .min(1)
  .max(MAX_TRUST_BUNDLE_BYTES, { abort: true })
  .superRefine((pem, ctx) => {
    const problem = trustBundleProblem(pem);
    if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
  });

/**
 * Why `pem` is not a bundle of CA certificates, or undefined. Only CERTIFICATE blocks and blank
 * lines are allowed: a private key pasted into the bundle would otherwise be published cluster-wide.
 */
export function trustBundleProblem(pem: string): string | undefined {
  const blocks: string[] = [];
  let current: string[] | undefined;
  for (const rawLine of pem.split("\n")) {
    const line = rawLine.replace(/\r$/, "").trim();
    if (current === undefined) {
      if (line === "") continue;
      const begin = /^-----BEGIN ([A-Z0-9 ]{1,64})-----$/.exec(line);
      if (begin === null) return "has text outside PEM blocks: only CERTIFICATE blocks are allowed";
      const label = begin[1] ?? "";
      if (label.includes("PRIVATE KEY")) {
        return `contains a private key (${label}): the trust bundle holds CA certificates only`;
      }
      if (label !== "CERTIFICATE") return `contains a ${label} block: only CERTIFICATE blocks are allowed`;
      current = [line];
    } else if (line === "-----END CERTIFICATE-----") {
      current.push(line);
      blocks.push(current.join("\n"));
      current = undefined;
      if (blocks.length > MAX_TRUST_BUNDLE_CERTIFICATES) {
        return `has more than ${MAX_TRUST_BUNDLE_CERTIFICATES} certificates`;
      }
    } else if (/^[A-Za-z0-9+/=]{1,76}$/.test(line)) {
      current.push(line);
    } else {
      return `certificate ${blocks.length + 1} has a line that is not base64`;
    }
  }
  if (current !== undefined) return `certificate ${blocks.length + 1} has no -----END CERTIFICATE----- line`;
  if (blocks.length === 0) return "has no certificates";
  for (const [index, block] of blocks.entries()) {
    let certificate: X509Certificate;
    try {
      certificate = new X509Certificate(block);
    } catch {
      return `certificate ${index + 1} is not a valid X.509 certificate`;
    }
    if (!certificate.ca) {
      return `certificate ${index + 1} (${certificate.subject.replaceAll("\n", ", ")}) is not a CA certificate`;
    }
  }
  return undefined;
}

/** `host:port` of a sidecar's inbound listener: DNS name, IPv4 or [IPv6], port 1–65535. */
export const locationSchema = z
  .string()
  .max(261)
  .regex(/^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):([1-9][0-9]{0,4})$/, {
    error: "must be host:port, e.g. payments.shop.svc:15006 or [fd00::1]:15006",
    abort: true,
  })
  .refine((location) => Number(location.slice(location.lastIndexOf(":") + 1)) <= 65535, {
    error: "port must be at most 65535",
  });

export const serviceKeySchema = z
  .strictObject({
    kid: jwkKidSchema,
    /** current signs now; next is published before rotation; previous stays until it expires. */
    status: z.enum(KEY_STATUSES),
    notAfter: timestampSchema,
    jwk: jwkSchema,
  })
  .superRefine((key, ctx) => {
    if (key.jwk.kid !== undefined && key.jwk.kid !== key.kid) {
      ctx.addIssue({
        code: "custom",
        path: ["jwk", "kid"],
        message: `must equal the entry's kid "${key.kid}"`,
      });
    }
  });

export const registryServiceSchema = z.strictObject({
  id: serviceIdSchema,
  environment: dnsLabel(),
  claims: claimMap({ maxKeys: MAX_IDENTITY_CLAIMS, refuseReserved: true }),
  scopes: z
    .array(scopeTokenSchema)
    .max(MAX_IDENTITY_SCOPES)
    .refine((scopes) => new Set(scopes).size === scopes.length, { error: "must not list a scope twice" }),
  edge: z.boolean(),
  /** For an edge: a user's token must name one of these in `aud` to be admitted (and continued). */
  edgeAudiences: z
    .array(z.string().min(1).max(MAX_AUDIENCE_LENGTH))
    .min(1)
    .max(MAX_EDGE_AUDIENCES)
    .optional(),
  /**
   * Client certificates of other CAs that authenticate as this service, each with the subject DN of
   * the anchor that must have issued it (both normalized): a sidecar checks a bearer identity token's
   * client certificate against these, as the token service did.
   */
  externalSubjects: z
    .array(z.strictObject({ issuer: z.string().min(1).max(1024), subject: z.string().min(1).max(1024) }))
    .min(1)
    .max(MAX_EXTERNAL_SUBJECTS)
    .optional(),
  location: locationSchema,
  keys: z
    .array(serviceKeySchema)
    .min(1)
    .max(KEY_STATUSES.length)
    .superRefine((keys, ctx) => {
      reportDuplicates(
        ctx,
        keys,
        (key) => key.kid,
        (kid, _first, index) => ({ path: [index, "kid"], message: `"${kid}" is used by another key` }),
      );
      reportDuplicates(
        ctx,
        keys,
        (key) => key.status,
        (status, _first, index) => ({ path: [index, "status"], message: `only one key may be ${status}` }),
      );
      if (!keys.some((key) => key.status === "current")) {
        ctx.addIssue({ code: "custom", message: "must include the current key" });
      }
    }),
});

export const trustedIssuerSchema = z.strictObject({
  issuer: issuerSchema,
  /** Inline, so tokens verify offline. */
  jwks: jwksSchema,
  /** When given, a token must be addressed to one of these. */
  audiences: z.array(z.string().min(1).max(256)).min(1).max(16).optional(),
});

export const shardSchema = z
  .strictObject({
    index: z
      .int()
      .min(0)
      .max(MAX_REGISTRY_SHARDS - 1),
    count: z.int().min(1).max(MAX_REGISTRY_SHARDS),
  })
  .refine((shard) => shard.index < shard.count, { error: "index must be less than count", path: ["index"] });

export const registryDocumentSchema = z
  .strictObject({
    apiVersion: z.literal(API_GROUP_VERSION),
    kind: z.literal(REGISTRY_KIND),
    /** Increases with every publication; sidecars never go back to a lower one. */
    generation: z.int().min(0),
    shard: shardSchema,
    trustDomain: z.string().max(255).regex(new RegExp(TRUST_DOMAIN_PATTERN), {
      error: "must be a SPIFFE trust domain such as custody.local",
    }),
    /**
     * PEM: Custody's CA, the only anchor of mesh identities. Workloads trust it, and nothing else, for
     * each other (client and server certificates alike) and for the token service.
     */
    trustBundle: trustBundleSchema,
    /**
     * PEM: partner CAs. They vouch only for the external subjects mapped to them, which matters only
     * where a partner's client certificate is presented: at an edge, with its identity token.
     */
    partnerBundle: trustBundleSchema.optional(),
    tokenService: z.strictObject({ issuer: issuerSchema, jwks: jwksSchema }),
    trustedIssuers: z.array(trustedIssuerSchema).max(MAX_TRUSTED_ISSUERS),
    services: z.array(registryServiceSchema).max(MAX_SERVICES_PER_SHARD),
    policies: z.array(compiledPolicySchema).max(MAX_POLICIES_PER_SHARD),
  })
  .superRefine((document, ctx) => {
    const issuers = new Map<string, string>([[document.tokenService.issuer, "tokenService.issuer"]]);
    document.trustedIssuers.forEach((trusted, index) => {
      const first = issuers.get(trusted.issuer);
      if (first !== undefined) {
        ctx.addIssue({
          code: "custom",
          path: ["trustedIssuers", index, "issuer"],
          message: `repeats ${first}`,
        });
      }
      issuers.set(trusted.issuer, `trustedIssuers[${index}].issuer`);
    });
    reportDuplicateEntries(ctx, "services", document.services, (service) => service.id, "service id");
    reportDuplicateEntries(ctx, "policies", document.policies, policyKey, "policy");
  });

/** One shard as published. */
export type RegistryDocument = z.output<typeof registryDocumentSchema>;
export type RegistryService = RegistryDocument["services"][number];
export type RegistryServiceKey = RegistryService["keys"][number];
export type TrustedIssuer = RegistryDocument["trustedIssuers"][number];
/** The whole registry: every shard of one generation merged. */
export type Registry = Omit<RegistryDocument, "shard">;

/** How policies are identified across shards: namespace/name. */
export function policyKey(policy: { readonly namespace: string; readonly name: string }): string {
  return `${policy.namespace}/${policy.name}`;
}

function reportDuplicateEntries<T>(
  ctx: z.RefinementCtx,
  field: string,
  items: readonly T[],
  keyOf: (item: T) => string,
  what: string,
): void {
  reportDuplicates(ctx, items, keyOf, (key, first, index) => ({
    path: [field, index],
    message: `${what} ${key} is also ${field}[${first}]`,
  }));
}
