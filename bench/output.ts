/** Where every benchmark writes its result, and the one rule for it: a profiled run writes nothing. */
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
