/**
 * `comeFrom` matching. The call path is the chain's links newest first (entry 0 = the immediate
 * caller, last = the origin); matchers are written in the same order and must account for the
 * whole path, like a glob: `service`/`anyService` take one hop (zero or one when optional),
 * `anyNumberOfServices` takes any number. Dynamic programming over (matcher, hop): at most 16 × 16
 * cells, so the cost is bounded whatever the pattern.
 */
import type { CompiledHop, CompiledOperation } from "../../../crds/src/compiled-policy.js";
import type { Operation } from "../chain/normalize.js";
import type { ServiceInfo } from "../chain/trust.js";
import { operationMatches, type PatternCache } from "./operation.js";

/** One hop of the call path: the service that made a call, and the call it made. */
export interface CallHop {
  readonly service: string;
  readonly operation: Operation;
}

export interface HopContext {
  readonly service: (id: string) => ServiceInfo | undefined;
  readonly patterns: PatternCache;
}

export function claimsMatch(
  required: Readonly<Record<string, string>> | undefined,
  actual: Readonly<Record<string, string>> | undefined,
): boolean {
  if (required === undefined) return true;
  return Object.entries(required).every(([key, value]) => actual?.[key] === value);
}

function hopMatches(matcher: CompiledHop, hop: CallHop, context: HopContext): boolean {
  switch (matcher.match) {
    case "anyService":
    case "anyNumberOfServices":
      return true;
    case "service":
      return (
        matcher.services.includes(hop.service) &&
        (matcher.via === undefined || operationMatches(matcher.via, hop.operation, context.patterns)) &&
        claimsMatch(matcher.claims, context.service(hop.service)?.claims)
      );
  }
}

export function callPathMatches(
  matchers: readonly CompiledHop[],
  hops: readonly CallHop[],
  context: HopContext,
): boolean {
  // memo[i][j]: matchers[i..] account for exactly hops[j..]
  const memo = new Map<number, boolean>();
  const width = hops.length + 1;
  const solve = (i: number, j: number): boolean => {
    const key = i * width + j;
    const known = memo.get(key);
    if (known !== undefined) return known;
    let result: boolean;
    const matcher = matchers[i];
    if (matcher === undefined) {
      result = j === hops.length;
    } else if (matcher.match === "anyNumberOfServices") {
      result = solve(i + 1, j) || (j < hops.length && solve(i, j + 1));
    } else {
      const hop = hops[j];
      const takeOne = hop !== undefined && hopMatches(matcher, hop, context) && solve(i + 1, j + 1);
      result = takeOne || (matcher.optional && solve(i + 1, j));
    }
    memo.set(key, result);
    return result;
  };
  return solve(0, 0);
}

function describeOperation(operation: CompiledOperation | undefined): string {
  if (operation === undefined) return "";
  const methods = operation.methods?.join("|") ?? "*";
  return ` via ${methods} ${operation.path ?? ".*"}`;
}

function describeMatcher(matcher: CompiledHop): string {
  if (matcher.match === "anyNumberOfServices") return "any number of services";
  const optional = matcher.optional ? " (optional)" : "";
  if (matcher.match === "anyService") return `any service${optional}`;
  const names = matcher.services.length === 1 ? matcher.services[0] : `one of ${matcher.services.join("|")}`;
  const claims = matcher.claims === undefined ? "" : ` with ${JSON.stringify(matcher.claims)}`;
  return `${names}${describeOperation(matcher.via)}${claims}${optional}`;
}

/** `[cart.shop, shop.shop via POST /cart/confirm, …]`, for decisions people read. */
export function describeMatchers(matchers: readonly CompiledHop[]): string {
  return `[${matchers.map(describeMatcher).join(", ")}]`;
}

/** `payments.shop ← cart.shop (POST /pay…) ← shop.shop (POST /cart/confirm)`. */
export function describeCallPath(target: string, hops: readonly CallHop[]): string {
  const steps = hops.map((hop) => `${hop.service} (${hop.operation.method} ${hop.operation.path})`);
  return [target, ...steps].join(" ← ");
}
