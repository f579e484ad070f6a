import { describe, expect, it } from "vitest";
import { EXIT_OK, EXIT_REJECTED, EXIT_USAGE, runCommand } from "../../cli/src/kit.js";
import { captureIO } from "../../pki/test/support.js";
import { sidecarCommand } from "../src/runtime/cli.js";

async function sidecar(...args: string[]) {
  const captured = captureIO();
  const code = await runCommand(sidecarCommand, args, captured.io);
  return { code, stdout: captured.stdout(), stderr: captured.stderr() };
}

describe("custody sidecar settings", () => {
  it("prints its settings with --help", async () => {
    const { code, stdout } = await sidecar("--help");
    expect(code).toBe(EXIT_OK);
    expect(stdout).toContain("token-url");
    expect(stdout).toContain("CUSTODY_KEY");
  });

  it("names every missing required setting at once", async () => {
    const { code, stderr } = await sidecar();
    expect(code).toBe(EXIT_USAGE);
    expect(stderr).toContain("identity: is required");
    expect(stderr).toContain("registry: is required");
    expect(stderr).toContain("app-port: is required");
  });

  it.each([
    [["--app-port", "70000"], "app-port: must be a port"],
    [["--app-port", "80", "--token-url", "http://issuer:8443/oauth2/token"], "token-url"],
    [["--app-port", "80", "--replay-failure-mode", "sometimes"], "replay-failure-mode"],
    [["--app-port", "80", "--inbound", "15006"], "inbound: must be HOST:PORT"],
  ])("refuses %j before starting anything", async (flags, message) => {
    const { code, stderr } = await sidecar("--identity", "/x", "--registry", "/y", ...flags);
    expect(code).toBe(EXIT_USAGE);
    expect(stderr).toContain(message);
  });

  it("takes settings from the environment, flags overriding them", async () => {
    process.env.CUSTODY_APP_PORT = "not-a-port";
    try {
      expect((await sidecar("--identity", "/x", "--registry", "/y")).code).toBe(EXIT_USAGE);
      const { code, stderr } = await sidecar(
        "--identity",
        "/nonexistent",
        "--registry",
        "/y",
        "--app-port",
        "8080",
      );
      expect(code).toBe(EXIT_REJECTED);
      expect(stderr).toContain("error[file_not_found]");
    } finally {
      delete process.env.CUSTODY_APP_PORT;
    }
  });
});
