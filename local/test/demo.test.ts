/**
 * `custody demo` end to end: examples/shop on a real local system (operator, token service, a
 * sidecar and an app per workload, as processes), every scenario played over real TLS, and every
 * outcome the expected one. Slow (processes, certificates): about a minute on two cores.
 */
import { describe, expect, it } from "vitest";
import { SCENARIO_IDS } from "../src/demo/expectations.js";
import { renderReport } from "../src/demo/report.js";
import { runDemo } from "../src/demo/run.js";
import { startLocal } from "../src/up.js";

describe("custody demo", () => {
  it("plays the talk's scenarios with the expected outcomes and cleans up", async () => {
    const lines: string[] = [];
    const report = await runDemo({ start: startLocal, progress: (line) => lines.push(line) });
    const text = renderReport(report.results, report.captured, report.chainTree);
    // On failure, the table says which scenario went wrong and how; the progress says how far it got.
    expect(
      report.results.filter((result) => !result.matched),
      `${lines.join("\n")}\n\n${text}`,
    ).toEqual([]);
    expect(report.results.map((result) => result.spec.id)).toEqual([...SCENARIO_IDS]);
    expect(report.passed).toBe(true);
    expect(report.chainTree).toContain("e2 cart.shop → payments.shop");
    expect(report.chainTree).toContain("a receiver would accept this chain");
    expect(text).toMatch(/PASS: 7 of 7 outcomes as expected\n$/);
    expect(lines).toContain("stopping apps, sidecars and operator");
  }, 180_000);
});
