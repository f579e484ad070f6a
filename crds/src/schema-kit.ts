/**
 * Building blocks shared by the ServiceIdentity, AccessPolicy and registry schemas, and the
 * registry of CRD-only annotations (descriptions, CEL rules, list types) that the CRD generator
 * reads. Those annotations live in their own zod registry, passed explicitly to
 * `z.toJSONSchema`, so nothing is installed in zod's global registry.
 */
import { z } from "zod";
import {
  DURATION_PATTERN,
  durationProblem,
  formatDuration,
  MAX_DURATION_LENGTH,
  tryParseDuration,
} from "./duration.js";
import { DNS_LABEL_PATTERN, DNS_SUBDOMAIN_MAX_LENGTH, DNS_SUBDOMAIN_PATTERN } from "./names.js";

/**
 * Adds an issue for every item whose key an earlier item already had (items without a key are
 * skipped): the one loop behind every "must be unique" rule. `first` is the earlier item's index.
 */
export function reportDuplicates<T>(
  ctx: z.RefinementCtx,
  items: readonly T[],
  keyOf: (item: T) => string | undefined,
  issue: (key: string, first: number, index: number) => { path: PropertyKey[]; message: string },
): void {
  const seen = new Map<string, number>();
  items.forEach((item, index) => {
    const key = keyOf(item);
    if (key === undefined) return;
    const first = seen.get(key);
    if (first === undefined) seen.set(key, index);
    else ctx.addIssue({ code: "custom", ...issue(key, first, index) });
  });
}

/** A Kubernetes `x-kubernetes-validations` entry. */
export interface CelRule {
  readonly rule: string;
  readonly message: string;
  readonly fieldPath?: string;
}

/** What a zod schema contributes to the CRD beyond what `z.toJSONSchema` derives from it. */
export interface CrdMeta {
  readonly description?: string;
  readonly format?: string;
  readonly maxProperties?: number;
  /** Exactly-one-of, expressed structurally as `oneOf` over `required` lists. */
  readonly oneOf?: readonly { readonly required: readonly string[] }[];
  readonly "x-kubernetes-validations"?: readonly CelRule[];
  readonly "x-kubernetes-list-type"?: "atomic" | "set" | "map";
  readonly "x-kubernetes-list-map-keys"?: readonly string[];
}

export const crdMetadata = z.registry<CrdMeta>();

/**
 * For cross-field refinements that need well-formed parts (e.g. comparing normalized subjects):
 * zod runs refinements after non-aborting issues too, and a refinement must not trip over them.
 */
export const ONLY_WHEN_VALID: z.core.$ZodSuperRefineParams = {
  when: (payload) => payload.issues.length === 0,
};

/**
 * A copy of `schema` carrying CRD annotations (in crdMetadata only), merged over the ones `schema`
 * already has. A copy, so that annotating a shared schema in one place never changes it elsewhere.
 */
export function crd<T extends z.ZodType>(schema: T, meta: CrdMeta): T {
  const copy = schema.clone() as T;
  const merged: CrdMeta = { ...crdMetadata.get(schema), ...meta };
  crdMetadata.add(copy as z.ZodType, merged);
  return copy;
}

export function dnsLabel() {
  return z.string().max(63).regex(new RegExp(DNS_LABEL_PATTERN), {
    error:
      "must be a DNS label: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit",
  });
}

export function dnsSubdomain() {
  return z.string().max(DNS_SUBDOMAIN_MAX_LENGTH).regex(new RegExp(DNS_SUBDOMAIN_PATTERN), {
    error: "must be a DNS subdomain: lower-case letters, digits, '-' and '.'",
  });
}

/** RFC 3339 as Kubernetes writes metav1.Time, with a real calendar date. */
export const timestampSchema = crd(
  z
    .string()
    .max(64)
    .regex(
      /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$/,
      {
        error: 'must be an RFC 3339 time such as "2024-05-01T12:00:00Z"',
        abort: true,
      },
    )
    .refine(isRealDateTime, { error: "is not a valid date and time" }),
  { format: "date-time" },
);

/** Date.parse rolls 2024-02-30 over to March; this does not. */
function isRealDateTime(text: string): boolean {
  const [year, month, day, hour, minute, second] = [0, 5, 8, 11, 14, 17].map((at) =>
    Number(text.slice(at, at === 0 ? 4 : at + 2)),
  );
  if (year === undefined || month === undefined || day === undefined) return false;
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate();
  return (
    month >= 1 &&
    month <= 12 &&
    day >= 1 &&
    day <= daysInMonth &&
    (hour ?? 99) <= 23 &&
    (minute ?? 99) <= 59 &&
    (second ?? 99) <= 60 &&
    !Number.isNaN(Date.parse(text))
  );
}

/** A list whose entries must be distinct; a CRD `x-kubernetes-list-type: set`. */
export function uniqueList<T extends z.ZodType<string | number>>(
  item: T,
  maxItems: number,
  description: string,
) {
  return crd(
    z
      .array(item)
      .min(1)
      .max(maxItems)
      .superRefine((list, ctx) => {
        reportDuplicates(ctx, list, JSON.stringify, (key, _first, index) => ({
          path: [index],
          message: `${key} is listed twice`,
        }));
      }),
    { description, "x-kubernetes-list-type": "set" },
  );
}

/**
 * A Go duration string with bounds, checked by zod and, in the CRD, by the same comparison in CEL
 * (Gateway API style), so `kubectl apply` and `custody validate` agree.
 */
export function durationField(bounds: { min: string; max: string }, description: string) {
  const min = tryParseDuration(bounds.min) ?? 0;
  const max = tryParseDuration(bounds.max) ?? 0;
  return crd(
    z
      .string()
      .max(MAX_DURATION_LENGTH)
      .regex(new RegExp(DURATION_PATTERN), {
        error: 'must be a duration such as "24h", "1h30m" or "90s" (units h, m, s, ms)',
        abort: true,
      })
      .superRefine((text, ctx) => {
        const problem = durationProblem(text);
        const ms = tryParseDuration(text);
        if (problem !== undefined || ms === undefined) {
          ctx.addIssue({ code: "custom", message: problem ?? "is not a duration" });
        } else if (ms < min || ms > max) {
          ctx.addIssue({
            code: "custom",
            message: `must be between ${formatDuration(min)} and ${formatDuration(max)} (got ${text})`,
          });
        }
      }),
    {
      description,
      "x-kubernetes-validations": [
        {
          rule: `duration(self) >= duration('${bounds.min}') && duration(self) <= duration('${bounds.max}')`,
          message: `must be between ${bounds.min} and ${bounds.max}`,
        },
      ],
    },
  );
}

/**
 * Claim names: JSON-friendly identifiers. Starting with a letter also keeps `__proto__` and
 * friends out of every map built from them.
 */
export const CLAIM_NAME_PATTERN = /^[A-Za-z][A-Za-z0-9_.-]{0,62}$/;
export const MAX_CLAIM_VALUE_LENGTH = 256;

/**
 * Claim names Custody sets itself (or that JWT, OAuth and OIDC define). An identity's extra claims
 * must not shadow them: a claim `sub: admin` would otherwise impersonate another service.
 * Compared case-insensitively, because some JWT libraries are lax about case.
 */
export const RESERVED_CLAIM_NAMES: readonly string[] = [
  // RFC 7519 registered claims
  "iss",
  "sub",
  "aud",
  "exp",
  "nbf",
  "iat",
  "jti",
  // what the token service puts in identity JWTs (ARCHITECTURE.md, "Token service")
  "env",
  "scope",
  "cnf",
  "act",
  "subject_issuer",
  // call-chain link claims
  "op",
  "bdh",
  "prv",
  "ctx",
  // RFC 8693 / RFC 9068 / OpenID Connect
  "may_act",
  "client_id",
  "scp",
  "azp",
  "auth_time",
  "nonce",
  "acr",
  "amr",
  "sid",
  "at_hash",
  "c_hash",
];

const reservedClaimNames = new Set(RESERVED_CLAIM_NAMES);

export function isReservedClaimName(name: string): boolean {
  return reservedClaimNames.has(name.toLowerCase());
}

/**
 * A string → string map of claims, bounded in keys and value length. With `refuseReserved`, names
 * from RESERVED_CLAIM_NAMES are refused (also in the CRD, by CEL `has()` checks, whose cost does
 * not depend on the key length).
 */
export function claimMap(options: { maxKeys: number; refuseReserved: boolean; description?: string }) {
  const { maxKeys, refuseReserved, description } = options;
  const rules: CelRule[] = [
    { rule: "self.all(k, k.size() <= 63)", message: "claim names must be at most 63 characters" },
  ];
  if (refuseReserved) {
    rules.push({
      rule: RESERVED_CLAIM_NAMES.map((name) => `!has(self.${name})`).join(" && "),
      message: `reserved claim names (${RESERVED_CLAIM_NAMES.join(", ")}) cannot be used`,
    });
  }
  return crd(
    z
      .record(
        z.string().regex(CLAIM_NAME_PATTERN, {
          error: "claim names start with a letter and contain letters, digits, '_', '-' and '.' (at most 63)",
        }),
        z.string().max(MAX_CLAIM_VALUE_LENGTH),
      )
      .superRefine((claims, ctx) => {
        const names = Object.keys(claims);
        if (names.length > maxKeys) {
          ctx.addIssue({
            code: "custom",
            message: `must have at most ${maxKeys} claims (got ${names.length})`,
          });
        }
        if (!refuseReserved) return;
        for (const name of names) {
          if (isReservedClaimName(name)) {
            ctx.addIssue({
              code: "custom",
              path: [name],
              message:
                "is a reserved claim name (set by Custody, or defined by JWT/OAuth/OIDC): choose another name",
            });
          }
        }
      }),
    {
      ...(description === undefined ? {} : { description }),
      maxProperties: maxKeys,
      "x-kubernetes-validations": rules,
    },
  );
}

/** RFC 6749 §3.3 scope-token: printable ASCII without space, '"' and '\'. */
export const scopeTokenSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[\x21\x23-\x5B\x5D-\x7E]+$/, {
    error: "must be an OAuth scope token: printable ASCII without spaces, '\"' or '\\'",
  });

export const conditionStatusSchema = z.enum(["True", "False", "Unknown"]);

/** metav1.Condition, field for field, so `kubectl wait --for=condition=Ready` works. */
export const conditionSchema = z.strictObject({
  type: z
    .string()
    .min(1)
    .max(316)
    .regex(
      /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$/,
      {
        error: "must be a condition type such as Ready",
      },
    ),
  status: conditionStatusSchema,
  observedGeneration: crd(z.int().min(0).optional(), { format: "int64" }),
  lastTransitionTime: timestampSchema,
  reason: z
    .string()
    .min(1)
    .max(1024)
    .regex(/^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/, {
      error: "must be a CamelCase reason such as Issued",
    }),
  message: z.string().max(32768),
});

export function conditionsSchema(types: readonly string[]) {
  return crd(
    z
      .array(conditionSchema)
      .max(8)
      .superRefine((conditions, ctx) => {
        reportDuplicates(
          ctx,
          conditions,
          (condition) => condition.type,
          (type, _first, index) => ({ path: [index, "type"], message: `condition ${type} is listed twice` }),
        );
      }),
    {
      description: `Latest observations, one per type: ${types.join(", ")}. Each has a reason and a message that says what to do.`,
      "x-kubernetes-list-type": "map",
      "x-kubernetes-list-map-keys": ["type"],
    },
  );
}

/**
 * The parts of ObjectMeta Custody relies on. Other fields (labels, uid, managedFields…) pass
 * through unchecked: the API server owns them, and objects read back from it carry them.
 */
export function objectMetaSchema<T extends z.ZodType<string>>(name: T) {
  return z.looseObject({
    name,
    namespace: dnsLabel().optional(),
    generation: z.int().min(0).optional(),
  });
}
