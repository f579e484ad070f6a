/**
 * How every benchmark reports: its JSON result in `bench/out/` (a profiled run writes nothing) and
 * its tables as Markdown.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const OUT_DIR = new URL("./out/", import.meta.url);

/** `bench/out/<name>.json`. */
export function outFile(name: string): string {
  return fileURLToPath(new URL(`${name}.json`, OUT_DIR));
}

/**
 * Writes the result as pretty JSON, unless the run was profiled (its numbers carry the profiler's
 * cost), and says which it did.
 */
export function writeResult(
  name: string,
  result: unknown,
  run: {
    readonly profiled: boolean;
    readonly startedNs: bigint;
    readonly progress: (message: string) => void;
  },
): void {
  const seconds = (Number(process.hrtime.bigint() - run.startedNs) / 1e9).toFixed(1);
  const file = outFile(name);
  if (run.profiled) {
    run.progress(`profiled run (${seconds} s): ${file} not written`);
    return;
  }
  mkdirSync(fileURLToPath(OUT_DIR), { recursive: true });
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  run.progress(`wrote ${file} (${seconds} s)`);
}

/**
 * A Markdown table, numbers right-aligned; the first column left-aligned when it holds labels
 * (the default), right-aligned when it holds numbers too.
 */
export function markdownTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  options: { readonly labels?: boolean } = {},
): string {
  const labels = options.labels ?? true;
  const widths = header.map((cell, i) => Math.max(cell.length, ...rows.map((row) => (row[i] ?? "").length)));
  const left = (i: number) => labels && i === 0;
  const pad = (cell: string, i: number) =>
    left(i) ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0);
  const line = (cells: readonly string[]) => `| ${cells.map(pad).join(" | ")} |`;
  const dashes = (width: number, i: number) =>
    left(i) ? "-".repeat(width + 2) : `${"-".repeat(width + 1)}:`;
  return [line(header), `|${widths.map(dashes).join("|")}|`, ...rows.map(line)].join("\n");
}
