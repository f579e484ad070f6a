/**
 * `npm run e2e:apiserver -- --port N`: runs the test API server on its own until SIGTERM/SIGINT.
 * Prints the URL and the path of a kubeconfig for kubectl (`kubectl --kubeconfig PATH get ns`).
 */
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { pino } from "pino";
import { startApiServer } from "./server.js";

const USAGE = `usage: npm run e2e:apiserver -- [--port N] [--host 127.0.0.1] [--kubeconfig PATH]
                           [--bookmark-interval-ms N] [--history-limit N] [--log-level info]`;

function positiveInteger(
  value: string | undefined,
  flag: string,
  fallback: number | undefined,
): number | undefined {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 0) {
    process.stderr.write(`${flag} must be a non-negative integer\n${USAGE}\n`);
    process.exit(2);
  }
  return parsed;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: "string" },
      host: { type: "string" },
      kubeconfig: { type: "string" },
      "bookmark-interval-ms": { type: "string" },
      "history-limit": { type: "string" },
      "log-level": { type: "string" },
      help: { type: "boolean" },
    },
    strict: true,
  });
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const logger = pino(
    { name: "apiserver", level: values["log-level"] ?? process.env.LOG_LEVEL ?? "info" },
    pino.destination(2),
  );
  const bookmarkIntervalMs = positiveInteger(
    values["bookmark-interval-ms"],
    "--bookmark-interval-ms",
    undefined,
  );
  const historyLimit = positiveInteger(values["history-limit"], "--history-limit", undefined);
  const server = await startApiServer({
    port: positiveInteger(values.port, "--port", 0),
    host: values.host ?? "127.0.0.1",
    logger,
    ...(bookmarkIntervalMs === undefined ? {} : { bookmarkIntervalMs }),
    ...(historyLimit === undefined ? {} : { historyLimit }),
  });
  const kubeconfig = values.kubeconfig ?? join(tmpdir(), `custody-apiserver-${server.port}.kubeconfig`);
  await server.kubeconfig(kubeconfig);
  process.stdout.write(
    `API server: ${server.url}\nkubeconfig: ${kubeconfig}\n  kubectl --kubeconfig ${kubeconfig} get namespaces\n`,
  );
  const stop = (signal: string): void => {
    logger.info({ signal }, "stopping");
    server.close().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, "close failed");
        process.exit(1);
      },
    );
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
