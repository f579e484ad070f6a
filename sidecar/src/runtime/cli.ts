/**
 * `custody sidecar`: the process injected next to every workload. Settings come from a config file
 * (YAML or JSON), then environment variables `CUSTODY_<SETTING>`, then flags, each overriding the
 * one before; every setting is checked before anything starts.
 */

import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import { type Command, EXIT_OK, parseCommandArgs } from "../../../cli/src/kit.js";
import { createLogger, LOG_LEVELS } from "../../../cli/src/log.js";
import { parseListenAddress, runUntilSignal } from "../../../cli/src/serve.js";
import { parseAppProbes } from "../../../crds/src/app-probes.js";
import { parseDuration } from "../../../crds/src/duration.js";
import { UsageError } from "../../../crds/src/errors.js";
import { parseYamlDocuments } from "../../../crds/src/manifest.js";
import { readBoundedFile } from "../../../pki/src/files.js";
import { DEFAULT_LIMITS } from "../chain/limits.js";
import { DEFAULT_MAX_BODY_BYTES, DEFAULT_MEMORY_BODY_BYTES } from "./body.js";
import { OUTBOUND_POLICIES } from "./passthrough.js";
import { startSidecar } from "./sidecar.js";

const COMMAND = "sidecar";

const SETTINGS = {
  identity: "identity directory (tls.crt, tls.key, ca.crt): local mode; or identity-url",
  "identity-url":
    "obtain the identity from the operator (https://…/v1/identity), authenticated by the pod's token (Kubernetes)",
  "identity-token": "the projected service-account token file sent to identity-url",
  registry: "registry file, or directory of registry-<i>.json shards",
  "app-port": "the app's port on 127.0.0.1",
  "token-url": "token service endpoint (https://…/oauth2/token); without it chains start with the first link",
  outbound: "outbound listen address (default 127.0.0.1:15001)",
  "client-secret-file":
    "file with the credential the app presents on the outbound port and key service (HTTP_PROXY=http://custody:SECRET@…); needed where other processes share loopback",
  inbound: "inbound listen address (default 0.0.0.0:15006)",
  "app-secret-file":
    "file with a credential sent to the app in Custody-Sidecar-Token on every request, so an app can tell its sidecar from other local callers",
  admin: "admin listen address (default 0.0.0.0:15020)",
  "redis-url": "share the replay guard through Redis (redis://host:6379); default in-memory",
  "replay-failure-mode": "closed (default) | open: what to do while Redis cannot answer",
  "when-no-policy": "deny (default) | allow: calls to a service no AccessPolicy targets",
  "outbound-policy":
    "registry-only (default) | passthrough: calls to hosts that are not mesh services are refused, or forwarded as they are (HTTP; HTTPS through CONNECT); injected sidecars default to passthrough",
  "max-body-bytes": `largest request body accepted (default ${DEFAULT_MAX_BODY_BYTES})`,
  "poll-interval": "re-read identity and registry at least this often (default 5s)",
  "shutdown-delay":
    "on SIGTERM, keep serving this long (not ready) before stopping, for an app that stops at the same time and still calls out (default 0s)",
  "shutdown-grace": "then let requests in flight finish this long, and cut them (default 10s)",
  "log-level": "fatal | error | warn | info | debug (default info)",
  "app-probes":
    "with traffic capture: the app's probes the admin port performs for the kubelet at /app-health/<container>/<kind> (JSON, as the webhook injects it)",
} as const;
type Setting = keyof typeof SETTINGS;

/** The string a person writes, the address the sidecar listens on. */
const listenSchema = (fallback: string) =>
  z
    .string()
    .prefault(fallback)
    .transform((text, ctx) => {
      const address = parseListenAddress(text);
      if (address === undefined) ctx.addIssue({ code: "custom", message: "must be HOST:PORT" });
      return address ?? { host: "", port: 0 };
    });
const settingsSchema = z
  .strictObject({
    identity: z.string().min(1).optional(),
    "identity-url": z.url({ protocol: /^https$/ }).optional(),
    "identity-token": z.string().min(1).optional(),
    registry: z.string({ error: "is required: the registry file or directory" }).min(1),
    "app-port": z.coerce
      .number({ error: "is required: the app's port on 127.0.0.1" })
      .int()
      .min(1, { error: "must be a port, 1-65535" })
      .max(65_535, { error: "must be a port, 1-65535" }),
    "token-url": z.url({ protocol: /^https$/ }).optional(),
    outbound: listenSchema("127.0.0.1:15001"),
    "client-secret-file": z.string().min(1).optional(),
    "app-secret-file": z.string().min(1).optional(),
    inbound: listenSchema("0.0.0.0:15006"),
    admin: listenSchema("0.0.0.0:15020"),
    "redis-url": z.url({ protocol: /^rediss?$/ }).optional(),
    "replay-failure-mode": z.enum(["closed", "open"]).default("closed"),
    "when-no-policy": z.enum(["deny", "allow"]).default("deny"),
    "outbound-policy": z.enum(OUTBOUND_POLICIES).default("registry-only"),
    "max-body-bytes": z.coerce
      .number()
      .int()
      .min(1_024)
      .max(1024 * 1024 * 1024)
      .default(DEFAULT_MAX_BODY_BYTES),
    "poll-interval": z.string().default("5s"),
    "shutdown-delay": z.string().default("0s"),
    "shutdown-grace": z.string().default("10s"),
    "log-level": z.enum(LOG_LEVELS).default("info"),
    "app-probes": z.string().optional(),
  })
  // Checked even when other settings are wrong too, so every problem is named at once.
  .refine((value) => (value?.identity === undefined) !== (value?.["identity-url"] === undefined), {
    path: ["identity"],
    message:
      "is required: the identity directory (local mode) or identity-url with identity-token (Kubernetes), not both",
    when: () => true,
  })
  .refine((value) => value?.["identity-url"] === undefined || value["identity-token"] !== undefined, {
    path: ["identity-token"],
    message: "is required with identity-url: the pod's projected service-account token file",
    when: () => true,
  });

const HELP = `Usage: custody sidecar [--config FILE] [--SETTING VALUE ...]

Runs the sidecar: outbound proxy (the app's HTTP_PROXY), inbound mTLS proxy in front of the app,
admin port with /metrics, /healthz and /readyz.

Settings (config file keys, flags --KEY, or environment CUSTODY_KEY with - as _):
${Object.entries(SETTINGS)
  .map(([key, help]) => `  ${key.padEnd(22)}${help}`)
  .join("\n")}

Required: registry, app-port, and identity (files) or identity-url with identity-token (Kubernetes).
`;

function envSettings(env: NodeJS.ProcessEnv): Partial<Record<Setting, string>> {
  const out: Partial<Record<Setting, string>> = {};
  for (const key of Object.keys(SETTINGS) as Setting[]) {
    const value = env[`CUSTODY_${key.toUpperCase().replaceAll("-", "_")}`];
    if (value !== undefined && value !== "") out[key] = value;
  }
  return out;
}

async function fileSettings(path: string | undefined): Promise<Record<string, unknown>> {
  if (path === undefined) return {};
  const [document, ...more] = parseYamlDocuments(await readBoundedFile(path, 64 * 1024), path);
  if (more.length > 0 || typeof document !== "object" || document === null || Array.isArray(document)) {
    throw new UsageError(`${COMMAND}: ${path} must hold one mapping of settings.`);
  }
  return document as Record<string, unknown>;
}

function durationSetting(name: Setting, text: string): number {
  try {
    return parseDuration(text);
  } catch (error) {
    throw new UsageError(`${COMMAND}: ${name}: ${error instanceof Error ? error.message : String(error)}.`);
  }
}

/** Long enough not to be guessed; a URL's userinfo carries it, so no characters that need escaping. */
const SECRET = /^[A-Za-z0-9_-]{22,256}$/;

async function secretSetting(name: Setting, path: string | undefined): Promise<string | undefined> {
  if (path === undefined) return undefined;
  const secret = (await readBoundedFile(path, 1024)).trim();
  if (!SECRET.test(secret)) {
    throw new UsageError(
      `${COMMAND}: ${name}: ${path} must hold 22 to 256 characters of A-Z a-z 0-9 _ - (e.g. 32 random bytes, base64url).`,
    );
  }
  return secret;
}

/** The one source of the workload identity: files, or the operator's delivery. */
function identitySource(settings: {
  readonly identity?: string | undefined;
  readonly "identity-url"?: string | undefined;
  readonly "identity-token"?: string | undefined;
}): { identityDirectory: string } | { identityDelivery: { url: string; tokenPath: string } } {
  const { identity, "identity-url": url, "identity-token": tokenPath } = settings;
  if ((identity === undefined) === (url === undefined)) {
    throw new UsageError(
      `${COMMAND}: set exactly one of identity (a directory of identity files) and identity-url (the operator's identity delivery).`,
    );
  }
  if (url !== undefined) {
    if (tokenPath === undefined) {
      throw new UsageError(
        `${COMMAND}: identity-url needs identity-token (the pod's projected service-account token file).`,
      );
    }
    return { identityDelivery: { url, tokenPath } };
  }
  return { identityDirectory: identity as string };
}

export const sidecarCommand: Command = async (args, io) => {
  const options = Object.fromEntries(Object.keys(SETTINGS).map((key) => [key, { type: "string" as const }]));
  const { values } = parseCommandArgs(COMMAND, args, {
    ...options,
    config: { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help === true) {
    io.stdout(HELP);
    return EXIT_OK;
  }
  const fromFlags = Object.fromEntries(
    Object.entries(values).filter(([key, value]) => key in SETTINGS && value !== undefined),
  );
  const merged = {
    ...(await fileSettings(values.config as string | undefined)),
    ...envSettings(process.env),
    ...fromFlags,
  };
  const parsed = settingsSchema.safeParse(merged);
  if (!parsed.success) {
    const problems = parsed.error.issues.map(
      (issue) => `${issue.path.join(".") || "settings"}: ${issue.message}`,
    );
    throw new UsageError(`${COMMAND}: ${problems.join("; ")}. See \`custody sidecar --help\`.`);
  }
  const settings = parsed.data;
  const pollIntervalMs = durationSetting("poll-interval", settings["poll-interval"]);
  const shutdownDelayMs = durationSetting("shutdown-delay", settings["shutdown-delay"]);
  if (shutdownDelayMs > 120_000) throw new UsageError(`${COMMAND}: shutdown-delay must be at most 2m.`);
  const shutdownGraceMs = durationSetting("shutdown-grace", settings["shutdown-grace"]);
  const logger = createLogger("sidecar", settings["log-level"]);
  const clientSecret = await secretSetting("client-secret-file", settings["client-secret-file"]);
  const appSecret = await secretSetting("app-secret-file", settings["app-secret-file"]);
  // Read strictly before anything starts: a sidecar never answers probes it was not given.
  const probesText = settings["app-probes"];
  const appProbes = probesText === undefined ? {} : parseAppProbes(probesText);
  const running = await startSidecar({
    ...identitySource(settings),
    registryPath: settings.registry,
    appPort: settings["app-port"],
    tokenUrl: settings["token-url"],
    outbound: settings.outbound,
    clientSecret,
    appSecret,
    inbound: settings.inbound,
    admin: settings.admin,
    limits: DEFAULT_LIMITS,
    whenNoPolicy: settings["when-no-policy"],
    outboundPolicy: settings["outbound-policy"],
    replay: { redisUrl: settings["redis-url"], failureMode: settings["replay-failure-mode"] },
    spool: { memoryBytes: DEFAULT_MEMORY_BODY_BYTES, maxBytes: settings["max-body-bytes"] },
    appProbes,
    pollIntervalMs,
    logger,
  });
  await runUntilSignal(async (signal) => {
    if (shutdownDelayMs > 0) {
      logger.info(
        { event: "draining", signal, delayMs: shutdownDelayMs },
        "draining: not ready, still serving while the app stops and the pod leaves its Services' endpoints",
      );
      running.drain();
      await sleep(shutdownDelayMs);
    }
    logger.info({ event: "shutting_down", signal }, "shutting down: finishing requests in flight");
    await running.close(shutdownGraceMs);
  });

  logger.info({ event: "stopped" }, "sidecar stopped");
  return EXIT_OK;
};
