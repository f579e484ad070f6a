/**
 * A directory of ServiceIdentity / AccessPolicy YAML, read as one snapshot. Each file stands alone:
 * a file that does not parse or validate is reported and skipped, and if an earlier version of it
 * was good, that version is kept (a malformed update never replaces a good one). Deleting a file
 * removes its manifests. Bounded: file count, and each file's size by parseYamlDocuments.
 */
import { createHash } from "node:crypto";
import { readdir } from "node:fs/promises";
import { extname, join } from "node:path";
import { CustodyError } from "../../../crds/src/errors.js";
import { MAX_MANIFEST_BYTES, type Manifest, parseManifests } from "../../../crds/src/manifest.js";
import { readBoundedFile } from "../../../pki/src/files.js";

export const MAX_MANIFEST_FILES = 1000;
const MANIFEST_EXTENSIONS = new Set([".yaml", ".yml", ".json"]);

export interface ManifestFile {
  /** File name inside the directory. */
  readonly name: string;
  /** SHA-256 of the content that produced `manifests`. */
  readonly digest: string;
  readonly manifests: readonly Manifest[];
}

export interface ManifestProblem {
  readonly source: string;
  readonly code: string;
  readonly message: string;
}

export interface ManifestSnapshot {
  readonly directory: string;
  /** Sorted by name, so "first declared" is the same on every machine. */
  readonly files: readonly ManifestFile[];
  readonly problems: readonly ManifestProblem[];
  /** Changes whenever the manifests in effect change. */
  readonly digest: string;
}

export class ManifestDirectoryError extends CustodyError {
  declare readonly code: "manifest_directory_unreadable" | "too_many_manifest_files";
  constructor(code: ManifestDirectoryError["code"], message: string) {
    super(code, message);
  }
}

export async function listManifestFiles(directory: string): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(directory);
  } catch (error) {
    const code = error instanceof Error && "code" in error ? String(error.code) : "unknown";
    throw new ManifestDirectoryError(
      "manifest_directory_unreadable",
      `cannot read the manifest directory ${directory} (${code}): create it or point --manifests at one.`,
    );
  }
  // Hidden entries include Kubernetes' `..data` symlink machinery for mounted ConfigMaps.
  const names = entries.filter((name) => !name.startsWith(".") && MANIFEST_EXTENSIONS.has(extname(name)));
  if (names.length > MAX_MANIFEST_FILES) {
    throw new ManifestDirectoryError(
      "too_many_manifest_files",
      `${directory} holds ${names.length} manifest files; at most ${MAX_MANIFEST_FILES} are read.`,
    );
  }
  return names.sort();
}

function describeFailure(error: unknown): { code: string; message: string } {
  if (error instanceof CustodyError) return { code: error.code, message: error.message };
  return { code: "unreadable", message: error instanceof Error ? error.message : String(error) };
}

/**
 * Reads every manifest file of `directory`. `previous` (the last snapshot) supplies the last good
 * version of files that are now broken.
 */
export async function readManifestDirectory(
  directory: string,
  previous?: ManifestSnapshot,
): Promise<ManifestSnapshot> {
  const lastGood = new Map((previous?.files ?? []).map((file) => [file.name, file]));
  const files: ManifestFile[] = [];
  const problems: ManifestProblem[] = [];
  for (const name of await listManifestFiles(directory)) {
    const source = join(directory, name);
    try {
      const text = await readBoundedFile(source, MAX_MANIFEST_BYTES);
      const digest = createHash("sha256").update(text).digest("hex");
      const unchanged = lastGood.get(name);
      files.push(
        unchanged?.digest === digest ? unchanged : { name, digest, manifests: parseManifests(text, source) },
      );
    } catch (error) {
      const { code, message } = describeFailure(error);
      const kept = lastGood.get(name);
      problems.push({
        source,
        code,
        message:
          kept === undefined ? `${message} (file skipped)` : `${message} (keeping its last good version)`,
      });
      if (kept !== undefined) files.push(kept);
    }
  }
  const digest = createHash("sha256")
    .update(files.map((file) => `${file.name}:${file.digest}`).join("\n"))
    .digest("hex");
  return { directory, files, problems, digest };
}

/** Every manifest of a snapshot with the file it came from, in snapshot order. */
export function manifestsOf(snapshot: ManifestSnapshot): { manifest: Manifest; source: string }[] {
  return snapshot.files.flatMap((file) =>
    file.manifests.map((manifest) => ({ manifest, source: join(snapshot.directory, file.name) })),
  );
}
