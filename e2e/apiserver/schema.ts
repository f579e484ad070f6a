/**
 * Structural OpenAPI v3 schemas of CustomResourceDefinitions: defaulting, pruning of unknown fields
 * and validation, in the order the real API server applies them (prune, default, validate).
 *
 * Validation runs on ajv with Go's regular-expression semantics (re2js, like the real server's RE2).
 * `x-kubernetes-*` extensions are accepted; `x-kubernetes-list-type: set|map` uniqueness is
 * enforced. CEL rules (`x-kubernetes-validations`) are NOT evaluated: the real server enforces them.
 */
import { isIP } from "node:net";
import { Ajv, type ErrorObject, type Options, type ValidateFunction } from "ajv";
import { RE2JS } from "re2js";
import type { StatusCause } from "./errors.js";
import { clone, deepEqual, isObject, type JsonObject, type JsonValue } from "./json.js";

export class SchemaError extends Error {
  override readonly name = "SchemaError";
}

const IGNORED_EXTENSIONS = [
  "x-kubernetes-preserve-unknown-fields",
  "x-kubernetes-embedded-resource",
  "x-kubernetes-int-or-string",
  "x-kubernetes-list-map-keys",
  "x-kubernetes-map-type",
  "x-kubernetes-validations",
  "example",
  "externalDocs",
];

type RegExpEngine = NonNullable<NonNullable<Options["code"]>["regExp"]>;

/**
 * Go's RE2 semantics for `pattern`. ajv caches compiled patterns by `toString()` of what the engine
 * returns, so the pattern must be part of it (or every pattern would share the first one's cache).
 */
const re2: RegExpEngine = Object.assign(
  (pattern: string) => {
    const compiled = RE2JS.compile(pattern);
    return { test: (input: string) => compiled.test(input), toString: () => `re2:${pattern}` };
  },
  { code: "re2" },
);

const DATE_TIME =
  /^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$/;
/** The formats kube-openapi's strfmt registry checks; every other format is accepted as-is. */
const KNOWN_FORMATS: Readonly<Record<string, (value: string) => boolean>> = {
  "date-time": (value) => DATE_TIME.test(value) && !Number.isNaN(Date.parse(value)),
  datetime: (value) => DATE_TIME.test(value) && !Number.isNaN(Date.parse(value)),
  date: (value) => /^[0-9]{4}-[0-9]{2}-[0-9]{2}$/.test(value) && !Number.isNaN(Date.parse(value)),
  byte: (value) => /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(value),
  uuid: (value) => /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i.test(value),
  ipv4: (value) => isIP(value) === 4,
  ipv6: (value) => isIP(value) === 6,
  cidr: (value) => {
    const [address, bits, extra] = value.split("/");
    const family = isIP(address ?? "");
    return (
      extra === undefined &&
      family !== 0 &&
      /^[0-9]+$/.test(bits ?? "") &&
      Number(bits) <= (family === 4 ? 32 : 128)
    );
  },
  mac: (value) => /^([0-9a-f]{2}[:-]){5}[0-9a-f]{2}$/i.test(value),
  hostname: (value) =>
    value.length <= 255 && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/i.test(value),
  email: (value) => /^[^@\s]+@[^@\s]+$/.test(value),
  uri: (value) => URL.canParse(value),
  duration: (value) => /^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h|d|w))+$/.test(value),
};

function collectFormats(schema: JsonValue, into: Set<string>): void {
  if (Array.isArray(schema)) {
    for (const item of schema) collectFormats(item, into);
  } else if (isObject(schema)) {
    for (const [key, value] of Object.entries(schema)) {
      if (key === "format" && typeof value === "string") into.add(value);
      else if (key !== "default" && key !== "enum" && key !== "example") collectFormats(value, into);
    }
  }
}

function listTypeKeyword(ajv: Ajv): void {
  ajv.addKeyword({
    keyword: "x-kubernetes-list-type",
    type: "array",
    schemaType: "string",
    validate: (listType: string, data: JsonValue[], parentSchema?: JsonObject) => {
      if (listType === "set") {
        return data.every((item, index) => data.findIndex((other) => deepEqual(other, item)) === index);
      }
      if (listType === "map") {
        const keys = parentSchema?.["x-kubernetes-list-map-keys"];
        if (!Array.isArray(keys)) return true;
        const tuple = (item: JsonValue): JsonValue[] =>
          keys.map((key) => (isObject(item) && typeof key === "string" ? (item[key] ?? null) : null));
        return data.every(
          (item, index) => data.findIndex((other) => deepEqual(tuple(other), tuple(item))) === index,
        );
      }
      return true;
    },
  });
}

function newAjv(schema: JsonObject): Ajv {
  const ajv = new Ajv({
    strict: false,
    allErrors: true,
    verbose: true,
    validateFormats: true,
    code: { regExp: re2 },
  });
  ajv.addVocabulary(IGNORED_EXTENSIONS);
  listTypeKeyword(ajv);
  const formats = new Set<string>();
  collectFormats(schema, formats);
  for (const format of formats) {
    const check = KNOWN_FORMATS[format];
    ajv.addFormat(format, check === undefined ? true : { type: "string", validate: check });
  }
  return ajv;
}

function describeValue(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (value === null || value === undefined) return "null";
  return Array.isArray(value) ? '"array"' : '"object"';
}

/** `/spec/scopes/0` in `root` → `spec.scopes[0]`, the field-path form of Kubernetes errors. */
function fieldPath(root: JsonValue, pointer: string, extra?: string): string {
  const tokens =
    pointer === ""
      ? []
      : pointer
          .slice(1)
          .split("/")
          .map((t) => t.replaceAll("~1", "/").replaceAll("~0", "~"));
  if (extra !== undefined) tokens.push(extra);
  let path = "";
  let current: JsonValue | undefined = root;
  for (const token of tokens) {
    if (Array.isArray(current)) {
      path += `[${token}]`;
      current = current[Number(token)];
    } else {
      path += path === "" ? token : `.${token}`;
      current = isObject(current) ? current[token] : undefined;
    }
  }
  return path;
}

function toCause(error: ErrorObject, root: JsonValue): StatusCause | undefined {
  const field = fieldPath(root, error.instancePath);
  const value = error.data;
  const invalid = (detail: string): StatusCause => ({
    reason: "FieldValueInvalid",
    field,
    message: `Invalid value: ${describeValue(value)}: ${field} in body ${detail}`,
  });
  const params = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case "required": {
      const missing = String(params.missingProperty);
      return {
        reason: "FieldValueRequired",
        field: fieldPath(root, error.instancePath, missing),
        message: "Required value",
      };
    }
    case "enum": {
      const allowed = Array.isArray(error.schema)
        ? error.schema.map((item: unknown) => describeValue(item)).join(", ")
        : "";
      return {
        reason: "FieldValueNotSupported",
        field,
        message: `Unsupported value: ${describeValue(value)}: supported values: ${allowed}`,
      };
    }
    case "type":
      return {
        reason: "FieldValueTypeInvalid",
        field,
        message: `Invalid value: ${describeValue(value)}: ${field} in body must be of type ${String(params.type)}: ${describeValue(value)}`,
      };
    case "pattern":
      return invalid(`should match '${String(params.pattern)}'`);
    case "maxLength":
      return {
        reason: "FieldValueTooLong",
        field,
        message: `Too long: may not be more than ${String(params.limit)} bytes`,
      };
    case "minLength":
      return invalid(`should be at least ${String(params.limit)} chars long`);
    case "maxItems":
    case "maxProperties": {
      const count = Array.isArray(value) ? value.length : isObject(value) ? Object.keys(value).length : 0;
      return {
        reason: "FieldValueTooMany",
        field,
        message: `Too many: ${count}: must have at most ${String(params.limit)} items`,
      };
    }
    case "minItems":
      return invalid(`should have at least ${String(params.limit)} items`);
    case "minProperties":
      return invalid(`should have at least ${String(params.limit)} properties`);
    case "minimum":
    case "exclusiveMinimum":
      return invalid(
        `should be greater than ${error.keyword === "minimum" ? "or equal to " : ""}${String(params.limit)}`,
      );
    case "maximum":
    case "exclusiveMaximum":
      return invalid(
        `should be less than ${error.keyword === "maximum" ? "or equal to " : ""}${String(params.limit)}`,
      );
    case "multipleOf":
      return invalid(`should be a multiple of ${String(params.multipleOf)}`);
    case "format":
      return invalid(`must be of type ${String(params.format)}: ${describeValue(value)}`);
    case "oneOf":
      return invalid("must validate one and only one schema (oneOf)");
    case "anyOf":
      return invalid("must validate at least one schema (anyOf)");
    case "not":
      return invalid("must not validate the schema (not)");
    case "uniqueItems":
    case "x-kubernetes-list-type": {
      const items = Array.isArray(value) ? value : [];
      const index = items.findIndex((item, at) => items.findIndex((other) => deepEqual(other, item)) !== at);
      return {
        reason: "FieldValueDuplicate",
        field: index < 0 ? field : `${field}[${index}]`,
        message: `Duplicate value: ${describeValue(items[index] ?? null)}`,
      };
    }
    case "if":
      return undefined;
    default:
      return invalid(error.message ?? `failed ${error.keyword}`);
  }
}

/** Drops the errors of the branches of a failed oneOf/anyOf/not: the combinator error says it. */
function withoutBranchErrors(errors: readonly ErrorObject[]): ErrorObject[] {
  const combinators = errors.filter((error) => ["oneOf", "anyOf", "not"].includes(error.keyword));
  return errors.filter(
    (error) =>
      !combinators.some(
        (combinator) => combinator !== error && error.schemaPath.startsWith(`${combinator.schemaPath}/`),
      ),
  );
}

function objectSchema(value: JsonValue | undefined): JsonObject | undefined {
  return isObject(value) ? value : undefined;
}

export class StructuralSchema {
  private readonly validator: ValidateFunction;

  private constructor(private readonly root: JsonObject) {
    this.validator = newAjv(root).compile(root);
  }

  /** Throws SchemaError when ajv (or RE2) refuses the schema. */
  static compile(openApiV3Schema: JsonObject): StructuralSchema {
    if (openApiV3Schema.type !== "object")
      throw new SchemaError('type: Required value: must be "object" at the root');
    try {
      return new StructuralSchema(clone(openApiV3Schema));
    } catch (error) {
      throw new SchemaError(error instanceof Error ? error.message : String(error));
    }
  }

  /**
   * Removes fields the schema does not declare (not in metadata, nor under
   * x-kubernetes-preserve-unknown-fields). Returns their paths for fieldValidation Warn/Strict.
   */
  prune(object: JsonObject): string[] {
    const unknown: string[] = [];
    this.pruneObject(object, this.root, "", unknown, true);
    return unknown;
  }

  private pruneValue(
    value: JsonValue,
    schema: JsonObject | undefined,
    path: string,
    unknown: string[],
  ): void {
    if (schema === undefined) return;
    if (Array.isArray(value)) {
      const items = objectSchema(schema.items);
      value.forEach((item, index) => {
        this.pruneValue(item, items, `${path}[${index}]`, unknown);
      });
    } else if (isObject(value)) {
      this.pruneObject(value, schema, path, unknown, schema["x-kubernetes-embedded-resource"] === true);
    }
  }

  private pruneObject(
    value: JsonObject,
    schema: JsonObject,
    path: string,
    unknown: string[],
    resource: boolean,
  ): void {
    const properties = objectSchema(schema.properties);
    const additional = schema.additionalProperties;
    const preserve = schema["x-kubernetes-preserve-unknown-fields"] === true;
    for (const key of Object.keys(value)) {
      const child = value[key] as JsonValue;
      const childPath = path === "" ? key : `${path}.${key}`;
      // ObjectMeta is never pruned (a schema may only constrain name and generateName).
      if (resource && (key === "apiVersion" || key === "kind" || key === "metadata")) continue;
      const declared = properties === undefined ? undefined : objectSchema(properties[key]);
      if (declared !== undefined) {
        this.pruneValue(child, declared, childPath, unknown);
      } else if (isObject(additional)) {
        this.pruneValue(child, additional, childPath, unknown);
      } else if (additional === true || preserve) {
        // kept as sent
      } else {
        unknown.push(childPath);
        delete value[key];
      }
    }
  }

  /** Applies `default` values top-down (a defaulted object is itself defaulted), in place. */
  applyDefaults(object: JsonObject): void {
    this.defaultValue(object, this.root);
  }

  private defaultValue(value: JsonValue, schema: JsonObject): void {
    if (Array.isArray(value)) {
      const items = objectSchema(schema.items);
      if (items !== undefined) for (const item of value) this.defaultValue(item, items);
      return;
    }
    if (!isObject(value)) return;
    const properties = objectSchema(schema.properties);
    if (properties !== undefined) {
      for (const [key, raw] of Object.entries(properties)) {
        const property = objectSchema(raw);
        if (property === undefined) continue;
        const current = value[key];
        const nullable = property.nullable === true;
        if (property.default !== undefined && (current === undefined || (current === null && !nullable))) {
          value[key] = clone(property.default);
        }
        const now = value[key];
        if (now !== undefined) this.defaultValue(now, property);
      }
    }
    const additional = objectSchema(schema.additionalProperties);
    if (additional !== undefined) {
      for (const [key, child] of Object.entries(value)) {
        if (properties !== undefined && Object.hasOwn(properties, key)) continue;
        this.defaultValue(child, additional);
      }
    }
  }

  /** Validation errors as Status causes (field, reason, message), empty when valid. */
  validate(object: JsonObject): StatusCause[] {
    if (this.validator(object)) return [];
    const causes: StatusCause[] = [];
    for (const error of withoutBranchErrors(this.validator.errors ?? [])) {
      const cause = toCause(error, object);
      if (cause !== undefined && !causes.some((existing) => deepEqual({ ...existing }, { ...cause })))
        causes.push(cause);
    }
    return causes;
  }
}
