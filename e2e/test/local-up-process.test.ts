/**
 * `custody local up` as a user runs it: it prints what runs where and stays up; Ctrl-C (SIGINT)
 * stops every process it started and it exits 0; running it again reuses the state (same CA, same
 * certificates); `--reset` starts afresh.
 */
import { cp, readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { temporaryDirectory } from "../../pki/test/support.js";
import { killAll, startCliProcess } from "../support/process.js";

const EXAMPLE = fileURLToPath(new URL("../../examples/shop", import.meta.url));

describe("custody local up, the command", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let manifests: string;
  let state: string;

  // It starts the operator, the token service and a sidecar and an app per workload, each loading
  // TypeScript through tsx: seconds alone, far more while the rest of the suite runs beside it.
  const up = (...extra: string[]) =>
    startCliProcess(["local", "up", "--dir", manifests, "--state", state, ...extra], "", "local up", {
      readyLine: "Ctrl-C stops everything.",
      readyTimeoutMs: 90_000,
    });
  const ca = () => readFile(join(state, "ca", "ca.crt"), "utf8");
  const cartCertificate = () =>
    readFile(
      join(state, "operator", "secrets", "custody-system", "custody-identity.shop.cart", "tls.crt"),
      "utf8",
    );
  const stop = async (run: Awaited<ReturnType<typeof up>>) => {
    process.kill(run.pid, "SIGINT");
    return run.exited;
  };
  /** Whether any process still runs from this test's state directory. */
  const leftovers = async () => {
    const { execFileSync } = await import("node:child_process");
    const list = execFileSync("ps", ["-eo", "args"], { encoding: "utf8" });
    return list.split("\n").filter((line) => line.includes(state) && !line.includes("ps -eo"));
  };

  beforeAll(async () => {
    directory = await temporaryDirectory();
    manifests = join(directory.path, "shop");
    state = join(directory.path, "state");
    await cp(EXAMPLE, manifests, { recursive: true });
  });
  afterAll(async () => {
    await killAll();
    await directory?.cleanup();
  });

  it("prints what runs where, and stops everything on Ctrl-C", async () => {
    const run = await up();
    const table = run.lines.join("\n");
    for (const service of ["shop.shop", "cart.shop", "payments.shop"]) expect(table).toContain(service);
    expect(table).toMatch(/token service\s+https:\/\/127\.0\.0\.1:\d+\/oauth2\/token/);
    expect(await stop(run)).toEqual({ code: 0, signal: null });
    expect(await leftovers()).toEqual([]);
  }, 120_000);

  it("reuses its state when run again, and starts afresh with --reset", async () => {
    const before = { ca: await ca(), cart: await cartCertificate() };
    const again = await up();
    expect(await ca()).toBe(before.ca);
    expect(await cartCertificate()).toBe(before.cart);
    await stop(again);
    const reset = await up("--reset");
    expect(await ca()).not.toBe(before.ca);
    await stop(reset);
  }, 300_000);
});
