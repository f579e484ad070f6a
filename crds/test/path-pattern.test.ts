import { describe, expect, it } from "vitest";
import { compilePathPattern, PathPatternError, pathPatternProblem } from "../src/path-pattern.js";

describe("compilePathPattern", () => {
  it("matches the whole path, never a part of it", () => {
    const pay = compilePathPattern("/pay-for-order/.*");
    expect(pay.matches("/pay-for-order/7")).toBe(true);
    expect(pay.matches("/pay-for-order/")).toBe(true);
    expect(pay.matches("/x/pay-for-order/7")).toBe(false);
    expect(pay.matches("/pay-for-order")).toBe(false);

    const a = compilePathPattern("/a");
    expect(a.matches("/a")).toBe(true);
    expect(a.matches("/ab")).toBe(false);
    expect(a.matches("/x/a")).toBe(false);
  });

  it("keeps alternation inside the anchors", () => {
    const either = compilePathPattern("/a|/b");
    expect(either.matches("/a")).toBe(true);
    expect(either.matches("/b")).toBe(true);
    expect(either.matches("/ab")).toBe(false);
    expect(either.matches("/a/b")).toBe(false);
  });

  it("accepts explicit anchors and RE2 syntax", () => {
    expect(
      compilePathPattern("^/cart/[0-9a-f-]{36}$").matches("/cart/123e4567-e89b-12d3-a456-426614174000"),
    ).toBe(true);
    expect(compilePathPattern("(?i)/Cart").matches("/cart")).toBe(true);
  });

  it("runs a pathological pattern in linear time", () => {
    // (a+)+$ takes exponential time in a backtracking engine on "aaaa…!"; RE2 does one pass.
    const evil = compilePathPattern("(a+)+$");
    expect(evil.matches(`${"a".repeat(100_000)}!`)).toBe(false);
    expect(evil.matches("a".repeat(100_000))).toBe(true);
    const nested = compilePathPattern("(.*a){20}");
    expect(nested.matches("a".repeat(100_000))).toBe(true);
  });

  it("refuses what RE2 cannot do in linear time, and says so", () => {
    expect(pathPatternProblem("(a)\\1")).toMatch(/^invalid regular expression: backreferences such as \\1/);
    expect(pathPatternProblem("(?=a)")).toMatch(/^invalid regular expression: lookahead \(\?=/);
    expect(pathPatternProblem("(?!a)")).toMatch(/^invalid regular expression: lookahead \(\?!/);
    expect(pathPatternProblem("(?<=a)b")).toMatch(/^invalid regular expression: lookbehind \(\?<=/);
    expect(pathPatternProblem("a{2,1}")).toBe("invalid regular expression: invalid repeat count: `{2,1}`");
    expect(pathPatternProblem("(a")).toBe("invalid regular expression: missing closing )");
  });

  it("bounds length and compiled size", () => {
    expect(pathPatternProblem("a".repeat(513))).toBe("must be at most 512 characters (got 513)");
    expect(pathPatternProblem("")).toMatch(/^must not be empty/);
    expect(pathPatternProblem("(a{1000}){2}")).toMatch(/invalid repeat count|too complex/);
    expect(pathPatternProblem(".{1000}.{1000}.{1000}")).toMatch(/^is too complex/);
  });

  it("throws a typed error", () => {
    expect(() => compilePathPattern("(")).toThrow(PathPatternError);
    try {
      compilePathPattern("(");
    } catch (error) {
      expect(error).toMatchObject({ code: "invalid_path_pattern" });
    }
  });
});
