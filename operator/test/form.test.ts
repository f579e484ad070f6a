import { describe, expect, it } from "vitest";
import {
  assertFormContentType,
  MAX_TOKEN_REQUEST_PARAMETERS,
  parseTokenForm,
  requireParameter,
} from "../src/issuer/form.js";
import { refusal } from "./support/oauth.js";

describe("token request content type", () => {
  it.each(["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=UTF-8"])(
    "accepts %s",
    (type) => {
      expect(() => assertFormContentType(type)).not.toThrow();
    },
  );

  it.each([
    ["application/json", "bad_content_type"],
    ["application/x-www-form-urlencoded; charset=latin1", "bad_content_type"],
    ["multipart/form-data; boundary=x", "bad_content_type"],
  ])("refuses %s", (type, reason) => {
    const error = refusal(() => assertFormContentType(type));
    expect(error.code).toBe("invalid_request");
    expect(error.reason).toBe(reason);
    expect(error.status).toBe(400);
  });

  it("refuses a request without Content-Type", () => {
    expect(refusal(() => assertFormContentType(undefined)).message).toContain("no Content-Type");
  });
});

describe("token request form", () => {
  const form = (text: string) => parseTokenForm(Buffer.from(text));

  it("decodes parameters and treats empty values as absent (RFC 6749 §3.1)", () => {
    const parsed = form("grant_type=client_credentials&scope=a%20b&client_id=");
    expect(parsed.get("grant_type")).toBe("client_credentials");
    expect(parsed.get("scope")).toBe("a b");
    expect(parsed.has("client_id")).toBe(false);
  });

  it("refuses a repeated parameter (RFC 6749 §3.2)", () => {
    const error = refusal(() => form("grant_type=client_credentials&grant_type=password"));
    expect(error.reason).toBe("repeated_parameter");
    expect(error.message).toContain("grant_type");
  });

  it("refuses more parameters than the bound", () => {
    const text = Array.from({ length: MAX_TOKEN_REQUEST_PARAMETERS + 1 }, (_, i) => `p${i}=1`).join("&");
    expect(refusal(() => form(text)).reason).toBe("too_many_parameters");
  });

  it("refuses a body that is not UTF-8", () => {
    expect(refusal(() => parseTokenForm(Buffer.from([0x67, 0x3d, 0xff, 0xfe]))).reason).toBe("bad_encoding");
  });

  it("names a missing required parameter", () => {
    const error = refusal(() => requireParameter(form("scope=x"), "grant_type"));
    expect(error.reason).toBe("missing_parameter");
    expect(error.message).toBe('parameter "grant_type" is required.');
  });

  it("keeps control characters out of its messages", () => {
    const error = refusal(() => form("a%0Ab=1&a%0Ab=2"));
    expect(error.message).not.toMatch(/\n/);
  });
});
