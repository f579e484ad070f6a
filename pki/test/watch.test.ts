import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ChangeWatcher } from "../src/watch.js";
import { temporaryDirectory } from "./support.js";

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
      await writeFile(join(directory.path, "a.yaml"), "kind: ServiceIdentity\n");
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
