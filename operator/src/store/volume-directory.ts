/**
 * A directory shaped like a Kubernetes Secret or ConfigMap volume, written the way the kubelet
 * writes one: the files live in a versioned hidden directory, `..data` is a symlink to the current
 * version, and each key is a symlink through `..data`. Replacing `..data` (a rename) switches every
 * file at once, so a reader (the sidecar) never pairs a new certificate with an old key, and local
 * mode and Kubernetes look the same to it. The object's metadata rides in the versioned directory
 * as a hidden file, so it switches together with the data.
 */
import { randomBytes } from "node:crypto";
import { lstat, mkdir, readdir, readFile, readlink, rename, rm, symlink } from "node:fs/promises";
import { join } from "node:path";
import { writeFilesAtomically } from "../../../pki/src/files.js";

const DATA_LINK = "..data";
const METADATA_FILE = ".custody-object.json";
/** Keys are Kubernetes data keys: letters, digits, '-', '_', '.'; never hidden, never a path. */
const KEY_PATTERN = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,252}$/;
export const MAX_VOLUME_FILE_BYTES = 1024 * 1024;

export interface VolumeContent {
  readonly files: Readonly<Record<string, string>>;
  readonly metadata: Readonly<Record<string, unknown>>;
}

export async function writeVolume(
  directory: string,
  content: VolumeContent,
  modes: { readonly directory: number; readonly file: number },
): Promise<void> {
  for (const key of Object.keys(content.files)) {
    if (!KEY_PATTERN.test(key) || key.startsWith("..")) throw new Error(`"${key}" is not a valid data key`);
  }
  await mkdir(directory, { recursive: true, mode: modes.directory });
  const version = `..${Date.now()}_${randomBytes(4).toString("hex")}`;
  const versionDirectory = join(directory, version);
  await mkdir(versionDirectory, { mode: modes.directory });
  await writeFilesAtomically(
    [
      ...Object.entries(content.files).map(([key, data]) => ({
        path: join(versionDirectory, key),
        data,
        mode: modes.file,
      })),
      {
        path: join(versionDirectory, METADATA_FILE),
        data: JSON.stringify({ ...content.metadata, keys: Object.keys(content.files).sort() }),
        mode: modes.file,
      },
    ],
    { overwrite: false },
  );
  await replaceSymlink(directory, DATA_LINK, version);
  for (const key of Object.keys(content.files)) await replaceSymlink(directory, key, join(DATA_LINK, key));
  // Old versions and links of removed keys are garbage now: failing to remove them is not failing
  // the write (readers only ever follow ..data).
  for (const entry of await readdir(directory)) {
    if (entry === DATA_LINK || entry === version) continue;
    const stale = entry.startsWith("..") || !Object.hasOwn(content.files, entry);
    if (stale) await rm(join(directory, entry), { recursive: true, force: true }).catch(() => undefined);
  }
}

/**
 * The current version, read through one resolution of `..data`: a swap during the read cannot mix
 * two versions. If the version read is removed meanwhile (a writer's clean-up), read again.
 */
export async function readVolume(directory: string): Promise<VolumeContent | undefined> {
  for (let attempt = 0; attempt < 3; attempt++) {
    let version: string;
    try {
      version = await readlink(join(directory, DATA_LINK));
    } catch {
      return undefined;
    }
    try {
      return await readVersion(join(directory, version));
    } catch (error) {
      if (!(typeof error === "object" && error !== null && "code" in error && error.code === "ENOENT"))
        throw error;
    }
  }
  return undefined;
}

async function readVersion(versionDirectory: string): Promise<VolumeContent> {
  const metadata = JSON.parse(await readFile(join(versionDirectory, METADATA_FILE), "utf8")) as Record<
    string,
    unknown
  >;
  const keys = Array.isArray(metadata.keys) ? metadata.keys.filter((key) => typeof key === "string") : [];
  const files: Record<string, string> = {};
  for (const key of keys) {
    if (!KEY_PATTERN.test(key)) continue;
    const path = join(versionDirectory, key);
    const stats = await lstat(path);
    if (!stats.isFile() || stats.size > MAX_VOLUME_FILE_BYTES) continue;
    files[key] = await readFile(path, "utf8");
  }
  const { keys: _keys, ...rest } = metadata;
  return { files, metadata: rest };
}

export async function removeVolume(directory: string): Promise<void> {
  await rm(directory, { recursive: true, force: true });
}

/** Points `name` in `directory` at `target`, atomically (a new link renamed over the old). */
async function replaceSymlink(directory: string, name: string, target: string): Promise<void> {
  const path = join(directory, name);
  try {
    if ((await readlink(path)) === target) return;
  } catch {
    // Absent or not a link: create it.
  }
  const temporary = join(directory, `..tmp_${randomBytes(4).toString("hex")}`);
  await symlink(target, temporary);
  await rename(temporary, path);
}
