/**
 * `custody operator`: controllers, registry publishing and the token service in one process.
 *   --local DIR --state DIR   manifests from a directory, Secrets/ConfigMaps/statuses as files
 *   (default)                 Kubernetes: in-cluster config or --kubeconfig, leader election on a
 *                             Lease, admission webhooks
 * Runs until SIGTERM or SIGINT. On Kubernetes it then keeps serving for --shutdown-delay, not ready
 * and closing each connection after its request, while the pod leaves its Services' endpoints;
 * then it stops accepting and lets requests in flight finish.
 */

import { setTimeout as sleep } from "node:timers/promises";
import { KubeConfig } from "@kubernetes/client-node";
import { type Command, EXIT_OK, integerOption, parseCommandArgs, requireOption } from "../../cli/src/kit.js";
import { createLogger, LOG_LEVELS } from "../../cli/src/log.js";
import { runUntilSignal } from "../../cli/src/serve.js";
import { UsageError } from "../../crds/src/errors.js";
import { IDENTITY_DELIVERY_PATH } from "../../crds/src/identity-delivery.js";
import { isDnsLabel, OUTBOUND_POLICIES, type OutboundPolicy } from "../../crds/src/names.js";
import { DEFAULT_REGISTRY_SHARD_BYTES, MAX_REGISTRY_SHARD_BYTES } from "../../crds/src/registry.js";
import { MAX_REGISTRY_SHARDS } from "../../crds/src/registry-schema.js";
import {
  durationOption,
  hostPortOption,
  issuerUrlOption,
  listOption,
  logLevelOption,
} from "./cli-options.js";
import { DEFAULT_LOCATION_TEMPLATE } from "./controllers/registry-publisher.js";
import { type RunningOperator, startOperator } from "./operator.js";
import { KubernetesStore } from "./store/kubernetes.js";
import { LeaderElector } from "./store/leader.js";
import { LocalStore } from "./store/local.js";
import type { Store } from "./store/store.js";
import { keepCaBundleCurrent } from "./webhook/ca-bundle.js";
import { IdentityDelivery } from "./webhook/identity-delivery.js";
import {
  ADMIN_PORT,
  DEFAULT_INJECTION_SETTINGS,
  INBOUND_PORT,
  type InjectionSettings,
  OUTBOUND_PORT,
  SIDECAR_MODES,
  type SidecarMode,
} from "./webhook/inject.js";
import { startWebhookServer } from "./webhook/server.js";
import { kubernetesPodReader, kubernetesTokenReviewer } from "./webhook/token-review.js";

const COMMAND = "operator";
const SHUTDOWN_GRACE_MS = 10_000;

const HELP = `Usage: custody operator --ca DIR [--local DIR --state DIR] [options]

Reconciles ServiceIdentities (certificates, rotation) and AccessPolicies (compiled policies),
publishes the registry, and serves the token service. Without --local it runs against Kubernetes
(in-cluster, or --kubeconfig), elects a leader on a Lease and serves the admission webhooks.

Options:
  --ca DIR                    Custody CA (ca.crt, ca.key), as made by \`custody pki init\`
  --local DIR                 run without Kubernetes: ServiceIdentity / AccessPolicy YAML from DIR
  --state DIR                 with --local: where Secrets, ConfigMaps and statuses are written
  --kubeconfig FILE           Kubernetes credentials (default: in-cluster, else ~/.kube/config)
  --namespace NS              the operator's own namespace (default $POD_NAMESPACE or custody-system)
  --watch-namespaces NS,...   only these namespaces (default: all)
  --trust-bundle FILE         third-party CAs trusted for client certificates
  --trusted-issuers FILE      external issuers (inline JWKS) of users' tokens
  --token-listen HOST:PORT    token service (default 0.0.0.0:8443; local 127.0.0.1:8443)
  --token-admin HOST:PORT     token service /metrics (default 127.0.0.1:15021)
  --issuer URL                iss of issued tokens (default https://localhost:PORT)
  --admin HOST:PORT           operator /metrics, /healthz, /readyz (default 0.0.0.0:15022; local 127.0.0.1:15022)
  --location-template T       where sidecars of an identity listen (default ${DEFAULT_LOCATION_TEMPLATE},
                              with --sidecar-inbound-port in place of ${INBOUND_PORT});
                              an identity's custody.dev/location annotation overrides it
  --locations FILE            service id → host:port map overriding the template (re-read on change)
  --propagation-delay D       how long a new key is published before the workload uses it (default 2m)
  --registry-shard-bytes N    largest registry ConfigMap before it is split (default ${DEFAULT_REGISTRY_SHARD_BYTES},
                              2048 to ${MAX_REGISTRY_SHARD_BYTES}; up to ${MAX_REGISTRY_SHARDS} shards)
  --resync D                  re-check every object this often (default 10m)
  --concurrency N             reconciles in parallel (default 8)
  --key-rotation-period D     token service signing key period (default 24h)
  --max-token-ttl D           longest token lifetime (default 24h)
  --webhook-listen HOST:PORT  admission webhooks (default 0.0.0.0:9443; Kubernetes only)
  --webhook-service NAME      Service in front of the webhooks (default custody-webhook)
  --sidecar-image IMAGE       image of injected sidecars (default ${DEFAULT_INJECTION_SETTINGS.image})
  --sidecar-token-url URL     token endpoint injected sidecars use (default https://custody-issuer.<namespace>.svc:8443/oauth2/token)
  --sidecar-identity-url URL  where injected sidecars obtain their key (default https://<webhook-service>.<namespace>.svc/v1/identity)
  --sidecar-mode M            native (an init container with restartPolicy Always, Kubernetes 1.29+;
                              default) | container (an ordinary container, for older servers)
  --sidecar-outbound-port P   the sidecars' ports (default ${OUTBOUND_PORT}, ${INBOUND_PORT}, ${ADMIN_PORT}); move them
  --sidecar-inbound-port P    where Istio's proxy (15000-15090) shares the pod
  --sidecar-admin-port P
  --sidecar-cpu-request Q     sidecar resources (default ${DEFAULT_INJECTION_SETTINGS.resources.requests.cpu}, ${DEFAULT_INJECTION_SETTINGS.resources.limits.cpu}, ${DEFAULT_INJECTION_SETTINGS.resources.requests.memory}, ${DEFAULT_INJECTION_SETTINGS.resources.limits.memory}); a pod's
  --sidecar-cpu-limit Q       custody.dev/sidecar-{cpu,memory}-{request,limit} annotations override
  --sidecar-memory-request Q  them; an empty value leaves that one out
  --sidecar-memory-limit Q
  --sidecar-shutdown-delay D  container mode: the sidecar keeps serving this long after SIGTERM (default 5s)
  --sidecar-redis-url URL     Redis the sidecars of a service share spent jtis and quota buckets
                              through (default none: each replica has its own)
  --sidecar-redis-failure-mode M  closed (default: refuse calls while Redis cannot answer) | open
  --sidecar-outbound-policy P passthrough (default: calls to non-mesh hosts, HTTP and HTTPS through
                              CONNECT, go out as they are) | registry-only (refused)
  --sidecar-capture B         true: capture inbound TCP in injected pods, so other pods reach the app
                              only through the sidecar (an init container with NET_ADMIN: privileged
                              namespaces only); false (default); a pod's custody.dev/capture overrides
  --sidecar-init-image IMAGE  image of that init container (default ${DEFAULT_INJECTION_SETTINGS.initImage})
  --leader-elect-lease-duration D   how long a leader's Lease holds without renewal (default 15s)
  --leader-elect-renew-deadline D   a leader that could not renew this long stops leading (default 10s)
  --leader-elect-retry-period D     between attempts to acquire or renew (default 2s)
  --poll-interval D           re-read local manifests at least this often (default 2s)
  --shutdown-delay D          on SIGTERM, keep serving (not ready) this long before closing, while
                              endpoints drop the pod (default 5s; Kubernetes only; 0s: none)
  --log-level L               ${LOG_LEVELS.join(" | ")} (default info)
  -h, --help                  show this help
`;

export const operatorCommand: Command = async (args, io) => {
  const { values } = parseCommandArgs(COMMAND, args, {
    ca: { type: "string" },
    local: { type: "string" },
    state: { type: "string" },
    kubeconfig: { type: "string" },
    namespace: { type: "string" },
    "watch-namespaces": { type: "string" },
    "trust-bundle": { type: "string" },
    "trusted-issuers": { type: "string" },
    "token-listen": { type: "string" },
    "token-admin": { type: "string" },
    issuer: { type: "string" },
    admin: { type: "string" },
    "location-template": { type: "string" },
    locations: { type: "string" },
    "propagation-delay": { type: "string" },
    "registry-shard-bytes": { type: "string" },
    resync: { type: "string" },
    concurrency: { type: "string" },
    "key-rotation-period": { type: "string" },
    "max-token-ttl": { type: "string" },
    "webhook-listen": { type: "string" },
    "webhook-service": { type: "string" },
    "sidecar-image": { type: "string" },
    "sidecar-token-url": { type: "string" },
    "sidecar-identity-url": { type: "string" },
    "sidecar-mode": { type: "string" },
    "sidecar-outbound-port": { type: "string" },
    "sidecar-inbound-port": { type: "string" },
    "sidecar-admin-port": { type: "string" },
    "sidecar-cpu-request": { type: "string" },
    "sidecar-cpu-limit": { type: "string" },
    "sidecar-memory-request": { type: "string" },
    "sidecar-memory-limit": { type: "string" },
    "sidecar-shutdown-delay": { type: "string" },
    "sidecar-outbound-policy": { type: "string" },
    "sidecar-redis-url": { type: "string" },
    "sidecar-redis-failure-mode": { type: "string" },
    "sidecar-capture": { type: "string" },
    "sidecar-init-image": { type: "string" },
    "poll-interval": { type: "string" },
    "shutdown-delay": { type: "string" },
    "leader-elect-lease-duration": { type: "string" },
    "leader-elect-renew-deadline": { type: "string" },
    "leader-elect-retry-period": { type: "string" },
    "log-level": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help === true) {
    io.stdout(HELP);
    return EXIT_OK;
  }
  const local = values.local !== undefined;
  if (local && values.state === undefined) {
    throw new UsageError(
      `${COMMAND}: --local needs --state DIR (where Secrets and the registry are written).`,
    );
  }
  if (!local && values.state !== undefined) {
    throw new UsageError(`${COMMAND}: --state only applies with --local.`);
  }
  const namespace = values.namespace ?? process.env.POD_NAMESPACE ?? "custody-system";
  if (!isDnsLabel(namespace)) throw new UsageError(`${COMMAND}: --namespace must be a DNS label.`);
  const watchNamespaces = listOption(values["watch-namespaces"]);
  for (const watched of watchNamespaces) {
    if (!isDnsLabel(watched))
      throw new UsageError(`${COMMAND}: --watch-namespaces: "${watched}" is not a namespace.`);
  }
  const injection = injectionSettingsOf(values, namespace);
  const locationTemplate =
    values["location-template"] ??
    DEFAULT_LOCATION_TEMPLATE.replace(`:${INBOUND_PORT}`, `:${injection.ports.inbound}`);
  if (!/^[A-Za-z0-9.{}[\]:-]{1,200}:([0-9]{1,5}|\{port\})$/.test(locationTemplate)) {
    throw new UsageError(
      `${COMMAND}: --location-template must be HOST:PORT, with {name} and {namespace} allowed in HOST.`,
    );
  }
  const logger = createLogger("operator", logLevelOption(COMMAND, values["log-level"]));
  const defaultHost = local ? "127.0.0.1" : "0.0.0.0";
  const duration = (name: string, fallback: string, minMs: number, maxMs: number) =>
    durationOption(COMMAND, name, (values as Record<string, string | undefined>)[name] ?? fallback, {
      minMs,
      maxMs,
    });

  let store: Store;
  let kubeConfig: KubeConfig | undefined;
  if (local) {
    store = new LocalStore({
      manifestsDirectory: requireOption(COMMAND, "local", values.local),
      stateDirectory: requireOption(COMMAND, "state", values.state),
      pollIntervalMs: duration("poll-interval", "2s", 100, 3_600_000),
      logger,
    });
  } else {
    kubeConfig = loadKubeConfig(values.kubeconfig);
    store = new KubernetesStore({
      kubeConfig,
      logger,
      secretsNamespace: namespace,
      ...(watchNamespaces.length === 0 ? {} : { namespaces: watchNamespaces }),
    });
  }
  const leadership =
    kubeConfig === undefined
      ? undefined
      : new LeaderElector({
          kubeConfig,
          namespace,
          logger,
          leaseDurationMs: duration("leader-elect-lease-duration", "15s", 1_000, 600_000),
          renewDeadlineMs: duration("leader-elect-renew-deadline", "10s", 500, 600_000),
          retryPeriodMs: duration("leader-elect-retry-period", "2s", 100, 60_000),
        });

  const running: RunningOperator = await startOperator({
    store,
    leadership,
    namespace,
    caDirectory: requireOption(COMMAND, "ca", values.ca),
    trustBundlePath: values["trust-bundle"],
    trustedIssuersPath: values["trusted-issuers"],
    tokenService: {
      listen: hostPortOption(COMMAND, "token-listen", values["token-listen"] ?? `${defaultHost}:8443`),
      admin: hostPortOption(COMMAND, "token-admin", values["token-admin"] ?? "127.0.0.1:15021"),
      issuer: issuerUrlOption(COMMAND, values.issuer),
      audience: undefined,
      rotationPeriodMs: duration("key-rotation-period", "24h", 60_000, 90 * 86_400_000),
      maxTokenLifetimeMs: duration("max-token-ttl", "24h", 60_000, 86_400_000),
      serverNames: local
        ? []
        : [`custody-issuer.${namespace}.svc`, `custody-issuer.${namespace}.svc.cluster.local`],
      serverId: `issuer.${namespace}`,
    },
    admin: hostPortOption(COMMAND, "admin", values.admin ?? `${defaultHost}:15022`),
    locationTemplate,
    ...(values.locations === undefined ? {} : { locationsPath: values.locations }),
    propagationDelayMs: duration("propagation-delay", "2m", 0, 86_400_000),
    registryShardBytes: integerOption(
      COMMAND,
      "registry-shard-bytes",
      values["registry-shard-bytes"],
      DEFAULT_REGISTRY_SHARD_BYTES,
      {
        min: 2048,
        max: MAX_REGISTRY_SHARD_BYTES,
      },
    ),
    resyncIntervalMs: duration("resync", "10m", 10_000, 86_400_000),
    concurrency: integerOption(COMMAND, "concurrency", values.concurrency, 8, { min: 1, max: 64 }),
    pollIntervalMs: duration("poll-interval", "2s", 100, 3_600_000),
    logger,
  });

  const closers: (() => Promise<void> | void)[] = [];
  const drainers: (() => void)[] = [];
  if (kubeConfig !== undefined) {
    const serviceName = values["webhook-service"] ?? "custody-webhook";
    if (!isDnsLabel(serviceName)) throw new UsageError(`${COMMAND}: --webhook-service must be a DNS label.`);
    const webhook = await startWebhookServer({
      ca: running.ca,
      listen: hostPortOption(COMMAND, "webhook-listen", values["webhook-listen"] ?? "0.0.0.0:9443"),
      serviceName,
      namespace,
      lookup: running.identities,
      settings: injection,
      logger: logger.child({ component: "webhook" }),
      metrics: running.metrics,
      delivery: new IdentityDelivery({
        reviewer: kubernetesTokenReviewer(kubeConfig),
        pods: kubernetesPodReader(kubeConfig),
        lookup: running.identities,
        secretOf: (identity) => running.identitySecret(identity),
        sidecarImage: injection.image,
        ...(injection.redisUrl === undefined ? {} : { redisUrl: injection.redisUrl }),
        logger: logger.child({ component: "identity-delivery" }),
        metrics: running.metrics,
      }),
    });
    drainers.push(() => webhook.drain());
    closers.push(() => webhook.close(SHUTDOWN_GRACE_MS));
    const keeper = keepCaBundleCurrent({
      kubeConfig,
      mutatingName: "custody-sidecar-injector",
      validatingName: "custody-accesspolicy-validator",
      caPem: running.ca.certificate.pem,
      logger,
      intervalMs: 60_000,
    });
    closers.push(() => keeper.close());
  }

  // Only on Kubernetes do Services route to this process through endpoints that lag behind it.
  const shutdownDelayMs = kubeConfig === undefined ? 0 : duration("shutdown-delay", "5s", 0, 120_000);
  await runUntilSignal(async (signal) => {
    if (shutdownDelayMs > 0) {
      logger.info(
        { event: "draining", signal, delayMs: shutdownDelayMs },
        "draining: not ready, still serving while the pod leaves its Services' endpoints",
      );
      for (const drain of drainers) drain();
      running.drain();
      await sleep(shutdownDelayMs);
    }
    logger.info({ event: "shutting_down", signal }, "shutting down: draining requests in flight");
    for (const close of closers) await close();
    await running.close(SHUTDOWN_GRACE_MS);
  });
  logger.info({ event: "stopped" }, "operator stopped");
  return EXIT_OK;
};

function loadKubeConfig(path: string | undefined): KubeConfig {
  const kubeConfig = new KubeConfig();
  try {
    if (path !== undefined) kubeConfig.loadFromFile(path);
    else kubeConfig.loadFromDefault();
  } catch (error) {
    throw new UsageError(
      `${COMMAND}: cannot load Kubernetes credentials${path === undefined ? "" : ` from ${path}`} (${error instanceof Error ? error.message : String(error)}): pass --kubeconfig, or --local DIR --state DIR to run without Kubernetes.`,
    );
  }
  if (kubeConfig.getCurrentCluster() === null) {
    throw new UsageError(
      `${COMMAND}: no Kubernetes cluster configured: pass --kubeconfig, or --local DIR --state DIR to run without Kubernetes.`,
    );
  }
  return kubeConfig;
}

/** What the webhook injects, from the --sidecar-* flags; checkInjectionSettings refuses bad values. */
function injectionSettingsOf(
  values: Readonly<Record<string, string | boolean | undefined>>,
  namespace: string,
): InjectionSettings {
  const text = (name: string) => {
    const value = values[name];
    return typeof value === "string" ? value : undefined;
  };
  const defaults = DEFAULT_INJECTION_SETTINGS;
  const port = (name: string, fallback: number) =>
    integerOption(COMMAND, name, text(name), fallback, { min: 1, max: 65_535 });
  const mode = text("sidecar-mode") ?? defaults.mode;
  if (!(SIDECAR_MODES as readonly string[]).includes(mode)) {
    throw new UsageError(`${COMMAND}: --sidecar-mode must be one of ${SIDECAR_MODES.join(", ")}.`);
  }
  // An empty value leaves that request or limit out (a cluster that runs without CPU limits).
  const failureMode = text("sidecar-redis-failure-mode");
  if (failureMode !== undefined && failureMode !== "closed" && failureMode !== "open") {
    throw new UsageError(`${COMMAND}: --sidecar-redis-failure-mode must be closed or open.`);
  }
  const outboundPolicy = text("sidecar-outbound-policy") ?? defaults.outboundPolicy;
  if (!(OUTBOUND_POLICIES as readonly string[]).includes(outboundPolicy)) {
    throw new UsageError(
      `${COMMAND}: --sidecar-outbound-policy must be one of ${OUTBOUND_POLICIES.join(", ")}.`,
    );
  }
  const capture = text("sidecar-capture");
  if (capture !== undefined && capture !== "true" && capture !== "false") {
    throw new UsageError(`${COMMAND}: --sidecar-capture must be true or false.`);
  }
  const resource = (name: string, fallback: string | undefined) => {
    const value = text(name);
    return value === undefined ? fallback : value === "" ? undefined : value;
  };
  const pick = (entries: Record<string, string | undefined>) =>
    Object.fromEntries(
      Object.entries(entries).filter((entry): entry is [string, string] => entry[1] !== undefined),
    );
  return {
    ...defaults,
    image: text("sidecar-image") ?? defaults.image,
    tokenUrl: text("sidecar-token-url") ?? `https://custody-issuer.${namespace}.svc:8443/oauth2/token`,
    identityUrl:
      text("sidecar-identity-url") ??
      `https://${text("webhook-service") ?? "custody-webhook"}.${namespace}.svc${IDENTITY_DELIVERY_PATH}`,
    mode: mode as SidecarMode,
    ports: {
      outbound: port("sidecar-outbound-port", defaults.ports.outbound),
      inbound: port("sidecar-inbound-port", defaults.ports.inbound),
      admin: port("sidecar-admin-port", defaults.ports.admin),
    },
    resources: {
      requests: pick({
        cpu: resource("sidecar-cpu-request", defaults.resources.requests.cpu),
        memory: resource("sidecar-memory-request", defaults.resources.requests.memory),
      }),
      limits: pick({
        cpu: resource("sidecar-cpu-limit", defaults.resources.limits.cpu),
        memory: resource("sidecar-memory-limit", defaults.resources.limits.memory),
      }),
    },
    shutdownDelay: text("sidecar-shutdown-delay") ?? defaults.shutdownDelay,
    outboundPolicy: outboundPolicy as OutboundPolicy,
    redisUrl: text("sidecar-redis-url") || undefined,
    redisFailureMode: text("sidecar-redis-failure-mode") === "open" ? "open" : "closed",
    capture: capture === undefined ? defaults.capture : capture === "true",
    initImage: text("sidecar-init-image") ?? defaults.initImage,
    // In a pod, in-cluster clients reach the API server at this address: never through the sidecar.
    apiServerHosts:
      process.env.KUBERNETES_SERVICE_HOST === undefined ? [] : [process.env.KUBERNETES_SERVICE_HOST],
  };
}
