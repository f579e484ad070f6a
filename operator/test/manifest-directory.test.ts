import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { temporaryDirectory } from "../../pki/test/support.js";
import { manifestsOf, readManifestDirectory } from "../src/manifests/directory.js";
import { ChangeWatcher } from "../src/manifests/watch.js";

const identityYaml = (name: string, environment = "prod") => `apiVersion: custody.dev/v1alpha1
kind: ServiceIdentity
metadata: {name: ${name}, namespace: shop}
spec: {environment: ${environment}}
`;

describe("readManifestDirectory", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  const write = (name: string, text: string) => writeFile(join(directory.path, name), text);

  beforeEach(async () => {
    directory = await temporaryDirectory();
  });
  afterEach(() => directory.cleanup());

  it("reads every manifest file in name order and ignores hidden and other files", async () => {
    await write("b.yaml", identityYaml("cart"));
    await write("a.yml", `${identityYaml("shop")}---\n${identityYaml("payments")}`);
    await write(".hidden.yaml", identityYaml("ghost"));
    await write("notes.txt", "not a manifest");
    const snapshot = await readManifestDirectory(directory.path);
    expect(snapshot.problems).toEqual([]);
    expect(manifestsOf(snapshot).map(({ manifest }) => manifest.metadata.name)).toEqual([
      "shop",
      "payments",
      "cart",
    ]);
    expect(manifestsOf(snapshot)[2]?.source).toBe(join(directory.path, "b.yaml"));
  });

  it("skips a broken file, names it, and keeps reading the others", async () => {
    await write("a.yaml", identityYaml("cart"));
    await write("b.yaml", "kind: ServiceIdentity\nmetadata: [\n");
    await write("c.yaml", identityYaml("Bad_Name"));
    const snapshot = await readManifestDirectory(directory.path);
    expect(manifestsOf(snapshot).map(({ manifest }) => manifest.metadata.name)).toEqual(["cart"]);
    expect(snapshot.problems.map((problem) => [problem.source, problem.code])).toEqual([
      [join(directory.path, "b.yaml"), "invalid_yaml"],
      [join(directory.path, "c.yaml"), "invalid_manifest"],
    ]);
    expect(snapshot.problems[1]?.message).toContain("(file skipped)");
  });

  it("keeps the last good version of a file that breaks, and drops a deleted file", async () => {
    await write("a.yaml", identityYaml("cart", "prod"));
    await write("b.yaml", identityYaml("shop"));
    const good = await readManifestDirectory(directory.path);
    await write("a.yaml", identityYaml("cart", "NOT A LABEL"));
    await rm(join(directory.path, "b.yaml"));
    const next = await readManifestDirectory(directory.path, good);
    const [kept] = manifestsOf(next);
    expect(manifestsOf(next)).toHaveLength(1);
    expect(kept?.manifest.kind === "ServiceIdentity" && kept.manifest.spec.environment).toBe("prod");
    expect(next.problems[0]?.message).toContain("keeping its last good version");
  });

  it("changes its digest exactly when the manifests in effect change", async () => {
    await write("a.yaml", identityYaml("cart"));
    const first = await readManifestDirectory(directory.path);
    expect((await readManifestDirectory(directory.path, first)).digest).toBe(first.digest);
    await write("a.yaml", identityYaml("cart", "dev"));
    expect((await readManifestDirectory(directory.path, first)).digest).not.toBe(first.digest);
  });

  it("says what to do when the directory is missing", async () => {
    await expect(readManifestDirectory(join(directory.path, "nope"))).rejects.toMatchObject({
      code: "manifest_directory_unreadable",
    });
  });
});

describe("ChangeWatcher", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  beforeEach(async () => {
    directory = await temporaryDirectory();
  });
  afterEach(() => directory.cleanup());

  it("reloads after a file changes in the watched directory", async () => {
    const reload = vi.fn(async () => undefined);
    const watcher = new ChangeWatcher([directory.path], reload, {
      debounceMs: 10,
      pollIntervalMs: 60_000,
      onError: () => undefined,
    });
    try {
      await writeFile(join(directory.path, "a.yaml"), identityYaml("cart"));
      await vi.waitFor(() => expect(reload).toHaveBeenCalled(), { timeout: 5_000 });
    } finally {
      watcher.close();
    }
  });

  it("polls even without watch events, and reports a failing reload without stopping", async () => {
    const errors: unknown[] = [];
    let calls = 0;
    const watcher = new ChangeWatcher(
      [join(directory.path, "missing")],
      async () => {
        calls++;
        throw new Error("boom");
      },
      { debounceMs: 1, pollIntervalMs: 20, onError: (error) => errors.push(error) },
    );
    try {
      await vi.waitFor(() => expect(calls).toBeGreaterThanOrEqual(2), { timeout: 5_000 });
      expect(errors.length).toBeGreaterThanOrEqual(2);
    } finally {
      watcher.close();
    }
  });

  it("never runs two reloads at once", async () => {
    let running = 0;
    let overlapped = false;
    const watcher = new ChangeWatcher(
      [],
      async () => {
        running++;
        overlapped ||= running > 1;
        await new Promise((resolve) => setTimeout(resolve, 20));
        running--;
      },
      { pollIntervalMs: 60_000, onError: () => undefined },
    );
    try {
      await Promise.all([watcher.run(), watcher.run(), watcher.run()]);
      expect(overlapped).toBe(false);
    } finally {
      watcher.close();
    }
  });
});
