import { defineConfig } from "vitest/config";

// The one-node cluster suite: its own run, after the rest (make test), because it owns the machine's
// node (one per machine), runs for minutes and needs both cores for the cluster it starts.
export default defineConfig({
  test: {
    include: ["e2e/cluster/**/*.test.ts"],
    testTimeout: 10 * 60_000,
    hookTimeout: 20 * 60_000,
    pool: "forks",
    maxWorkers: 1,
    reporters: ["default", "./e2e/support/summary-reporter.ts"],
  },
});
