/**
 * Reading and validating ServiceIdentity / AccessPolicy manifests, from YAML text or from objects
 * (as read back from the API server). YAML is parsed defensively: bounded size and document
 * count, no custom tags, no merge keys, duplicate keys refused, alias expansion bounded.
 */
import { type Document, parseAllDocuments } from "yaml";
import { ACCESS_POLICY_KIND, type AccessPolicy, accessPolicySchema } from "./access-policy.js";
import { ValidationError } from "./errors.js";
import { parseOrThrow } from "./issues.js";
import { isDnsLabel, isDnsSubdomain } from "./names.js";
import { SERVICE_IDENTITY_KIND, type ServiceIdentity, serviceIdentitySchema } from "./service-identity.js";

export const MAX_MANIFEST_BYTES = 1024 * 1024;
export const MAX_MANIFEST_DOCUMENTS = 100;
/** Aliased nodes yaml may expand per document; a "billion laughs" document needs far more. */
export const MAX_YAML_ALIAS_COUNT = 100;

export const MANIFEST_KINDS = [SERVICE_IDENTITY_KIND, ACCESS_POLICY_KIND] as const;

export type Manifest = ServiceIdentity | AccessPolicy;

/** Code of every ValidationError about a manifest's content. */
export const INVALID_MANIFEST = "invalid_manifest";
/** Code of a ValidationError about YAML that could not be read at all. */
export const INVALID_YAML = "invalid_yaml";

/**
 * The documents of a YAML stream as plain values; empty documents (a stray `---`) are skipped,
 * as kubectl does. Throws ValidationError(invalid_yaml) naming the line of the first problem.
 */
export function parseYamlDocuments(text: string, source = "input"): unknown[] {
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > MAX_MANIFEST_BYTES) {
    throw yamlError(source, `is ${bytes} bytes; manifests are limited to ${MAX_MANIFEST_BYTES} bytes`);
  }
  const parsed = parseAllDocuments(text, {
    version: "1.2",
    schema: "core",
    merge: false,
    uniqueKeys: true,
    strict: true,
    prettyErrors: true,
    customTags: [],
  });
  const documents: Document[] = Array.isArray(parsed) ? parsed : [];
  if (documents.length > MAX_MANIFEST_DOCUMENTS) {
    throw yamlError(source, `has ${documents.length} documents; at most ${MAX_MANIFEST_DOCUMENTS} are read`);
  }
  const values: unknown[] = [];
  for (const [index, document] of documents.entries()) {
    // yaml reports an unknown tag (e.g. !!js/function) as a warning; Custody refuses it.
    const [problem] = [...document.errors, ...document.warnings];
    if (problem !== undefined)
      throw yamlError(source, `document ${index + 1}: ${firstLine(problem.message)}`);
    let value: unknown;
    try {
      value = document.toJS({ maxAliasCount: MAX_YAML_ALIAS_COUNT });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw yamlError(
        source,
        `document ${index + 1}: ${reason} (at most ${MAX_YAML_ALIAS_COUNT} aliased nodes are expanded)`,
      );
    }
    if (value !== null && value !== undefined) values.push(value);
  }
  return values;
}

/**
 * Exactly one manifest, from YAML text or from an already-parsed object.
 * Throws ValidationError (invalid_yaml or invalid_manifest).
 */
export function parseManifest(input: unknown): Manifest {
  if (typeof input !== "string") return validateManifest(input);
  const documents = parseYamlDocuments(input);
  const [only] = documents;
  if (documents.length !== 1 || only === undefined) {
    throw new ValidationError(INVALID_MANIFEST, "input", [
      { path: "", message: `must hold exactly one document (found ${documents.length})` },
    ]);
  }
  return validateManifest(only);
}

/** Every manifest of a YAML stream; the first invalid one throws. */
export function parseManifests(text: string, source = "input"): Manifest[] {
  return parseYamlDocuments(text, source).map(validateManifest);
}

/** A ServiceIdentity or an AccessPolicy, chosen by `kind`. */
export function validateManifest(value: unknown): Manifest {
  const kind = fieldOf(value, "kind");
  if (kind === SERVICE_IDENTITY_KIND) return validateServiceIdentity(value);
  if (kind === ACCESS_POLICY_KIND) return validateAccessPolicy(value);
  const got = typeof kind === "string" ? ` (got ${JSON.stringify(kind.slice(0, 64))})` : "";
  throw new ValidationError(INVALID_MANIFEST, "manifest", [
    { path: "kind", message: `must be one of ${MANIFEST_KINDS.join(", ")}${got}` },
  ]);
}

/**
 * A ServiceIdentity with defaults applied. Its name must be a DNS label (no dots), so that the
 * service id `<name>.<namespace>` stays unambiguous.
 */
export function validateServiceIdentity(value: unknown): ServiceIdentity {
  return parseOrThrow(
    serviceIdentitySchema,
    value,
    INVALID_MANIFEST,
    subjectOf(SERVICE_IDENTITY_KIND, value),
  );
}

/** An AccessPolicy with defaults applied, every path regex checked. */
export function validateAccessPolicy(value: unknown): AccessPolicy {
  return parseOrThrow(accessPolicySchema, value, INVALID_MANIFEST, subjectOf(ACCESS_POLICY_KIND, value));
}

/** "AccessPolicy shop/payments": how messages and the CLI name a manifest. */
export function describeManifest(manifest: Manifest): string {
  const { name, namespace } = manifest.metadata;
  return `${manifest.kind} ${namespace === undefined ? name : `${namespace}/${name}`}`;
}

/** Names a possibly invalid manifest, quoting its name only when it is a plausible object name. */
export function subjectOf(kind: string, value: unknown): string {
  const metadata = fieldOf(value, "metadata");
  const name = fieldOf(metadata, "name");
  const namespace = fieldOf(metadata, "namespace");
  if (typeof name !== "string" || !isDnsSubdomain(name)) return kind;
  return typeof namespace === "string" && isDnsLabel(namespace)
    ? `${kind} ${namespace}/${name}`
    : `${kind} ${name}`;
}

function fieldOf(value: unknown, key: string): unknown {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  return Object.hasOwn(value, key) ? (value as Record<string, unknown>)[key] : undefined;
}

function yamlError(source: string, message: string): ValidationError {
  return new ValidationError(INVALID_YAML, source, [{ path: "", message }]);
}

function firstLine(text: string): string {
  return text.split("\n", 1)[0] ?? text;
}
