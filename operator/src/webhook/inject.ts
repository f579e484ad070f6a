/**
 * Sidecar injection, free of HTTP: a pod as the API server sends it in, an RFC 6902 patch (or a
 * refusal that says what to fix) out. A pod opts in with `custody.dev/inject: "true"`; it then gets
 * the `custody-sidecar` container, the volumes it reads (identity Secret, registry shards, a
 * writable /tmp), proxy variables for its app containers, and scrape annotations.
 *
 * The refusals are the security point: a pod may only carry an identity that exists in its
 * namespace and was made for the service account it runs as. Anyone who can create pods in a
 * namespace could otherwise pick any identity there, and with it that identity's certificate.
 */
import { z } from "zod";
import { LOG_LEVELS, type LogLevel } from "../../../cli/src/log.js";
import { CustodyError, ValidationError } from "../../../crds/src/errors.js";
import { parseOrThrow } from "../../../crds/src/issues.js";
import {
  ANNOTATION_APP_PORT,
  ANNOTATION_IDENTITY,
  ANNOTATION_INJECT,
  isDnsLabel,
} from "../../../crds/src/names.js";
import { registryConfigMapName, registryFileName } from "../../../crds/src/registry.js";
import { MAX_REGISTRY_SHARDS } from "../../../crds/src/registry-schema.js";
import { type ServiceIdentity, serviceAccountNameOf } from "../../../crds/src/service-identity.js";
import { identitySecretName } from "../controllers/identity-secret.js";
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

export const OUTBOUND_PORT = 15001;
export const INBOUND_PORT = 15006;
export const ADMIN_PORT = 15020;
const SIDECAR_PORTS: readonly number[] = [OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT];
export const SIDECAR_USER = 65532;

export const IDENTITY_MOUNT_PATH = "/var/run/custody/identity";
export const REGISTRY_MOUNT_PATH = "/var/run/custody/registry";
export const VOLUME_IDENTITY = "custody-identity";
export const VOLUME_REGISTRY = "custody-registry";
export const VOLUME_TMP = "custody-tmp";

export const PROXY_URL = `http://127.0.0.1:${OUTBOUND_PORT}`;
const BASE_NO_PROXY = ["localhost", "127.0.0.1", "::1"];
const MAX_NO_PROXY_ENTRIES = 32;
const MAX_NO_PROXY_LENGTH = 2048;
/** Host names, IPs, CIDRs, `.domain` and `*.domain` suffixes, optional `:port`; nothing that could smuggle a second variable. */
const NO_PROXY_ENTRY = /^[A-Za-z0-9*._:[\]/-]{1,253}$/;

/** Bounds on the pod read: far above any real pod, low enough to keep one review cheap. */
export const MAX_CONTAINERS = 64;
const MAX_ENV_PER_CONTAINER = 1024;
const MAX_PORTS_PER_CONTAINER = 128;
const MAX_VOLUMES = 512;

const PROMETHEUS_ANNOTATIONS = {
  "prometheus.io/scrape": "true",
  "prometheus.io/port": String(ADMIN_PORT),
  "prometheus.io/path": "/metrics",
} as const;

export const IMAGE_PULL_POLICIES = ["Always", "IfNotPresent", "Never"] as const;
export type ImagePullPolicy = (typeof IMAGE_PULL_POLICIES)[number];

export interface ResourceRequirements {
  readonly requests: Readonly<Record<string, string>>;
  readonly limits: Readonly<Record<string, string>>;
}

export interface InjectionSettings {
  readonly image: string;
  readonly imagePullPolicy: ImagePullPolicy;
  /** CUSTODY_TOKEN_URL of the sidecar; without it chains start with a first link, not a token. */
  readonly tokenUrl: string | undefined;
  /** Registry ConfigMaps mounted: shard 0 required, 1..N-1 optional (present once the registry grows). */
  readonly registryShards: number;
  readonly logLevel: LogLevel;
  readonly resources: ResourceRequirements;
  /** Size limit of the /tmp emptyDir where the sidecar spools large bodies. */
  readonly tmpSizeLimit: string;
}

export const DEFAULT_INJECTION_SETTINGS: InjectionSettings = {
  image: "ghcr.io/custody-dev/custody-sidecar:0.1.0",
  imagePullPolicy: "IfNotPresent",
  tokenUrl: undefined,
  registryShards: 8,
  logLevel: "info",
  resources: { requests: { cpu: "50m", memory: "64Mi" }, limits: { memory: "256Mi" } },
  tmpSizeLimit: "1Gi",
};

export interface IdentityLookup {
  /** The validated ServiceIdentity `name` in `namespace`, or undefined when there is none. */
  identity(namespace: string, name: string): ServiceIdentity | undefined;
}

export class InjectionSettingsError extends CustodyError {
  constructor(message: string) {
    super("invalid_injection_settings", message);
  }
}

const QUANTITY = /^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/;

/** Throws InjectionSettingsError when a setting would produce a pod the API server or kubelet refuses. */
export function checkInjectionSettings(settings: InjectionSettings): void {
  const problems: string[] = [];
  if (!/^[^\s]{1,512}$/.test(settings.image)) problems.push("image must be an image reference");
  if (!IMAGE_PULL_POLICIES.includes(settings.imagePullPolicy)) {
    problems.push(`imagePullPolicy must be one of ${IMAGE_PULL_POLICIES.join(", ")}`);
  }
  if (settings.tokenUrl !== undefined && !/^https:\/\/[^\s]{1,2000}$/.test(settings.tokenUrl)) {
    problems.push("tokenUrl must be an https:// URL");
  }
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
  if (!QUANTITY.test(settings.tmpSizeLimit)) problems.push("tmpSizeLimit must be a quantity (1Gi)");
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
    volumes: z
      .array(z.looseObject({ name: nameSchema }))
      .max(MAX_VOLUMES)
      .nullish(),
  }),
});
type Pod = z.output<typeof podSchema>;

function recordOf(value: unknown): Record<string, unknown> | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

/** Whether the pod asked for a sidecar and has none yet, read without trusting its shape. */
function injectionWanted(pod: unknown): "wanted" | "not_requested" | "already_injected" {
  const object = recordOf(pod);
  const annotations = recordOf(recordOf(object?.metadata)?.annotations);
  if (annotations?.[ANNOTATION_INJECT] !== "true") return "not_requested";
  const containers = recordOf(object?.spec)?.containers;
  if (Array.isArray(containers) && containers.some((c) => recordOf(c)?.name === SIDECAR_CONTAINER_NAME)) {
    return "already_injected";
  }
  return "wanted";
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

function resolveAppPort(pod: Pod, appContainers: readonly Container[], label: string): Resolved<number> {
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
  if (SIDECAR_PORTS.includes(port)) {
    return {
      ok: false,
      denied: refuse(
        400,
        "app_port_conflict",
        `${label}: app port ${port} is one of the Custody sidecar's own ports (${SIDECAR_PORTS.join(", ")}): the app must listen elsewhere.`,
      ),
    };
  }
  return { ok: true, value: port };
}

/** App containers share the pod's network namespace with the sidecar: a clash fails at runtime. */
function portConflict(appContainers: readonly Container[], label: string): AdmissionDenied | undefined {
  for (const container of appContainers) {
    const clash = container.ports?.find((entry) => SIDECAR_PORTS.includes(entry.containerPort));
    if (clash !== undefined) {
      return refuse(
        400,
        "port_conflict",
        `${label}: container "${container.name}" declares port ${clash.containerPort}, which the Custody sidecar uses (${SIDECAR_PORTS.join(", ")}) in the pod's shared network namespace: move it to another port.`,
      );
    }
  }
  return undefined;
}

function resolveNoProxy(pod: Pod): Resolved<string> {
  const annotated = pod.metadata.annotations?.[ANNOTATION_NO_PROXY];
  if (annotated === undefined) return { ok: true, value: BASE_NO_PROXY.join(",") };
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
  return { ok: true, value: [...new Set([...BASE_NO_PROXY, ...entries])].join(",") };
}

// --- what is added ------------------------------------------------------------------------------

function proxyEnv(noProxy: string): { name: string; value: string }[] {
  // Both spellings: curl and Go read the upper case, many tools (wget, Python's requests) the lower.
  return [
    { name: "HTTP_PROXY", value: PROXY_URL },
    { name: "http_proxy", value: PROXY_URL },
    { name: "NO_PROXY", value: noProxy },
    { name: "no_proxy", value: noProxy },
  ];
}

function volumes(identity: ServiceIdentity, settings: InjectionSettings): Record<string, unknown>[] {
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
      name: VOLUME_IDENTITY,
      secret: {
        secretName: identitySecretName(identity.metadata.name),
        // The whole Secret: during a rotation it also holds the next key pair, with which the
        // sidecar opens messages sealed to its next key while the registry switches over.
        // 0444: the kubelet writes Secret files owned by root, and without a pod fsGroup (which
        // would re-own every volume of the app too) the sidecar's user 65532 can read them only
        // through the "other" bits. Only the sidecar container mounts this volume, so no other
        // container of the pod can see the key.
        defaultMode: 0o444,
      },
    },
    // One projected volume: every registry-<i>.json lands in one directory the sidecar lists.
    { name: VOLUME_REGISTRY, projected: { sources: shards } },
    { name: VOLUME_TMP, emptyDir: { sizeLimit: settings.tmpSizeLimit } },
  ];
}

function sidecarContainer(appPort: number, settings: InjectionSettings): Record<string, unknown> {
  const env = [
    { name: "CUSTODY_IDENTITY", value: IDENTITY_MOUNT_PATH },
    { name: "CUSTODY_REGISTRY", value: REGISTRY_MOUNT_PATH },
    { name: "CUSTODY_APP_PORT", value: String(appPort) },
    ...(settings.tokenUrl === undefined ? [] : [{ name: "CUSTODY_TOKEN_URL", value: settings.tokenUrl }]),
    { name: "CUSTODY_LOG_LEVEL", value: settings.logLevel },
  ];
  return {
    name: SIDECAR_CONTAINER_NAME,
    image: settings.image,
    imagePullPolicy: settings.imagePullPolicy,
    args: ["sidecar"],
    env,
    ports: [
      { name: "custody-inbound", containerPort: INBOUND_PORT, protocol: "TCP" },
      { name: "custody-admin", containerPort: ADMIN_PORT, protocol: "TCP" },
    ],
    readinessProbe: {
      httpGet: { path: "/readyz", port: ADMIN_PORT },
      periodSeconds: 5,
      timeoutSeconds: 2,
      failureThreshold: 3,
    },
    livenessProbe: {
      httpGet: { path: "/healthz", port: ADMIN_PORT },
      initialDelaySeconds: 5,
      periodSeconds: 10,
      timeoutSeconds: 2,
      failureThreshold: 3,
    },
    resources: { requests: { ...settings.resources.requests }, limits: { ...settings.resources.limits } },
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
      { name: VOLUME_IDENTITY, mountPath: IDENTITY_MOUNT_PATH, readOnly: true },
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
  if (wanted !== "wanted") return allowUnchanged(wanted);
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
  if (!isDnsLabel(podNamespace)) {
    return refuse(400, "malformed_pod", `${label}: the pod has no namespace; identities are namespaced.`);
  }
  if (parsed.spec.hostNetwork === true) {
    return refuse(
      400,
      "host_network",
      `${label} uses hostNetwork: the sidecar's ports (${SIDECAR_PORTS.join(", ")}) would be the node's, shared with every other such pod; remove ${ANNOTATION_INJECT} or hostNetwork.`,
    );
  }
  const identity = resolveIdentity(parsed, podNamespace, lookup, label);
  if (!identity.ok) return identity.denied;
  const identityName = identity.value.metadata.name;
  const appContainers = parsed.spec.containers;
  const appPort = resolveAppPort(parsed, appContainers, label);
  if (!appPort.ok) return { ...appPort.denied, identity: identityName };
  const conflict = portConflict(appContainers, label);
  if (conflict !== undefined) return { ...conflict, identity: identityName };
  const noProxy = resolveNoProxy(parsed);
  if (!noProxy.ok) return { ...noProxy.denied, identity: identityName };
  const added = volumes(identity.value, settings);
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
  const appScraped = Object.keys(PROMETHEUS_ANNOTATIONS).some((key) => annotations?.[key] !== undefined);
  addToMap(ops, "/metadata/annotations", annotations, {
    ...(appScraped ? {} : PROMETHEUS_ANNOTATIONS),
    [ANNOTATION_INJECTED]: identityName,
  });
  addToList(ops, "/spec/volumes", parsed.spec.volumes, added);
  const env = proxyEnv(noProxy.value);
  appContainers.forEach((container, index) => {
    const defined = new Set((container.env ?? []).map((variable) => variable.name));
    // A variable the container already defines is the user's choice (a corporate proxy, say).
    const missing = env.filter((variable) => !defined.has(variable.name));
    addToList(ops, `/spec/containers/${index}/env`, container.env, missing);
  });
  ops.push({ op: "add", path: "/spec/containers/-", value: sidecarContainer(appPort.value, settings) });
  return { allowed: true, patch: ops, reason: "injected", identity: identityName };
}
