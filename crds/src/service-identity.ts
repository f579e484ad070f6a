/**
 * ServiceIdentity (custody.dev/v1alpha1, namespaced): who a workload is. The operator issues its
 * certificate, the token service turns that certificate into identity JWTs carrying `claims` and
 * `scopes`, and the registry publishes its public keys.
 */
import { z } from "zod";
import { distinguishedNameProblem, MAX_DN_LENGTH, normalizeDistinguishedName } from "./distinguished-name.js";
import { parseDuration, tryParseDuration } from "./duration.js";
import { API_GROUP_VERSION } from "./names.js";
import {
  claimMap,
  conditionsSchema,
  crd,
  dnsLabel,
  dnsSubdomain,
  durationField,
  ONLY_WHEN_VALID,
  objectMetaSchema,
  reportDuplicates,
  scopeTokenSchema,
  timestampSchema,
  uniqueList,
} from "./schema-kit.js";

export const SERVICE_IDENTITY_KIND = "ServiceIdentity";

export const KEY_ALGORITHMS = ["ECDSA-P256", "Ed25519", "RSA-2048"] as const;
export type KeyAlgorithm = (typeof KEY_ALGORITHMS)[number];

export const SERVICE_IDENTITY_CONDITION_TYPES = ["Ready", "CertificateIssued", "Published"] as const;

export const DEFAULT_ENVIRONMENT = "default";
export const DEFAULT_KEY_ALGORITHM: KeyAlgorithm = "ECDSA-P256";
export const DEFAULT_CERTIFICATE_DURATION = "24h";
export const DEFAULT_TOKEN_TTL = "15m";
export const MAX_IDENTITY_CLAIMS = 32;
export const MAX_IDENTITY_SCOPES = 32;
export const MAX_EXTERNAL_SUBJECTS = 16;
export const MAX_EDGE_AUDIENCES = 16;
export const MAX_AUDIENCE_LENGTH = 256;

const certificateSpecSchema = crd(
  z
    .strictObject({
      keyAlgorithm: crd(z.enum(KEY_ALGORITHMS), {
        description: "Key type of the workload's certificate and call-chain signatures.",
      }).default(DEFAULT_KEY_ALGORITHM),
      duration: durationField(
        { min: "1h", max: "2160h" },
        "Certificate lifetime, a Go duration from 1h to 2160h (90 days). Short lifetimes limit the damage of a stolen key.",
      ).default(DEFAULT_CERTIFICATE_DURATION),
      renewBefore: durationField(
        { min: "5m", max: "2159h" },
        "How long before expiry the operator renews. Must be shorter than duration. Default: a third of duration.",
      ).optional(),
    })
    .superRefine((certificate, ctx) => {
      if (certificate.renewBefore === undefined) return;
      const renewBefore = tryParseDuration(certificate.renewBefore);
      const duration = tryParseDuration(certificate.duration);
      if (renewBefore !== undefined && duration !== undefined && renewBefore >= duration) {
        ctx.addIssue({
          code: "custom",
          path: ["renewBefore"],
          message: `must be shorter than duration (${certificate.renewBefore} is not less than ${certificate.duration})`,
        });
      }
    }),
  {
    description:
      "The workload certificate the operator issues (kept in Secret custody-identity.<namespace>.<name> of the operator's namespace).",
    "x-kubernetes-validations": [
      {
        rule: "!has(self.renewBefore) || duration(self.renewBefore) < duration(self.duration)",
        message: "renewBefore must be shorter than duration",
        fieldPath: ".renewBefore",
      },
    ],
  },
);

const distinguishedNameSchema = () =>
  z
    .string()
    .min(1)
    .max(MAX_DN_LENGTH)
    .superRefine((dn, ctx) => {
      const problem = distinguishedNameProblem(dn);
      if (problem !== undefined) {
        ctx.addIssue({ code: "custom", message: `is not an RFC 4514 distinguished name: it ${problem}` });
      }
    });

/**
 * One external subject: a certificate subject DN *and* the CA that must have issued it. A subject
 * alone would let any trusted CA (partner B) issue a certificate with another partner's (A's) subject
 * and authenticate as A's identity; naming the issuer binds each subject to the one CA that vouches
 * for it.
 */
export const externalSubjectSchema = crd(
  z.strictObject({
    issuer: crd(distinguishedNameSchema(), {
      description:
        "Subject DN (RFC 4514, most specific first) of the trusted CA that issues this subject's certificates: a CA of the operator's --trust-bundle, or Custody's own CA for partner CSRs it signed (e.g. \"CN=Partner Ltd Root CA,O=Partner Ltd,C=GB\").",
    }),
    subject: crd(distinguishedNameSchema(), {
      description:
        'Subject DN (RFC 4514, most specific first) of the client certificate, e.g. "CN=partner-client,O=Partner Ltd,C=GB".',
    }),
  }),
  { description: "A client certificate subject and the CA that vouches for it." },
);

export type ExternalSubject = z.output<typeof externalSubjectSchema>;

/** How external subjects are compared: both DNs in normalizeDistinguishedName's spelling. */
export function externalSubjectKey(subject: { readonly issuer: string; readonly subject: string }): string {
  return `${normalizeDistinguishedName(subject.issuer)}\n${normalizeDistinguishedName(subject.subject)}`;
}

const externalSubjectsSchema = crd(
  z
    .array(externalSubjectSchema)
    .min(1)
    .max(MAX_EXTERNAL_SUBJECTS)
    .superRefine((subjects, ctx) => {
      reportDuplicates(ctx, subjects, externalSubjectKey, (_subject, first, index) => ({
        path: [index],
        message: `is the same issuer and subject as externalSubjects[${first}]`,
      }));
    }, ONLY_WHEN_VALID),
  {
    description:
      "Client certificates that are not mesh identities (a partner's CA, or partner CSRs signed by Custody's CA) and authenticate as this identity: each a subject DN and the CA that issues it. Only the named CA vouches for its subject.",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["issuer", "subject"],
  },
);

export const serviceIdentitySpecSchema = crd(
  z
    .strictObject({
      serviceAccountName: crd(dnsSubdomain(), {
        description:
          "The Kubernetes service account whose pods may use this identity. Default: the ServiceIdentity's name.",
      }).optional(),
      environment: crd(dnsLabel(), {
        description: "Deployment environment (dev, staging, prod, ...), the `env` claim of identity JWTs.",
      }).default(DEFAULT_ENVIRONMENT),
      claims: claimMap({
        maxKeys: MAX_IDENTITY_CLAIMS,
        refuseReserved: true,
        description:
          "Extra claims the token service puts into this identity's JWTs (e.g. team: payments). Reserved JWT claim names are refused.",
      }).optional(),
      scopes: uniqueList(
        scopeTokenSchema,
        MAX_IDENTITY_SCOPES,
        "OAuth scopes (RFC 6749 scope tokens) granted to this identity's JWTs.",
      ).optional(),
      certificate: certificateSpecSchema.prefault({}),
      tokenTTL: durationField(
        { min: "1m", max: "24h" },
        "Lifetime of identity JWTs, from 1m to 24h. The token service never lets a token outlive its certificate.",
      ).default(DEFAULT_TOKEN_TTL),
      externalSubjects: externalSubjectsSchema.optional(),
      edge: crd(z.boolean(), {
        description: "An edge service may start call chains that carry a user's token from a trusted issuer.",
      }).default(false),
      edgeAudiences: uniqueList(
        z.string().min(1).max(MAX_AUDIENCE_LENGTH),
        MAX_EDGE_AUDIENCES,
        "For an edge: the audiences (aud) a user's token must name, one of them, to be admitted here. Default: the service id (<name>.<namespace>), so a token issued for one edge is never admitted at another.",
      ).optional(),
    })
    .superRefine((spec, ctx) => {
      if (spec.edgeAudiences !== undefined && !spec.edge) {
        ctx.addIssue({
          code: "custom",
          path: ["edgeAudiences"],
          message: "applies only to an edge (edge: true)",
        });
      }
    }),
  {
    description: "What this workload is and how its credentials are issued.",
    "x-kubernetes-validations": [
      {
        rule: "!has(self.edgeAudiences) || self.edge",
        message: "edgeAudiences applies only to an edge (edge: true)",
        fieldPath: ".edgeAudiences",
      },
    ],
  },
);

/**
 * The audiences a user's token must name (one of them) to be admitted at this identity's edge:
 * spec.edgeAudiences, else the service id. Undefined for an identity that is not an edge.
 */
export function edgeAudiencesOf(identity: ServiceIdentity, id: string): readonly string[] | undefined {
  if (!identity.spec.edge) return undefined;
  return identity.spec.edgeAudiences ?? [id];
}

const certificateStatusSchema = crd(
  z.strictObject({
    serialNumber: z
      .string()
      .max(40)
      .regex(/^[0-9a-f]{1,40}$/, { error: "must be lower-case hex, at most 20 bytes" }),
    notBefore: timestampSchema,
    notAfter: timestampSchema,
    fingerprintSHA256: z
      .string()
      .length(64, { error: "must be 64 lower-case hex digits", abort: true })
      .regex(/^[0-9a-f]{64}$/, { error: "must be 64 lower-case hex digits" }),
  }),
  { description: "The certificate currently in force (the operator keeps it in its own namespace)." },
);

export const keyIdSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9_-]+$/, { error: "must contain only letters, digits, '-' and '_' (base64url)" });

export const serviceIdentityStatusSchema = z.strictObject({
  observedGeneration: crd(z.int().min(0).optional(), { format: "int64" }),
  conditions: conditionsSchema(SERVICE_IDENTITY_CONDITION_TYPES).optional(),
  certificate: certificateStatusSchema.optional(),
  keyId: crd(keyIdSchema, {
    description: "JWK key id of the current signing key, as in the registry.",
  }).optional(),
});

export const serviceIdentitySchema = crd(
  z.strictObject({
    apiVersion: z.literal(API_GROUP_VERSION),
    kind: z.literal(SERVICE_IDENTITY_KIND),
    metadata: objectMetaSchema(dnsLabel()),
    spec: serviceIdentitySpecSchema.prefault({}),
    status: serviceIdentityStatusSchema.optional(),
  }),
  {
    description:
      "A workload identity: certificate, identity JWT claims and scopes. Its service id is <name>.<namespace>.",
  },
);

/** A ServiceIdentity with every default applied (what validateServiceIdentity returns). */
export type ServiceIdentity = z.output<typeof serviceIdentitySchema>;
/** A ServiceIdentity as a person writes it: defaults still optional. */
export type ServiceIdentityInput = z.input<typeof serviceIdentitySchema>;
export type ServiceIdentitySpec = ServiceIdentity["spec"];
export type ServiceIdentityStatus = z.output<typeof serviceIdentityStatusSchema>;

/** The service account whose pods may carry this identity (spec.serviceAccountName, else the name). */
export function serviceAccountNameOf(identity: ServiceIdentity): string {
  return identity.spec.serviceAccountName ?? identity.metadata.name;
}

/** Certificate lifetime and renewal lead time in milliseconds, renewBefore's default applied. */
export function certificateTimings(identity: ServiceIdentity): { durationMs: number; renewBeforeMs: number } {
  const { duration, renewBefore } = identity.spec.certificate;
  const durationMs = parseDuration(duration);
  const renewBeforeMs = renewBefore === undefined ? Math.floor(durationMs / 3) : parseDuration(renewBefore);
  return { durationMs, renewBeforeMs };
}
