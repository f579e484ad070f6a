import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { temporaryDirectory } from "../../pki/test/support.js";
import { manifestsOf, readManifestDirectory } from "../src/manifests/directory.js";

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
