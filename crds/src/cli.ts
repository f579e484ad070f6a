/**
 * `custody validate FILE...`: checks ServiceIdentity / AccessPolicy manifests against the API
 * schema (the same checks `kubectl apply` and the operator make, plus those only zod can make,
 * such as regex safety and reserved claim names). One line per object; exit 1 if any is invalid.
 */
import { open } from "node:fs/promises";
import { type Command, EXIT_OK, EXIT_REJECTED, parseCommandArgs } from "../../cli/src/kit.js";
import type { AccessPolicy } from "./access-policy.js";
import { formatIssue, UsageError, ValidationError } from "./errors.js";
import {
  describeManifest,
  MAX_MANIFEST_BYTES,
  type Manifest,
  parseYamlDocuments,
  subjectOf,
  validateManifest,
} from "./manifest.js";
import { resolveServiceRef } from "./names.js";
import type { ServiceIdentity } from "./service-identity.js";

const HELP = `Usage: custody validate FILE...

Checks ServiceIdentity and AccessPolicy manifests (YAML, several documents per file allowed)
against the custody.dev/v1alpha1 API: schema, bounds, regex safety, reserved claim names.
Prints one line per object; for an invalid one, one "path: problem" line per issue.

Exit status: 0 all valid, 1 something invalid or unreadable, 2 usage error.
`;

export const validateCommand: Command = async (args, io) => {
  const { values, positionals } = parseCommandArgs(
    "validate",
    args,
    { help: { type: "boolean", short: "h" } },
    true,
  );
  if (values.help === true) {
    io.stdout(HELP);
    return EXIT_OK;
  }
  if (positionals.length === 0) {
    throw new UsageError("validate: give at least one manifest file. See `custody validate --help`.");
  }
  let valid = 0;
  let invalid = 0;
  for (const file of positionals) {
    for (const result of await validateFile(file)) {
      if (result.ok) {
        valid++;
        io.stdout(`${file}: ${result.summary}\n`);
      } else {
        invalid++;
        io.stdout(`${file}: ${result.subject}: invalid\n`);
        for (const line of result.problems) io.stdout(`  ${line}\n`);
      }
    }
  }
  io.stdout(`${valid} valid, ${invalid} invalid\n`);
  return invalid === 0 ? EXIT_OK : EXIT_REJECTED;
};

type FileResult =
  | { readonly ok: true; readonly summary: string }
  | { readonly ok: false; readonly subject: string; readonly problems: readonly string[] };

async function validateFile(file: string): Promise<FileResult[]> {
  let documents: unknown[];
  try {
    documents = parseYamlDocuments(await readBounded(file), file);
  } catch (error) {
    return [failure("file", error)];
  }
  if (documents.length === 0) return [{ ok: false, subject: "file", problems: ["holds no documents"] }];
  return documents.map((document, index) => {
    try {
      return { ok: true, summary: summarize(validateManifest(document)) };
    } catch (error) {
      const label = documents.length > 1 ? `document ${index + 1}` : "document";
      return failure(subjectOfDocument(document) ?? label, error);
    }
  });
}

function failure(subject: string, error: unknown): FileResult {
  if (error instanceof ValidationError)
    return { ok: false, subject, problems: error.issues.map(formatIssue) };
  // A file-system error (missing file, permission denied) is reported like any other problem.
  if (error instanceof Error && "syscall" in error) {
    return { ok: false, subject, problems: [`cannot read: ${error.message}`] };
  }
  throw error;
}

/** Reads at most MAX_MANIFEST_BYTES + 1 bytes, so a huge file is refused without loading it. */
async function readBounded(file: string): Promise<string> {
  const handle = await open(file, "r");
  try {
    const buffer = Buffer.alloc(MAX_MANIFEST_BYTES + 1);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    if (bytesRead > MAX_MANIFEST_BYTES) {
      throw new ValidationError("invalid_yaml", file, [
        { path: "", message: `is larger than ${MAX_MANIFEST_BYTES} bytes; manifests are limited to that` },
      ]);
    }
    return buffer.subarray(0, bytesRead).toString("utf8");
  } finally {
    await handle.close();
  }
}

function summarize(manifest: Manifest): string {
  return manifest.kind === "ServiceIdentity" ? summarizeIdentity(manifest) : summarizePolicy(manifest);
}

function summarizeIdentity(identity: ServiceIdentity): string {
  const { spec } = identity;
  const details = [
    `environment ${spec.environment}`,
    `${spec.certificate.keyAlgorithm} ${spec.certificate.duration}`,
    count(Object.keys(spec.claims ?? {}).length, "claim"),
    count(spec.scopes?.length ?? 0, "scope"),
  ];
  if (spec.externalSubjects !== undefined)
    details.push(count(spec.externalSubjects.length, "external subject"));
  if (spec.edge) details.push("edge");
  return `${describeManifest(identity)} ok (${details.join(", ")})`;
}

function summarizePolicy(policy: AccessPolicy): string {
  const { spec, metadata } = policy;
  const target =
    metadata.namespace === undefined ? spec.target : resolveServiceRef(spec.target, metadata.namespace);
  const rules = count(spec.rules.length, "rule");
  return `${describeManifest(policy)} ok (target ${target}, ${rules}, ${spec.mode}, default ${spec.defaultAction})`;
}

function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

/** "ServiceIdentity shop/cart" for a document that names its kind plausibly, else undefined. */
function subjectOfDocument(document: unknown): string | undefined {
  const kind =
    typeof document === "object" && document !== null ? (document as { kind?: unknown }).kind : undefined;
  if (typeof kind !== "string" || !/^[A-Za-z]{1,63}$/.test(kind)) return undefined;
  return subjectOf(kind, document);
}
