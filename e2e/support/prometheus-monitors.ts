/**
 * What the Prometheus Operator makes of the chart's ServiceMonitor, PodMonitor and PrometheusRule:
 * scrape jobs with `kubernetes_sd_configs` and the operator's relabelling (selectors and port names
 * become `keep` rules; `namespace`, `pod`, `container`, `service`, `endpoint` and `job` become
 * target labels), and the rule groups as a rules file. A test cluster has no Prometheus Operator
 * (no image, no registry); a plain Prometheus given this config discovers and labels the targets
 * the way one managed by it would, so the chart's monitors and its alert rules (which use those
 * labels) are tried against a real cluster.
 *
 * Covered: `selector.matchLabels`, `namespaceSelector` (`any`, `matchNames`), endpoints by `port`
 * name with `path` and `interval`. Anything else in a monitor is refused, not ignored.
 */
import { stringify } from "yaml";

export interface KubernetesConnection {
  /** https://<address>:<port> of kube-apiserver. */
  readonly apiServer: string;
  /** Paths, relative to prometheus.yml, of the API server's CA and a bearer token file. */
  readonly caFile: string;
  readonly tokenFile: string;
}

interface Monitor {
  readonly kind: string;
  readonly metadata: { readonly name: string; readonly namespace: string };
  readonly spec: {
    readonly selector?: { readonly matchLabels?: Record<string, string> };
    readonly namespaceSelector?: { readonly any?: boolean; readonly matchNames?: readonly string[] };
    readonly endpoints?: readonly Endpoint[];
    readonly podMetricsEndpoints?: readonly Endpoint[];
    readonly groups?: readonly unknown[];
  };
}

interface Endpoint {
  readonly port?: string;
  readonly path?: string;
  readonly interval?: string;
}

export class MonitorTranslationError extends Error {
  readonly code = "monitor_not_translatable";
}

const SUPPORTED_SPEC = new Set([
  "selector",
  "namespaceSelector",
  "endpoints",
  "podMetricsEndpoints",
  "groups",
]);
const SUPPORTED_ENDPOINT = new Set(["port", "path", "interval"]);

function checkSupported(monitor: Monitor): void {
  const extra = Object.keys(monitor.spec).filter((key) => !SUPPORTED_SPEC.has(key));
  const selector = Object.keys(monitor.spec.selector ?? {}).filter((key) => key !== "matchLabels");
  const endpoints = [...(monitor.spec.endpoints ?? []), ...(monitor.spec.podMetricsEndpoints ?? [])];
  const endpointExtra = endpoints.flatMap((endpoint) =>
    Object.keys(endpoint).filter((key) => !SUPPORTED_ENDPOINT.has(key)),
  );
  const unsupported = [
    ...extra,
    ...selector.map((key) => `selector.${key}`),
    ...endpointExtra.map((key) => `endpoint.${key}`),
  ];
  if (unsupported.length > 0) {
    throw new MonitorTranslationError(
      `${monitor.kind} ${monitor.metadata.namespace}/${monitor.metadata.name} uses ${unsupported.join(", ")}, which this translation does not cover`,
    );
  }
}

/** Prometheus's label-name form of a Kubernetes label: every character outside [a-zA-Z0-9_] as _. */
function labelName(kubernetesLabel: string): string {
  return kubernetesLabel.replaceAll(/[^a-zA-Z0-9_]/g, "_");
}

function sdConfig(role: "pod" | "endpoints", monitor: Monitor, connection: KubernetesConnection) {
  const selector = monitor.spec.namespaceSelector;
  const names = selector?.any === true ? undefined : (selector?.matchNames ?? [monitor.metadata.namespace]);
  return {
    role,
    api_server: connection.apiServer,
    authorization: { credentials_file: connection.tokenFile },
    tls_config: { ca_file: connection.caFile },
    ...(names === undefined ? {} : { namespaces: { names: [...names] } }),
  };
}

function selectorKeeps(object: "pod" | "service", monitor: Monitor) {
  return Object.entries(monitor.spec.selector?.matchLabels ?? {}).map(([key, value]) => ({
    action: "keep",
    source_labels: [
      `__meta_kubernetes_${object}_label_${labelName(key)}`,
      `__meta_kubernetes_${object}_labelpresent_${labelName(key)}`,
    ],
    regex: `(${value});true`,
  }));
}

function podMonitorJobs(monitor: Monitor, connection: KubernetesConnection) {
  return (monitor.spec.podMetricsEndpoints ?? []).map((endpoint, index) => ({
    job_name: `podMonitor/${monitor.metadata.namespace}/${monitor.metadata.name}/${index}`,
    honor_labels: false,
    ...(endpoint.interval === undefined ? {} : { scrape_interval: endpoint.interval }),
    metrics_path: endpoint.path ?? "/metrics",
    kubernetes_sd_configs: [sdConfig("pod", monitor, connection)],
    relabel_configs: [
      ...selectorKeeps("pod", monitor),
      { action: "drop", source_labels: ["__meta_kubernetes_pod_phase"], regex: "(Failed|Succeeded)" },
      {
        action: "keep",
        source_labels: ["__meta_kubernetes_pod_container_port_name"],
        regex: endpoint.port ?? ".+",
      },
      { source_labels: ["__meta_kubernetes_namespace"], target_label: "namespace" },
      { source_labels: ["__meta_kubernetes_pod_container_name"], target_label: "container" },
      { source_labels: ["__meta_kubernetes_pod_name"], target_label: "pod" },
      { target_label: "job", replacement: `${monitor.metadata.namespace}/${monitor.metadata.name}` },
      { target_label: "endpoint", replacement: endpoint.port ?? "" },
    ],
  }));
}

function serviceMonitorJobs(monitor: Monitor, connection: KubernetesConnection) {
  return (monitor.spec.endpoints ?? []).map((endpoint, index) => ({
    job_name: `serviceMonitor/${monitor.metadata.namespace}/${monitor.metadata.name}/${index}`,
    honor_labels: false,
    ...(endpoint.interval === undefined ? {} : { scrape_interval: endpoint.interval }),
    metrics_path: endpoint.path ?? "/metrics",
    kubernetes_sd_configs: [sdConfig("endpoints", monitor, connection)],
    relabel_configs: [
      ...selectorKeeps("service", monitor),
      {
        action: "keep",
        source_labels: ["__meta_kubernetes_endpoint_port_name"],
        regex: endpoint.port ?? ".+",
      },
      { source_labels: ["__meta_kubernetes_namespace"], target_label: "namespace" },
      { source_labels: ["__meta_kubernetes_service_name"], target_label: "service" },
      { source_labels: ["__meta_kubernetes_pod_name"], target_label: "pod" },
      { source_labels: ["__meta_kubernetes_pod_container_name"], target_label: "container" },
      // The job is the Service's name (the operator's default when no jobLabel is set).
      { source_labels: ["__meta_kubernetes_service_name"], target_label: "job" },
      { target_label: "endpoint", replacement: endpoint.port ?? "" },
    ],
  }));
}

export interface TranslatedMonitors {
  /** prometheus.yml */
  readonly config: string;
  /** The rules file prometheus.yml names (`rules.yaml`), when a PrometheusRule was given. */
  readonly rules?: string;
}

/** prometheus.yml (and its rules file) for the monitors among `objects` (rendered chart objects). */
export function translateMonitors(
  objects: readonly unknown[],
  connection: KubernetesConnection,
  global: { readonly scrapeInterval: string; readonly evaluationInterval: string },
): TranslatedMonitors {
  const monitors = objects.filter(
    (object): object is Monitor =>
      typeof object === "object" &&
      object !== null &&
      ["ServiceMonitor", "PodMonitor", "PrometheusRule"].includes(
        String((object as { kind?: unknown }).kind),
      ),
  );
  const jobs: unknown[] = [];
  const groups: unknown[] = [];
  for (const monitor of monitors) {
    checkSupported(monitor);
    if (monitor.kind === "PodMonitor") jobs.push(...podMonitorJobs(monitor, connection));
    if (monitor.kind === "ServiceMonitor") jobs.push(...serviceMonitorJobs(monitor, connection));
    if (monitor.kind === "PrometheusRule") groups.push(...(monitor.spec.groups ?? []));
  }
  const config = stringify({
    global: {
      scrape_interval: global.scrapeInterval,
      scrape_timeout: global.scrapeInterval,
      evaluation_interval: global.evaluationInterval,
    },
    ...(groups.length === 0 ? {} : { rule_files: ["rules.yaml"] }),
    scrape_configs: jobs,
  });
  return groups.length === 0 ? { config } : { config, rules: stringify({ groups }) };
}
