/**
 * `custody local up`: runs the directory's mesh on this machine until Ctrl-C. Progress goes to
 * stderr, the table of what runs where to stdout.
 */
import { join } from "node:path";
import { type Command, EXIT_OK, EXIT_USAGE, parseCommandArgs, requireOption } from "../../cli/src/kit.js";
import { runUntilSignal } from "../../cli/src/serve.js";
import { UsageError } from "../../crds/src/errors.js";
import type { RunningLocal } from "./running.js";
import { startLocal } from "./up.js";

/** 128 + SIGINT, as shells report a program stopped by Ctrl-C. */
const EXIT_INTERRUPTED = 130;

const HELP = `Usage: custody local up --dir DIR [--state DIR] [--reset] [--trusted-issuers FILE] [--trust-bundle FILE]

Runs Custody without Kubernetes: the operator and its token service, and for every LocalWorkload
in DIR a sidecar and the app behind it, all on 127.0.0.1. ServiceIdentity and AccessPolicy
manifests in DIR take effect as they change; LocalWorkloads start, restart and stop with their file.

  --dir DIR               manifests: ServiceIdentity, AccessPolicy, LocalWorkload (see local/README.md)
  --state DIR             CA, identities, registry, ports, logs (default DIR/.custody); reused next time
  --reset                 delete the state first (new CA, new identities)
  --trusted-issuers FILE  identity providers whose users' tokens edge services accept (inline JWKS)
  --trust-bundle FILE     third-party CAs whose client certificates map to identities (externalSubjects)
  -h, --help              show this help
`;

export const localCommand: Command = async (args, io) => {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === "--help" || sub === "-h") {
    io.stdout(HELP);
    return sub === undefined ? EXIT_USAGE : EXIT_OK;
  }
  if (sub !== "up")
    throw new UsageError(`local: unknown subcommand "${sub}"; the only one is \`custody local up\`.`);
  const { values } = parseCommandArgs("local up", rest, {
    dir: { type: "string" },
    state: { type: "string" },
    reset: { type: "boolean" },
    "trusted-issuers": { type: "string" },
    "trust-bundle": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help === true) {
    io.stdout(HELP);
    return EXIT_OK;
  }
  const directory = requireOption("local up", "dir", values.dir);
  // Listening for Ctrl-C from the start: a signal during start-up stops what has started.
  let local: RunningLocal | undefined;
  let interrupted = false;
  const stopped = runUntilSignal(async () => {
    interrupted = true;
    io.stderr("stopping: apps, sidecars, then the operator\n");
    await local?.close();
  });
  try {
    local = await startLocal({
      directory,
      stateDirectory: values.state ?? join(directory, ".custody"),
      reset: values.reset === true,
      ...(values["trusted-issuers"] === undefined ? {} : { trustedIssuersPath: values["trusted-issuers"] }),
      ...(values["trust-bundle"] === undefined ? {} : { trustBundlePath: values["trust-bundle"] }),
      progress: (line) => io.stderr(`${line}\n`),
    });
  } catch (error) {
    if (!interrupted) throw error;
    io.stderr("interrupted during start-up; everything started has been stopped\n");
    return EXIT_INTERRUPTED;
  }
  if (interrupted) {
    await local.close();
    return EXIT_INTERRUPTED;
  }
  io.stdout(`${describeLocal(local)}\n`);
  await stopped;
  return EXIT_OK;
};

/** What runs where, as a table a person reads once. */
export function describeLocal(local: RunningLocal): string {
  const rows = [
    ["service", "app", "inbound (mTLS)", "outbound (HTTP_PROXY)", "admin"],
    ...local.workloads.map((workload) => [
      workload.serviceId,
      `127.0.0.1:${workload.appPort}`,
      `127.0.0.1:${workload.inboundPort}`,
      workload.outboundUrl,
      workload.adminUrl,
    ]),
  ];
  const widths =
    rows[0]?.map((_, column) => Math.max(...rows.map((row) => (row[column] ?? "").length))) ?? [];
  const table = rows.map((row) =>
    row
      .map((cell, column) => cell.padEnd(widths[column] ?? 0))
      .join("  ")
      .trimEnd(),
  );
  return [
    ...table,
    "",
    `token service   ${local.tokenUrl}`,
    `operator admin  ${local.operatorAdminUrl}/metrics`,
    `state           ${local.stateDirectory} (logs in ${join(local.stateDirectory, "logs")})`,
    "",
    `The outbound ports want each workload's credential (its app's HTTP_PROXY carries it as userinfo;`,
    `the secrets are in ${join(local.stateDirectory, "clients")}). Local mode shares one machine: see`,
    "the README's security section for what it isolates and what it does not.",
    "",
    "Ctrl-C stops everything.",
  ].join("\n");
}
