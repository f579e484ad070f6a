/**
 * The operator process, whatever its store: the token service (every replica serves it), the
 * controllers (only the leader runs them), and the admin port. The store decides where objects
 * live (Kubernetes or a local directory); leadership decides who writes.
 */
import type { Logger } from "pino";
import type { Registry as MetricsRegistry } from "prom-client";
import { createAdminServer, createMetricsRegistry } from "../../cli/src/admin.js";
import { closeGracefully, drain, type ListenAddress, listen } from "../../cli/src/serve.js";
import { type CertificateAuthority, loadCertificateAuthority } from "../../pki/src/ca.js";
import { CaError } from "../../pki/src/errors.js";
import { Catalog } from "./controllers/catalog.js";
import { issuedIdentitySecret } from "./controllers/identity-secret.js";
import { ControllerManager } from "./controllers/manager.js";
import type { RegistryHeader } from "./controllers/registry-publisher.js";
import type { DeclaredIdentity } from "./issuer/identities.js";
import { type IdentitySource, type RunningIssuer, startIssuer } from "./issuer/service.js";
import { loadTrustedIssuers, type TrustedIssuers } from "./issuer/trusted-issuers.js";
import { LocationFile } from "./locations.js";
import { SIGNING_KEYS_SECRET, secretKeyStateStorage } from "./store/key-state-secret.js";
import { IDENTITY, keyOf, type ObjectKey, type Store, type StoredSecret } from "./store/store.js";
import type { IdentityLookup } from "./webhook/inject.js";

/** Leader election, or its absence (local mode: the only process leads). */
export interface Leadership {
  start(callbacks: { onStartedLeading(): void; onStoppedLeading(): void }): void;
  readonly isLeader: boolean;
  close(): Promise<void>;
}

export interface OperatorConfig {
  readonly store: Store;
  readonly leadership: Leadership | undefined;
  /** The namespace the operator's own objects (the signing-key Secret, the Lease) live in. */
  readonly namespace: string;
  readonly caDirectory: string;
  readonly trustBundlePath: string | undefined;
  readonly trustedIssuersPath: string | undefined;
  readonly tokenService: {
    readonly listen: ListenAddress;
    readonly admin: ListenAddress;
    readonly issuer: string | undefined;
    readonly audience: string | undefined;
    readonly rotationPeriodMs: number;
    readonly maxTokenLifetimeMs: number;
    readonly serverNames: readonly string[];
    readonly serverId: string;
  };
  readonly admin: ListenAddress;
  readonly locationTemplate: string;
  /** A file of service id → host:port that overrides the template (what `custody local up` writes). */
  readonly locationsPath?: string;
  readonly propagationDelayMs: number;
  readonly resyncIntervalMs: number;
  readonly concurrency: number;
  /** Largest registry shard (one ConfigMap), in bytes; default 900 KiB, under the 1 MiB limit. */
  readonly registryShardBytes?: number;
  readonly pollIntervalMs: number;
  readonly logger: Logger;
  readonly now?: () => number;
}

export interface RunningOperator {
  readonly ca: CertificateAuthority;
  /** Valid ServiceIdentities by name: what the injection webhook looks pods' identities up in. */
  readonly identities: IdentityLookup;
  /**
   * The issued Secret of a ServiceIdentity (in this operator's namespace), or undefined before it
   * is issued or when it belongs to a deleted identity of the same name: identity delivery's source.
   */
  identitySecret(identity: ObjectKey): StoredSecret | undefined;
  /** The admin port's registry: what runs beside the controllers (the webhooks) registers here. */
  readonly metrics: MetricsRegistry;
  readonly issuer: RunningIssuer;
  readonly manager: ControllerManager;
  readonly adminUrl: string;
  /**
   * The start of a shutdown: /readyz answers 503 (draining), so the pod leaves its Services'
   * endpoints, while the token service and the admin port keep answering, each connection closed
   * after its request (serve.ts `drain`). Reconciling goes on until `close`.
   */
  drain(): void;
  close(graceMs?: number): Promise<void>;
}

/** How often the token service's keys and the trust bundle are compared with what was published. */
const HEADER_CHECK_MS = 2_000;

export async function startOperator(config: OperatorConfig): Promise<RunningOperator> {
  const { store, logger } = config;
  const ca = await loadCertificateAuthority(config.caDirectory);
  const trustDomain = ca.trustDomain;
  if (trustDomain === undefined) {
    throw new CaError(
      "no_trust_domain",
      "the CA has no spiffe:// trust domain: create it with `custody pki init`.",
    );
  }
  const trustedIssuers: TrustedIssuers =
    config.trustedIssuersPath === undefined ? [] : await loadTrustedIssuers(config.trustedIssuersPath);
  await store.start();
  // One validation of each resource version serves the controllers, the token service and the webhooks.
  const catalog = new Catalog(trustDomain);
  const identities = storeIdentities(store, catalog);

  const issuer = await startIssuer({
    caDirectory: config.caDirectory,
    trustBundlePath: config.trustBundlePath,
    identities,
    signingKeys: secretKeyStateStorage(store, { namespace: config.namespace, name: SIGNING_KEYS_SECRET }),
    listen: config.tokenService.listen,
    admin: config.tokenService.admin,
    issuer: config.tokenService.issuer,
    audience: config.tokenService.audience,
    trustedIssuersPath: config.trustedIssuersPath,
    rotationPeriodMs: config.tokenService.rotationPeriodMs,
    maxTokenLifetimeMs: config.tokenService.maxTokenLifetimeMs,
    serverNames: config.tokenService.serverNames,
    serverId: config.tokenService.serverId,
    pollIntervalMs: config.pollIntervalMs,
    logger: logger.child({ component: "issuer" }),
    ...(config.now === undefined ? {} : { now: config.now }),
  });

  const header = (): RegistryHeader => {
    const anchors = issuer.anchors();
    return {
      trustDomain,
      trustBundle: anchors.mesh.toPem(),
      ...(anchors.partners === undefined ? {} : { partnerBundle: anchors.partners.toPem() }),
      tokenService: { issuer: issuer.issuer, jwks: { keys: [...issuer.jwks().keys] } },
      trustedIssuers,
    };
  };
  const metrics = createMetricsRegistry("custody_operator_");
  let republish = () => {};
  const locations =
    config.locationsPath === undefined
      ? undefined
      : await LocationFile.open(config.locationsPath, {
          pollIntervalMs: config.pollIntervalMs,
          logger,
          changed: () => republish(),
        });
  const manager = new ControllerManager({
    store,
    catalog,
    ca,
    stateNamespace: config.namespace,
    meshBundlePem: () => issuer.anchors().mesh.toPem(),
    registryHeader: header,
    locationTemplate: config.locationTemplate,
    ...(locations === undefined ? {} : { locationOverride: (id: string) => locations.locationOf(id) }),
    propagationDelayMs: config.propagationDelayMs,
    resyncIntervalMs: config.resyncIntervalMs,
    concurrency: config.concurrency,
    ...(config.registryShardBytes === undefined ? {} : { shardBytes: config.registryShardBytes }),
    metrics,
    logger,
    ...(config.now === undefined ? {} : { now: config.now }),
  });

  republish = () => manager.republish();
  let publishedHeader = JSON.stringify(header());
  const headerCheck = setInterval(() => {
    const now = JSON.stringify(header());
    if (now === publishedHeader) return;
    publishedHeader = now;
    manager.republish();
  }, HEADER_CHECK_MS);
  headerCheck.unref();

  if (config.leadership === undefined) {
    manager.start();
  } else {
    config.leadership.start({
      onStartedLeading: () => manager.start(),
      onStoppedLeading: () => manager.stop(),
    });
  }

  let draining = false;
  const adminServer = createAdminServer(metrics, () => ({
    status: draining ? 503 : 200,
    body: {
      status: draining ? "draining" : "ready",
      leader: config.leadership?.isLeader ?? true,
      registryGeneration: manager.lastPublication.generation,
    },
  }));
  const adminPort = await listen(adminServer, config.admin);
  const adminUrl = `http://${config.admin.host === "0.0.0.0" ? "127.0.0.1" : config.admin.host}:${adminPort}`;
  logger.info(
    { event: "operator_started", adminUrl, tokenUrl: issuer.tokenUrl, trustDomain },
    "operator started",
  );

  return {
    ca,
    identities,
    identitySecret(identity) {
      const resource = store.resource(IDENTITY, identity);
      return resource === undefined ? undefined : issuedIdentitySecret(store, config.namespace, resource);
    },
    metrics,
    issuer,
    manager,
    adminUrl,
    drain() {
      draining = true;
      issuer.drain();
      drain(adminServer);
    },
    async close(graceMs = 10_000) {
      clearInterval(headerCheck);
      locations?.close();
      manager.stop();
      await config.leadership?.close();
      await Promise.all([issuer.close(graceMs), closeGracefully(adminServer, graceMs)]);
      await store.close();
    },
  };
}

/**
 * The store's valid ServiceIdentities, kept current: a list for the token service, a lookup by
 * name for the injection webhook.
 */
export function storeIdentities(store: Store, catalog: Catalog): IdentitySource & IdentityLookup {
  return {
    declared(): DeclaredIdentity[] {
      return store.resources(IDENTITY).flatMap((resource) => {
        const identity = catalog.effectiveIdentity(resource);
        return identity === undefined ? [] : [{ identity, source: `ServiceIdentity ${keyOf(resource)}` }];
      });
    },
    onChange(listener) {
      store.onChange((change) => {
        if (change.kind === IDENTITY) listener();
      });
    },
    identity(namespace, name) {
      const resource = store.resource(IDENTITY, { namespace, name });
      return resource === undefined ? undefined : catalog.effectiveIdentity(resource);
    },
  };
}
