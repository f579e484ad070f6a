import { readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FileError } from "../src/errors.js";
import { MODE_PRIVATE, MODE_PUBLIC, readBoundedFile, writeFilesAtomically } from "../src/files.js";
import { temporaryDirectory } from "./support.js";

let directory: { path: string; cleanup: () => Promise<void> };
beforeAll(async () => {
  directory = await temporaryDirectory();
});
afterAll(async () => {
  await directory.cleanup();
});

async function codeOf(action: () => Promise<unknown>): Promise<string | undefined> {
  try {
    await action();
  } catch (error) {
    return error instanceof FileError ? error.code : `unexpected ${String(error)}`;
  }
  return undefined;
}

describe("readBoundedFile", () => {
  it("reads a file within the bound", async () => {
    const path = join(directory.path, "small.pem");
    await writeFile(path, "hello");
    expect(await readBoundedFile(path, 5)).toBe("hello");
  });

  it("refuses a file over the bound, and a missing file", async () => {
    const path = join(directory.path, "big.pem");
    await writeFile(path, "x".repeat(11));
    expect(await codeOf(() => readBoundedFile(path, 10))).toBe("file_too_large");
    expect(await codeOf(() => readBoundedFile(join(directory.path, "missing.pem")))).toBe("file_not_found");
  });

  it("reports a directory as unreadable", async () => {
    expect(await codeOf(() => readBoundedFile(directory.path))).toBe("file_unreadable");
  });
});

describe("writeFilesAtomically", () => {
  it("writes every file with its exact mode and leaves no temporary file", async () => {
    const key = join(directory.path, "a.key");
    const crt = join(directory.path, "a.crt");
    await writeFilesAtomically(
      [
        { path: key, data: "secret", mode: MODE_PRIVATE },
        { path: crt, data: "public", mode: MODE_PUBLIC },
      ],
      { overwrite: false },
    );
    expect((await stat(key)).mode & 0o777).toBe(0o600);
    expect((await stat(crt)).mode & 0o777).toBe(0o644);
    expect(await readFile(key, "utf8")).toBe("secret");
    expect((await readdir(directory.path)).filter((name) => name.endsWith(".tmp"))).toEqual([]);
  });

  it("without overwrite, refuses an existing target and places none of the files", async () => {
    const fresh = join(directory.path, "fresh.crt");
    const existing = join(directory.path, "existing.key");
    await writeFile(existing, "original");
    const code = await codeOf(() =>
      writeFilesAtomically(
        [
          { path: fresh, data: "new", mode: MODE_PUBLIC },
          { path: existing, data: "replacement", mode: MODE_PRIVATE },
        ],
        { overwrite: false },
      ),
    );
    expect(code).toBe("file_exists");
    expect(await readFile(existing, "utf8")).toBe("original");
    await expect(stat(fresh)).rejects.toThrow();
    expect((await readdir(directory.path)).filter((name) => name.endsWith(".tmp"))).toEqual([]);
  });

  it("with overwrite, replaces existing files", async () => {
    const path = join(directory.path, "rotate.crt");
    await writeFile(path, "old");
    await writeFilesAtomically([{ path, data: "new", mode: MODE_PUBLIC }], { overwrite: true });
    expect(await readFile(path, "utf8")).toBe("new");
  });

  it("reports an unwritable destination", async () => {
    const path = join(directory.path, "no-such-dir", "x.crt");
    expect(
      await codeOf(() => writeFilesAtomically([{ path, data: "x", mode: MODE_PUBLIC }], { overwrite: true })),
    ).toBe("file_unwritable");
  });
});
