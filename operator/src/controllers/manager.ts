/**
 * Runs the three controllers over one store: it turns store changes into queue keys
 * (`identity/<ns>/<name>`, `policy/<ns>/<name>`, `registry`), dispatches each key to its controller
 * and re-syncs everything periodically, so a missed notification costs latency, never correctness.
 * Only the leader runs a manager; start and stop follow leadership.
 */
import type { Logger } from "pino";
import { Counter, Gauge, Histogram, type Registry as MetricsRegistry } from "prom-client";
import type { CertificateAuthority } from "../../../pki/src/ca.js";
import { IDENTITY, type ObjectKey, POLICY, type Store, type StoreChange } from "../store/store.js";
import type { Catalog } from "./catalog.js";
import { IdentityController } from "./identity-controller.js";
import { identityOfSecret } from "./identity-secret.js";
import { PolicyController } from "./policy-controller.js";
import { WorkQueue, type WorkResult } from "./queue.js";
import { type PublicationSummary, type RegistryHeader, RegistryPublisher } from "./registry-publisher.js";

const REGISTRY_KEY = "registry";
/** Changes arriving within this window are published together. */
const PUBLISH_COALESCE_MS = 250;

export interface ManagerOptions {
  readonly store: Store;
  /** Validated resources, shared with the token service and the webhooks of the same process. */
  readonly catalog: Catalog;
  readonly ca: CertificateAuthority;
  /** The operator's own namespace, where the identities' Secrets live. */
  readonly stateNamespace: string;
  readonly meshBundlePem: () => string;
  readonly registryHeader: () => RegistryHeader;
  readonly locationTemplate: string;
  readonly locationOverride?: (serviceId: string) => string | undefined;
  readonly propagationDelayMs: number;
  readonly resyncIntervalMs: number;
  readonly concurrency: number;
  readonly shardBytes?: number;
  readonly retry?: { readonly baseMs: number; readonly maxMs: number };
  readonly metrics: MetricsRegistry;
  readonly logger: Logger;
  readonly now?: () => number;
}

export class ControllerManager {
  readonly #options: ManagerOptions;
  readonly #queue: WorkQueue;
  readonly #identities: IdentityController;
  readonly #policies: PolicyController;
  readonly #publisher: RegistryPublisher;
  readonly #metrics: ReturnType<typeof createControllerMetrics>;
  #resync: NodeJS.Timeout | undefined;
  #running = false;

  constructor(options: ManagerOptions) {
    this.#options = options;
    const now = options.now ?? Date.now;
    const { store, logger, catalog } = options;
    this.#metrics = createControllerMetrics(options.metrics);
    this.#publisher = new RegistryPublisher({
      store,
      catalog,
      stateNamespace: options.stateNamespace,
      header: options.registryHeader,
      locationTemplate: options.locationTemplate,
      ...(options.locationOverride === undefined ? {} : { locationOverride: options.locationOverride }),
      ...(options.shardBytes === undefined ? {} : { shardBytes: options.shardBytes }),
      logger,
      now,
      // Their status waits on nothing else: ahead of the backlog, so Ready follows publication.
      published: (identities, policies) => {
        for (const key of identities) this.#queue.add(identityKey(key), 0, { urgent: true });
        for (const key of policies) this.#queue.add(policyKey(key), 0, { urgent: true });
      },
    });
    this.#identities = new IdentityController({
      store,
      catalog,
      stateNamespace: options.stateNamespace,
      ca: options.ca,
      meshBundlePem: options.meshBundlePem,
      propagationDelayMs: options.propagationDelayMs,
      isPublished: (kid) => this.#publisher.isPublished(kid),
      logger,
      now,
      issued: () => this.#metrics.issued.inc(),
      certificateExpiry: (key, notAfterMs) => {
        const labels = { namespace: key.namespace, identity: key.name };
        if (notAfterMs === undefined) this.#metrics.certificateExpiry.remove(labels);
        else this.#metrics.certificateExpiry.set(labels, notAfterMs / 1000);
      },
    });
    this.#policies = new PolicyController({
      store,
      catalog,
      isPolicyPublished: (key, generation) => this.#publisher.isPolicyPublished(key, generation),
      changed: () => this.#publishSoon(),
      logger,
      now,
    });
    this.#queue = new WorkQueue(
      (key) => this.#work(key),
      {
        concurrency: options.concurrency,
        baseRetryMs: options.retry?.baseMs ?? 500,
        maxRetryMs: options.retry?.maxMs ?? 5 * 60_000,
        maxKeys: 200_000,
        now,
      },
      {
        processed: (key, outcome, seconds, error) => {
          const controller = controllerOf(key);
          this.#metrics.reconciles.inc({ controller, result: outcome });
          this.#metrics.duration.observe({ controller }, seconds);
          if (error !== undefined) {
            logger.warn(
              { event: "reconcile_failed", key, code: codeOf(error) },
              `${key}: ${error instanceof Error ? error.message : String(error)}; retrying with back-off`,
            );
          }
        },
        dropped: (key) => {
          this.#metrics.dropped.inc();
          logger.error({ event: "queue_full", key }, "work queue full; the next re-sync picks this up");
        },
      },
    );
    store.onChange((change) => {
      if (this.#running) this.#enqueueFor(change);
    });
  }

  get lastPublication(): PublicationSummary {
    return this.#publisher.lastPublication;
  }

  /** Starts reconciling what the store holds now; the store must be started (synced). */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#publisher.seed();
    this.#queue.start();
    this.resyncAll();
    this.#resync = setInterval(() => this.resyncAll(), this.#options.resyncIntervalMs);
    this.#resync.unref();
    this.#options.logger.info({ event: "controllers_started" }, "controllers started");
  }

  stop(): void {
    if (!this.#running) return;
    this.#running = false;
    if (this.#resync !== undefined) clearInterval(this.#resync);
    this.#queue.stop();
    this.#options.logger.info({ event: "controllers_stopped" }, "controllers stopped");
  }

  /** Something in the registry header changed (token service keys, trust bundle): publish again. */
  republish(): void {
    if (this.#running) this.#publishSoon();
  }

  /** Publishing unblocks every identity waiting to be Ready, so it goes ahead of the backlog. */
  #publishSoon(): void {
    this.#queue.add(REGISTRY_KEY, PUBLISH_COALESCE_MS, { urgent: true });
  }

  resyncAll(): void {
    const { store } = this.#options;
    for (const resource of store.resources(IDENTITY)) this.#queue.add(identityKey(resource));
    for (const resource of store.resources(POLICY)) this.#queue.add(policyKey(resource));
    // A Secret whose identity is gone is found here and removed by the identity's reconcile.
    for (const secret of store.secrets()) {
      const identity =
        secret.namespace === this.#options.stateNamespace ? identityOfSecret(secret) : undefined;
      if (identity !== undefined) this.#queue.add(identityKey(identity));
    }
    this.#publishSoon();
  }

  /** Resolves when no work is due (tests; orderly shutdown). */
  idle(): Promise<void> {
    return this.#queue.idle();
  }

  #enqueueFor(change: StoreChange): void {
    const key = { namespace: change.namespace, name: change.name };
    switch (change.kind) {
      case IDENTITY:
        this.#queue.add(identityKey(key));
        this.#publishSoon();
        return;
      case POLICY:
        this.#queue.add(policyKey(key));
        return;
      case "Secret": {
        const secret = this.#options.store.secret(key);
        const identity =
          change.namespace === this.#options.stateNamespace
            ? identityOfSecret({ name: change.name, labels: secret?.labels ?? {} })
            : undefined;
        if (identity !== undefined) this.#queue.add(identityKey(identity));
        this.#publishSoon();
        return;
      }
      case "ConfigMap":
        // Someone else changed or deleted a registry ConfigMap: put it back.
        this.#publishSoon();
        return;
    }
  }

  async #work(key: string): Promise<WorkResult | undefined> {
    if (key === REGISTRY_KEY) {
      const summary = await this.#publisher.publish();
      this.#metrics.generation.set(summary.generation);
      this.#metrics.shardBytes.set(summary.largestShardBytes);
      return undefined;
    }
    const [kind, namespace, name] = key.split("/");
    if (namespace === undefined || name === undefined) return undefined;
    if (kind === "identity") return this.#identities.reconcile({ namespace, name });
    if (kind === "policy") return this.#policies.reconcile({ namespace, name });
    return undefined;
  }
}

function identityKey(key: ObjectKey): string {
  return `identity/${key.namespace}/${key.name}`;
}

function policyKey(key: ObjectKey): string {
  return `policy/${key.namespace}/${key.name}`;
}

function controllerOf(key: string): string {
  return key === REGISTRY_KEY ? "registry" : (key.split("/")[0] ?? "unknown");
}

function codeOf(error: unknown): string | undefined {
  return typeof error === "object" && error !== null && "code" in error && typeof error.code === "string"
    ? error.code
    : undefined;
}

function createControllerMetrics(registry: MetricsRegistry) {
  return {
    reconciles: new Counter({
      name: "custody_operator_reconciles_total",
      help: "Reconciles by controller (identity, policy, registry) and result (ok, error).",
      labelNames: ["controller", "result"] as const,
      registers: [registry],
    }),
    duration: new Histogram({
      name: "custody_operator_reconcile_duration_seconds",
      help: "Time one reconcile took, by controller.",
      labelNames: ["controller"] as const,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers: [registry],
    }),
    issued: new Counter({
      name: "custody_operator_certificates_issued_total",
      help: "Workload certificates issued (first issuance and rotations).",
      registers: [registry],
    }),
    dropped: new Counter({
      name: "custody_operator_queue_dropped_total",
      help: "Work items refused because the queue was full (the periodic re-sync retries them).",
      registers: [registry],
    }),
    certificateExpiry: new Gauge({
      name: "custody_operator_certificate_expiry_timestamp_seconds",
      help: "When the current certificate of each ServiceIdentity expires (Unix seconds); renewal keeps it ahead.",
      labelNames: ["namespace", "identity"] as const,
      registers: [registry],
    }),
    generation: new Gauge({
      name: "custody_operator_registry_generation",
      help: "Generation of the registry last published.",
      registers: [registry],
    }),
    shardBytes: new Gauge({
      name: "custody_operator_registry_largest_shard_bytes",
      help: "Size of the largest registry shard published (a ConfigMap holds at most 1 MiB).",
      registers: [registry],
    }),
  };
}
