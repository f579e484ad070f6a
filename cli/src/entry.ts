/**
 * Runs the CLI from source (`node --import tsx cli/src/entry.ts …`): what tests and benchmarks spawn,
 * so a real process always runs the code under test, never a stale dist/. Users run bin/custody.mjs.
 */
import { main } from "./main.js";

process.exitCode = await main(process.argv.slice(2));
