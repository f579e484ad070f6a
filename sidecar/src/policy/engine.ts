/**
 * The policy engine: a pure function from (compiled policies, verified chain, request) to a
 * decision. Semantics (ARCHITECTURE.md, "AccessPolicy"):
 * - every policy that targets the service (in its environment) must allow ("for each of");
 * - inside a policy the first rule whose operation matches decides ("enforce the first matching
 *   rule"); no rule matching applies `defaultAction`;
 * - `mode: audit` policies are evaluated and reported, but their denials let the call through;
 * - no policy at all for a target: `whenNoPolicy` (deny by default — fail closed).
 * A decision names the policy and rule that made it, and why, in words an operator understands.
 */
import type { CompiledPolicy, CompiledRule } from "../../../crds/src/compiled-policy.js";
import type { AdmittedBearer } from "../chain/entry.js";
import type { Operation } from "../chain/normalize.js";
import type { ServiceInfo } from "../chain/trust.js";
import type { InitialToken, VerifiedChain } from "../chain/verify.js";
import {
  type CallHop,
  callPathMatches,
  claimsMatch,
  describeCallPath,
  describeMatchers,
} from "./call-path.js";
import { operationMatches, type PatternCache } from "./operation.js";

export const POLICY_REASONS = [
  "allowed",
  "no_policy",
  "default_action",
  "denied_by_rule",
  "initial_token_required",
  "initial_token_issuer",
  "scope_missing",
  "audience_missing",
  "initial_token_claims",
  "call_path",
  "caller_claims",
] as const;
export type PolicyReason = (typeof POLICY_REASONS)[number];

export interface QuotaLimit {
  readonly requestsPerSecond: number;
  readonly burst: number;
}

export interface PolicyVerdict {
  /** `<namespace>/<name>` of the AccessPolicy. */
  readonly policy: string;
  readonly mode: CompiledPolicy["mode"];
  /** The deciding rule's name (or `rules[i]`); undefined when defaultAction decided. */
  readonly rule: string | undefined;
  readonly allowed: boolean;
  readonly reason: PolicyReason;
  readonly explanation: string;
  /** The quota of the allow rule that decided, to be enforced after the decision. */
  readonly quota: QuotaLimit | undefined;
}

export interface Decision {
  /** What is enforced: audit-mode denials do not count. */
  readonly allowed: boolean;
  readonly reason: PolicyReason;
  readonly explanation: string;
  /** The enforced verdict that decided (the first denial, else the last allow); none without policy. */
  readonly decidedBy: PolicyVerdict | undefined;
  readonly verdicts: readonly PolicyVerdict[];
  /** Audit-mode verdicts that would have denied. */
  readonly audited: readonly PolicyVerdict[];
}

/**
 * Where a request comes from, as policies see it. For a chain: its links and initial token. For an
 * edge entry (a bearer token, no chain): the token as the initial element and, when it is a
 * workload's identity token, that workload as the one hop of the call path.
 */
export interface Provenance {
  /** The immediate caller's service id; undefined for a user entering through an edge. */
  readonly caller: string | undefined;
  /** Newest first: entry 0 is the immediate caller, the last the origin (as comeFrom is written). */
  readonly hops: readonly CallHop[];
  readonly initial: InitialToken | undefined;
}

export interface PolicyRequest {
  readonly target: ServiceInfo;
  readonly operation: Operation;
  readonly from: Provenance;
}

export interface EngineOptions {
  readonly service: (id: string) => ServiceInfo | undefined;
  /** Compiled path patterns; kept with the registry so no request pays for compiling a regex. */
  readonly patterns: PatternCache;
  readonly whenNoPolicy?: "allow" | "deny";
}

interface RuleOutcome {
  readonly reason: PolicyReason;
  readonly detail: string;
}

function tokenClaimMatches(actual: unknown, expected: string): boolean {
  if (typeof actual === "string") return actual === expected;
  return Array.isArray(actual) && actual.includes(expected);
}

function checkInitialToken(
  required: NonNullable<CompiledRule["require"]["initialToken"]>,
  token: InitialToken | undefined,
): RuleOutcome | undefined {
  if (token === undefined) {
    return { reason: "initial_token_required", detail: "the chain carries no initial token" };
  }
  if (required.issuer !== undefined && token.issuer !== required.issuer) {
    return {
      reason: "initial_token_issuer",
      detail: `initial token issuer is ${token.issuer}, not ${required.issuer}`,
    };
  }
  const missingScopes = (required.scopesContain ?? []).filter((scope) => !token.scopes.includes(scope));
  if (missingScopes.length > 0) {
    return {
      reason: "scope_missing",
      detail: `initial token lacks scope ${missingScopes.join(", ")} (it has: ${token.scopes.join(" ") || "none"})`,
    };
  }
  const missingAudiences = (required.audienceContains ?? []).filter((aud) => !token.audiences.includes(aud));
  if (missingAudiences.length > 0) {
    return {
      reason: "audience_missing",
      detail: `initial token audience lacks ${missingAudiences.join(", ")}`,
    };
  }
  const wrongClaims = Object.entries(required.claims ?? {}).filter(
    ([key, value]) => !tokenClaimMatches(token.claims[key], value),
  );
  if (wrongClaims.length > 0) {
    return {
      reason: "initial_token_claims",
      detail: `initial token claim ${wrongClaims.map(([key, value]) => `${key}=${value}`).join(", ")} does not hold`,
    };
  }
  return undefined;
}

/** Edge entry: the bearer token is the initial element; a workload presenting it is the one hop. */
export function provenanceOfBearer(admitted: AdmittedBearer, operation: Operation): Provenance {
  const { caller, initial } = admitted;
  return { caller, hops: caller === undefined ? [] : [{ service: caller, operation }], initial };
}

export function provenanceOfChain(chain: VerifiedChain): Provenance {
  return {
    caller: chain.head.iss,
    hops: chain.links.map((link) => ({ service: link.iss, operation: link.operation })).reverse(),
    initial: chain.initial,
  };
}

function checkRequirements(
  rule: CompiledRule,
  request: PolicyRequest,
  options: Pick<EngineOptions, "service" | "patterns">,
): RuleOutcome | undefined {
  const { initialToken, comeFrom, callerClaims } = rule.require;
  const { hops, caller, initial } = request.from;
  if (initialToken !== undefined) {
    const problem = checkInitialToken(initialToken, initial);
    if (problem !== undefined) return problem;
  }
  if (comeFrom !== undefined && !callPathMatches(comeFrom, hops, options)) {
    return {
      reason: "call_path",
      detail: `call path ${describeCallPath(request.target.id, hops)} does not match comeFrom ${describeMatchers(comeFrom)}`,
    };
  }
  if (callerClaims !== undefined) {
    if (caller === undefined) {
      return { reason: "caller_claims", detail: "a user entered through the edge; no service called" };
    }
    if (!claimsMatch(callerClaims, options.service(caller)?.claims)) {
      return {
        reason: "caller_claims",
        detail: `caller ${caller} does not have the identity claims ${JSON.stringify(callerClaims)}`,
      };
    }
  }
  return undefined;
}

function evaluatePolicy(
  policy: CompiledPolicy,
  request: PolicyRequest,
  options: Pick<EngineOptions, "service" | "patterns">,
): PolicyVerdict {
  const name = `${policy.namespace}/${policy.name}`;
  const op = `${request.operation.method} ${request.operation.path}`;
  const verdict = (
    rule: string | undefined,
    allowed: boolean,
    reason: PolicyReason,
    explanation: string,
    quota?: QuotaLimit,
  ) => ({
    policy: name,
    mode: policy.mode,
    rule,
    allowed,
    reason,
    explanation,
    quota,
  });
  const rule = policy.rules.find((candidate) =>
    operationMatches(candidate.operation, request.operation, options.patterns),
  );
  if (rule === undefined) {
    const allowed = policy.defaultAction === "allow";
    return verdict(
      undefined,
      allowed,
      allowed ? "allowed" : "default_action",
      `${name}: no rule matches ${op}; defaultAction ${policy.defaultAction}`,
    );
  }
  const label = `${name} rule ${rule.name}`;
  if (rule.action === "deny") return verdict(rule.name, false, "denied_by_rule", `${label} denies ${op}`);
  const problem = checkRequirements(rule, request, options);
  if (problem !== undefined)
    return verdict(rule.name, false, problem.reason, `${label} denied ${op}: ${problem.detail}`);
  const quota =
    rule.quota === undefined
      ? undefined
      : { requestsPerSecond: rule.quota.requestsPerSecond, burst: rule.quota.burst };
  return verdict(rule.name, true, "allowed", `${label} allowed ${op}`, quota);
}

function appliesTo(policy: CompiledPolicy, target: ServiceInfo): boolean {
  return (
    policy.target === target.id &&
    (policy.environments === undefined || policy.environments.includes(target.environment))
  );
}

export function decide(
  policies: readonly CompiledPolicy[],
  request: PolicyRequest,
  options: EngineOptions,
): Decision {
  const applicable = policies.filter((policy) => appliesTo(policy, request.target));
  if (applicable.length === 0) {
    const allowed = options.whenNoPolicy === "allow";
    return {
      allowed,
      reason: allowed ? "allowed" : "no_policy",
      explanation: `no AccessPolicy targets ${request.target.id} in environment ${request.target.environment}; ${
        allowed ? "allowed (whenNoPolicy: allow)" : "denied (fail closed)"
      }`,
      decidedBy: undefined,
      verdicts: [],
      audited: [],
    };
  }
  const verdicts = applicable.map((policy) => evaluatePolicy(policy, request, options));
  const enforced = verdicts.filter((verdict) => verdict.mode === "enforce");
  const audited = verdicts.filter((verdict) => verdict.mode === "audit" && !verdict.allowed);
  const denial = enforced.find((verdict) => !verdict.allowed);
  const decidedBy = denial ?? enforced.at(-1);
  const auditNote =
    audited.length > 0
      ? ` (audit mode would have denied: ${audited.map((v) => v.explanation).join("; ")})`
      : "";
  if (decidedBy === undefined) {
    // Only audit-mode policies: the call goes through, with what they would have decided.
    return {
      allowed: true,
      reason: "allowed",
      explanation: `only audit-mode policies target ${request.target.id}; allowed${auditNote}`,
      decidedBy: undefined,
      verdicts,
      audited,
    };
  }
  return {
    allowed: denial === undefined,
    reason: decidedBy.reason,
    explanation: `${decidedBy.explanation}${auditNote}`,
    decidedBy,
    verdicts,
    audited,
  };
}
