/** What `custody demo` prints once the scenarios have run: the table, the chain, the verdict. */
import type { CapturedCall } from "./outcomes.js";
import { describeOutcome } from "./outcomes.js";
import type { ScenarioResult } from "./scenarios.js";
import { renderTable } from "./table.js";

export function renderResults(results: readonly ScenarioResult[]): string {
  return renderTable(
    ["", "scenario", "expected", "got", "reason"],
    results.map((result) => [
      result.matched ? "ok" : "FAIL",
      result.spec.title,
      describeOutcome(result.spec.expected),
      result.got === undefined ? "(not played)" : describeOutcome(result.got),
      result.got === undefined ? (result.note ?? "") : result.spec.why,
    ]),
  );
}

export function passed(results: readonly ScenarioResult[]): boolean {
  return results.length > 0 && results.every((result) => result.matched);
}

export function verdictLine(results: readonly ScenarioResult[]): string {
  const matched = results.filter((result) => result.matched).length;
  return `${passed(results) ? "PASS" : "FAIL"}: ${matched} of ${results.length} outcomes as expected`;
}

/** `chainTree`: the happy path's chain as chain-view.ts renders it, when there was one. */
export function renderReport(
  results: readonly ScenarioResult[],
  captured: CapturedCall | undefined,
  chainTree: string | undefined,
): string {
  const sections = [renderResults(results)];
  if (captured !== undefined && chainTree !== undefined) {
    sections.push(
      [
        "The checkout's call chain, as payments received it (custody token inspect):",
        "",
        chainTree.trimEnd(),
        "",
        `payments' sidecar told the app: caller ${captured.caller ?? "-"}; decision ${captured.decision ?? "-"}`,
      ].join("\n"),
    );
  }
  sections.push(verdictLine(results));
  return `${sections.join("\n\n")}\n`;
}
