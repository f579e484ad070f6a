import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import type { CommandIO } from "../src/kit.js";
import { main } from "../src/main.js";

const run = promisify(execFile);

function capture(): CommandIO & { out: () => string; err: () => string } {
  let out = "";
  let err = "";
  return {
    stdout: (text) => {
      out += text;
    },
    stderr: (text) => {
      err += text;
    },
    out: () => out,
    err: () => err,
  };
}

describe("custody CLI dispatcher", () => {
  it("prints usage listing every command for --help and exits 0", async () => {
    const io = capture();
    expect(await main(["--help"], io)).toBe(0);
    expect(io.out()).toContain("Usage: custody <command>");
    expect(io.out()).toMatch(/^ {2}pki {2,}/m);
    expect(io.out()).toMatch(/^ {2}validate {2,}/m);
  });

  it("exits 2 with usage when no command is given", async () => {
    const io = capture();
    expect(await main([], io)).toBe(2);
    expect(io.out()).toContain("Usage: custody <command>");
  });

  it("rejects an unknown command with exit 2 and names it", async () => {
    const io = capture();
    expect(await main(["frobnicate"], io)).toBe(2);
    expect(io.err()).toContain('unknown command "frobnicate"');
  });

  it("prints the package version", async () => {
    const io = capture();
    expect(await main(["--version"], io)).toBe(0);
    expect(io.out().trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it("runs as the built executable the package exposes (bin/custody.mjs)", async () => {
    const { stdout } = await run(process.execPath, ["bin/custody.mjs", "--help"], { cwd: process.cwd() });
    expect(stdout).toContain("Usage: custody <command>");
  });
});
