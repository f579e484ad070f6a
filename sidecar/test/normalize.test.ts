import { describe, expect, it } from "vitest";
import {
  formatOperation,
  normalizeOperation,
  normalizePath,
  parseOperationClaim,
} from "../src/chain/normalize.js";

function codeOf(action: () => unknown): string | undefined {
  try {
    action();
    return undefined;
  } catch (error) {
    return (error as { code?: string }).code;
  }
}

describe("normalizePath", () => {
  it.each([
    ["/", "/"],
    ["/pay-for-order/7", "/pay-for-order/7"],
    ["//pay-for-order///7", "/pay-for-order/7"],
    ["/a/./b", "/a/b"],
    ["/a/b/../c", "/a/c"],
    ["/a/b/..", "/a/"],
    ["/a/b/.", "/a/b/"],
    ["/a/b/", "/a/b/"],
    ["/%7Euser/%61bc", "/~user/abc"],
    ["/a/%2e%2E/b", "/b"],
    ["/caf%c3%a9", "/caf%C3%A9"],
    ["/a%20b", "/a%20B".replace("B", "b")],
    ["/x:y@z!$&'()*+,=", "/x:y@z!$&'()*+,="],
    ["/v1.2/file.txt", "/v1.2/file.txt"],
  ])("%s → %s", (input, expected) => {
    expect(normalizePath(input)).toBe(expected);
  });

  it.each([
    ["a/b", "invalid_path"],
    ["/a%2Fb", "ambiguous_encoding"],
    ["/a%2fb", "ambiguous_encoding"],
    ["/a%5Cb", "ambiguous_encoding"],
    // What application servers would read as another path than the one a policy matched:
    ["/admin;jsessionid=123", "path_parameter"],
    ["/admin%3Bx/keys", "path_parameter"],
    ["/x:y@z!$&'()*+,;=", "path_parameter"],
    ["/admin%252Fkeys", "ambiguous_encoding"],
    ["/%C0%AE%C0%AE/etc", "ambiguous_encoding"],
    ["/caf%C3", "ambiguous_encoding"],
    ["/admin.", "ambiguous_segment"],
    ["/admin%2E/keys", "ambiguous_segment"],
    ["/admin%20", "ambiguous_segment"],
    ["/a/.../b", "ambiguous_segment"],
    ["/a%00b", "ambiguous_encoding"],
    ["/a%0ab", "ambiguous_encoding"],
    ["/a%7fb", "ambiguous_encoding"],
    ["/a%zzb", "malformed_escape"],
    ["/a%2", "malformed_escape"],
    ["/a b", "invalid_character"],
    ["/a\\b", "invalid_character"],
    ["/é", "invalid_character"],
    ["/a#b", "invalid_character"],
    ["/..", "path_traversal"],
    ["/a/../../b", "path_traversal"],
    ["/%2e%2e/etc", "path_traversal"],
  ])("refuses %s with %s", (input, code) => {
    expect(codeOf(() => normalizePath(input))).toBe(code);
  });
});

describe("normalizeOperation", () => {
  it("splits and normalizes path and query", () => {
    const op = normalizeOperation("POST", "//cart/./confirm?id=%7e7&next=%2fhome/x?y");
    expect(op).toEqual({ method: "POST", path: "/cart/confirm", query: "id=~7&next=%2Fhome/x?y" });
    expect(formatOperation(op)).toBe("POST /cart/confirm?id=~7&next=%2Fhome/x?y");
  });

  it("refuses control characters and malformed escapes in the query", () => {
    expect(codeOf(() => normalizeOperation("GET", "/a?x=%00"))).toBe("ambiguous_encoding");
    expect(codeOf(() => normalizeOperation("GET", "/a?x=%g0"))).toBe("malformed_escape");
    expect(codeOf(() => normalizeOperation("GET", "/a?x=a b"))).toBe("invalid_character");
  });

  it("omits the question mark when there is no query", () => {
    expect(formatOperation(normalizeOperation("GET", "/a"))).toBe("GET /a");
  });

  it.each(["get", "", "GET /", "G3T", "A".repeat(21)])("refuses method %j", (method) => {
    expect(codeOf(() => normalizeOperation(method, "/"))).toBe("invalid_method");
  });

  it("bounds the request target length", () => {
    expect(codeOf(() => normalizeOperation("GET", `/${"a".repeat(5000)}`))).toBe("target_too_long");
  });
});

describe("parseOperationClaim", () => {
  it("accepts a normalized op and returns its parts", () => {
    expect(parseOperationClaim("POST /pay-for-order/12345")).toEqual({
      method: "POST",
      path: "/pay-for-order/12345",
      query: "",
    });
  });

  it.each(["POST //pay", "POST /a/../b", "POST /%7e", "POST", " /a", "POST /a?"])(
    "refuses the non-normalized claim %j",
    (op) => {
      expect(codeOf(() => parseOperationClaim(op))).toBeDefined();
    },
  );
});
