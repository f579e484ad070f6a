import { mkdir, rename, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createCertificateAuthority } from "../../pki/src/index.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import { RegistrySource } from "../src/runtime/registry-source.js";
import { makeService, TestIssuer, TOKEN_SERVICE } from "./support/mesh.js";
import { registryDocument } from "./support/registry.js";

const shop = makeService("shop.shop");
const cart = makeService("cart.shop");
const tokenService = new TestIssuer(TOKEN_SERVICE);

describe("RegistrySource", () => {
  let trustBundle: string;
  let directory: { path: string; cleanup: () => Promise<void> };
  const file = () => join(directory.path, "registry.json");
  const document = (generation: number, services = [shop, cart], overrides: Record<string, unknown> = {}) =>
    JSON.stringify(registryDocument({ trustBundle, tokenService, services }, { generation, ...overrides }));

  beforeAll(async () => {
    trustBundle = (await createCertificateAuthority()).certificate.pem;
  });
  beforeEach(async () => {
    directory = await temporaryDirectory();
  });
  afterEach(() => directory.cleanup());

  it("loads a registry file and reports an unchanged one as such", async () => {
    await writeFile(file(), document(3));
    const source = new RegistrySource(file());
    const update = await source.reload();
    expect(update.result).toBe("loaded");
    expect(source.snapshot?.generation).toBe(3);
    expect(source.snapshot?.trust.service("cart.shop")?.id).toBe("cart.shop");
    expect((await source.reload()).result).toBe("unchanged");
  });

  it("swaps in a newer generation and keeps the old snapshot object untouched", async () => {
    await writeFile(file(), document(3, [shop]));
    const source = new RegistrySource(file());
    await source.reload();
    const before = source.snapshot;
    await writeFile(file(), document(4, [shop, cart]));
    expect((await source.reload()).result).toBe("loaded");
    expect(source.snapshot?.trust.service("cart.shop")).toBeDefined();
    expect(before?.trust.service("cart.shop")).toBeUndefined();
  });

  it.each([
    ["malformed JSON", () => "{not json", "invalid_registry"],
    [
      "a schema violation",
      (d: (g: number) => string) => d(5).replace('"Registry"', '"Other"'),
      "invalid_registry",
    ],
    ["an older generation", (d: (g: number) => string) => d(2), "registry_stale"],
    [
      "the same generation with other content",
      (d: (g: number, s?: (typeof shop)[]) => string) => d(3, [shop]),
      "registry_generation_reused",
    ],
  ])("refuses %s and keeps the last good registry", async (_what, make, code) => {
    await writeFile(file(), document(3));
    const source = new RegistrySource(file());
    await source.reload();
    const good = source.snapshot;
    await writeFile(file(), make(document));
    const update = await source.reload();
    expect(update).toMatchObject({ result: "refused", code });
    expect(source.snapshot).toBe(good);
  });

  it("refuses a registry whose policies carry a path regex that does not compile", async () => {
    await writeFile(file(), document(3));
    const source = new RegistrySource(file());
    await source.reload();
    const bad = {
      name: "p",
      namespace: "shop",
      target: "cart.shop",
      mode: "enforce",
      defaultAction: "deny",
      rules: [{ name: "r", operation: { path: "(" }, require: {}, action: "allow" }],
    };
    await writeFile(file(), document(4, [shop, cart], { policies: [bad] }));
    expect((await source.reload()).result).toBe("refused");
    expect(source.snapshot?.generation).toBe(3);
  });

  it("reads a mounted ConfigMap directory of shards through its ..data symlink swap", async () => {
    const mount = join(directory.path, "mount");
    await mkdir(join(mount, "..v1"), { recursive: true });
    await writeFile(join(mount, "..v1", "registry-0.json"), document(8));
    await symlink("..v1", join(mount, "..data"));
    await symlink(join("..data", "registry-0.json"), join(mount, "registry-0.json"));
    const source = new RegistrySource(mount);
    expect((await source.reload()).result).toBe("loaded");
    // Kubernetes writes the new version beside the old one, then renames a new ..data over the old.
    await mkdir(join(mount, "..v2"));
    await writeFile(join(mount, "..v2", "registry-0.json"), document(9, [shop]));
    await symlink("..v2", join(mount, "..data_tmp"));
    await rename(join(mount, "..data_tmp"), join(mount, "..data"));
    expect((await source.reload()).result).toBe("loaded");
    expect(source.snapshot?.generation).toBe(9);
  });

  it("refuses a missing file without losing what it has", async () => {
    const source = new RegistrySource(join(directory.path, "absent.json"));
    expect(await source.reload()).toMatchObject({ result: "refused" });
    expect(source.snapshot).toBeUndefined();
  });
});
