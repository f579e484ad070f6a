/**
 * AccessPolicy (custody.dev/v1alpha1, namespaced): which inbound calls one target service accepts,
 * judged on the whole call chain. Every policy that targets a service must allow a call; inside a
 * policy the first rule whose `operation` matches decides; no matching rule → `defaultAction`.
 */
import { z } from "zod";
import { API_GROUP_VERSION, SERVICE_REF_PATTERN } from "./names.js";
import { MAX_PATH_PATTERN_LENGTH, pathPatternProblem } from "./path-pattern.js";
import {
  claimMap,
  conditionsSchema,
  crd,
  dnsLabel,
  dnsSubdomain,
  ONLY_WHEN_VALID,
  objectMetaSchema,
  reportDuplicates,
  scopeTokenSchema,
  uniqueList,
} from "./schema-kit.js";

export const ACCESS_POLICY_KIND = "AccessPolicy";

/** The methods a rule may name. CONNECT and TRACE are left out: the sidecar never forwards them. */
export const HTTP_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] as const;
export type HttpMethod = (typeof HTTP_METHODS)[number];
export const POLICY_MODES = ["enforce", "audit"] as const;
export type PolicyMode = (typeof POLICY_MODES)[number];
export const POLICY_ACTIONS = ["allow", "deny"] as const;
export type PolicyAction = (typeof POLICY_ACTIONS)[number];
export const QUOTA_SCOPES = ["caller"] as const;
export const HOP_KINDS = ["service", "anyOf", "anyService", "anyNumberOfServices"] as const;
export type HopKind = (typeof HOP_KINDS)[number];

export const ACCESS_POLICY_CONDITION_TYPES = ["Ready", "Accepted", "Published"] as const;

export const MAX_RULES = 64;
/** Also the longest chain a comeFrom list can describe hop by hop. */
export const MAX_HOPS = 16;
export const MAX_ANY_OF = 16;
export const MAX_ENVIRONMENTS = 16;
export const MAX_MATCH_CLAIMS = 16;
export const MAX_AUDIENCES = 16;
export const MAX_REQUESTS_PER_SECOND = 100_000;
export const MAX_BURST = 1_000_000;

export const serviceRefSchema = z.string().max(127).regex(new RegExp(SERVICE_REF_PATTERN), {
  error: "must be a ServiceIdentity name (cart) or a service id <name>.<namespace> (cart.shop)",
});

export const pathPatternSchema = crd(
  z
    .string()
    .min(1, { abort: true })
    .max(MAX_PATH_PATTERN_LENGTH, { abort: true })
    .superRefine((pattern, ctx) => {
      const problem = pathPatternProblem(pattern);
      if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
    }),
  {
    description:
      "RE2 regular expression matched against the WHOLE normalized path (no query), e.g. /pay-for-order/.*; no ^ or $ needed.",
  },
);

export const operationSchema = crd(
  z.strictObject({
    methods: uniqueList(
      z.enum(HTTP_METHODS),
      HTTP_METHODS.length,
      "HTTP methods this matches (upper case). Absent: any method.",
    ).optional(),
    path: pathPatternSchema.optional(),
  }),
  { description: "Matches a request by method and path. An absent field matches anything." },
);

export const issuerSchema = z
  .string()
  .min(1)
  .max(512)
  .superRefine((issuer, ctx) => {
    const problem = issuerProblem(issuer);
    if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
  });

/** Token issuers are compared as strings, but must at least be http(s) URLs without query or fragment. */
export function issuerProblem(issuer: string): string | undefined {
  let url: URL;
  try {
    url = new URL(issuer);
  } catch {
    return "must be an issuer URL such as https://login.example.com";
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") return "must be an http or https URL";
  if (url.search !== "" || url.hash !== "" || issuer.includes("?") || issuer.includes("#")) {
    return "must not have a query or fragment";
  }
  return undefined;
}

export const initialTokenSchema = crd(
  z.strictObject({
    issuer: crd(issuerSchema, { description: "The token's iss must equal this." }).optional(),
    scopesContain: uniqueList(
      scopeTokenSchema,
      32,
      "Every one of these must be in the token's scope (e.g. shop.customer).",
    ).optional(),
    audienceContains: uniqueList(
      z.string().min(1).max(256),
      MAX_AUDIENCES,
      "Every one of these must be in the token's aud.",
    ).optional(),
    claims: claimMap({
      maxKeys: MAX_MATCH_CLAIMS,
      refuseReserved: false,
      description:
        "Claims the token must carry with exactly these string values (an array claim must contain it).",
    }).optional(),
  }),
  {
    description:
      "Requires the chain to start with an initial token (a user's token admitted by an edge service, or an identity JWT) that satisfies every field given.",
  },
);

const identityClaimMatch = (description: string) =>
  claimMap({ maxKeys: MAX_MATCH_CLAIMS, refuseReserved: true, description });

export const hopMatcherSchema = crd(
  z
    .strictObject({
      service: crd(serviceRefSchema, {
        description:
          "This hop is this service: a ServiceIdentity name in the policy's namespace, or a service id.",
      }).optional(),
      anyOf: uniqueList(serviceRefSchema, MAX_ANY_OF, "This hop is one of these services.").optional(),
      anyService: crd(z.literal(true), {
        description: "This hop is exactly one service, any service.",
      }).optional(),
      anyNumberOfServices: crd(z.literal(true), {
        description: "Zero or more hops of any services (like .* in a regex).",
      }).optional(),
      via: crd(operationSchema, {
        description:
          "The operation this hop's service performed in the chain (the op of the link it signed), e.g. POST /cart/confirm.",
      }).optional(),
      claims: identityClaimMatch(
        "Extra claims this hop's ServiceIdentity must have, with exactly these values.",
      ).optional(),
      optional: crd(z.boolean(), { description: "This hop may be absent." }).optional(),
    })
    .superRefine((hop, ctx) => {
      const kinds = HOP_KINDS.filter((kind) => hop[kind] !== undefined);
      if (kinds.length !== 1) {
        ctx.addIssue({
          code: "custom",
          message: `set exactly one of ${HOP_KINDS.join(", ")} (found ${kinds.length === 0 ? "none" : kinds.join(" and ")})`,
        });
        return;
      }
      const byName = hop.service !== undefined || hop.anyOf !== undefined;
      for (const field of ["via", "claims"] as const) {
        if (hop[field] !== undefined && !byName) {
          ctx.addIssue({ code: "custom", path: [field], message: "applies only to a service or anyOf hop" });
        }
      }
      if (hop.anyNumberOfServices !== undefined && hop.optional !== undefined) {
        ctx.addIssue({
          code: "custom",
          path: ["optional"],
          message: "anyNumberOfServices already matches zero hops: remove optional",
        });
      }
    }),
  {
    description:
      "One position in the call chain. Exactly one of service, anyOf, anyService, anyNumberOfServices.",
    oneOf: HOP_KINDS.map((kind) => ({ required: [kind] })),
    "x-kubernetes-validations": [
      {
        rule: "(!has(self.via) && !has(self.claims)) || has(self.service) || has(self.anyOf)",
        message: "via and claims apply only to a service or anyOf hop",
      },
      {
        rule: "!has(self.anyNumberOfServices) || !has(self.optional)",
        message: "anyNumberOfServices already matches zero hops: remove optional",
      },
    ],
  },
);

const requireSchema = crd(
  z.strictObject({
    initialToken: initialTokenSchema.optional(),
    comeFrom: crd(z.array(hopMatcherSchema).min(1).max(MAX_HOPS), {
      description:
        "The callers, in order: entry 0 is the immediate caller, the last entry the origin of the chain. Matches the whole chain.",
    }).optional(),
    callerClaims: identityClaimMatch(
      "Extra claims the immediate caller's ServiceIdentity must have, with exactly these values.",
    ).optional(),
  }),
  { description: "What a call must satisfy for an allow rule to allow it; all fields given must hold." },
);

const quotaSchema = crd(
  z.strictObject({
    requestsPerSecond: z.int().min(1).max(MAX_REQUESTS_PER_SECOND),
    burst: crd(z.int().min(1).max(MAX_BURST), {
      description: "Bucket size. Default: requestsPerSecond.",
    }).optional(),
    per: crd(z.enum(QUOTA_SCOPES), { description: "Whose calls share one bucket." }).default("caller"),
  }),
  { description: "Token-bucket rate limit on the calls this rule allows." },
);

export const ruleSchema = crd(
  z
    .strictObject({
      name: crd(dnsLabel(), { description: "Named in decisions and audit logs." }).optional(),
      operation: crd(operationSchema, {
        description: "Which requests this rule decides. Absent: all.",
      }).optional(),
      require: requireSchema.optional(),
      quota: quotaSchema.optional(),
      action: crd(z.enum(POLICY_ACTIONS), { description: "allow (default) or deny." }).default("allow"),
    })
    .superRefine((rule, ctx) => {
      if (rule.action !== "deny") return;
      for (const field of ["require", "quota"] as const) {
        if (rule[field] !== undefined) {
          ctx.addIssue({
            code: "custom",
            path: [field],
            message: "a deny rule denies every call its operation matches: remove this or use action: allow",
          });
        }
      }
    }),
  {
    description: "Decides the calls its operation matches (the first matching rule wins).",
    "x-kubernetes-validations": [
      {
        rule: "!has(self.action) || self.action == 'allow' || (!has(self.require) && !has(self.quota))",
        message: "a deny rule takes no require or quota",
      },
    ],
  },
);

const rulesSchema = crd(
  z
    .array(ruleSchema)
    .max(MAX_RULES)
    .superRefine((rules, ctx) => {
      reportDuplicates(
        ctx,
        rules,
        (rule) => rule.name,
        (_name, first, index) => ({ path: [index, "name"], message: `is also the name of rules[${first}]` }),
      );
    }),
  {
    description: "Evaluated in order; the first rule whose operation matches the request decides.",
    "x-kubernetes-validations": [
      {
        rule: "self.all(r, !has(r.name) || self.filter(s, has(s.name) && s.name == r.name).size() == 1)",
        message: "rule names must be unique",
      },
    ],
  },
);

export const accessPolicySpecSchema = crd(
  z.strictObject({
    target: crd(serviceRefSchema, {
      description:
        "The service whose inbound calls this governs: a ServiceIdentity name in this namespace, or a service id.",
    }),
    mode: crd(z.enum(POLICY_MODES), {
      description:
        "enforce (default) rejects denied calls; audit logs and counts them but lets them through.",
    }).default("enforce"),
    defaultAction: crd(z.enum(POLICY_ACTIONS), {
      description: "Applies when no rule's operation matches. Default: deny.",
    }).default("deny"),
    environments: uniqueList(
      dnsLabel(),
      MAX_ENVIRONMENTS,
      "The policy is in force only where the target's environment is one of these. Absent: everywhere.",
    ).optional(),
    rules: rulesSchema.prefault([]),
  }),
  { description: "Who may call the target, how, and through which chain of services." },
);

export const accessPolicyStatusSchema = z.strictObject({
  observedGeneration: crd(z.int().min(0).optional(), { format: "int64" }),
  conditions: conditionsSchema(ACCESS_POLICY_CONDITION_TYPES).optional(),
});

export const accessPolicySchema = crd(
  z
    .strictObject({
      apiVersion: z.literal(API_GROUP_VERSION),
      kind: z.literal(ACCESS_POLICY_KIND),
      metadata: objectMetaSchema(dnsSubdomain()),
      spec: accessPolicySpecSchema,
      status: accessPolicyStatusSchema.optional(),
    })
    .superRefine((policy, ctx) => {
      const { namespace } = policy.metadata;
      if (namespace === undefined) return;
      const problem = targetNamespaceProblem(policy.spec.target, namespace);
      if (problem !== undefined) ctx.addIssue({ code: "custom", path: ["spec", "target"], message: problem });
    }, ONLY_WHEN_VALID),
  { description: "Call-chain authorization for the inbound calls of one service." },
);

/**
 * A policy governs only services of its own namespace. Policies combine by "all must allow", so a
 * foreign policy could not widen access to a service that has policies; but it could open one that
 * has none, and namespace owners alone decide who calls their services.
 */
export function targetNamespaceProblem(target: string, namespace: string): string | undefined {
  const dot = target.indexOf(".");
  if (dot < 0 || target.slice(dot + 1) === namespace) return undefined;
  return `must be a service of the policy's own namespace (${namespace}): write its name, or <name>.${namespace}`;
}

/** An AccessPolicy with every default applied (what validateAccessPolicy returns). */
export type AccessPolicy = z.output<typeof accessPolicySchema>;
/** An AccessPolicy as a person writes it. */
export type AccessPolicyInput = z.input<typeof accessPolicySchema>;
export type AccessPolicySpec = AccessPolicy["spec"];
export type AccessPolicyRule = AccessPolicySpec["rules"][number];
export type HopMatcher = z.output<typeof hopMatcherSchema>;
export type OperationMatcher = z.output<typeof operationSchema>;
export type AccessPolicyStatus = z.output<typeof accessPolicyStatusSchema>;
