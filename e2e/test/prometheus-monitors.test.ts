/**
 * The chart's ServiceMonitor, PodMonitor and PrometheusRule as a plain Prometheus config
 * (support/prometheus-monitors.ts), which the one-node cluster suite runs against real Pods: here,
 * that the chart's selectors and port names become the keep rules, that the labels the alert
 * rules use (namespace, pod) come from discovery, and that a monitor field the translation does not
 * cover is refused rather than dropped.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { type Helm, openHelm } from "../support/helm.js";
import { MonitorTranslationError, translateMonitors } from "../support/prometheus-monitors.js";
import { requireTool } from "../support/tools.js";

const HAS_HELM = requireTool("unzip");
const CONNECTION = { apiServer: "https://10.244.0.1:6443", caFile: "ca.crt", tokenFile: "token" };
const GLOBAL = { scrapeInterval: "5s", evaluationInterval: "5s" };

interface Job {
  job_name: string;
  scrape_interval?: string;
  metrics_path: string;
  kubernetes_sd_configs: { role: string; api_server: string; namespaces?: { names: string[] } }[];
  relabel_configs: {
    action?: string;
    source_labels?: string[];
    regex?: string;
    target_label?: string;
    replacement?: string;
  }[];
}

describe.skipIf(!HAS_HELM)("the chart's monitors as Prometheus scrape jobs", () => {
  let helm: Helm;
  let objects: unknown[];

  beforeAll(async () => {
    helm = await openHelm();
    const rendered = await helm.run([
      "template",
      "custody",
      "charts/custody",
      "--namespace",
      "custody-system",
      "--set",
      "monitoring.serviceMonitor.enabled=true",
      "--set",
      "monitoring.podMonitor.enabled=true",
      "--set",
      "monitoring.prometheusRule.enabled=true",
      "--show-only",
      "templates/monitoring.yaml",
    ]);
    expect(rendered.code, rendered.stderr).toBe(0);
    objects = parseAllDocuments(rendered.stdout).map((document) => document.toJS() as unknown);
  });
  afterAll(async () => {
    await helm?.close();
  });

  it("the PodMonitor: every namespace, pods with a custody-admin port, labelled namespace, pod, container", () => {
    const { config } = translateMonitors(objects, CONNECTION, GLOBAL);
    const jobs = (parse(config) as { scrape_configs: Job[] }).scrape_configs;
    const sidecars = jobs.find((job) =>
      job.job_name.startsWith("podMonitor/custody-system/custody-sidecars/"),
    );
    expect(sidecars?.kubernetes_sd_configs).toEqual([
      expect.objectContaining({ role: "pod", api_server: CONNECTION.apiServer }),
    ]);
    expect(sidecars?.kubernetes_sd_configs[0]?.namespaces).toBeUndefined();
    expect(sidecars?.relabel_configs).toContainEqual({
      action: "keep",
      source_labels: ["__meta_kubernetes_pod_container_port_name"],
      regex: "custody-admin",
    });
    for (const label of ["namespace", "pod", "container"]) {
      expect(sidecars?.relabel_configs.some((rule) => rule.target_label === label)).toBe(true);
    }
    expect(sidecars?.relabel_configs).toContainEqual({
      target_label: "job",
      replacement: "custody-system/custody-sidecars",
    });
  });

  it("the ServiceMonitor: the operator's metrics Service by its labels, both ports, in the release's namespace", () => {
    const { config } = translateMonitors(objects, CONNECTION, GLOBAL);
    const jobs = (parse(config) as { scrape_configs: Job[] }).scrape_configs.filter((job) =>
      job.job_name.startsWith("serviceMonitor/"),
    );
    expect(
      jobs.map(
        (job) =>
          job.relabel_configs.find(
            (rule) => rule.source_labels?.[0] === "__meta_kubernetes_endpoint_port_name",
          )?.regex,
      ),
    ).toEqual(["admin", "token-metrics"]);
    for (const job of jobs) {
      expect(job.kubernetes_sd_configs[0]?.namespaces).toEqual({ names: ["custody-system"] });
      expect(job.relabel_configs).toContainEqual({
        action: "keep",
        source_labels: [
          "__meta_kubernetes_service_label_app_kubernetes_io_component",
          "__meta_kubernetes_service_labelpresent_app_kubernetes_io_component",
        ],
        regex: "(metrics);true",
      });
    }
  });

  it("the PrometheusRule's groups become the rules file prometheus.yml names", () => {
    const { config, rules } = translateMonitors(objects, CONNECTION, GLOBAL);
    expect((parse(config) as { rule_files: string[] }).rule_files).toEqual(["rules.yaml"]);
    const groups = (parse(rules ?? "") as { groups: { name: string }[] }).groups.map((group) => group.name);
    expect(groups).toEqual(["custody.rules", "custody.alerts"]);
  });

  it("refuses a monitor field it does not translate, naming it", () => {
    const podMonitor = {
      kind: "PodMonitor",
      metadata: { name: "m", namespace: "n" },
      spec: { selector: {}, podMetricsEndpoints: [{ port: "metrics", scheme: "https" }] },
    };
    expect(() => translateMonitors([podMonitor], CONNECTION, GLOBAL)).toThrow(MonitorTranslationError);
    expect(() => translateMonitors([podMonitor], CONNECTION, GLOBAL)).toThrow(/endpoint\.scheme/);
  });
});
