/**
 * One sidecar process: the workload identity (reloaded when the Secret changes), its identity
 * token, the registry (reloaded when the ConfigMap changes), and three listeners — outbound
 * (loopback, plain HTTP), inbound (mutual TLS), admin (/metrics, /healthz, /readyz, and with
 * traffic capture the app's probes at /app-health/<container>/<kind>).
 * Requests read the latest good identity and registry; reloads swap them whole.
 */

import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import { createAdminServer, createMetricsRegistry } from "../../../cli/src/admin.js";
import { closeGracefully, drain, type ListenAddress, listen } from "../../../cli/src/serve.js";
import type { AppProbes } from "../../../crds/src/app-probes.js";
import { CustodyError } from "../../../crds/src/errors.js";
import { ChangeWatcher } from "../../../pki/src/watch.js";
import type { ChainLimits } from "../chain/limits.js";
import type { LinkSigner } from "../chain/mint.js";
import type { RecipientKey } from "../keys/jwe.js";
import { QuotaLimiter, type QuotaStore } from "../quota/limiter.js";
import { createQuotaMetrics } from "../quota/metrics.js";
import type { RedisQuotaLimiter } from "../quota/redis.js";
import type { ReplayGuard } from "../replay/guard.js";
import { MemoryReplayGuard } from "../replay/memory.js";
import { createReplayMetrics, withReplayMetrics } from "../replay/metrics.js";
import type { RedisReplayGuard, ReplayFailureMode } from "../replay/redis.js";
import { AppChainSealer } from "./app-chain.js";
import { createAppHealthRoute } from "./app-health.js";
import type { SpoolOptions } from "./body.js";
import { identityDeliveryClient } from "./identity-delivery.js";
import { loadIdentityFiles, type WorkloadIdentity } from "./identity-files.js";
import { IdentityTokenKeeper, tokenServiceFetcher } from "./identity-token.js";
import { createInboundServer } from "./inbound-server.js";
import { createKeyRoutes } from "./key-routes.js";
import { LocalClientGuard } from "./local-client.js";
import { createSidecarMetrics } from "./metrics.js";
import { createOutboundServer } from "./outbound-server.js";
import { openingKeysFor, signerFor } from "./own-keys.js";
import type { OutboundPolicy } from "./passthrough.js";
import { type RegistrySnapshot, RegistrySource } from "./registry-source.js";

/** Where the key comes from on Kubernetes: the operator, for the pod's service-account token. */
export interface IdentityDeliveryConfig {
  readonly url: string;
  readonly tokenPath: string;
  /** How often the identity is asked for again, to follow rotations (default 30 s). */
  readonly refreshMs?: number;
}

export interface SidecarConfig {
  /** Identity files (local mode; see identity-files.ts). Exactly one of this and identityDelivery. */
  readonly identityDirectory?: string;
  readonly identityDelivery?: IdentityDeliveryConfig;
  readonly registryPath: string;
  readonly appPort: number;
  /** Absent: no identity token (chains start with the first link). */
  readonly tokenUrl: string | undefined;
  readonly outbound: ListenAddress;
  /** The credential the app must present on the outbound port and key service; none: loopback alone. */
  readonly clientSecret?: string | undefined;
  /** Sent to the app in Custody-Sidecar-Token, so it can tell its sidecar from other local callers. */
  readonly appSecret?: string | undefined;
  readonly inbound: ListenAddress;
  readonly admin: ListenAddress;
  readonly limits: ChainLimits;
  readonly whenNoPolicy: "allow" | "deny";
  /** Calls for hosts outside the registry (passthrough.ts); default registry-only. */
  readonly outboundPolicy?: OutboundPolicy;
  readonly replay: { readonly redisUrl: string | undefined; readonly failureMode: ReplayFailureMode };
  readonly spool: SpoolOptions;
  /** The app's probes the kubelet asks the admin port for under traffic capture; default none. */
  readonly appProbes?: AppProbes;
  readonly pollIntervalMs: number;
  readonly logger: Logger;
  readonly now?: () => number;
}

export interface RunningSidecar {
  readonly serviceId: string;
  readonly outboundUrl: string;
  readonly inboundPort: number;
  readonly adminUrl: string;
  readonly metrics: Registry;
  /**
   * The start of a shutdown: /readyz answers 503 (draining) and inbound connections close after
   * their request, so callers reconnect to the pod's replacements, while everything still works.
   */
  drain(): void;
  close(graceMs?: number): Promise<void>;
}

export class SidecarStartError extends CustodyError {
  declare readonly code: "sidecar_start_failed";
  constructor(message: string) {
    super("sidecar_start_failed", message);
  }
}

export async function startSidecar(config: SidecarConfig): Promise<RunningSidecar> {
  const { logger } = config;
  const now = config.now ?? Date.now;
  const registry = createMetricsRegistry("custody_sidecar_");
  const metrics = createSidecarMetrics(registry);
  const replayMetrics = createReplayMetrics(registry);

  const source = new RegistrySource(config.registryPath, { now });
  const first = await source.reload();
  metrics.registry(first.result, source.snapshot?.generation);
  if (first.result === "refused") {
    logger.warn(
      { event: "registry_refused", code: first.code },
      `${first.message} (starting without a registry)`,
    );
  }
  const delivery =
    config.identityDelivery === undefined
      ? undefined
      : identityDeliveryClient({
          url: config.identityDelivery.url,
          tokenPath: config.identityDelivery.tokenPath,
          trustPem: () => source.snapshot?.registry.trustBundle,
        });
  const identityDirectory = config.identityDirectory;
  const loadIdentity = (): Promise<WorkloadIdentity> => {
    if (delivery !== undefined) return delivery.fetch();
    if (identityDirectory !== undefined) return loadIdentityFiles(identityDirectory);
    throw new SidecarStartError("no identity source: set identity (files) or identity-url (delivery)");
  };
  let identity: WorkloadIdentity =
    delivery === undefined ? await loadIdentity() : await firstDelivery(loadIdentity, source, logger);
  const self = identity.serviceId;

  const fetcher = config.tokenUrl === undefined ? undefined : tokenServiceFetcher(config.tokenUrl, { now });
  const keeper =
    fetcher === undefined
      ? undefined
      : new IdentityTokenKeeper({
          fetch: fetcher,
          now,
          onRefreshed: (token) => {
            metrics.identityToken(token.expiresAtMs);
            logger.info(
              { event: "identity_token_refreshed", expiresAt: new Date(token.expiresAtMs).toISOString() },
              "identity token refreshed",
            );
          },
          onFailure: (error, retryInMs) =>
            logger.warn(
              {
                event: "identity_token_failed",
                retryInMs,
                err: error instanceof Error ? error.message : String(error),
              },
              "identity token refresh failed; keeping the current token until it expires",
            ),
        });
  await keeper?.setIdentity(identity);

  let replay: ReplayGuard;
  let redis: RedisReplayGuard | undefined;
  // On Kubernetes the operator hands the shared Redis over with the identity (it may carry a
  // password, so it is not in the pod's spec); a configured one wins.
  const redisUrl = config.replay.redisUrl ?? delivery?.redisUrl;
  if (redisUrl === undefined) {
    replay = withReplayMetrics(new MemoryReplayGuard({ now }), replayMetrics, "memory");
  } else {
    // Loaded only when configured: ioredis is a sizeable share of an idle sidecar's memory.
    const { RedisReplayGuard } = await import("../replay/redis.js");
    redis = new RedisReplayGuard({
      url: redisUrl,
      metrics: replayMetrics,
      failureMode: config.replay.failureMode,
      now,
    });
    replay = redis;
  }
  const quotaMetrics = createQuotaMetrics(registry);
  const localQuota = new QuotaLimiter({ now, metrics: quotaMetrics });
  let quota: QuotaStore = localQuota;
  let sharedQuota: RedisQuotaLimiter | undefined;
  if (redisUrl !== undefined) {
    // With Redis the replicas share their quota buckets as they share spent jtis.
    const { RedisQuotaLimiter } = await import("../quota/redis.js");
    sharedQuota = new RedisQuotaLimiter({
      url: redisUrl,
      failureMode: config.replay.failureMode,
      fallback: localQuota,
      metrics: quotaMetrics,
    });
    quota = sharedQuota;
  }
  const appChain = new AppChainSealer(self);

  const inbound = createInboundServer({
    self,
    appPort: config.appPort,
    identity: () => identity,
    registry: () => source.snapshot,
    replay,
    quota,
    limits: config.limits,
    whenNoPolicy: config.whenNoPolicy,
    spool: config.spool,
    appChain,
    appSecret: config.appSecret,
    logger,
    metrics,
    now,
  });
  let ownKeysMemo:
    | {
        identity: WorkloadIdentity;
        snapshot: RegistrySnapshot;
        signer: LinkSigner | undefined;
        openingKeys: readonly RecipientKey[];
      }
    | undefined;
  /** One lookup of this workload's kids per (certificate, registry generation), for links and the key service. */
  const ownKeys = (snapshot: RegistrySnapshot) => {
    if (ownKeysMemo?.identity !== identity || ownKeysMemo.snapshot !== snapshot) {
      ownKeysMemo = {
        identity,
        snapshot,
        signer: signerFor(identity, snapshot),
        openingKeys: openingKeysFor(identity, snapshot),
      };
    }
    return ownKeysMemo;
  };
  const currentSigner = (): LinkSigner | undefined => {
    const snapshot = source.snapshot;
    return snapshot === undefined ? undefined : ownKeys(snapshot).signer;
  };
  const outbound = createOutboundServer({
    localRoutes: createKeyRoutes({
      registry: () => source.snapshot,
      signer: currentSigner,
      openingKeys: () => {
        const snapshot = source.snapshot;
        return snapshot === undefined ? [] : ownKeys(snapshot).openingKeys;
      },
      now,
    }),
    signer: currentSigner,
    outboundPolicy: config.outboundPolicy ?? "registry-only",
    self,
    identity: () => identity,
    registry: () => source.snapshot,
    identityToken: () => keeper?.token?.token,
    appChain,
    clients: new LocalClientGuard(config.clientSecret),
    spool: config.spool,
    logger,
    metrics,
    now,
  });

  let draining = false;
  const readiness = (): { ready: boolean; why: string } => {
    if (draining) return { ready: false, why: "draining: shutting down" };
    if (identity.notAfterMs <= now()) return { ready: false, why: "the workload certificate has expired" };
    if (source.snapshot === undefined) return { ready: false, why: "no registry loaded" };
    if (keeper !== undefined && keeper.token === undefined)
      return { ready: false, why: "no valid identity token" };
    return { ready: true, why: "ok" };
  };
  const admin = createAdminServer(registry, () => {
    const { ready, why } = readiness();
    return {
      status: ready ? 200 : 503,
      body: { status: ready ? "ready" : "not_ready", reason: why, generation: source.snapshot?.generation },
    };
  }, [createAppHealthRoute(config.appProbes ?? {})]);

  const reloadIdentity = async () => {
    const next = await loadIdentity();
    const sameNextKey =
      next.nextPrivateKey === undefined || identity.nextPrivateKey === undefined
        ? next.nextPrivateKey === identity.nextPrivateKey
        : next.nextPrivateKey.equals(identity.nextPrivateKey);
    // A rotation's first step adds only the next key (for messages sealed to it): that counts.
    if (next.certificatePem === identity.certificatePem && next.keyPem === identity.keyPem && sameNextKey)
      return;
    // Never back to an older or expired certificate (a stale answer, a lagging replica): a
    // rotation only ever moves forward, and the one in use stays until something newer comes.
    if (next.notAfterMs <= now()) {
      throw new SidecarStartError(`the new identity of ${self} has expired; keeping the current one.`);
    }
    if (next.leaf.notBefore.getTime() < identity.leaf.notBefore.getTime()) {
      throw new SidecarStartError(
        `the new identity of ${self} is older than the one in use (serial ${next.leaf.serialNumber}); keeping the current one.`,
      );
    }
    if (next.serviceId !== self) {
      throw new SidecarStartError(
        `the identity Secret now names ${next.serviceId}, not ${self}; ignoring it.`,
      );
    }
    identity = next;
    inbound.setSecureContext({ cert: next.certificatePem, key: next.keyPem });
    logger.info(
      {
        event: "identity_reloaded",
        serial: next.leaf.serialNumber,
        notAfter: next.leaf.notAfter.toISOString(),
      },
      "workload certificate reloaded",
    );
    await keeper?.setIdentity(next);
  };
  const reloadRegistry = async () => {
    const update = await source.reload();
    metrics.registry(update.result, source.snapshot?.generation);
    if (update.result === "loaded") {
      logger.info({ event: "registry_loaded", generation: update.snapshot.generation }, "registry loaded");
    } else if (update.result === "refused") {
      logger.warn(
        { event: "registry_refused", code: update.code, kept: source.snapshot?.generation },
        `${update.message} (keeping the last good registry)`,
      );
    }
  };
  const onError = (error: unknown) =>
    logger.error(
      { event: "reload_failed", err: error instanceof Error ? error.message : String(error) },
      "reload failed; keeping what is in use",
    );
  const identityWatcher =
    identityDirectory === undefined
      ? undefined
      : new ChangeWatcher([identityDirectory], reloadIdentity, {
          pollIntervalMs: config.pollIntervalMs,
          onError,
        });
  // Delivered identities are asked for again on a timer: the operator's rotation publishes the
  // next key first and switches after a propagation delay of minutes, so seconds of lag are safe.
  const refreshMs = config.identityDelivery?.refreshMs ?? 30_000;
  const deliveryTimer =
    delivery === undefined
      ? undefined
      : setInterval(() => {
          reloadIdentity().catch(onError);
        }, refreshMs);
  deliveryTimer?.unref();
  const registryWatcher = new ChangeWatcher([config.registryPath], reloadRegistry, {
    pollIntervalMs: config.pollIntervalMs,
    onError,
  });

  const outboundPort = await listen(outbound, config.outbound);
  const inboundPort = await listen(inbound, config.inbound);
  const adminPort = await listen(admin, config.admin);
  const outboundUrl = `http://${config.outbound.host}:${outboundPort}`;
  const adminUrl = `http://${config.admin.host === "0.0.0.0" ? "127.0.0.1" : config.admin.host}:${adminPort}`;
  logger.info(
    {
      event: "listening",
      service: self,
      outboundUrl,
      inboundPort,
      adminUrl,
      generation: source.snapshot?.generation,
      ready: readiness().ready,
    },
    "sidecar listening",
  );

  return {
    serviceId: self,
    outboundUrl,
    inboundPort,
    adminUrl,
    metrics: registry,
    drain() {
      draining = true;
      drain(inbound);
      drain(admin);
    },
    async close(graceMs = 10_000) {
      identityWatcher?.close();
      if (deliveryTimer !== undefined) clearInterval(deliveryTimer);
      registryWatcher.close();
      keeper?.close();
      await Promise.all([
        closeGracefully(outbound, graceMs),
        closeGracefully(inbound, graceMs),
        closeGracefully(admin, graceMs),
      ]);
      await fetcher?.close();
      await delivery?.close();
      await redis?.close();
      await sharedQuota?.close();
    },
  };
}

/**
 * The first delivered identity, asked for until it comes: the operator may not have issued it
 * yet, or the registry (whose CA vouches for the operator) may not be mounted yet. Until then the
 * sidecar does not listen, so its startup probe fails and the app does not start.
 */
async function firstDelivery(
  load: () => Promise<WorkloadIdentity>,
  source: RegistrySource,
  logger: Logger,
): Promise<WorkloadIdentity> {
  for (let attempt = 0; ; attempt++) {
    if (source.snapshot === undefined) await source.reload();
    try {
      const identity = await load();
      logger.info(
        { event: "identity_delivered", serial: identity.leaf.serialNumber, attempts: attempt + 1 },
        "identity obtained from the operator",
      );
      return identity;
    } catch (error) {
      const code = error instanceof CustodyError ? error.code : "identity_delivery_failed";
      logger.warn(
        {
          event: "identity_delivery_failed",
          code,
          attempt,
          err: error instanceof Error ? error.message : String(error),
        },
        "no identity yet; asking the operator again",
      );
      await sleep(Math.min(10_000, 500 * 2 ** Math.min(attempt, 5)));
    }
  }
}
