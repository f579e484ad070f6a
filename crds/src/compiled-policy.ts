/**
 * The compiled form of an AccessPolicy, as the registry carries it to sidecars: service references
 * resolved to full service ids, defaults applied, path regexes checked, hop matchers normalized
 * into one tagged shape. The sidecar's policy engine reads only this form, so nothing about the
 * policy's namespace or defaults has to be known there.
 */
import { z } from "zod";
import {
  type AccessPolicy,
  type HopMatcher,
  HTTP_METHODS,
  initialTokenSchema,
  MAX_ANY_OF,
  MAX_BURST,
  MAX_ENVIRONMENTS,
  MAX_HOPS,
  MAX_MATCH_CLAIMS,
  MAX_REQUESTS_PER_SECOND,
  MAX_RULES,
  type OperationMatcher,
  POLICY_ACTIONS,
  POLICY_MODES,
  pathPatternSchema,
  QUOTA_SCOPES,
  targetNamespaceProblem,
} from "./access-policy.js";
import { ValidationError } from "./errors.js";
import { parseOrThrow } from "./issues.js";
import { INVALID_MANIFEST, validateAccessPolicy } from "./manifest.js";
import { NameError, resolveServiceRef, SERVICE_ID_PATTERN } from "./names.js";
import { claimMap, dnsLabel, dnsSubdomain } from "./schema-kit.js";

const serviceIdSchema = z.string().max(127).regex(new RegExp(SERVICE_ID_PATTERN), {
  error: "must be a service id <name>.<namespace>, e.g. cart.shop",
});

export { serviceIdSchema };

function uniqueStrings<T extends z.ZodType<string>>(item: T, maxItems: number) {
  return z
    .array(item)
    .min(1)
    .max(maxItems)
    .refine((list) => new Set(list).size === list.length, { error: "must not list an entry twice" });
}

export const compiledOperationSchema = z.strictObject({
  /** Absent: any method. Never empty, so "no methods" cannot be mistaken for "any". */
  methods: uniqueStrings(z.enum(HTTP_METHODS), HTTP_METHODS.length).optional(),
  /** Absent: any path. Whole-string RE2 match; see compilePathPattern. */
  path: pathPatternSchema.optional(),
});

const identityClaims = () => claimMap({ maxKeys: MAX_MATCH_CLAIMS, refuseReserved: true });

export const compiledHopSchema = z.discriminatedUnion("match", [
  z.strictObject({
    match: z.literal("service"),
    /** The hop is one of these (one entry for `service`, several for `anyOf`). */
    services: uniqueStrings(serviceIdSchema, MAX_ANY_OF),
    via: compiledOperationSchema.optional(),
    claims: identityClaims().optional(),
    optional: z.boolean(),
  }),
  z.strictObject({ match: z.literal("anyService"), optional: z.boolean() }),
  z.strictObject({ match: z.literal("anyNumberOfServices") }),
]);

/** A rule's label in decisions: its name, or its position when it has none. */
const ruleLabelSchema = z
  .string()
  .max(63)
  .regex(/^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?|rules\[[0-9]{1,3}\])$/, {
    error: "must be a rule name or rules[<index>]",
  });

export const compiledRuleSchema = z
  .strictObject({
    name: ruleLabelSchema,
    operation: compiledOperationSchema,
    require: z.strictObject({
      initialToken: initialTokenSchema.optional(),
      comeFrom: z.array(compiledHopSchema).min(1).max(MAX_HOPS).optional(),
      callerClaims: identityClaims().optional(),
    }),
    quota: z
      .strictObject({
        requestsPerSecond: z.int().min(1).max(MAX_REQUESTS_PER_SECOND),
        burst: z.int().min(1).max(MAX_BURST),
        per: z.enum(QUOTA_SCOPES),
      })
      .optional(),
    action: z.enum(POLICY_ACTIONS),
  })
  .superRefine((rule, ctx) => {
    if (rule.action === "deny" && (rule.quota !== undefined || Object.keys(rule.require).length > 0)) {
      ctx.addIssue({ code: "custom", message: "a deny rule has no require and no quota" });
    }
  });

export const compiledPolicySchema = z.strictObject({
  /** Where the policy came from, for decisions and audit logs ("shop/payments rule pay-for-order"). */
  name: dnsSubdomain(),
  namespace: dnsLabel(),
  generation: z.int().min(0).optional(),
  target: serviceIdSchema,
  mode: z.enum(POLICY_MODES),
  defaultAction: z.enum(POLICY_ACTIONS),
  /** Absent: in force in every environment. */
  environments: uniqueStrings(dnsLabel(), MAX_ENVIRONMENTS).optional(),
  rules: z.array(compiledRuleSchema).max(MAX_RULES),
});

export type CompiledPolicy = z.output<typeof compiledPolicySchema>;
export type CompiledRule = CompiledPolicy["rules"][number];
export type CompiledHop = z.output<typeof compiledHopSchema>;
export type CompiledOperation = z.output<typeof compiledOperationSchema>;

export interface CompileOptions {
  /** Namespace for a manifest without metadata.namespace (as `kubectl apply -n` would supply). */
  readonly namespace?: string;
}

/**
 * Validates an AccessPolicy (object or already validated) and compiles it for the registry.
 * Throws ValidationError(invalid_manifest) like validateAccessPolicy.
 */
export function compilePolicy(manifest: unknown, options: CompileOptions = {}): CompiledPolicy {
  const policy = validateAccessPolicy(manifest);
  const namespace = policy.metadata.namespace ?? options.namespace;
  const subject = `AccessPolicy ${policy.metadata.name}`;
  if (namespace === undefined) {
    throw new ValidationError(INVALID_MANIFEST, subject, [
      { path: "metadata.namespace", message: "is required to resolve service names (or give a namespace)" },
    ]);
  }
  const targetProblem = targetNamespaceProblem(policy.spec.target, namespace);
  if (targetProblem !== undefined) {
    throw new ValidationError(INVALID_MANIFEST, subject, [{ path: "spec.target", message: targetProblem }]);
  }
  try {
    return compileValidated(policy, namespace);
  } catch (error) {
    // A bad namespace option is the only way a reference can fail to resolve after validation.
    if (error instanceof NameError) {
      throw new ValidationError(INVALID_MANIFEST, subject, [
        { path: "metadata.namespace", message: error.message },
      ]);
    }
    throw error;
  }
}

function compileValidated(policy: AccessPolicy, namespace: string): CompiledPolicy {
  const { spec, metadata } = policy;
  const resolve = (ref: string) => resolveServiceRef(ref, namespace);
  const compiled: CompiledPolicy = {
    name: metadata.name,
    namespace,
    ...(metadata.generation === undefined ? {} : { generation: metadata.generation }),
    target: resolve(spec.target),
    mode: spec.mode,
    defaultAction: spec.defaultAction,
    ...(spec.environments === undefined ? {} : { environments: [...spec.environments] }),
    rules: spec.rules.map((rule, index): CompiledRule => {
      const require: CompiledRule["require"] = {};
      if (rule.require?.initialToken !== undefined)
        require.initialToken = structuredClone(rule.require.initialToken);
      if (rule.require?.comeFrom !== undefined) {
        require.comeFrom = rule.require.comeFrom.map((hop) => compileHop(hop, resolve));
      }
      if (rule.require?.callerClaims !== undefined) require.callerClaims = { ...rule.require.callerClaims };
      return {
        name: rule.name ?? `rules[${index}]`,
        operation: compileOperation(rule.operation),
        require,
        ...(rule.quota === undefined
          ? {}
          : {
              quota: {
                requestsPerSecond: rule.quota.requestsPerSecond,
                burst: rule.quota.burst ?? rule.quota.requestsPerSecond,
                per: rule.quota.per,
              },
            }),
        action: rule.action,
      };
    }),
  };
  // Re-checked against its own schema: what leaves here is exactly what sidecars accept.
  return parseOrThrow(
    compiledPolicySchema,
    compiled,
    INVALID_MANIFEST,
    `AccessPolicy ${namespace}/${metadata.name}`,
  );
}

function compileOperation(operation: OperationMatcher | undefined): CompiledOperation {
  const out: CompiledOperation = {};
  if (operation?.methods !== undefined) out.methods = [...operation.methods];
  if (operation?.path !== undefined) out.path = operation.path;
  return out;
}

function compileHop(hop: HopMatcher, resolve: (ref: string) => string): CompiledHop {
  if (hop.anyNumberOfServices !== undefined) return { match: "anyNumberOfServices" };
  const optional = hop.optional ?? false;
  if (hop.anyService !== undefined) return { match: "anyService", optional };
  const refs = hop.service !== undefined ? [hop.service] : (hop.anyOf ?? []);
  return {
    match: "service",
    // Two refs may name the same service ("cart" and "cart.shop"); the compiled list is a set.
    services: [...new Set(refs.map(resolve))],
    ...(hop.via === undefined ? {} : { via: compileOperation(hop.via) }),
    ...(hop.claims === undefined ? {} : { claims: { ...hop.claims } }),
    optional,
  };
}
