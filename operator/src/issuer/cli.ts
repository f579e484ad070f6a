/**
 * `custody issuer`: the token service on its own, for machines outside Kubernetes (partners, VMs)
 * and for `custody local up`. Runs until SIGTERM or SIGINT, then drains in-flight requests.
 */
import { join } from "node:path";
import { type Command, EXIT_OK, parseCommandArgs, requireOption } from "../../../cli/src/kit.js";
import { createLogger, LOG_LEVELS } from "../../../cli/src/log.js";
import { runUntilSignal } from "../../../cli/src/serve.js";
import { UsageError } from "../../../crds/src/errors.js";
import { isServiceId } from "../../../crds/src/names.js";
import {
  durationOption,
  hostPortOption,
  issuerUrlOption,
  listOption,
  logLevelOption,
} from "../cli-options.js";
import { startIssuer } from "./service.js";

const COMMAND = "issuer";
export const DEFAULT_ADMIN = "127.0.0.1:15021";
const DEFAULT_ROTATION = "24h";
const DEFAULT_MAX_TOKEN_TTL = "24h";
const SHUTDOWN_GRACE_MS = 10_000;

const HELP = `Usage: custody issuer --ca DIR --manifests DIR --listen HOST:PORT [options]

The token service: exchanges a workload's client certificate for an identity JWT (RFC 8705
client_credentials) and an edge workload's user token for a composite token (RFC 8693).
Serves HTTPS with a certificate from the CA and asks every client for its certificate.

Options:
  --ca DIR                  Custody CA (ca.crt, ca.key), as made by \`custody pki init\`
  --manifests DIR           ServiceIdentity YAML files; reloaded on change (a bad file is skipped)
  --listen HOST:PORT        token endpoint address (port 0 picks a free port)
  --trust-bundle FILE       extra CAs whose client certificates are trusted (third parties)
  --trusted-issuers FILE    external issuers (inline JWKS) whose users' tokens may be exchanged
  --state DIR               signing keys (default DIR of --ca + /issuer)
  --issuer URL              iss of issued tokens (default https://localhost:PORT)
  --audience AUD            aud of identity tokens (default spiffe://<trust domain>)
  --admin HOST:PORT         /metrics, /healthz, /readyz over plain HTTP (default ${DEFAULT_ADMIN})
  --key-rotation-period D   how long a signing key signs, a duration (default ${DEFAULT_ROTATION})
  --max-token-ttl D         longest token lifetime, whatever an identity asks (default ${DEFAULT_MAX_TOKEN_TTL})
  --server-name NAMES       extra DNS names for the server certificate, comma-separated
  --id ID                   service id of the token service's certificate (default issuer.custody-system)
  --poll-interval D         re-read manifests at least this often (default 5s)
  --log-level L             ${LOG_LEVELS.join(" | ")} (default info)
  -h, --help                show this help

Refreshing: a client asks again, with the same certificate, before its token expires.
A token never outlives the certificate it was issued for.
`;

export const issuerCommand: Command = async (args, io) => {
  const { values } = parseCommandArgs(COMMAND, args, {
    ca: { type: "string" },
    manifests: { type: "string" },
    listen: { type: "string" },
    "trust-bundle": { type: "string" },
    "trusted-issuers": { type: "string" },
    state: { type: "string" },
    issuer: { type: "string" },
    audience: { type: "string" },
    admin: { type: "string" },
    "key-rotation-period": { type: "string" },
    "max-token-ttl": { type: "string" },
    "server-name": { type: "string" },
    id: { type: "string" },
    "poll-interval": { type: "string" },
    "log-level": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    io.stdout(HELP);
    return EXIT_OK;
  }
  const caDirectory = requireOption(COMMAND, "ca", values.ca);
  const issuer = issuerUrlOption(COMMAND, values.issuer);
  const serverId = values.id ?? "issuer.custody-system";
  if (!isServiceId(serverId))
    throw new UsageError(`${COMMAND}: --id must be a service id <name>.<namespace>.`);
  const serverNames = listOption(values["server-name"]);
  const logger = createLogger("issuer", logLevelOption(COMMAND, values["log-level"]));
  const running = await startIssuer({
    caDirectory,
    identities: { directory: requireOption(COMMAND, "manifests", values.manifests) },
    listen: hostPortOption(COMMAND, "listen", requireOption(COMMAND, "listen", values.listen)),
    admin: hostPortOption(COMMAND, "admin", values.admin ?? DEFAULT_ADMIN),
    trustBundlePath: values["trust-bundle"],
    trustedIssuersPath: values["trusted-issuers"],
    signingKeys: { directory: values.state ?? join(caDirectory, "issuer") },
    issuer,
    audience: values.audience,
    rotationPeriodMs: durationOption(
      COMMAND,
      "key-rotation-period",
      values["key-rotation-period"] ?? DEFAULT_ROTATION,
      {
        minMs: 1_000,
        maxMs: 90 * 86_400_000,
      },
    ),
    maxTokenLifetimeMs: durationOption(
      COMMAND,
      "max-token-ttl",
      values["max-token-ttl"] ?? DEFAULT_MAX_TOKEN_TTL,
      {
        minMs: 60_000,
        maxMs: 86_400_000,
      },
    ),
    serverNames,
    serverId,
    pollIntervalMs: durationOption(COMMAND, "poll-interval", values["poll-interval"] ?? "5s", {
      minMs: 100,
      maxMs: 3_600_000,
    }),
    logger,
  });
  await runUntilSignal(async (signal) => {
    logger.info({ event: "shutting_down", signal }, "shutting down: draining requests in flight");
    await running.close(SHUTDOWN_GRACE_MS);
  });

  logger.info({ event: "stopped" }, "token service stopped");
  return EXIT_OK;
};
