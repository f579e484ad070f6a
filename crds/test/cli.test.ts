import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { type CommandIO, runCommand } from "../../cli/src/kit.js";
import { validateCommand } from "../src/cli.js";
import { examplesDirectory } from "./fixtures.js";

const scratch = mkdtempSync(join(tmpdir(), "custody-validate-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

async function run(args: string[]) {
  let stdout = "";
  let stderr = "";
  const io: CommandIO = {
    stdout: (text) => {
      stdout += text;
    },
    stderr: (text) => {
      stderr += text;
    },
  };
  const status = await runCommand(validateCommand, args, io);
  return { status, stdout, stderr };
}

function example(file: string): string {
  return fileURLToPath(new URL(file, examplesDirectory));
}

function scratchFile(name: string, content: string): string {
  const path = join(scratch, name);
  writeFileSync(path, content);
  return path;
}

describe("custody validate", () => {
  it("exits 0 with one summary line per object", async () => {
    const identities = example("shop-identities.yaml");
    const policy = example("payments-policy.yaml");
    const { status, stdout } = await run([identities, policy]);
    expect(status).toBe(0);
    expect(stdout.split("\n")).toEqual([
      `${identities}: ServiceIdentity shop/shop ok (environment prod, ECDSA-P256 24h, 1 claim, 1 scope, edge)`,
      `${identities}: ServiceIdentity shop/cart ok (environment prod, ECDSA-P256 24h, 1 claim, 1 scope)`,
      `${identities}: ServiceIdentity shop/payments ok (environment prod, ECDSA-P256 12h, 2 claims, 0 scopes)`,
      `${policy}: AccessPolicy shop/payments ok (target payments.shop, 1 rule, enforce, default deny)`,
      "4 valid, 0 invalid",
      "",
    ]);
  });

  it("exits 1 with path: message lines for invalid objects", async () => {
    const bad = scratchFile(
      "bad.yaml",
      `apiVersion: custody.dev/v1alpha1
kind: AccessPolicy
metadata: {name: payments, namespace: shop}
spec:
  target: payments
  rules:
    - operation: {methods: [POST], path: "/pay-for-order/(.*"}
---
apiVersion: custody.dev/v1alpha1
kind: ServiceIdentity
metadata: {name: cart, namespace: shop}
spec:
  certificate: {keyAlgorithm: DSA}
`,
    );
    const { status, stdout } = await run([bad, example("payments-policy.yaml")]);
    expect(status).toBe(1);
    expect(stdout).toContain(
      `${bad}: AccessPolicy shop/payments: invalid\n  spec.rules[0].operation.path: invalid regular expression: missing closing )\n`,
    );
    expect(stdout).toContain(
      `${bad}: ServiceIdentity shop/cart: invalid\n  spec.certificate.keyAlgorithm: must be one of ECDSA-P256, Ed25519, RSA-2048 (got "DSA")\n`,
    );
    expect(stdout).toContain("1 valid, 2 invalid\n");
  });

  it("reports unreadable files and broken YAML as invalid, not as a crash", async () => {
    const broken = scratchFile("broken.yaml", "a: [1,\n");
    const missing = join(scratch, "missing.yaml");
    const { status, stdout } = await run([broken, missing]);
    expect(status).toBe(1);
    expect(stdout).toMatch(new RegExp(`${broken}: file: invalid\\n  document 1: .*line \\d+`));
    expect(stdout).toContain(`${missing}: file: invalid\n  cannot read: ENOENT`);
  });

  it("is a usage error without files, and has --help", async () => {
    expect((await run([])).status).toBe(2);
    expect((await run(["--bogus", "x.yaml"])).status).toBe(2);
    const help = await run(["--help"]);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^Usage: custody validate FILE\.\.\./);
  });
});
