/**
 * Sidecar injection, free of HTTP: a pod as the API server sends it in, an RFC 6902 patch (or a
 * refusal that says what to fix) out. A pod opts in with `custody.dev/inject: "true"`; it then gets
 * the `custody-sidecar` container, the volumes it reads (a service-account token for Custody's
 * audience, with which it obtains its key from the operator; registry shards; a writable /tmp),
 * proxy variables for its app containers, and scrape annotations.
 *
 * On Kubernetes 1.29 and later the sidecar is a native sidecar: the first init container, with
 * `restartPolicy: Always` and a startup probe that passes once the identity, the registry (and the
 * identity token, when a token service is set) are loaded. The kubelet then starts the app only
 * after that, stops the sidecar only after the app has exited, and does not wait for it to finish
 * a Job. On older servers it is an ordinary container that starts and stops with the app, and
 * drains for a while after SIGTERM so that the app's last outgoing calls still go through.
 *
 * The refusals are the security point: a pod may only carry an identity that exists in its
 * namespace and was made for the service account it runs as. Anyone who can create pods in a
 * namespace could otherwise pick any identity there, and with it that identity's certificate.
 * Identity delivery checks the same rule again (identityForPod) when the sidecar asks for its key:
 * admission is not the only gate.
 *
 * With traffic capture (opt-in: `--sidecar-capture`, or the pod's `custody.dev/capture`), the pod
 * also gets the `custody-init` init container, first of all, which makes inbound TCP reach the app
 * only through the sidecar (capture.ts), and its captured probes are pointed at the sidecar
 * (probes.ts). It needs NET_ADMIN, so such pods belong in namespaces whose Pod Security level is
 * privileged.
 */
import { z } from "zod";
import { LOG_LEVELS, type LogLevel } from "../../../cli/src/log.js";
import { APP_PROBES_ENV, type AppProbes } from "../../../crds/src/app-probes.js";
import { CustodyError, ValidationError } from "../../../crds/src/errors.js";
import {
  IDENTITY_DELIVERY_PATH,
  IDENTITY_TOKEN_AUDIENCE,
  IDENTITY_TOKEN_SECONDS,
} from "../../../crds/src/identity-delivery.js";
import { parseOrThrow } from "../../../crds/src/issues.js";
import {
  ANNOTATION_APP_PORT,
  ANNOTATION_CAPTURE,
  ANNOTATION_CAPTURE_EXCLUDE_INBOUND_PORTS,
  ANNOTATION_IDENTITY,
  ANNOTATION_INJECT,
  isDnsLabel,
  OUTBOUND_POLICIES,
  type OutboundPolicy,
} from "../../../crds/src/names.js";
import { registryConfigMapName, registryFileName } from "../../../crds/src/registry.js";
import { MAX_REGISTRY_SHARDS } from "../../../crds/src/registry-schema.js";
import { type ServiceIdentity, serviceAccountNameOf } from "../../../crds/src/service-identity.js";
import {
  CapturePortsError,
  captureInitContainer,
  captureRules,
  INIT_CONTAINER_NAME,
  xtablesVolume,
} from "./capture.js";
import { type ProbedContainer, ProbeRewriteError, rewriteProbes } from "./probes.js";
import { recordOf } from "./records.js";
import {
  type AdmissionDecision,
  type AdmissionDenied,
  allowUnchanged,
  escapePointerToken,
  type JsonPatchOp,
} from "./review.js";

export type { JsonPatchOp } from "./review.js";

export const SIDECAR_CONTAINER_NAME = "custody-sidecar";
/** Set on every injected pod; its value is the ServiceIdentity the sidecar runs as. */
export const ANNOTATION_INJECTED = "custody.dev/injected";
/** Extra NO_PROXY entries for the app containers, comma-separated (e.g. `.svc.cluster.local,10.0.0.0/8`). */
export const ANNOTATION_NO_PROXY = "custody.dev/no-proxy";
/** Per-pod outbound policy, over the operator's setting: `passthrough` or `registry-only`. */
export const ANNOTATION_OUTBOUND_POLICY = "custody.dev/outbound-policy";

/** Per-pod overrides of the sidecar's resources, each a Kubernetes quantity. */
export const ANNOTATION_SIDECAR_CPU_REQUEST = "custody.dev/sidecar-cpu-request";
export const ANNOTATION_SIDECAR_CPU_LIMIT = "custody.dev/sidecar-cpu-limit";
export const ANNOTATION_SIDECAR_MEMORY_REQUEST = "custody.dev/sidecar-memory-request";
export const ANNOTATION_SIDECAR_MEMORY_LIMIT = "custody.dev/sidecar-memory-limit";

/** The defaults; a cluster that also runs Istio (whose proxy uses 15000-15090) moves them. */
export const OUTBOUND_PORT = 15001;
export const INBOUND_PORT = 15006;
export const ADMIN_PORT = 15020;
export const SIDECAR_USER = 65532;

/**
 * Ports that other meshes' proxies listen on in the pod's network namespace without declaring
 * them as containerPorts: a pod that also carries one of these containers and shares a port with
 * the Custody sidecar would have one of the two fail to bind at runtime.
 */
const KNOWN_PROXY_PORTS: Readonly<Record<string, readonly number[]>> = {
  "istio-proxy": [15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090],
  "linkerd-proxy": [4140, 4143, 4190, 4191],
};

export const TOKEN_MOUNT_PATH = "/var/run/secrets/custody";
const TOKEN_FILE = "token";
export const REGISTRY_MOUNT_PATH = "/var/run/custody/registry";
export const VOLUME_TOKEN = "custody-token";
export const VOLUME_REGISTRY = "custody-registry";
export const VOLUME_TMP = "custody-tmp";

/**
 * Never through the sidecar: loopback (its own ports are there), the cloud metadata endpoint (a
 * link-local address every cloud SDK calls at start) and the Kubernetes API by name (in-cluster
 * clients use the address in KUBERNETES_SERVICE_HOST, which the operator adds: `apiServerHosts`).
 */
const BASE_NO_PROXY = [
  "localhost",
  "127.0.0.1",
  "::1",
  "169.254.169.254",
  "metadata.google.internal",
  "kubernetes.default.svc",
  "kubernetes.default",
];
const MAX_NO_PROXY_ENTRIES = 32;
const MAX_NO_PROXY_LENGTH = 2048;
/** Host names, IPs, CIDRs, `.domain` and `*.domain` suffixes, optional `:port`; nothing that could smuggle a second variable. */
const NO_PROXY_ENTRY = /^[A-Za-z0-9*._:[\]/-]{1,253}$/;

/** Bounds on the pod read: far above any real pod, low enough to keep one review cheap. */
export const MAX_CONTAINERS = 64;
const MAX_ENV_PER_CONTAINER = 1024;
const MAX_PORTS_PER_CONTAINER = 128;
const MAX_VOLUMES = 512;

function prometheusAnnotations(adminPort: number): Record<string, string> {
  return {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": String(adminPort),
    "prometheus.io/path": "/metrics",
  };
}

export const IMAGE_PULL_POLICIES = ["Always", "IfNotPresent", "Never"] as const;
export type ImagePullPolicy = (typeof IMAGE_PULL_POLICIES)[number];

export interface ResourceRequirements {
  readonly requests: Readonly<Record<string, string>>;
  readonly limits: Readonly<Record<string, string>>;
}

/** native: a restartable init container (Kubernetes 1.29+); container: an ordinary container. */
export const SIDECAR_MODES = ["native", "container"] as const;
export type SidecarMode = (typeof SIDECAR_MODES)[number];

export interface SidecarPorts {
  /** The app's HTTP proxy, on 127.0.0.1. */
  readonly outbound: number;
  /** Mutual TLS from other sidecars, on every address of the pod. */
  readonly inbound: number;
  /** /metrics, /healthz, /readyz. */
  readonly admin: number;
}

export interface InjectionSettings {
  readonly image: string;
  readonly imagePullPolicy: ImagePullPolicy;
  /** CUSTODY_TOKEN_URL of the sidecar; without it chains start with a first link, not a token. */
  readonly tokenUrl: string | undefined;
  /** Where sidecars obtain their identity's key (the operator's identity delivery, over HTTPS). */
  readonly identityUrl: string;
  /** Registry ConfigMaps mounted: shard 0 required, 1..N-1 optional (present once the registry grows). */
  readonly registryShards: number;
  readonly logLevel: LogLevel;
  readonly resources: ResourceRequirements;
  /** Size limit of the /tmp emptyDir where the sidecar spools large bodies. */
  readonly tmpSizeLimit: string;
  readonly mode: SidecarMode;
  readonly ports: SidecarPorts;
  /**
   * In container mode, how long the sidecar keeps serving after SIGTERM (which it gets together
   * with the app), so the app's own shutdown can still call out. A native sidecar is stopped only
   * after the app has exited and needs none.
   */
  readonly shutdownDelay: string;
  /** What the sidecars do with calls for hosts that are not mesh services (passthrough.ts). */
  readonly outboundPolicy: OutboundPolicy;
  /** The API server's addresses as pods see them (KUBERNETES_SERVICE_HOST): added to NO_PROXY. */
  readonly apiServerHosts: readonly string[];
  /**
   * Redis the sidecars of a service share spent jtis and quota buckets through (redis:// or
   * rediss://); without it each replica has its own, and a rule's quota holds per replica.
   */
  readonly redisUrl: string | undefined;
  /** While Redis cannot answer: refuse calls (closed) or decide alone (open). */
  readonly redisFailureMode: "closed" | "open";
  /**
   * Traffic capture in every injected pod (capture.ts); a pod's custody.dev/capture overrides it.
   * Off by default: the init container needs NET_ADMIN, which only privileged namespaces allow.
   */
  readonly capture: boolean;
  /** Image of the init container that installs the capture rules (Dockerfile.init). */
  readonly initImage: string;
}

export const DEFAULT_INJECTION_SETTINGS: InjectionSettings = {
  image: "ghcr.io/custody-dev/custody-sidecar:0.1.0",
  imagePullPolicy: "IfNotPresent",
  tokenUrl: undefined,
  identityUrl: `https://custody-webhook.custody-system.svc${IDENTITY_DELIVERY_PATH}`,
  // Every shard the publisher can write: a registry that outgrows the mounted ones would reach
  // sidecars only in part, and a pod's volumes cannot change after it starts.
  registryShards: MAX_REGISTRY_SHARDS,
  logLevel: "info",
  // A CPU and a memory limit: namespaces whose ResourceQuota covers limits.cpu or limits.memory
  // refuse pods with a container that has none.
  resources: { requests: { cpu: "50m", memory: "64Mi" }, limits: { cpu: "1", memory: "256Mi" } },
  tmpSizeLimit: "1Gi",
  mode: "native",
  ports: { outbound: OUTBOUND_PORT, inbound: INBOUND_PORT, admin: ADMIN_PORT },
  shutdownDelay: "5s",
  // As Istio's default (ALLOW_ANY): calls to the cloud, telemetry and non-mesh Services work.
  outboundPolicy: "passthrough",
  apiServerHosts: [],
  redisUrl: undefined,
  redisFailureMode: "closed",
  capture: false,
  initImage: "ghcr.io/custody-dev/custody-init:0.1.0",
};

function sidecarPortList(ports: SidecarPorts): number[] {
  return [ports.outbound, ports.inbound, ports.admin];
}

export interface IdentityLookup {
  /** The validated ServiceIdentity `name` in `namespace`, or undefined when there is none. */
  identity(namespace: string, name: string): ServiceIdentity | undefined;
}

export class InjectionSettingsError extends CustodyError {
  constructor(message: string) {
    super("invalid_injection_settings", message);
  }
}

const QUANTITY = /^[0-9]{1,15}(\.[0-9]{1,9})?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/;
const QUANTITY_SCALE: Readonly<Record<string, number>> = {
  "": 1,
  m: 1e-3,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** The value of a quantity that matched QUANTITY, precise enough to compare a request with a limit. */
function quantityValue(quantity: string): number {
  const match = /^([0-9.]+)([A-Za-z]*)$/.exec(quantity);
  return Number(match?.[1] ?? Number.NaN) * (QUANTITY_SCALE[match?.[2] ?? ""] ?? Number.NaN);
}

/** Requests above their limit: the API server would refuse the pod after admission, less clearly. */
function requestsAboveLimits(resources: ResourceRequirements): string[] {
  return Object.entries(resources.requests)
    .filter(([resource, request]) => {
      const limit = resources.limits[resource];
      return limit !== undefined && quantityValue(request) > quantityValue(limit);
    })
    .map(([resource]) => resource);
}
const DURATION = /^[0-9]{1,4}(ms|s|m)$/;

/** Throws InjectionSettingsError when a setting would produce a pod the API server or kubelet refuses. */
export function checkInjectionSettings(settings: InjectionSettings): void {
  const problems: string[] = [];
  if (!/^[^\s]{1,512}$/.test(settings.image)) problems.push("image must be an image reference");
  if (!/^[^\s]{1,512}$/.test(settings.initImage)) problems.push("initImage must be an image reference");
  if (typeof settings.capture !== "boolean") problems.push("capture must be true or false");
  if (!IMAGE_PULL_POLICIES.includes(settings.imagePullPolicy)) {
    problems.push(`imagePullPolicy must be one of ${IMAGE_PULL_POLICIES.join(", ")}`);
  }
  if (settings.tokenUrl !== undefined && !/^https:\/\/[^\s]{1,2000}$/.test(settings.tokenUrl)) {
    problems.push("tokenUrl must be an https:// URL");
  }
  if (!/^https:\/\/[^\s]{1,2000}$/.test(settings.identityUrl))
    problems.push("identityUrl must be an https:// URL");
  const shards = settings.registryShards;
  if (!Number.isInteger(shards) || shards < 1 || shards > MAX_REGISTRY_SHARDS) {
    problems.push(`registryShards must be an integer from 1 to ${MAX_REGISTRY_SHARDS}`);
  }
  if (!LOG_LEVELS.includes(settings.logLevel))
    problems.push(`logLevel must be one of ${LOG_LEVELS.join(", ")}`);
  for (const [kind, list] of Object.entries(settings.resources)) {
    for (const [resource, quantity] of Object.entries(list as Record<string, string>)) {
      if (!QUANTITY.test(quantity))
        problems.push(`resources.${kind}.${resource} must be a quantity (50m, 64Mi)`);
    }
  }
  for (const resource of requestsAboveLimits(settings.resources)) {
    problems.push(`resources.requests.${resource} must not exceed resources.limits.${resource}`);
  }
  if (!QUANTITY.test(settings.tmpSizeLimit)) problems.push("tmpSizeLimit must be a quantity (1Gi)");
  if (!SIDECAR_MODES.includes(settings.mode))
    problems.push(`mode must be one of ${SIDECAR_MODES.join(", ")}`);
  const ports = sidecarPortList(settings.ports);
  if (ports.some((port) => !Number.isInteger(port) || port < 1 || port > 65_535)) {
    problems.push("ports must be from 1 to 65535");
  } else if (new Set(ports).size !== ports.length) {
    problems.push("ports.outbound, ports.inbound and ports.admin must differ");
  }
  if (!DURATION.test(settings.shutdownDelay)) problems.push("shutdownDelay must be a duration (5s)");
  if (!OUTBOUND_POLICIES.includes(settings.outboundPolicy)) {
    problems.push(`outboundPolicy must be one of ${OUTBOUND_POLICIES.join(", ")}`);
  }
  if (settings.redisUrl !== undefined && !/^rediss?:\/\/[^\s]{1,2000}$/.test(settings.redisUrl)) {
    problems.push("redisUrl must be a redis:// or rediss:// URL");
  }
  if (settings.redisFailureMode !== "closed" && settings.redisFailureMode !== "open") {
    problems.push("redisFailureMode must be closed or open");
  }
  if (settings.apiServerHosts.some((host) => !NO_PROXY_ENTRY.test(host))) {
    problems.push("apiServerHosts must be host names or addresses");
  }
  if (problems.length > 0) throw new InjectionSettingsError(`injection settings: ${problems.join("; ")}.`);
}

// --- reading the pod ----------------------------------------------------------------------------

const nameSchema = z.string().min(1).max(253);

const containerSchema = z.looseObject({
  name: nameSchema,
  env: z
    .array(z.looseObject({ name: z.string().min(1).max(253) }))
    .max(MAX_ENV_PER_CONTAINER)
    .nullish(),
  ports: z
    .array(
      z.looseObject({ containerPort: z.int().min(1).max(65_535), protocol: z.string().max(8).nullish() }),
    )
    .max(MAX_PORTS_PER_CONTAINER)
    .nullish(),
});
type Container = z.output<typeof containerSchema>;

const podSchema = z.looseObject({
  metadata: z.looseObject({
    name: z.string().max(253).nullish(),
    generateName: z.string().max(253).nullish(),
    namespace: z.string().max(63).nullish(),
    annotations: z.record(z.string().max(317), z.string()).nullish(),
  }),
  spec: z.looseObject({
    serviceAccountName: z.string().max(253).nullish(),
    serviceAccount: z.string().max(253).nullish(),
    hostNetwork: z.boolean().nullish(),
    containers: z.array(containerSchema).min(1).max(MAX_CONTAINERS),
    initContainers: z.array(containerSchema).max(MAX_CONTAINERS).nullish(),
    volumes: z
      .array(z.looseObject({ name: nameSchema }))
      .max(MAX_VOLUMES)
      .nullish(),
  }),
});
type Pod = z.output<typeof podSchema>;

/** Whether the pod asked for a sidecar and has none yet, read without trusting its shape. */
function injectionWanted(pod: unknown): "wanted" | "not_requested" | "already_injected" {
  const object = recordOf(pod);
  const annotations = recordOf(recordOf(object?.metadata)?.annotations);
  if (annotations?.[ANNOTATION_INJECT] !== "true") return "not_requested";
  const spec = recordOf(object?.spec);
  const named = (list: unknown) =>
    Array.isArray(list) && list.some((c) => recordOf(c)?.name === SIDECAR_CONTAINER_NAME);
  return named(spec?.containers) || named(spec?.initContainers) ? "already_injected" : "wanted";
}

function refuse(code: number, reason: string, message: string, identity?: string): AdmissionDenied {
  return identity === undefined
    ? { allowed: false, code, reason, message }
    : { allowed: false, code, reason, message, identity };
}

/** `pod shop/cart-7f9c` in messages; a pod still waiting for its generated name shows its prefix. */
function podLabel(pod: unknown, namespace: string): string {
  const metadata = recordOf(recordOf(pod)?.metadata);
  const name = typeof metadata?.name === "string" && metadata.name !== "" ? metadata.name : undefined;
  const prefix = typeof metadata?.generateName === "string" ? metadata.generateName : "";
  const shown = (name ?? (prefix === "" ? "<unnamed>" : `${prefix}*`)).slice(0, 253);
  return namespace === "" ? `pod ${shown}` : `pod ${namespace}/${shown}`;
}

// --- decisions ----------------------------------------------------------------------------------

type Resolved<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly denied: AdmissionDenied };

/**
 * The identity a pod (as the API server returns it) may carry, by the rule admission applies: its
 * annotation or its service account names a ServiceIdentity of its namespace made for that
 * service account. Identity delivery asks this before it hands out a key.
 */
export function identityForPod(
  pod: unknown,
  namespace: string,
  lookup: IdentityLookup,
):
  | { readonly ok: true; readonly identity: ServiceIdentity }
  | { readonly ok: false; readonly reason: string } {
  const parsed = podSchema.safeParse(pod);
  if (!parsed.success) return { ok: false, reason: "pod_not_found" };
  const resolved = resolveIdentity(parsed.data, namespace, lookup, podLabel(pod, namespace));
  return resolved.ok ? { ok: true, identity: resolved.value } : { ok: false, reason: resolved.denied.reason };
}

function resolveIdentity(
  pod: Pod,
  namespace: string,
  lookup: IdentityLookup,
  label: string,
): Resolved<ServiceIdentity> {
  const serviceAccount = pod.spec.serviceAccountName || pod.spec.serviceAccount || "default";
  const annotated = pod.metadata.annotations?.[ANNOTATION_IDENTITY];
  const name = annotated ?? serviceAccount;
  const source =
    annotated === undefined
      ? `the pod's service account (${ANNOTATION_IDENTITY} is not set)`
      : `annotation ${ANNOTATION_IDENTITY}`;
  if (!isDnsLabel(name)) {
    const message =
      annotated === undefined
        ? `${label} runs as service account "${name.slice(0, 253)}", which cannot name a ServiceIdentity (a DNS label: lower-case letters, digits and '-', at most 63 characters): name the identity with the annotation ${ANNOTATION_IDENTITY}.`
        : `annotation ${ANNOTATION_IDENTITY}: "${name.slice(0, 253)}" is not a ServiceIdentity name (a DNS label: lower-case letters, digits and '-', at most 63 characters).`;
    return { ok: false, denied: refuse(400, "invalid_identity_name", message) };
  }
  const identity = lookup.identity(namespace, name);
  if (identity === undefined) {
    return {
      ok: false,
      denied: refuse(
        403,
        "identity_not_found",
        `${label} asks for ServiceIdentity "${name}" (from ${source}), which does not exist in namespace "${namespace}": create it first, or name an existing one with ${ANNOTATION_IDENTITY}.`,
        name,
      ),
    };
  }
  const required = serviceAccountNameOf(identity);
  if (required !== serviceAccount) {
    return {
      ok: false,
      denied: refuse(
        403,
        "service_account_mismatch",
        `ServiceIdentity "${name}" may only be used by pods running as service account "${required}", but ${label} runs as service account "${serviceAccount}": set spec.serviceAccountName: ${required}, or use the identity made for "${serviceAccount}".`,
        name,
      ),
    };
  }
  return { ok: true, value: identity };
}

function resolveAppPort(
  pod: Pod,
  appContainers: readonly Container[],
  sidecarPorts: readonly number[],
  label: string,
): Resolved<number> {
  const annotated = pod.metadata.annotations?.[ANNOTATION_APP_PORT];
  let port: number;
  if (annotated !== undefined) {
    port = /^[0-9]{1,5}$/.test(annotated) ? Number(annotated) : 0;
    if (port < 1 || port > 65_535) {
      return {
        ok: false,
        denied: refuse(
          400,
          "invalid_app_port",
          `annotation ${ANNOTATION_APP_PORT}: "${annotated.slice(0, 64)}" is not a port (a number from 1 to 65535).`,
        ),
      };
    }
  } else {
    // The first app container is, by convention, the main one; guessing among the others could
    // point the sidecar at a helper, so anything else has to be said with the annotation.
    const first = appContainers[0];
    const declared = first?.ports?.find((entry) => (entry.protocol ?? "TCP") === "TCP");
    if (first === undefined || declared === undefined) {
      return {
        ok: false,
        denied: refuse(
          400,
          "app_port_unknown",
          `${label}: cannot tell which port the app listens on: ${first === undefined ? "the pod has no app container" : `container "${first.name}" declares no TCP containerPort`}; set the annotation ${ANNOTATION_APP_PORT}: "<port>".`,
        ),
      };
    }
    port = declared.containerPort;
  }
  if (sidecarPorts.includes(port)) {
    return {
      ok: false,
      denied: refuse(
        400,
        "app_port_conflict",
        `${label}: app port ${port} is one of the Custody sidecar's own ports (${sidecarPorts.join(", ")}): the app must listen elsewhere.`,
      ),
    };
  }
  return { ok: true, value: port };
}

/**
 * Every container of a pod, init containers included, shares its network namespace with the
 * sidecar: a port declared twice, or one that another mesh's proxy is known to take, fails at
 * runtime. Run again when the API server reinvokes the webhook after another one (Istio's
 * injector, say) added its containers.
 */
function portConflict(
  containers: readonly Container[],
  sidecarPorts: readonly number[],
  label: string,
): AdmissionDenied | undefined {
  const shown = sidecarPorts.join(", ");
  for (const container of containers) {
    if (container.name === SIDECAR_CONTAINER_NAME) continue;
    const declared = container.ports?.find((entry) => sidecarPorts.includes(entry.containerPort));
    if (declared !== undefined) {
      return refuse(
        400,
        "port_conflict",
        `${label}: container "${container.name}" declares port ${declared.containerPort}, which the Custody sidecar uses (${shown}) in the pod's shared network namespace: move it to another port.`,
      );
    }
    const proxyPort = KNOWN_PROXY_PORTS[container.name]?.find((port) => sidecarPorts.includes(port));
    if (proxyPort !== undefined) {
      return refuse(
        400,
        "mesh_port_conflict",
        `${label}: container "${container.name}" (another mesh's proxy) listens on port ${proxyPort}, which the Custody sidecar uses (${shown}): give Custody's sidecar other ports (chart values sidecar.ports), or do not inject both into one pod.`,
      );
    }
  }
  return undefined;
}

/** The chart's resources with the pod's annotations over them, or a refusal naming the bad one. */
function resolveResources(
  pod: Pod,
  settings: InjectionSettings,
  label: string,
): Resolved<ResourceRequirements> {
  const annotations = pod.metadata.annotations ?? {};
  const overrides = [
    [ANNOTATION_SIDECAR_CPU_REQUEST, "requests", "cpu"],
    [ANNOTATION_SIDECAR_CPU_LIMIT, "limits", "cpu"],
    [ANNOTATION_SIDECAR_MEMORY_REQUEST, "requests", "memory"],
    [ANNOTATION_SIDECAR_MEMORY_LIMIT, "limits", "memory"],
  ] as const;
  const requests: Record<string, string> = { ...settings.resources.requests };
  const limits: Record<string, string> = { ...settings.resources.limits };
  for (const [annotation, kind, resource] of overrides) {
    const value = annotations[annotation];
    if (value === undefined) continue;
    if (!QUANTITY.test(value)) {
      return {
        ok: false,
        denied: refuse(
          400,
          "invalid_sidecar_resources",
          `annotation ${annotation}: "${value.slice(0, 64)}" is not a Kubernetes quantity (${resource === "cpu" ? "250m, 1" : "128Mi, 1Gi"}).`,
        ),
      };
    }
    (kind === "requests" ? requests : limits)[resource] = value;
  }
  const resources = { requests, limits };
  const above = requestsAboveLimits(resources);
  if (above.length > 0) {
    return {
      ok: false,
      denied: refuse(
        400,
        "invalid_sidecar_resources",
        `${label}: the Custody sidecar's ${above.map((resource) => `${resource} request (${requests[resource]}) exceeds its limit (${limits[resource]})`).join(" and ")}: change the custody.dev/sidecar-* annotations so that each request is at most its limit.`,
      ),
    };
  }
  return { ok: true, value: resources };
}

function resolveOutboundPolicy(pod: Pod, settings: InjectionSettings): Resolved<OutboundPolicy> {
  const annotated = pod.metadata.annotations?.[ANNOTATION_OUTBOUND_POLICY];
  if (annotated === undefined) return { ok: true, value: settings.outboundPolicy };
  if ((OUTBOUND_POLICIES as readonly string[]).includes(annotated)) {
    return { ok: true, value: annotated as OutboundPolicy };
  }
  return {
    ok: false,
    denied: refuse(
      400,
      "invalid_outbound_policy",
      `annotation ${ANNOTATION_OUTBOUND_POLICY}: "${annotated.slice(0, 64)}" is not one of ${OUTBOUND_POLICIES.join(", ")}.`,
    ),
  };
}

/** What capture gives a pod: its rules, and the ports that stay reachable from other pods. */
interface CapturePlan {
  readonly rules: string;
  readonly reachable: (port: number) => boolean;
}

/** Capture on or off for this pod (its annotation over the operator's setting), and its rules. */
function resolveCapture(
  pod: Pod,
  settings: InjectionSettings,
  appPort: number,
  label: string,
): Resolved<CapturePlan | undefined> {
  const annotations = pod.metadata.annotations ?? {};
  const annotated = annotations[ANNOTATION_CAPTURE];
  if (annotated !== undefined && annotated !== "true" && annotated !== "false") {
    return {
      ok: false,
      denied: refuse(
        400,
        "invalid_capture",
        `annotation ${ANNOTATION_CAPTURE}: "${annotated.slice(0, 64)}" is not "true" or "false".`,
      ),
    };
  }
  if ((annotated === undefined ? settings.capture : annotated === "true") === false) {
    return { ok: true, value: undefined };
  }
  const invalid = (detail: string): Resolved<CapturePlan | undefined> => ({
    ok: false,
    denied: refuse(400, "invalid_capture_ports", `${label}: ${detail}`),
  });
  const listed = annotations[ANNOTATION_CAPTURE_EXCLUDE_INBOUND_PORTS] ?? "";
  if (listed.length > 256) {
    return invalid(`annotation ${ANNOTATION_CAPTURE_EXCLUDE_INBOUND_PORTS} is too long.`);
  }
  const entries = listed
    .split(",")
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "");
  const bad = entries.find((entry) => !/^[0-9]{1,5}$/.test(entry));
  if (bad !== undefined) {
    return invalid(
      `annotation ${ANNOTATION_CAPTURE_EXCLUDE_INBOUND_PORTS}: "${bad.slice(0, 64)}" is not a port (a comma-separated list of numbers from 1 to 65535, e.g. "9090,9091").`,
    );
  }
  const excludedInbound = entries.map(Number);
  const { inbound, admin } = settings.ports;
  try {
    const rules = captureRules({ inbound, admin, app: appPort, excludedInbound });
    const open = new Set([inbound, admin, ...excludedInbound]);
    return { ok: true, value: { rules, reachable: (port) => open.has(port) } };
  } catch (error) {
    if (error instanceof CapturePortsError) {
      return invalid(`annotation ${ANNOTATION_CAPTURE_EXCLUDE_INBOUND_PORTS}: ${error.message}`);
    }
    throw error;
  }
}

/** The containers whose probes the kubelet runs: the app's, and its own native sidecars. */
function probedContainers(pod: Pod): ProbedContainer[] {
  return [
    ...pod.spec.containers.map((container, index) => ({ list: "containers" as const, index, container })),
    ...(pod.spec.initContainers ?? []).flatMap((container, index) =>
      container.restartPolicy === "Always" ? [{ list: "initContainers" as const, index, container }] : [],
    ),
  ];
}

function resolveNoProxy(pod: Pod, settings: InjectionSettings): Resolved<string> {
  const base = [...BASE_NO_PROXY, ...settings.apiServerHosts];
  const annotated = pod.metadata.annotations?.[ANNOTATION_NO_PROXY];
  if (annotated === undefined) return { ok: true, value: [...new Set(base)].join(",") };
  const invalid = (detail: string): Resolved<string> => ({
    ok: false,
    denied: refuse(400, "invalid_no_proxy", `annotation ${ANNOTATION_NO_PROXY}: ${detail}.`),
  });
  if (annotated.length > MAX_NO_PROXY_LENGTH)
    return invalid(`is longer than ${MAX_NO_PROXY_LENGTH} characters`);
  const entries = annotated
    .split(",")
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "");
  if (entries.length > MAX_NO_PROXY_ENTRIES)
    return invalid(`lists more than ${MAX_NO_PROXY_ENTRIES} entries`);
  const bad = entries.find((entry) => !NO_PROXY_ENTRY.test(entry));
  if (bad !== undefined) {
    return invalid(
      `"${bad.slice(0, 64)}" is not a host name, address, CIDR or domain suffix (a comma-separated list, e.g. .svc.cluster.local,10.0.0.0/8)`,
    );
  }
  return { ok: true, value: [...new Set([...base, ...entries])].join(",") };
}

// --- what is added ------------------------------------------------------------------------------

function proxyEnv(noProxy: string, outboundPort: number): { name: string; value: string }[] {
  const proxyUrl = `http://127.0.0.1:${outboundPort}`;
  // Both spellings: curl and Go read the upper case, many tools (wget, Python's requests) the lower.
  // HTTPS_PROXY: HTTPS clients then send CONNECT, which the outbound policy tunnels or refuses.
  return [
    { name: "HTTP_PROXY", value: proxyUrl },
    { name: "http_proxy", value: proxyUrl },
    { name: "HTTPS_PROXY", value: proxyUrl },
    { name: "https_proxy", value: proxyUrl },
    { name: "NO_PROXY", value: noProxy },
    { name: "no_proxy", value: noProxy },
  ];
}

function volumes(settings: InjectionSettings): Record<string, unknown>[] {
  const shards = Array.from({ length: settings.registryShards }, (_, index) => ({
    configMap: {
      name: registryConfigMapName(index),
      items: [{ key: registryFileName(index), path: registryFileName(index) }],
      // Shard 0 always exists once the operator published; the others appear as the registry grows.
      ...(index === 0 ? {} : { optional: true }),
    },
  }));
  return [
    {
      // No key here: the sidecar presents this token to the operator, which answers with the key
      // of the identity this pod may carry. Bound to the pod (it dies with it) and to Custody's
      // audience (the pod's API-server token is refused), renewed by the kubelet.
      name: VOLUME_TOKEN,
      projected: {
        // 0444: the kubelet writes the file as root, and without a pod fsGroup (which would re-own
        // every volume of the app too) the sidecar's user 65532 reads it through the "other" bits.
        // Only the sidecar container mounts this volume.
        defaultMode: 0o444,
        sources: [
          {
            serviceAccountToken: {
              audience: IDENTITY_TOKEN_AUDIENCE,
              expirationSeconds: IDENTITY_TOKEN_SECONDS,
              path: TOKEN_FILE,
            },
          },
        ],
      },
    },
    // One projected volume: every registry-<i>.json lands in one directory the sidecar lists.
    { name: VOLUME_REGISTRY, projected: { sources: shards } },
    { name: VOLUME_TMP, emptyDir: { sizeLimit: settings.tmpSizeLimit } },
  ];
}

function sidecarContainer(
  appPort: number,
  resources: ResourceRequirements,
  settings: InjectionSettings,
  appProbes: AppProbes,
): Record<string, unknown> {
  const { ports } = settings;
  const env = [
    { name: "CUSTODY_IDENTITY_URL", value: settings.identityUrl },
    { name: "CUSTODY_IDENTITY_TOKEN", value: `${TOKEN_MOUNT_PATH}/${TOKEN_FILE}` },
    { name: "CUSTODY_REGISTRY", value: REGISTRY_MOUNT_PATH },
    { name: "CUSTODY_APP_PORT", value: String(appPort) },
    { name: "CUSTODY_OUTBOUND", value: `127.0.0.1:${ports.outbound}` },
    { name: "CUSTODY_INBOUND", value: `0.0.0.0:${ports.inbound}` },
    { name: "CUSTODY_ADMIN", value: `0.0.0.0:${ports.admin}` },
    ...(settings.tokenUrl === undefined ? [] : [{ name: "CUSTODY_TOKEN_URL", value: settings.tokenUrl }]),
    { name: "CUSTODY_SHUTDOWN_DELAY", value: settings.mode === "native" ? "0s" : settings.shutdownDelay },
    { name: "CUSTODY_OUTBOUND_POLICY", value: settings.outboundPolicy },
    // The Redis URL itself (it may carry a password) comes with the identity, from the operator.
    ...(settings.redisUrl === undefined
      ? []
      : [{ name: "CUSTODY_REPLAY_FAILURE_MODE", value: settings.redisFailureMode }]),
    // The app's probes that capture pointed at the admin port, for the sidecar to perform.
    ...(Object.keys(appProbes).length === 0
      ? []
      : [{ name: APP_PROBES_ENV, value: JSON.stringify(appProbes) }]),
    { name: "CUSTODY_LOG_LEVEL", value: settings.logLevel },
  ];
  return {
    name: SIDECAR_CONTAINER_NAME,
    image: settings.image,
    imagePullPolicy: settings.imagePullPolicy,
    args: ["sidecar"],
    env,
    // An init container with restartPolicy Always is a native sidecar: it runs beside the app
    // containers, which the kubelet starts only once its startup probe has passed.
    ...(settings.mode === "native" ? { restartPolicy: "Always" } : {}),
    ports: [
      { name: "custody-inbound", containerPort: ports.inbound, protocol: "TCP" },
      { name: "custody-admin", containerPort: ports.admin, protocol: "TCP" },
    ],
    // /readyz answers 200 once the identity, the registry and (with a token service) the
    // identity token are loaded: what the app's first outgoing call needs.
    startupProbe: {
      httpGet: { path: "/readyz", port: ports.admin },
      periodSeconds: 1,
      timeoutSeconds: 2,
      failureThreshold: 120,
    },
    readinessProbe: {
      httpGet: { path: "/readyz", port: ports.admin },
      periodSeconds: 5,
      timeoutSeconds: 2,
      failureThreshold: 3,
    },
    livenessProbe: {
      httpGet: { path: "/healthz", port: ports.admin },
      periodSeconds: 10,
      timeoutSeconds: 2,
      failureThreshold: 3,
    },
    resources: { requests: { ...resources.requests }, limits: { ...resources.limits } },
    securityContext: {
      runAsNonRoot: true,
      runAsUser: SIDECAR_USER,
      runAsGroup: SIDECAR_USER,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    },
    volumeMounts: [
      { name: VOLUME_TOKEN, mountPath: TOKEN_MOUNT_PATH, readOnly: true },
      { name: VOLUME_REGISTRY, mountPath: REGISTRY_MOUNT_PATH, readOnly: true },
      // The root filesystem is read-only; the sidecar spools large bodies to the temp directory.
      { name: VOLUME_TMP, mountPath: "/tmp" },
    ],
    terminationMessagePolicy: "FallbackToLogsOnError",
  };
}

/** Adds `entries` to the map at `path`, creating the map when the pod has none. */
function addToMap(
  ops: JsonPatchOp[],
  path: string,
  existing: Readonly<Record<string, unknown>> | null | undefined,
  entries: Readonly<Record<string, string>>,
): void {
  if (existing == null) {
    ops.push({ op: "add", path, value: { ...entries } });
    return;
  }
  for (const [key, value] of Object.entries(entries)) {
    ops.push({ op: "add", path: `${path}/${escapePointerToken(key)}`, value });
  }
}

/** Appends `items` to the list at `path`, creating the list when the pod has none. */
function addToList(
  ops: JsonPatchOp[],
  path: string,
  existing: readonly unknown[] | null | undefined,
  items: readonly unknown[],
): void {
  if (items.length === 0) return;
  if (existing == null) {
    ops.push({ op: "add", path, value: [...items] });
    return;
  }
  for (const item of items) ops.push({ op: "add", path: `${path}/-`, value: item });
}

/**
 * The patch that injects the sidecar into `pod` (namespace `namespace`, from the AdmissionRequest),
 * or a refusal. Not annotated, or already injected: allowed with an empty patch.
 */
export function injectionPatch(
  pod: unknown,
  namespace: string,
  lookup: IdentityLookup,
  settings: InjectionSettings,
): AdmissionDecision {
  const wanted = injectionWanted(pod);
  if (wanted === "not_requested") return allowUnchanged(wanted);
  const sidecarPorts = sidecarPortList(settings.ports);
  if (wanted === "already_injected") {
    // Reinvoked after another webhook (Istio's injector, say) changed the pod, or admitted again:
    // the pod was judged when the sidecar went in; only what was added since may take its ports.
    const read = podSchema.safeParse(pod);
    if (!read.success) return allowUnchanged(wanted);
    const containers = [...(read.data.spec.initContainers ?? []), ...read.data.spec.containers];
    return portConflict(containers, sidecarPorts, podLabel(pod, namespace)) ?? allowUnchanged(wanted);
  }
  const objectNamespace = recordOf(recordOf(pod)?.metadata)?.namespace;
  const podNamespace =
    namespace !== "" ? namespace : typeof objectNamespace === "string" ? objectNamespace : "";
  const label = podLabel(pod, podNamespace);
  let parsed: Pod;
  try {
    parsed = parseOrThrow(podSchema, pod, "malformed_pod", label.replace(/^pod/, "Pod"));
  } catch (error) {
    if (error instanceof ValidationError) return refuse(400, "malformed_pod", error.message);
    throw error;
  }
  const initContainers = parsed.spec.initContainers ?? [];
  const everyContainer = [...initContainers, ...parsed.spec.containers];
  if (!isDnsLabel(podNamespace)) {
    return refuse(400, "malformed_pod", `${label}: the pod has no namespace; identities are namespaced.`);
  }
  if (parsed.spec.hostNetwork === true) {
    return refuse(
      400,
      "host_network",
      `${label} uses hostNetwork: the sidecar's ports (${sidecarPorts.join(", ")}) would be the node's, shared with every other such pod; remove ${ANNOTATION_INJECT} or hostNetwork.`,
    );
  }
  const identity = resolveIdentity(parsed, podNamespace, lookup, label);
  if (!identity.ok) return identity.denied;
  const identityName = identity.value.metadata.name;
  const appContainers = parsed.spec.containers;
  const appPort = resolveAppPort(parsed, appContainers, sidecarPorts, label);
  if (!appPort.ok) return { ...appPort.denied, identity: identityName };
  const conflict = portConflict(everyContainer, sidecarPorts, label);
  if (conflict !== undefined) return { ...conflict, identity: identityName };
  const noProxy = resolveNoProxy(parsed, settings);
  if (!noProxy.ok) return { ...noProxy.denied, identity: identityName };
  const resources = resolveResources(parsed, settings, label);
  if (!resources.ok) return { ...resources.denied, identity: identityName };
  const outboundPolicy = resolveOutboundPolicy(parsed, settings);
  if (!outboundPolicy.ok) return { ...outboundPolicy.denied, identity: identityName };
  const capture = resolveCapture(parsed, settings, appPort.value, label);
  if (!capture.ok) return { ...capture.denied, identity: identityName };
  if (
    capture.value !== undefined &&
    everyContainer.some((container) => container.name === INIT_CONTAINER_NAME)
  ) {
    return refuse(
      400,
      "container_conflict",
      `${label} already has a container named "${INIT_CONTAINER_NAME}", which traffic capture needs: rename it.`,
      identityName,
    );
  }
  let probes: ReturnType<typeof rewriteProbes> = { ops: [], probes: {} };
  if (capture.value !== undefined) {
    try {
      probes = rewriteProbes(probedContainers(parsed), capture.value.reachable, settings.ports.admin, label);
    } catch (error) {
      if (error instanceof ProbeRewriteError) return refuse(400, error.code, error.message, identityName);
      throw error;
    }
  }
  const added = [...volumes(settings), ...(capture.value === undefined ? [] : [xtablesVolume()])];
  const taken = new Set((parsed.spec.volumes ?? []).map((volume) => volume.name));
  const clash = added.find((volume) => taken.has(String(volume.name)));
  if (clash !== undefined) {
    return refuse(
      400,
      "volume_conflict",
      `${label} already has a volume named "${String(clash.name)}", which the Custody sidecar needs: rename it.`,
      identityName,
    );
  }

  const ops: JsonPatchOp[] = [];
  const annotations = parsed.metadata.annotations;
  // The three prometheus.io annotations describe one scrape target: when the app already names its
  // own, changing any of them would break the app's scraping, so the user's choice wins.
  const scrape = prometheusAnnotations(settings.ports.admin);
  const appScraped = Object.keys(scrape).some((key) => annotations?.[key] !== undefined);
  addToMap(ops, "/metadata/annotations", annotations, {
    ...(appScraped ? {} : scrape),
    [ANNOTATION_INJECTED]: identityName,
  });
  addToList(ops, "/spec/volumes", parsed.spec.volumes, added);
  const env = proxyEnv(noProxy.value, settings.ports.outbound);
  const addProxyEnv = (list: "containers" | "initContainers", containers: readonly Container[]) =>
    containers.forEach((container, index) => {
      const defined = new Set((container.env ?? []).map((variable) => variable.name));
      // A variable the container already defines is the user's choice (a corporate proxy, say).
      const missing = env.filter((variable) => !defined.has(variable.name));
      addToList(ops, `/spec/${list}/${index}/env`, container.env, missing);
    });
  addProxyEnv("containers", appContainers);
  const sidecar = sidecarContainer(
    appPort.value,
    resources.value,
    { ...settings, outboundPolicy: outboundPolicy.value },
    probes.probes,
  );
  // Init containers go in front of the user's, in reverse: custody-init first, then the sidecar.
  // Every operation that addresses a container by its index comes before them.
  const front: Record<string, unknown>[] = [];
  if (settings.mode === "native") {
    // The user's init containers run after the sidecar has started, so they can call out too.
    addProxyEnv("initContainers", initContainers);
    front.push(sidecar);
  }
  ops.push(...probes.ops);
  if (capture.value !== undefined) {
    front.unshift(
      captureInitContainer(capture.value.rules, {
        image: settings.initImage,
        imagePullPolicy: settings.imagePullPolicy,
      }),
    );
  }
  if (front.length > 0 && parsed.spec.initContainers == null) {
    ops.push({ op: "add", path: "/spec/initContainers", value: front });
  } else {
    for (const container of [...front].reverse()) {
      ops.push({ op: "add", path: "/spec/initContainers/0", value: container });
    }
  }
  if (settings.mode !== "native") ops.push({ op: "add", path: "/spec/containers/-", value: sidecar });
  return { allowed: true, patch: ops, reason: "injected", identity: identityName };
}
