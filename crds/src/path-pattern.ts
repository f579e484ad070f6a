/**
 * Path regexes of AccessPolicy rules. They are written by policy authors and evaluated by the
 * sidecar on every request, so a slow pattern is a denial of service on the service it protects.
 *
 * JavaScript's RegExp backtracks: `(a+)+$` against a long run of "a"s followed by "!" takes time
 * exponential in the input length. RE2 (here re2js, a pure-JS port of Go's regexp) compiles to an
 * automaton and matches in time linear in the input, whatever the pattern; the features that need
 * backtracking (backreferences, lookaround) are syntax errors there, so they are rejected up front.
 * On top of that the pattern length and the compiled program size are bounded, which bounds the
 * constant factor of that linear time.
 */
import { RE2JS, RE2JSSyntaxException } from "re2js";
import { CustodyError } from "./errors.js";

export const MAX_PATH_PATTERN_LENGTH = 512;
/** RE2 instruction count; `.{1000}` is about 1000, ordinary path patterns stay far below 300. */
export const MAX_PATH_PATTERN_PROGRAM_SIZE = 2048;

export interface PathMatcher {
  readonly pattern: string;
  /** True when the pattern matches the WHOLE path, as if written `^(?:pattern)$`. */
  readonly matches: (path: string) => boolean;
}

export class PathPatternError extends CustodyError {
  constructor(message: string) {
    super("invalid_path_pattern", message);
  }
}

/** Compiles a policy path pattern, or throws PathPatternError saying what is wrong with it. */
export function compilePathPattern(pattern: string): PathMatcher {
  const compiled = compileChecked(pattern);
  if (typeof compiled === "string") {
    throw new PathPatternError(`invalid path pattern "${clip(pattern)}": ${compiled}`);
  }
  return { pattern, matches: (path) => compiled.testExact(path) };
}

/** Why `pattern` is not acceptable, in plain words, or undefined when it is. */
export function pathPatternProblem(pattern: string): string | undefined {
  const compiled = compileChecked(pattern);
  return typeof compiled === "string" ? compiled : undefined;
}

function compileChecked(pattern: string): RE2JS | string {
  if (pattern.length === 0) return "must not be empty: use .* to match any path";
  if (pattern.length > MAX_PATH_PATTERN_LENGTH) {
    return `must be at most ${MAX_PATH_PATTERN_LENGTH} characters (got ${pattern.length})`;
  }
  let compiled: RE2JS;
  try {
    compiled = RE2JS.compile(pattern);
  } catch (error) {
    if (error instanceof RE2JSSyntaxException) return describeSyntaxError(error, pattern);
    // Any other exception is re2js refusing the pattern in a way we did not foresee: refuse it too.
    return `could not be compiled: ${error instanceof Error ? error.message : String(error)}`;
  }
  const size = compiled.programSize();
  if (size > MAX_PATH_PATTERN_PROGRAM_SIZE) {
    return `is too complex (compiled size ${size}, at most ${MAX_PATH_PATTERN_PROGRAM_SIZE}): use fewer or smaller repetition counts`;
  }
  return compiled;
}

const RE2_SYNTAX = "patterns use RE2 syntax, which guarantees linear-time matching";

function describeSyntaxError(error: RE2JSSyntaxException, pattern: string): string {
  const at = error.input ?? "";
  if (error.error === "invalid escape sequence" && /^\\[1-9]/.test(at)) {
    return `invalid regular expression: backreferences such as ${at} are not supported (${RE2_SYNTAX})`;
  }
  if (at.startsWith("(?=") || at.startsWith("(?!")) {
    return `invalid regular expression: lookahead ${at.slice(0, 3)} is not supported (${RE2_SYNTAX})`;
  }
  if (at.startsWith("(?<=") || at.startsWith("(?<!")) {
    return `invalid regular expression: lookbehind ${at.slice(0, 4)} is not supported (${RE2_SYNTAX})`;
  }
  // re2js names the offending fragment; repeating the whole pattern adds nothing.
  const fragment = at === "" || at === pattern ? "" : `: \`${clip(at)}\``;
  return `invalid regular expression: ${error.error}${fragment}`;
}

function clip(text: string): string {
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}
