/**
 * `custody token inspect`: a `Custody-Chain` value as a tree of who called whom, with what, when,
 * and — given the registry — whether each element verifies, with the receiver's reason codes.
 */
import {
  type Command,
  EXIT_OK,
  EXIT_REJECTED,
  EXIT_USAGE,
  parseCommandArgs,
  runCommand,
} from "../../../cli/src/kit.js";
import { UsageError } from "../../../crds/src/errors.js";
import { inspectChain } from "./inspect.js";
import { type InputIO, parseAt, parseBody, parseRequest, readChain, readRegistry } from "./options.js";
import { renderInspection } from "./render.js";

const USAGE = `Usage: custody token <command> [options]

Call-chain tokens, offline.

Commands:
  inspect  decode a Custody-Chain and verify it against a registry

Run \`custody token inspect --help\` for its options.
`;

const INSPECT_HELP = `Usage: custody token inspect [CHAIN | -] [options]

Decodes a Custody-Chain value (the argument, or stdin when it is absent or "-") and prints its
elements as a tree, oldest first: issuer → audience, operation, times, claims. Long values are cut;
signatures and token texts are never printed.

With --registry each element is verified as the receiving sidecar would verify it — signatures by
the registry's keys, hash links, custody (each element addressed to the service that continued it),
lifetimes and expiry, the initial token — and marked ok or FAILED with the sidecar's reason code.
Nothing is recorded: a dry run spends no jti. Without --registry the chain is only decoded.

Options:
  --registry PATH         registry file, or directory of registry-<i>.json shards
  --at TIME               verify as of TIME: 2025-06-01T10:00:05Z, or seconds since the epoch
                          (default now; a chain copied from a log has expired since)
  --target SERVICE        the service that received it: the head must be addressed to it
  --request "METHOD /path?query"
                          the request it came with: the head must be signed for it
  --body-file FILE        the request body: the head must bind its hash
  --body-sha256 HASH      the same, from the body's SHA-256 (base64url or hex)
  --json                  print JSON instead of the tree
  -h, --help              show this help

Exit status: 0 verified (or only decoded), 1 it does not verify or cannot be decoded, 2 usage.

Examples:
  custody token inspect "$CHAIN"
  kubectl logs deploy/payments -c app | grep -o 'custody-chain: [^ ]*' | tail -1 \\
    | custody token inspect --registry ./registry.json --at 2025-06-01T10:00:05Z
`;

/** Entry point for `custody token ...`: receives the arguments after "token". */
export const tokenCommand: Command = (args, io) => runCommand(dispatch, args, io);

async function dispatch(args: readonly string[], io: InputIO): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    io.stdout(USAGE);
    return name === undefined ? EXIT_USAGE : EXIT_OK;
  }
  if (name !== "inspect") {
    throw new UsageError(`custody token: unknown command "${name}". See \`custody token --help\`.`);
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    io.stdout(INSPECT_HELP);
    return EXIT_OK;
  }
  return inspectCommand(rest, io);
}

async function inspectCommand(args: readonly string[], io: InputIO): Promise<number> {
  const command = "token inspect";
  const { values, positionals } = parseCommandArgs(
    command,
    args,
    {
      registry: { type: "string" },
      at: { type: "string" },
      target: { type: "string" },
      request: { type: "string" },
      "body-file": { type: "string" },
      "body-sha256": { type: "string" },
      json: { type: "boolean" },
    },
    true,
  );
  if (positionals.length > 1) {
    throw new UsageError(
      `${command}: give one chain (its elements joined by "~"), quoted. See \`custody ${command} --help\`.`,
    );
  }
  const verifying = values.registry !== undefined;
  for (const flag of ["at", "target", "request", "body-file", "body-sha256"] as const) {
    if (!verifying && values[flag] !== undefined) {
      throw new UsageError(`${command}: --${flag} is for verification: give --registry PATH too.`);
    }
  }
  const nowSeconds = parseAt(command, values.at);
  const operation = values.request === undefined ? undefined : parseRequest(command, values.request);
  const body = await parseBody(command, values["body-file"], values["body-sha256"]);
  const registry = values.registry === undefined ? undefined : await readRegistry(command, values.registry);
  const chain = await readChain(command, positionals[0], io);
  const inspected = await inspectChain(chain, {
    registry,
    nowSeconds,
    request: { receiver: values.target, operation, body },
  });
  io.stdout(values.json === true ? `${JSON.stringify(inspected, null, 2)}\n` : renderInspection(inspected));
  const unreadable = inspected.elements.some((element) => element.kind === "unreadable");
  return inspected.verification?.ok === false || unreadable ? EXIT_REJECTED : EXIT_OK;
}
