/**
 * `LocalWorkload`: how `custody local up` runs a program in the mesh. It sits in the same directory
 * as the ServiceIdentity and AccessPolicy manifests (the operator ignores it, as Kubernetes would
 * ignore a kind it does not serve):
 *
 *   apiVersion: custody.dev/v1alpha1
 *   kind: LocalWorkload
 *   metadata: {name: cart, namespace: shop}
 *   spec:
 *     identity: cart                  # its ServiceIdentity (same namespace); default: metadata.name
 *     command: [node, apps/cart.mjs]  # argv, run in the manifest directory
 *     env: {LOG_LEVEL: debug}         # optional
 *
 * The program gets PORT (listen on 127.0.0.1:$PORT), HTTP_PROXY (its sidecar's outbound port),
 * CUSTODY_KEYS_URL (the key service) and CUSTODY_SERVICE_ID.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { z } from "zod";
import { CustodyError, formatIssue } from "../../crds/src/errors.js";
import { toValidationIssues } from "../../crds/src/issues.js";
import { MAX_MANIFEST_BYTES, parseYamlDocuments } from "../../crds/src/manifest.js";
import { API_GROUP_VERSION } from "../../crds/src/names.js";
import { dnsLabel } from "../../crds/src/schema-kit.js";
import { listManifestFiles } from "../../operator/src/manifests/directory.js";
import { readBoundedFile } from "../../pki/src/files.js";

export const LOCAL_WORKLOAD_KIND = "LocalWorkload";
const MAX_WORKLOADS = 64;

const workloadSchema = z.strictObject({
  apiVersion: z.literal(API_GROUP_VERSION),
  kind: z.literal(LOCAL_WORKLOAD_KIND),
  metadata: z.looseObject({ name: dnsLabel(), namespace: dnsLabel().default("default") }),
  spec: z.strictObject({
    identity: dnsLabel().optional(),
    command: z.array(z.string().min(1).max(4096)).min(1).max(64),
    env: z
      .record(
        z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, { error: "must be an environment variable name" }),
        z.string().max(8192),
      )
      .refine((env) => Object.keys(env).length <= 64, { error: "at most 64 variables" })
      .optional(),
  }),
});

export interface LocalWorkload {
  readonly name: string;
  readonly namespace: string;
  /** The ServiceIdentity it runs as. */
  readonly identity: string;
  readonly serviceId: string;
  readonly command: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  /** Changes whenever anything that needs a restart changes. */
  readonly digest: string;
  readonly source: string;
}

export class WorkloadError extends CustodyError {
  declare readonly code: "invalid_workload" | "too_many_workloads";
}

export interface WorkloadProblem {
  readonly source: string;
  readonly message: string;
}

/** Every LocalWorkload of the directory, and what was wrong with the ones skipped. */
export async function readWorkloads(
  directory: string,
): Promise<{ workloads: LocalWorkload[]; problems: WorkloadProblem[] }> {
  const workloads: LocalWorkload[] = [];
  const problems: WorkloadProblem[] = [];
  const seen = new Set<string>();
  for (const name of await listManifestFiles(directory)) {
    const source = join(directory, name);
    let documents: unknown[];
    try {
      documents = parseYamlDocuments(await readBoundedFile(source, MAX_MANIFEST_BYTES), source);
    } catch (error) {
      problems.push({ source, message: error instanceof Error ? error.message : String(error) });
      continue;
    }
    for (const document of documents) {
      if (
        typeof document !== "object" ||
        document === null ||
        (document as { kind?: unknown }).kind !== LOCAL_WORKLOAD_KIND
      ) {
        continue;
      }
      const parsed = workloadSchema.safeParse(document);
      if (!parsed.success) {
        const issues = toValidationIssues(parsed.error.issues).map(formatIssue).join("; ");
        problems.push({ source, message: `LocalWorkload is invalid: ${issues}` });
        continue;
      }
      const { metadata, spec } = parsed.data;
      const key = `${metadata.namespace}/${metadata.name}`;
      if (seen.has(key)) {
        problems.push({ source, message: `LocalWorkload ${key} is declared twice; the first one counts` });
        continue;
      }
      seen.add(key);
      const identity = spec.identity ?? metadata.name;
      const env = spec.env ?? {};
      workloads.push({
        name: metadata.name,
        namespace: metadata.namespace,
        identity,
        serviceId: `${identity}.${metadata.namespace}`,
        command: spec.command,
        env,
        digest: createHash("sha256")
          .update(JSON.stringify([identity, spec.command, env]))
          .digest("hex"),
        source,
      });
    }
  }
  if (workloads.length > MAX_WORKLOADS) {
    throw new WorkloadError(
      "too_many_workloads",
      `${directory} declares ${workloads.length} LocalWorkloads; at most ${MAX_WORKLOADS} run locally.`,
    );
  }
  return { workloads, problems };
}
