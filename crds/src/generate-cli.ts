/**
 * `make crds`: writes crds/custody.dev_*.yaml from the zod schemas.
 * With --check, writes nothing and exits 1 when a checked-in file differs (for CI).
 */
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { generateCrdFiles } from "./crd.js";

const crdsDirectory = new URL("../", import.meta.url);

async function main(args: readonly string[]): Promise<number> {
  const check = args.includes("--check");
  let stale = 0;
  for (const file of generateCrdFiles()) {
    const target = new URL(file.fileName, crdsDirectory);
    const current = await readFile(target, "utf8").catch(() => undefined);
    if (current === file.content) {
      process.stdout.write(`unchanged crds/${file.fileName}\n`);
    } else if (check) {
      stale++;
      process.stderr.write(`stale     crds/${file.fileName}: run make crds\n`);
    } else {
      await writeFile(fileURLToPath(target), file.content, "utf8");
      process.stdout.write(`wrote     crds/${file.fileName}\n`);
    }
  }
  return stale === 0 ? 0 : 1;
}

process.exitCode = await main(process.argv.slice(2));
