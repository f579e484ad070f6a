/**
 * `custody policy check`: what a service's sidecar would decide about one request — decision,
 * reason, and the policy and rule that made it — without running anything: a dry run for CI.
 */
import {
  type Command,
  EXIT_OK,
  EXIT_REJECTED,
  EXIT_USAGE,
  parseCommandArgs,
  requireOption,
  runCommand,
} from "../../../cli/src/kit.js";
import { UsageError } from "../../../crds/src/errors.js";
import {
  type InputIO,
  parseAt,
  parseBody,
  parseRequest,
  readBearer,
  readChain,
  readSnapshot,
} from "./options.js";
import { checkPolicy, renderPolicyCheck } from "./policy-check.js";

const USAGE = `Usage: custody policy <command> [options]

AccessPolicies, offline.

Commands:
  check  decide one request as the target's sidecar would, and say which policy and rule decided

Run \`custody policy check --help\` for its options.
`;

const CHECK_HELP = `Usage: custody policy check --registry PATH --target SERVICE --request "METHOD /path"
                            (--chain VALUE | --chain - | --bearer TOKEN) [options]

Decides one request exactly as the target's sidecar would — the chain verified for this request,
then every AccessPolicy of the registry that targets the service — and prints the decision, the
reason code, the policy and rule that made it, and why. Nothing runs and nothing is recorded: no jti
is spent and no quota taken. The TLS peer is not checked (a dry run has no connection).

Options:
  --registry PATH         registry file, or directory of registry-<i>.json shards
  --target SERVICE        the service receiving the request, e.g. payments.shop
  --request "METHOD /path?query"
                          the request, e.g. "POST /pay-for-order/7"
  --chain VALUE           the Custody-Chain it carries ("-": read it from stdin)
  --bearer TOKEN          instead of a chain: a token presented to an edge service as
                          Authorization: Bearer ("-": read it from stdin, out of the process list)
  --body-file FILE        the request body (without it or --body-sha256 the body binding of the
                          chain's head is not checked, and the output says so)
  --body-sha256 HASH      the body's SHA-256 (base64url or hex)
  --at TIME               decide as of TIME: 2025-06-01T10:00:05Z, or seconds since the epoch
                          (default now)
  --when-no-policy MODE   deny (default) | allow: the sidecar's setting for unprotected services
  --json                  print JSON
  -h, --help              show this help

Exit status: 0 allow (also when only an audit-mode policy would deny), 1 deny, 2 usage or an
unusable registry.

Example:
  custody policy check --registry ./registry.json --target payments.shop \\
    --request "POST /pay-for-order/7" --chain "$CHAIN" --at 2025-06-01T10:00:05Z
`;

/** Entry point for `custody policy ...`: receives the arguments after "policy". */
export const policyCommand: Command = (args, io) => runCommand(dispatch, args, io);

async function dispatch(args: readonly string[], io: InputIO): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    io.stdout(USAGE);
    return name === undefined ? EXIT_USAGE : EXIT_OK;
  }
  if (name !== "check") {
    throw new UsageError(`custody policy: unknown command "${name}". See \`custody policy --help\`.`);
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    io.stdout(CHECK_HELP);
    return EXIT_OK;
  }
  return checkCommand(rest, io);
}

const MAX_LISTED_SERVICES = 8;

async function checkCommand(args: readonly string[], io: InputIO): Promise<number> {
  const command = "policy check";
  const { values } = parseCommandArgs(command, args, {
    registry: { type: "string" },
    target: { type: "string" },
    request: { type: "string" },
    chain: { type: "string" },
    bearer: { type: "string" },
    "body-file": { type: "string" },
    "body-sha256": { type: "string" },
    at: { type: "string" },
    "when-no-policy": { type: "string" },
    json: { type: "boolean" },
  });
  const registryPath = requireOption(command, "registry", values.registry);
  const target = requireOption(command, "target", values.target);
  const operation = parseRequest(command, requireOption(command, "request", values.request));
  if ((values.chain === undefined) === (values.bearer === undefined)) {
    throw new UsageError(
      `${command}: give the request's credential: --chain VALUE (or --chain - to read it from stdin), or --bearer TOKEN for an edge service.`,
    );
  }
  if (values.bearer !== undefined && (values["body-file"] ?? values["body-sha256"]) !== undefined) {
    throw new UsageError(`${command}: a bearer token binds no body: drop --body-file / --body-sha256.`);
  }
  const whenNoPolicy = values["when-no-policy"] ?? "deny";
  if (whenNoPolicy !== "deny" && whenNoPolicy !== "allow") {
    throw new UsageError(`${command}: --when-no-policy must be deny or allow.`);
  }
  const nowSeconds = parseAt(command, values.at);
  const body = await parseBody(command, values["body-file"], values["body-sha256"]);
  const snapshot = await readSnapshot(command, registryPath, nowSeconds);
  if (snapshot.trust.service(target) === undefined) {
    const ids = snapshot.registry.services.map((service) => service.id);
    const listed = ids.slice(0, MAX_LISTED_SERVICES).join(", ");
    const more = ids.length > MAX_LISTED_SERVICES ? `, and ${ids.length - MAX_LISTED_SERVICES} more` : "";
    throw new UsageError(
      `${command}: --target ${target} is not a service of registry generation ${snapshot.generation}; ` +
        `give a service id NAME.NAMESPACE${ids.length === 0 ? "" : ` (it has: ${listed}${more})`}.`,
    );
  }
  const chain = values.chain === undefined ? undefined : await readChain(command, values.chain, io);
  const bearer = values.bearer === undefined ? undefined : await readBearer(command, values.bearer, io);
  const result = await checkPolicy(snapshot, {
    target,
    operation,
    chain,
    bearer,
    body,
    nowSeconds,
    whenNoPolicy,
  });
  io.stdout(values.json === true ? `${JSON.stringify(result, null, 2)}\n` : renderPolicyCheck(result));
  return result.decision === "deny" ? EXIT_REJECTED : EXIT_OK;
}
