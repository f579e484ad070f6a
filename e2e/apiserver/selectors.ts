/**
 * Label selectors (the query-string grammar of k8s.io/apimachinery/pkg/labels and the
 * metav1.LabelSelector object form) and field selectors.
 */
import { badRequest } from "./errors.js";
import { isObject, type JsonObject, type JsonValue, valueAtPath } from "./json.js";

type Operator = "=" | "!=" | "in" | "notin" | "exists" | "!" | "gt" | "lt";

interface Requirement {
  readonly key: string;
  readonly operator: Operator;
  readonly values: readonly string[];
}

export interface LabelSelector {
  matches(labels: Readonly<Record<string, string>>): boolean;
  readonly empty: boolean;
}

const KEY =
  /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const MAX_SELECTOR_LENGTH = 16 * 1024;

function requirementMatches(requirement: Requirement, labels: Readonly<Record<string, string>>): boolean {
  const has = Object.hasOwn(labels, requirement.key);
  const value = has ? labels[requirement.key] : undefined;
  switch (requirement.operator) {
    case "=":
    case "in":
      return value !== undefined && requirement.values.includes(value);
    case "!=":
    case "notin":
      return value === undefined || !requirement.values.includes(value);
    case "exists":
      return has;
    case "!":
      return !has;
    case "gt":
    case "lt": {
      if (value === undefined || !/^-?[0-9]+$/.test(value)) return false;
      const bound = Number(requirement.values[0]);
      return requirement.operator === "gt" ? Number(value) > bound : Number(value) < bound;
    }
  }
}

function selectorOf(requirements: readonly Requirement[]): LabelSelector {
  return {
    empty: requirements.length === 0,
    matches: (labels) => requirements.every((requirement) => requirementMatches(requirement, labels)),
  };
}

export const EVERYTHING: LabelSelector = selectorOf([]);
export const NOTHING: LabelSelector = { empty: false, matches: () => false };

/** Splits on commas that are not inside parentheses. */
function splitTopLevel(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let current = "";
  for (const char of text) {
    if (char === "(") depth += 1;
    if (char === ")") depth -= 1;
    if (char === "," && depth === 0) {
      parts.push(current);
      current = "";
    } else {
      current += char;
    }
  }
  parts.push(current);
  return parts;
}

function checkKey(key: string, text: string): string {
  if (!KEY.test(key) || key.length > 316) {
    throw badRequest(`unable to parse requirement: invalid label key "${key}" in "${text}"`);
  }
  return key;
}

function checkValue(value: string, text: string): string {
  if (!VALUE.test(value) || value.length > 63) {
    throw badRequest(`unable to parse requirement: invalid label value "${value}" in "${text}"`);
  }
  return value;
}

function parseRequirement(raw: string): Requirement {
  const text = raw.trim();
  if (text.startsWith("!")) return { key: checkKey(text.slice(1).trim(), text), operator: "!", values: [] };
  const set = /^(\S+)\s+(in|notin)\s*\((.*)\)$/.exec(text);
  if (set !== null) {
    const values = (set[3] ?? "")
      .split(",")
      .map((value) => checkValue(value.trim(), text))
      .filter((value, index, all) => all.indexOf(value) === index);
    return { key: checkKey(set[1] ?? "", text), operator: set[2] === "in" ? "in" : "notin", values };
  }
  const binary = /^([^=!<>\s]+)\s*(==|=|!=|>|<)\s*(.*)$/.exec(text);
  if (binary !== null) {
    const key = checkKey(binary[1] ?? "", text);
    const value = (binary[3] ?? "").trim();
    const symbol = binary[2];
    if (symbol === ">" || symbol === "<") {
      if (!/^-?[0-9]+$/.test(value))
        throw badRequest(`unable to parse requirement: "${text}" needs an integer`);
      return { key, operator: symbol === ">" ? "gt" : "lt", values: [value] };
    }
    return { key, operator: symbol === "!=" ? "!=" : "=", values: [checkValue(value, text)] };
  }
  return { key: checkKey(text, text), operator: "exists", values: [] };
}

/** Parses `a=b,c!=d,e in (f,g),!h` — the labelSelector query parameter. */
export function parseLabelSelector(text: string | null | undefined): LabelSelector {
  if (text === null || text === undefined || text.trim() === "") return EVERYTHING;
  if (text.length > MAX_SELECTOR_LENGTH) throw badRequest("labelSelector is too long");
  return selectorOf(splitTopLevel(text).map(parseRequirement));
}

/** metav1.LabelSelector: undefined means everything (webhook defaults), null means nothing. */
export function labelSelectorFromObject(value: JsonValue | undefined): LabelSelector {
  if (value === undefined) return EVERYTHING;
  if (!isObject(value)) return NOTHING;
  const requirements: Requirement[] = [];
  const matchLabels = value.matchLabels;
  if (isObject(matchLabels)) {
    for (const [key, expected] of Object.entries(matchLabels)) {
      if (typeof expected === "string") requirements.push({ key, operator: "=", values: [expected] });
    }
  }
  const expressions = value.matchExpressions;
  if (Array.isArray(expressions)) {
    for (const expression of expressions) {
      if (!isObject(expression) || typeof expression.key !== "string") return NOTHING;
      const values = Array.isArray(expression.values)
        ? expression.values.filter((item): item is string => typeof item === "string")
        : [];
      const operator = (
        { In: "in", NotIn: "notin", Exists: "exists", DoesNotExist: "!" } as Record<string, Operator>
      )[String(expression.operator)];
      if (operator === undefined) return NOTHING;
      requirements.push({ key: expression.key, operator, values });
    }
  }
  return selectorOf(requirements);
}

export function labelsOf(object: JsonObject | undefined): Record<string, string> {
  const labels = valueAtPath(object, ["metadata", "labels"]);
  const result: Record<string, string> = {};
  if (isObject(labels)) {
    for (const [key, value] of Object.entries(labels)) if (typeof value === "string") result[key] = value;
  }
  return result;
}

interface FieldRequirement {
  readonly path: readonly string[];
  readonly field: string;
  readonly equal: boolean;
  readonly value: string;
}

export interface FieldSelector {
  matches(object: JsonObject): boolean;
  /** The name a `metadata.name=x` selector pins, for single-object watches. */
  readonly name: string | undefined;
}

export const ALL_FIELDS: FieldSelector = { matches: () => true, name: undefined };

function fieldValue(object: JsonObject, path: readonly string[]): string {
  const value = valueAtPath(object, path);
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return "";
}

/** Parses `metadata.name=x,metadata.namespace!=y`; only the fields in `supported` are accepted. */
export function parseFieldSelector(
  text: string | null | undefined,
  supported: readonly string[],
): FieldSelector {
  if (text === null || text === undefined || text.trim() === "") return ALL_FIELDS;
  if (text.length > MAX_SELECTOR_LENGTH) throw badRequest("fieldSelector is too long");
  const requirements: FieldRequirement[] = text.split(",").map((part) => {
    const match = /^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$/.exec(part);
    if (match === null) throw badRequest(`invalid selector: '${text}'; can't understand '${part}'`);
    const field = match[1] ?? "";
    if (!supported.includes(field)) throw badRequest(`field label not supported: ${field}`);
    return { field, path: field.split("."), equal: match[2] !== "!=", value: match[3] ?? "" };
  });
  const pinned = requirements.find(
    (requirement) => requirement.field === "metadata.name" && requirement.equal,
  );
  return {
    name: pinned?.value,
    matches: (object) =>
      requirements.every(
        (requirement) => (fieldValue(object, requirement.path) === requirement.value) === requirement.equal,
      ),
  };
}
