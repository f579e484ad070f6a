/**
 * File access for keys and certificates: reads are size-bounded, writes are atomic (temporary file
 * in the same directory, fsync, then rename or link), so a crash or a refusal never leaves a
 * half-written key behind.
 */
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { link, mkdir, open, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { FileError } from "./errors.js";

export const MODE_PRIVATE = 0o600;
export const MODE_PUBLIC = 0o644;

/** Keys, certificates, CSRs and bundles are all far below this; anything larger is not one of them. */
export const MAX_PKI_FILE_BYTES = 1024 * 1024;

export async function readBoundedFile(path: string, maxBytes = MAX_PKI_FILE_BYTES): Promise<string> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, constants.O_RDONLY);
  } catch (error) {
    throw openError(path, error);
  }
  try {
    // Read one byte past the limit instead of trusting fstat: pipes and /proc files report size 0.
    const buffer = Buffer.alloc(maxBytes + 1);
    let length = 0;
    while (length < buffer.length) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    if (length > maxBytes) {
      throw new FileError(
        "file_too_large",
        `${path} is larger than ${maxBytes} bytes; it is not a PEM file.`,
      );
    }
    return buffer.subarray(0, length).toString("utf8");
  } catch (error) {
    if (error instanceof FileError) throw error;
    throw new FileError("file_unreadable", `${path} cannot be read: ${describe(error)}.`, { cause: error });
  } finally {
    await handle.close();
  }
}

function openError(path: string, error: unknown): FileError {
  if (errorCode(error) === "ENOENT") {
    return new FileError("file_not_found", `${path} does not exist.`, { cause: error });
  }
  return new FileError("file_unreadable", `${path} cannot be read: ${describe(error)}.`, { cause: error });
}

export interface FileToWrite {
  readonly path: string;
  readonly data: string;
  readonly mode: number;
}

/**
 * Writes files so that no target is ever seen half-written: every content goes to a synced temporary
 * file in the target's directory first, so a failure while writing (disk full, permissions) leaves
 * all targets as they were; then each is moved into place atomically. With `overwrite: false`, an
 * existing target is an error (checked atomically with link(2), not with a racy exists-then-write)
 * and the files this call already placed are removed again.
 */
export async function writeFilesAtomically(
  files: readonly FileToWrite[],
  options: { readonly overwrite: boolean },
): Promise<void> {
  const staged: { readonly temporary: string; readonly path: string }[] = [];
  try {
    for (const file of files) {
      const temporary = join(
        dirname(file.path),
        `.${basename(file.path)}.${randomBytes(6).toString("hex")}.tmp`,
      );
      staged.push({ temporary, path: file.path });
      await writeSynced(temporary, file.data, file.mode);
    }
    const placed: string[] = [];
    for (const { temporary, path } of staged) {
      if (options.overwrite) {
        await rename(temporary, path);
      } else {
        await linkExclusive(temporary, path, placed);
      }
      placed.push(path);
    }
    await syncDirectories(files.map((file) => dirname(file.path)));
  } catch (error) {
    if (error instanceof FileError) throw error;
    throw new FileError("file_unwritable", `cannot write ${describeTargets(files)}: ${describe(error)}.`, {
      cause: error,
    });
  } finally {
    await Promise.all(staged.map(({ temporary }) => unlink(temporary).catch(() => undefined)));
  }
}

async function linkExclusive(temporary: string, path: string, placed: readonly string[]): Promise<void> {
  try {
    await link(temporary, path);
  } catch (error) {
    // Files placed by this call a moment ago are ours to take back; nothing else is touched.
    await Promise.all(placed.map((done) => unlink(done).catch(() => undefined)));
    if (errorCode(error) === "EEXIST") {
      throw new FileError("file_exists", `${path} already exists.`, { cause: error });
    }
    throw error;
  }
}

async function writeSynced(path: string, data: string, mode: number): Promise<void> {
  const handle = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    // The umask may have removed bits from `mode` but never adds any; chmod makes it exact.
    await handle.chmod(mode);
    await handle.writeFile(data, "utf8");
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function syncDirectories(directories: readonly string[]): Promise<void> {
  for (const directory of new Set(directories)) {
    const handle = await open(directory, constants.O_RDONLY);
    try {
      await handle.sync();
    } catch {
      // Some file systems cannot fsync a directory; the renames are already atomic, only less durable.
    } finally {
      await handle.close();
    }
  }
}

/** Creates the directory (and parents) if missing; new directories get `mode`, existing ones keep theirs. */
export async function ensureDirectory(path: string, mode: number): Promise<void> {
  try {
    await mkdir(path, { recursive: true, mode });
  } catch (error) {
    throw new FileError("file_unwritable", `cannot create directory ${path}: ${describe(error)}.`, {
      cause: error,
    });
  }
}

function describeTargets(files: readonly FileToWrite[]): string {
  return files.map((file) => file.path).join(", ");
}

function errorCode(error: unknown): string | undefined {
  return typeof error === "object" && error !== null && "code" in error && typeof error.code === "string"
    ? error.code
    : undefined;
}

function describe(error: unknown): string {
  const code = errorCode(error);
  if (code !== undefined) return code;
  return error instanceof Error ? error.message : String(error);
}
