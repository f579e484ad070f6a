/**
 * The token request body (RFC 6749 §3.2 and appendix B): `application/x-www-form-urlencoded`,
 * UTF-8, every parameter at most once, empty values treated as absent (§3.1). Bounded in bytes and
 * in parameters before anything is decoded.
 */
import { OAuthError } from "./errors.js";

/** Far above any real token request (a user's JWT for token exchange is the largest part). */
export const MAX_TOKEN_REQUEST_BYTES = 16 * 1024;
export const MAX_TOKEN_REQUEST_PARAMETERS = 32;
const FORM_TYPE = "application/x-www-form-urlencoded";

function invalidRequest(reason: string, description: string): OAuthError {
  return new OAuthError("invalid_request", reason, description);
}

/** Accepts `application/x-www-form-urlencoded`, optionally with `charset=utf-8`, and nothing else. */
export function assertFormContentType(contentType: string | undefined): void {
  const [type = "", ...parameters] = (contentType ?? "").split(";").map((part) => part.trim().toLowerCase());
  const charsetOk = parameters.every((parameter) => parameter === "charset=utf-8" || parameter === "");
  if (type !== FORM_TYPE || !charsetOk) {
    throw invalidRequest(
      "bad_content_type",
      `the token request must be sent as ${FORM_TYPE} (got ${contentType === undefined ? "no Content-Type" : JSON.stringify(contentType.slice(0, 100))}).`,
    );
  }
}

export function parseTokenForm(body: Buffer): ReadonlyMap<string, string> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(body);
  } catch {
    throw invalidRequest("bad_encoding", "the token request body is not UTF-8.");
  }
  const pairs = text === "" ? [] : text.split("&");
  if (pairs.length > MAX_TOKEN_REQUEST_PARAMETERS) {
    throw invalidRequest(
      "too_many_parameters",
      `the token request has more than ${MAX_TOKEN_REQUEST_PARAMETERS} parameters.`,
    );
  }
  const form = new Map<string, string>();
  for (const [name, value] of new URLSearchParams(text)) {
    if (form.has(name)) {
      throw invalidRequest("repeated_parameter", `parameter "${printableName(name)}" is repeated.`);
    }
    form.set(name, value);
  }
  for (const [name, value] of form) if (value === "") form.delete(name);
  return form;
}

export function requireParameter(form: ReadonlyMap<string, string>, name: string): string {
  const value = form.get(name);
  if (value === undefined) throw invalidRequest("missing_parameter", `parameter "${name}" is required.`);
  return value;
}

function printableName(name: string): string {
  return name.replace(/[^\x21-\x7e]/g, "?").slice(0, 64);
}
