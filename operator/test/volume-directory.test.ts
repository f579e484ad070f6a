/** Volume-shaped directories: what the kubelet does with a Secret, done by the local store. */
import { lstat, readdir, readFile, readlink } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { temporaryDirectory } from "../../pki/test/support.js";
import { readVolume, writeVolume } from "../src/store/volume-directory.js";

const MODES = { directory: 0o700, file: 0o600 };

describe("volume directory", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  beforeEach(async () => {
    directory = await temporaryDirectory();
  });
  afterEach(() => directory.cleanup());

  it("switches all files at once through ..data and removes keys and versions no longer there", async () => {
    const volume = join(directory.path, "secret");
    await writeVolume(
      volume,
      { files: { "tls.crt": "one", "next.key": "n" }, metadata: { resourceVersion: "1" } },
      MODES,
    );
    await writeVolume(volume, { files: { "tls.crt": "two" }, metadata: { resourceVersion: "2" } }, MODES);
    expect(await readFile(join(volume, "tls.crt"), "utf8")).toBe("two");
    expect(await readlink(join(volume, "tls.crt"))).toBe(join("..data", "tls.crt"));
    const entries = await readdir(volume);
    expect(entries.filter((entry) => !entry.startsWith(".."))).toEqual(["tls.crt"]);
    expect(entries.filter((entry) => entry.startsWith("..") && entry !== "..data")).toHaveLength(1);
    expect(await readVolume(volume)).toEqual({
      files: { "tls.crt": "two" },
      metadata: { resourceVersion: "2" },
    });
    const version = await readlink(join(volume, "..data"));
    expect((await lstat(join(volume, version, "tls.crt"))).mode & 0o777).toBe(0o600);
  });

  it("reads nothing from a directory that was never written, and refuses keys that are paths", async () => {
    expect(await readVolume(join(directory.path, "absent"))).toBeUndefined();
    await expect(
      writeVolume(join(directory.path, "bad"), { files: { "../escape": "x" }, metadata: {} }, MODES),
    ).rejects.toThrow(/not a valid data key/);
    await expect(
      writeVolume(join(directory.path, "bad"), { files: { "..data": "x" }, metadata: {} }, MODES),
    ).rejects.toThrow(/not a valid data key/);
  });
});
