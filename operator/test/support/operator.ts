/** Starting the operator in tests: loopback ports, short delays, quiet logs. */
import { pino } from "pino";
import { DEFAULT_LOCATION_TEMPLATE } from "../../src/controllers/registry-publisher.js";
import { type Leadership, type RunningOperator, startOperator } from "../../src/operator.js";
import type { Store } from "../../src/store/store.js";

export function startTestOperator(
  store: Store,
  caDirectory: string,
  options: { leadership?: Leadership; propagationDelayMs?: number; registryShardBytes?: number } = {},
): Promise<RunningOperator> {
  const loopback = { host: "127.0.0.1", port: 0 };
  return startOperator({
    store,
    leadership: options.leadership,
    namespace: "custody-system",
    caDirectory,
    trustBundlePath: undefined,
    trustedIssuersPath: undefined,
    tokenService: {
      listen: loopback,
      admin: loopback,
      issuer: undefined,
      audience: undefined,
      rotationPeriodMs: 86_400_000,
      maxTokenLifetimeMs: 3_600_000,
      serverNames: [],
      serverId: "issuer.custody-system",
    },
    admin: loopback,
    locationTemplate: DEFAULT_LOCATION_TEMPLATE,
    propagationDelayMs: options.propagationDelayMs ?? 1_000,
    resyncIntervalMs: 60_000,
    concurrency: 8,
    ...(options.registryShardBytes === undefined ? {} : { registryShardBytes: options.registryShardBytes }),
    pollIntervalMs: 200,
    logger: pino({ level: process.env.LOG_LEVEL ?? "silent" }),
  });
}
