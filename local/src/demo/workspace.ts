/**
 * The demo's working copy of examples/shop: the audit-mode scenario edits a policy, and that must
 * never touch the repository's files (nor a user's installed copy). The copy is the manifest
 * directory `startLocal` watches, so an edit here is a live policy change.
 */
import { cp, readFile, rename, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { DemoError } from "./errors.js";

export const EXAMPLE = "examples/shop";
export const POLICIES_FILE = "policies.yaml";
const MAX_POLICIES_BYTES = 1024 * 1024;

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * examples/shop of this installation, found by walking up from this module: it runs from
 * local/src/demo/ under tsx and from dist/local/src/demo/ when built.
 */
export async function findExampleDirectory(from: string = import.meta.url): Promise<string> {
  let directory = new URL(".", from);
  for (let depth = 0; depth < 8; depth++, directory = new URL("..", directory)) {
    const candidate = fileURLToPath(new URL(EXAMPLE, directory));
    if (await exists(join(candidate, "workloads.yaml"))) return candidate;
  }
  throw new DemoError(
    "demo_example_missing",
    `cannot find ${EXAMPLE}/ above ${fileURLToPath(from)}: run the demo from a checkout of the repository.`,
  );
}

/** Copies the example into `target` (which must not exist yet). */
export async function copyExample(source: string, target: string): Promise<void> {
  await cp(source, target, { recursive: true, errorOnExist: true, force: false });
}

/**
 * Sets `spec.mode` of one AccessPolicy in a multi-document YAML file, keeping everything else
 * (comments included). Written to a hidden temporary name and renamed over the file: the operator
 * watching the directory never reads half a file, and ignores hidden names.
 */
export async function setPolicyMode(
  directory: string,
  policy: { readonly name: string; readonly mode: "enforce" | "audit" },
  file = POLICIES_FILE,
): Promise<void> {
  const path = join(directory, file);
  const text = await readFile(path, "utf8");
  if (text.length > MAX_POLICIES_BYTES) throw new DemoError("demo_policy_not_found", `${path} is too large.`);
  const documents = parseAllDocuments(text);
  if (!Array.isArray(documents)) throw new DemoError("demo_policy_not_found", `${path} is empty.`);
  const target = documents.find(
    (document) =>
      document.get("kind") === "AccessPolicy" && document.getIn(["metadata", "name"]) === policy.name,
  );
  if (target === undefined || target.errors.length > 0) {
    throw new DemoError("demo_policy_not_found", `${path} has no readable AccessPolicy ${policy.name}.`);
  }
  target.setIn(["spec", "mode"], policy.mode);
  const temporary = join(directory, `.${file}.tmp`);
  await writeFile(
    temporary,
    documents.map((document) => document.toString({ flowCollectionPadding: false })).join(""),
  );
  await rename(temporary, path);
}
