/**
 * The ports `custody local up` chooses: outside the kernel's ephemeral range (where outgoing
 * connections and listen(0) could take one before its process listens), remembered across runs,
 * and replaced when something else holds a remembered one.
 */
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { temporaryDirectory } from "../../pki/test/support.js";
import { PORTS_FILE, PortBook } from "../src/ports.js";

async function ephemeralStart(): Promise<number> {
  const text = await readFile("/proc/sys/net/ipv4/ip_local_port_range", "utf8").catch(() => "32768 60999");
  return Number(text.trim().split(/\s+/)[0]);
}

describe("PortBook", () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0)) await cleanup();
  });

  it("chooses distinct ports below the ephemeral range, and the same ones on the next run", async () => {
    const directory = await temporaryDirectory();
    cleanups.push(directory.cleanup);
    const book = await PortBook.open(directory.path);
    const cart = await book.workload("shop/cart");
    const all = [book.token, book.tokenAdmin, book.operatorAdmin, ...Object.values(cart)];
    const end = await ephemeralStart();
    for (const port of all) {
      expect(port).toBeGreaterThanOrEqual(10_000);
      expect(port).toBeLessThan(end);
    }
    expect(new Set(all).size).toBe(all.length);
    const again = await PortBook.open(directory.path);
    expect([again.token, again.tokenAdmin, again.operatorAdmin]).toEqual([
      book.token,
      book.tokenAdmin,
      book.operatorAdmin,
    ]);
    expect(await again.workload("shop/cart")).toEqual(cart);
    expect(JSON.parse(await readFile(join(directory.path, PORTS_FILE), "utf8")).token).toBe(book.token);
  });

  it("replaces a remembered port that something else now listens on", async () => {
    const directory = await temporaryDirectory();
    cleanups.push(directory.cleanup);
    const book = await PortBook.open(directory.path);
    const squatter = createServer();
    await new Promise<void>((resolve) => squatter.listen(book.token, "127.0.0.1", resolve));
    cleanups.push(() => new Promise((resolve) => squatter.close(() => resolve())));
    const again = await PortBook.open(directory.path);
    expect(again.token).not.toBe(book.token);
    expect(again.tokenAdmin).toBe(book.tokenAdmin);
  });
});
