/**
 * The subset of Kubernetes JSONPath that additionalPrinterColumns use: `.a.b`, `.a[0]`, `.a[*].b`,
 * `['a.b']`, escaped dots (`.a\.b`) and filters `[?(@.type=="Ready")]` with == != < > <= >=.
 * Unsupported syntax is rejected when the CRD is registered, not at print time.
 */
import { isObject, type JsonValue } from "./json.js";

type Step =
  | { readonly kind: "field"; readonly name: string }
  | { readonly kind: "index"; readonly index: number }
  | { readonly kind: "wildcard" }
  | {
      readonly kind: "filter";
      readonly path: readonly Step[];
      readonly operator: string | undefined;
      readonly literal: JsonValue | undefined;
    };

export class JsonPathError extends Error {
  override readonly name = "JsonPathError";
}

export interface JsonPath {
  readonly source: string;
  find(root: JsonValue): JsonValue[];
}

function parseLiteral(text: string): JsonValue {
  const trimmed = text.trim();
  if (/^'.*'$/.test(trimmed)) return trimmed.slice(1, -1);
  if (/^".*"$/.test(trimmed)) return JSON.parse(trimmed) as JsonValue;
  if (trimmed === "true" || trimmed === "false") return trimmed === "true";
  if (trimmed === "null") return null;
  if (/^-?[0-9]+(\.[0-9]+)?$/.test(trimmed)) return Number(trimmed);
  throw new JsonPathError(`unsupported literal ${trimmed}`);
}

function parseSteps(text: string): Step[] {
  const steps: Step[] = [];
  let position = 0;
  while (position < text.length) {
    const char = text[position];
    if (char === ".") {
      position += 1;
      let name = "";
      while (position < text.length && text[position] !== "." && text[position] !== "[") {
        if (text[position] === "\\" && position + 1 < text.length) position += 1;
        name += text[position];
        position += 1;
      }
      if (name === "") throw new JsonPathError(`empty field name in ${text}`);
      steps.push(name === "*" ? { kind: "wildcard" } : { kind: "field", name });
    } else if (char === "[") {
      const end = text.indexOf("]", position);
      if (end < 0) throw new JsonPathError(`unclosed [ in ${text}`);
      let inner = text.slice(position + 1, end);
      if (inner.startsWith("?(")) {
        const close = text.indexOf(")]", position);
        if (close < 0) throw new JsonPathError(`unclosed filter in ${text}`);
        inner = text.slice(position + 3, close);
        steps.push(parseFilter(inner, text));
        position = close + 2;
        continue;
      }
      if (inner === "*") steps.push({ kind: "wildcard" });
      else if (/^-?[0-9]+$/.test(inner)) steps.push({ kind: "index", index: Number(inner) });
      else if (/^'.*'$/.test(inner) || /^".*"$/.test(inner))
        steps.push({ kind: "field", name: inner.slice(1, -1) });
      else throw new JsonPathError(`unsupported subscript [${inner}] in ${text}`);
      position = end + 1;
    } else {
      throw new JsonPathError(`unexpected "${char}" in ${text}`);
    }
  }
  return steps;
}

function parseFilter(inner: string, text: string): Step {
  const match = /^@((?:\.[^\s=!<>]+)*)\s*(==|!=|<=|>=|<|>)?\s*(.*)$/.exec(inner.trim());
  if (match === null) throw new JsonPathError(`unsupported filter ?(${inner}) in ${text}`);
  const operator = match[2];
  return {
    kind: "filter",
    path: parseSteps(match[1] ?? ""),
    operator,
    literal: operator === undefined ? undefined : parseLiteral(match[3] ?? ""),
  };
}

function compare(left: JsonValue, operator: string, right: JsonValue): boolean {
  switch (operator) {
    case "==":
      return left === right;
    case "!=":
      return left !== right;
    default: {
      if (typeof left !== "number" || typeof right !== "number") return false;
      if (operator === "<") return left < right;
      if (operator === ">") return left > right;
      if (operator === "<=") return left <= right;
      return left >= right;
    }
  }
}

function evaluate(values: JsonValue[], steps: readonly Step[]): JsonValue[] {
  let current = values;
  for (const step of steps) {
    const next: JsonValue[] = [];
    for (const value of current) {
      if (step.kind === "field") {
        if (isObject(value) && Object.hasOwn(value, step.name)) next.push(value[step.name] as JsonValue);
      } else if (step.kind === "index") {
        if (Array.isArray(value)) {
          const item = value[step.index < 0 ? value.length + step.index : step.index];
          if (item !== undefined) next.push(item);
        }
      } else if (step.kind === "wildcard") {
        if (Array.isArray(value)) next.push(...value);
        else if (isObject(value)) next.push(...Object.values(value));
      } else {
        const candidates = Array.isArray(value) ? value : [value];
        for (const candidate of candidates) {
          const found = evaluate([candidate], step.path);
          const keep =
            step.operator === undefined || step.literal === undefined
              ? found.length > 0
              : found.some((item) => compare(item, step.operator ?? "==", step.literal ?? null));
          if (keep) next.push(candidate);
        }
      }
    }
    current = next;
  }
  return current;
}

/** Compiles `.spec.x` or `{.spec.x}`; throws JsonPathError for syntax outside the subset. */
export function compileJsonPath(source: string): JsonPath {
  let text = source.trim();
  if (text.startsWith("{") && text.endsWith("}")) text = text.slice(1, -1);
  if (text.startsWith("$")) text = text.slice(1);
  if (!text.startsWith(".") && !text.startsWith("[")) text = `.${text}`;
  const steps = parseSteps(text);
  return { source, find: (root) => evaluate([root], steps) };
}
