import { describe, expect, it } from "vitest";
import { CustodyError, UsageError } from "../../crds/src/errors.js";
import { type CommandIO, integerOption, parseCommandArgs, requireOption, runCommand } from "../src/kit.js";

function capture(): CommandIO & { err: () => string } {
  let err = "";
  return {
    stdout: () => {},
    stderr: (text) => {
      err += text;
    },
    err: () => err,
  };
}

describe("runCommand", () => {
  it("maps a UsageError to exit 2 with its message", async () => {
    const io = capture();
    const status = await runCommand(
      async () => {
        throw new UsageError("pki init: --out is required.");
      },
      [],
      io,
    );
    expect(status).toBe(2);
    expect(io.err()).toBe("pki init: --out is required.\n");
  });

  it("maps a CustodyError to exit 1 and prints its stable code", async () => {
    const io = capture();
    const status = await runCommand(
      async () => {
        throw new CustodyError("unknown_issuer", "no trusted CA issued this certificate.");
      },
      [],
      io,
    );
    expect(status).toBe(1);
    expect(io.err()).toBe("error[unknown_issuer]: no trusted CA issued this certificate.\n");
  });

  it("reports an unexpected error without a stack trace", async () => {
    const io = capture();
    const previous = process.env.CUSTODY_DEBUG;
    delete process.env.CUSTODY_DEBUG;
    try {
      const status = await runCommand(
        async () => {
          throw new TypeError("boom");
        },
        [],
        io,
      );
      expect(status).toBe(1);
      expect(io.err()).toBe("internal error: boom\n");
      expect(io.err()).not.toContain("    at ");
    } finally {
      if (previous !== undefined) process.env.CUSTODY_DEBUG = previous;
    }
  });
});

describe("argument helpers", () => {
  it("turns unknown flags into a UsageError naming the command", () => {
    expect(() => parseCommandArgs("pki init", ["--nope"], { out: { type: "string" } })).toThrow(
      /pki init: .*--nope/,
    );
  });

  it("requires options by name", () => {
    expect(() => requireOption("pki issue", "id", undefined)).toThrow("pki issue: --id is required");
    expect(requireOption("pki issue", "id", "cart.shop")).toBe("cart.shop");
  });

  it("bounds integer options and refuses non-numbers", () => {
    const bounds = { min: 1, max: 3650 };
    expect(integerOption("pki init", "days", undefined, 365, bounds)).toBe(365);
    expect(integerOption("pki init", "days", "30", 365, bounds)).toBe(30);
    for (const bad of ["0", "3651", "-1", "1e3", "ten", "12.5"]) {
      expect(() => integerOption("pki init", "days", bad, 365, bounds)).toThrow(/from 1 to 3650/);
    }
  });
});
