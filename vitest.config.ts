import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["**/test/**/*.test.ts"],
    exclude: ["node_modules/**", "dist/**"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Tests spawn real openssl / TLS processes; two cores, so keep parallelism modest.
    pool: "forks",
    maxWorkers: 2,
    reporters: ["default", "./e2e/support/summary-reporter.ts"],
  },
});
