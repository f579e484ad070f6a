/**
 * Turns zod issues into `{path, message}` pairs a person can act on:
 * `spec.rules[0].operation.path: invalid regular expression: missing closing )`.
 *
 * The plain-word messages come from an error map passed to each parse call (never installed
 * globally), so messages written next to a schema check still take precedence over these.
 */
import type { z } from "zod";
import { ValidationError, type ValidationIssue } from "./errors.js";

type ZodIssue = z.core.$ZodIssue;

/** Longest value quoted back in a message; enough to recognise a typo, short of leaking data. */
const MAX_QUOTED_LENGTH = 40;

export const plainWords: z.core.$ZodErrorMap = (issue) => {
  switch (issue.code) {
    case "invalid_type":
      if (issue.input === undefined) return "is required";
      if (issue.expected === "never") return "is not allowed here";
      return `must be ${typeName(issue.expected)} (got ${describeValue(issue.input)})`;
    case "too_big":
      return tooBig(issue.origin, Number(issue.maximum), issue.inclusive !== false);
    case "too_small":
      return tooSmall(issue.origin, Number(issue.minimum), issue.inclusive !== false);
    case "invalid_value":
      return invalidValue(issue.values, issue.input);
    case "unrecognized_keys":
      return "unknown field";
    case "invalid_union":
      if (issue.discriminator !== undefined && Array.isArray(issue.options)) {
        return `must be one of ${issue.options.map(String).join(", ")}`;
      }
      return "does not match any of the allowed forms";
    case "invalid_format":
      return issue.format === "regex"
        ? `has an invalid format (must match ${issue.pattern})`
        : "has an invalid format";
    case "invalid_key":
      return "is not an allowed key";
    case "not_multiple_of":
      return `must be a multiple of ${issue.divisor}`;
    default:
      return undefined;
  }
};

/** zod issues as ValidationIssues; an unknown field is reported at its own path. */
export function toValidationIssues(issues: readonly ZodIssue[]): ValidationIssue[] {
  const out: ValidationIssue[] = [];
  for (const issue of issues) {
    if (issue.code === "unrecognized_keys") {
      for (const key of issue.keys)
        out.push({ path: formatPath([...issue.path, key]), message: issue.message });
    } else if (issue.code === "invalid_key") {
      const reasons = issue.issues.map((inner) => inner.message).join("; ");
      out.push({ path: formatPath(issue.path), message: `is not an allowed key: ${reasons}` });
    } else {
      out.push({ path: formatPath(issue.path), message: issue.message });
    }
  }
  return out;
}

/**
 * Parses `input` with `schema` and plain-word messages; throws ValidationError(code) naming
 * `subject` ("AccessPolicy shop/payments") when it does not conform.
 */
export function parseOrThrow<T extends z.ZodType>(
  schema: T,
  input: unknown,
  code: string,
  subject: string,
): z.output<T> {
  const result = schema.safeParse(input, { error: plainWords });
  if (result.success) return result.data;
  throw new ValidationError(code, subject, toValidationIssues(result.error.issues));
}

/** `spec.rules[0].require.comeFrom[1].via.path`; keys that are not identifiers are bracketed. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const segment of path) {
    if (typeof segment === "number") {
      out += `[${segment}]`;
    } else {
      const key = String(segment);
      if (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key)) out += out === "" ? key : `.${key}`;
      else out += `[${JSON.stringify(key)}]`;
    }
  }
  return out;
}

function tooBig(origin: string, maximum: number, inclusive: boolean): string {
  switch (origin) {
    case "string":
      return `must be at most ${maximum} characters`;
    case "array":
    case "set":
      return `must have at most ${maximum} ${maximum === 1 ? "entry" : "entries"}`;
    default:
      return inclusive ? `must be at most ${maximum}` : `must be less than ${maximum}`;
  }
}

function tooSmall(origin: string, minimum: number, inclusive: boolean): string {
  switch (origin) {
    case "string":
      return minimum <= 1 ? "must not be empty" : `must be at least ${minimum} characters`;
    case "array":
    case "set":
      return minimum <= 1 ? "must not be empty" : `must have at least ${minimum} entries`;
    default:
      return inclusive ? `must be at least ${minimum}` : `must be more than ${minimum}`;
  }
}

function invalidValue(values: readonly unknown[], input: unknown): string {
  const got = input === undefined ? "" : ` (got ${describeValue(input)})`;
  const [only] = values;
  if (values.length === 1) return `must be ${describeValue(only)}${got}`;
  return `must be one of ${values.map((value) => (typeof value === "string" ? value : String(value))).join(", ")}${got}`;
}

function typeName(expected: string): string {
  switch (expected) {
    case "int":
      return "a whole number";
    case "object":
    case "record":
      return "a mapping (object)";
    case "array":
      return "a list";
    case "number":
    case "string":
    case "boolean":
      return `a ${expected}`;
    default:
      return expected;
  }
}

function describeValue(value: unknown): string {
  if (typeof value === "string") {
    return JSON.stringify(value.length > MAX_QUOTED_LENGTH ? `${value.slice(0, MAX_QUOTED_LENGTH)}…` : value);
  }
  if (value === null) return "null";
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  return String(value);
}
