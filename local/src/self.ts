/**
 * How to start another `custody` process running this same code: from source (tests, `npm run`)
 * through tsx, from dist/ when built. Never `custody` from the PATH: that could be another version.
 */
import { fileURLToPath } from "node:url";

export function custodyCommand(): { readonly command: string; readonly args: readonly string[] } {
  const fromSource = import.meta.url.endsWith(".ts");
  const entry = fileURLToPath(
    new URL(fromSource ? "../../cli/src/entry.ts" : "../../cli/src/entry.js", import.meta.url),
  );
  return { command: process.execPath, args: fromSource ? ["--import", "tsx", entry] : [entry] };
}
