/**
 * `custody demo [--state DIR] [--keep]`: the talk's scenario, locally. Exit status 0 only when every
 * outcome was the expected one, so `make demo` doubles as an end-to-end check.
 */
import { resolve } from "node:path";
import { type Command, EXIT_OK, EXIT_REJECTED, parseCommandArgs } from "../../../cli/src/kit.js";
import { renderReport } from "./report.js";
import { runDemo } from "./run.js";

const USAGE = `Usage: custody demo [--state DIR] [--keep]

The talk's scenario ("Beyond OAuth2"): a customer checks out at shop, which calls cart
(POST /cart/confirm), which calls payments (POST /pay-for-order/<id>). Runs examples/shop with
\`custody local up\`, plays the customer and a few attackers, prints what was allowed, what was
denied and why, and the call chain of the checkout.

Options:
  --state DIR   keep CA, identities and logs in DIR (reused by the next run); default: temporary
  --keep        leave the working copy and the state on disk afterwards
  -h, --help    this text

Exit status: 0 when every outcome was the expected one, 1 otherwise.
`;

export const demoCommand: Command = async (args, io) => {
  const { values } = parseCommandArgs("demo", args, {
    state: { type: "string" },
    keep: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help === true) {
    io.stdout(USAGE);
    return EXIT_OK;
  }
  // Ctrl-C stops the scenarios and then everything the demo started; a second one is not needed.
  const controller = new AbortController();
  const stop = () => {
    io.stderr("\nstopping …\n");
    controller.abort();
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  try {
    const { startLocal } = await import("../up.js");
    const report = await runDemo({
      start: startLocal,
      stateDirectory: values.state === undefined ? undefined : resolve(values.state),
      keep: values.keep === true,
      progress: (line) => io.stdout(`  ${line}\n`),
      signal: controller.signal,
    });
    io.stdout(`\n${renderReport(report.results, report.captured, report.chainTree)}`);
    return report.passed ? EXIT_OK : EXIT_REJECTED;
  } finally {
    process.removeListener("SIGINT", stop);
    process.removeListener("SIGTERM", stop);
  }
};
