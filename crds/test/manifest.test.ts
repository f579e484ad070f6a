import { describe, expect, it } from "vitest";
import {
  MAX_MANIFEST_BYTES,
  parseManifest,
  parseManifests,
  parseYamlDocuments,
  validateManifest,
} from "../src/manifest.js";
import { exampleText, expectIssue, issuesOf } from "./fixtures.js";

const identity = `apiVersion: custody.dev/v1alpha1
kind: ServiceIdentity
metadata: {name: cart, namespace: shop}
spec: {edge: false}
`;

describe("YAML input", () => {
  it("reads several documents and skips empty ones", () => {
    const manifests = parseManifests(`---\n${identity}---\n---\n${exampleText("payments-policy.yaml")}`);
    expect(manifests.map((manifest) => manifest.kind)).toEqual(["ServiceIdentity", "AccessPolicy"]);
  });

  it("parseManifest takes YAML text or an object, exactly one document", () => {
    expect(parseManifest(identity).metadata.name).toBe("cart");
    expect(parseManifest({ ...(parseYamlDocuments(identity)[0] as object) }).kind).toBe("ServiceIdentity");
    expectIssue(
      issuesOf(() => parseManifest(`${identity}---\n${identity}`)),
      "",
      "must hold exactly one document (found 2)",
    );
  });

  it("refuses a YAML bomb (alias expansion is bounded)", () => {
    const bomb = [
      'a: &a ["x","x","x","x","x","x","x","x","x"]',
      "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]",
      "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]",
      "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]",
      "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]",
      "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]",
      "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]",
    ].join("\n");
    expectIssue(
      issuesOf(() => parseYamlDocuments(bomb), "invalid_yaml"),
      "",
      /^document 1: .*alias/i,
    );
  });

  it("refuses oversized input before parsing it", () => {
    const huge = `# ${"x".repeat(MAX_MANIFEST_BYTES)}\n`;
    expectIssue(
      issuesOf(() => parseYamlDocuments(huge), "invalid_yaml"),
      "",
      /bytes; manifests are limited to 1048576 bytes$/,
    );
  });

  it("refuses too many documents", () => {
    expectIssue(
      issuesOf(() => parseYamlDocuments("---\na: 1\n".repeat(101)), "invalid_yaml"),
      "",
      "has 101 documents; at most 100 are read",
    );
  });

  it("refuses custom tags, duplicate keys and syntax errors, naming the line", () => {
    expectIssue(
      issuesOf(() => parseYamlDocuments("a: !!js/function 'x'\n"), "invalid_yaml"),
      "",
      /Unresolved tag/,
    );
    expectIssue(
      issuesOf(() => parseYamlDocuments("a: !custom x\n"), "invalid_yaml"),
      "",
      /Unresolved tag/,
    );
    expectIssue(
      issuesOf(() => parseYamlDocuments("a: 1\na: 2\n"), "invalid_yaml"),
      "",
      /unique.*line 2/,
    );
    expectIssue(
      issuesOf(() => parseYamlDocuments("a: [1,\n"), "invalid_yaml"),
      "",
      /line \d+, column \d+/,
    );
  });

  it("does not treat << as a merge key, so nothing sneaks past the strict schema", () => {
    const [value] = parseYamlDocuments("<<: {a: 1}\nb: 2\n");
    expect(value).toEqual({ "<<": { a: 1 }, b: 2 });
  });

  it("reports an unknown kind or a non-object in plain words", () => {
    expectIssue(
      issuesOf(() => validateManifest({ apiVersion: "v1", kind: "ConfigMap" })),
      "kind",
      'must be one of ServiceIdentity, AccessPolicy (got "ConfigMap")',
    );
    expectIssue(
      issuesOf(() => validateManifest([1, 2])),
      "kind",
      "must be one of ServiceIdentity, AccessPolicy",
    );
  });

  it("keeps API-server metadata it does not own", () => {
    const manifest = validateManifest({
      ...(parseYamlDocuments(identity)[0] as object),
      metadata: { name: "cart", namespace: "shop", uid: "1234", resourceVersion: "9", generation: 2 },
    });
    expect(manifest.metadata).toMatchObject({ uid: "1234", generation: 2 });
  });
});
