import type { CompiledOperation } from "../../../crds/src/compiled-policy.js";
import { compilePathPattern, type PathMatcher } from "../../../crds/src/path-pattern.js";
import type { Operation } from "../chain/normalize.js";

/**
 * Compiled path patterns, one per distinct pattern text. Bounded: a registry carries at most a
 * bounded number of policies and rules; the cap only guards against a pathological registry.
 */
export class PatternCache {
  readonly #matchers = new Map<string, PathMatcher>();
  readonly #capacity: number;

  constructor(capacity = 4096) {
    this.#capacity = capacity;
  }

  matcher(pattern: string): PathMatcher {
    const known = this.#matchers.get(pattern);
    if (known !== undefined) return known;
    const compiled = compilePathPattern(pattern);
    if (this.#matchers.size >= this.#capacity) this.#matchers.clear();
    this.#matchers.set(pattern, compiled);
    return compiled;
  }
}

export function operationMatches(
  matcher: CompiledOperation,
  operation: Operation,
  patterns: PatternCache,
): boolean {
  if (matcher.methods !== undefined && !(matcher.methods as readonly string[]).includes(operation.method)) {
    return false;
  }
  return matcher.path === undefined || patterns.matcher(matcher.path).matches(operation.path);
}
