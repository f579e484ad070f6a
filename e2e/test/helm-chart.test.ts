/**
 * The Helm chart charts/custody, checked with the real helm (from the layer zip of a devDependency,
 * e2e/support/helm.ts) and promtool:
 * - `helm lint --strict` with the default values and with every option switched on;
 * - every rendered object validated against the Kubernetes schemas (kubernetes-models), the
 *   Prometheus Operator kinds by their required fields;
 * - RBAC grants exactly an allow-list, and that allow-list covers every Kubernetes API call found
 *   in the operator's code;
 * - values.schema.json refuses wrong values with a message naming the value;
 * - the chart's CRDs are byte-for-byte the top-level crds/, its webhook configurations the
 *   content of operator/manifests/webhooks.yaml;
 * - the rules file passes `promtool check rules` and its unit tests, and the PrometheusRule
 *   carries exactly its groups;
 * - the operator's args are flags `custody operator` accepts, and the real CLI parses them.
 */
import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, posix } from "node:path";
import { fileURLToPath } from "node:url";
import * as k8s from "@kubernetes/client-node";
import { MutatingWebhookConfiguration } from "kubernetes-models/admissionregistration.k8s.io/v1/MutatingWebhookConfiguration";
import { ValidatingWebhookConfiguration } from "kubernetes-models/admissionregistration.k8s.io/v1/ValidatingWebhookConfiguration";
import { CustomResourceDefinition } from "kubernetes-models/apiextensions.k8s.io/v1/CustomResourceDefinition";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { ClusterRole } from "kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole";
import { ClusterRoleBinding } from "kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding";
import { Role } from "kubernetes-models/rbac.authorization.k8s.io/v1/Role";
import { RoleBinding } from "kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding";
import { Service } from "kubernetes-models/v1/Service";
import { ServiceAccount } from "kubernetes-models/v1/ServiceAccount";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { parseListenAddress } from "../../cli/src/serve.js";
import { isDnsLabel } from "../../crds/src/names.js";
import { checkInjectionSettings, DEFAULT_INJECTION_SETTINGS } from "../../operator/src/webhook/inject.js";
import { type Helm, type KubeObject, openHelm, parseManifests } from "../support/helm.js";
import { requireTool } from "../support/tools.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const CHART = join(ROOT, "charts", "custody");
const RULES_FILE = join(CHART, "rules", "custody.rules.yaml");

const haveUnzip = requireTool("unzip");
const havePromtool = requireTool("promtool");

/** Every option switched on, in a namespace other than custody-system. */
const FULL_NAMESPACE = "security";
const FULL_VALUES = `
replicaCount: 3
operator:
  image:
    repository: registry.example.com/custody/operator
    tag: "1.2.3"
    pullPolicy: Always
  ca:
    existingSecret: cluster-ca
    certificateKey: tls.crt
    privateKeyKey: tls.key
  trustBundle:
    existingConfigMap: partner-cas
    key: bundle.pem
  trustedIssuers:
    existingConfigMap: user-idps
    key: issuers.yaml
  logLevel: debug
  propagationDelay: 90s
  resync: 5m
  concurrency: 16
  watchNamespaces: [shop, payments]
  locationTemplate: "{name}.{namespace}.svc.cluster.local:15006"
  leaderElection:
    leaseDuration: 30s
    renewDeadline: 20s
    retryPeriod: 4s
  resources:
    requests: {cpu: 200m, memory: 256Mi}
    limits: {cpu: "1", memory: 1Gi}
sidecar:
  image:
    repository: registry.example.com/custody/sidecar
    tag: "1.2.3"
  tokenUrl: https://tokens.example.com/oauth2/token
  capture:
    enabled: true
    image: {repository: registry.example.com/custody/init, tag: "1.2.3"}
tokenService:
  issuer: https://tokens.example.com
  keyRotationPeriod: 12h
  maxTokenTTL: 1h
imagePullSecrets: [{name: regcred}]
serviceAccount:
  annotations: {example.com/role: custody}
podDisruptionBudget: {enabled: true, maxUnavailable: 1}
topologySpread:
  enabled: true
  maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: DoNotSchedule
podLabels: {team: platform}
podAnnotations: {example.com/owner: platform}
priorityClassName: system-cluster-critical
nodeSelector: {kubernetes.io/os: linux}
tolerations:
  - {key: dedicated, operator: Equal, value: platform, effect: NoSchedule}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: kubernetes.io/arch, operator: In, values: [amd64, arm64]}
monitoring:
  serviceMonitor: {enabled: true, interval: 15s, labels: {release: prometheus}}
  podMonitor: {enabled: true, interval: 15s, labels: {release: prometheus}}
  prometheusRule: {enabled: true, labels: {release: prometheus}}
`;

interface Render {
  readonly name: string;
  readonly namespace: string;
  readonly objects: KubeObject[];
}

// --- RBAC: what the operator may do, derived from its code ------------------------------------

type Scope = "cluster" | "namespace";

interface Permission {
  readonly apiGroup: string;
  readonly resource: string;
  readonly verbs: readonly string[];
  /** Set when the grant must name these objects and nothing else. */
  readonly resourceNames?: readonly string[];
}

interface Allowed extends Permission {
  /** cluster: a ClusterRole; namespace: a Role in the release namespace. */
  readonly scope: Scope;
}

/**
 * The whole allow-list. Read from operator/src/store/kubernetes.ts (informers: list + watch;
 * read/create/apply (patch)/delete of its Secrets and ConfigMaps; JSON patch of /status),
 * kubernetes-events.ts
 * (Events are created, never patched), leader.ts (Lease read/create/replace) and
 * webhook/ca-bundle.ts (read + JSON patch of two named configurations) and webhook/token-review.ts
 * (TokenReview, read of one pod).
 */
const ALLOWED: readonly Allowed[] = [
  { scope: "cluster", apiGroup: "custody.dev", resource: "serviceidentities", verbs: ["list", "watch"] },
  { scope: "cluster", apiGroup: "custody.dev", resource: "accesspolicies", verbs: ["list", "watch"] },
  { scope: "cluster", apiGroup: "custody.dev", resource: "serviceidentities/status", verbs: ["patch"] },
  { scope: "cluster", apiGroup: "custody.dev", resource: "accesspolicies/status", verbs: ["patch"] },
  // Only in the operator's own namespace: no workload namespace's Secrets are readable to it.
  {
    scope: "namespace",
    apiGroup: "",
    resource: "secrets",
    verbs: ["get", "list", "watch", "create", "patch", "delete"],
  },
  // Identity delivery: the pod a token is bound to, and the TokenReview that says so.
  { scope: "cluster", apiGroup: "", resource: "pods", verbs: ["get"] },
  { scope: "cluster", apiGroup: "authentication.k8s.io", resource: "tokenreviews", verbs: ["create"] },
  {
    scope: "cluster",
    apiGroup: "",
    resource: "configmaps",
    verbs: ["get", "list", "watch", "create", "patch", "delete"],
  },
  { scope: "cluster", apiGroup: "", resource: "events", verbs: ["create"] },
  {
    scope: "cluster",
    apiGroup: "admissionregistration.k8s.io",
    resource: "mutatingwebhookconfigurations",
    verbs: ["get", "patch"],
    resourceNames: ["custody-sidecar-injector"],
  },
  {
    scope: "cluster",
    apiGroup: "admissionregistration.k8s.io",
    resource: "validatingwebhookconfigurations",
    verbs: ["get", "patch"],
    resourceNames: ["custody-accesspolicy-validator"],
  },
  // create cannot be limited by resourceNames; get and update are, to the operator's Lease.
  { scope: "namespace", apiGroup: "coordination.k8s.io", resource: "leases", verbs: ["create"] },
  {
    scope: "namespace",
    apiGroup: "coordination.k8s.io",
    resource: "leases",
    verbs: ["get", "update"],
    resourceNames: ["custody-operator"],
  },
];

/** The ClusterRoles the built-in view/edit/admin roles aggregate; bound to nobody by the chart. */
const AGGREGATED: readonly string[] = ["custody-view", "custody-edit"];

/** client-node methods the operator calls → the permission each needs. list* feed informers: list + watch. */
const API_METHODS: Readonly<Record<string, Permission>> = {
  listClusterCustomObject: { apiGroup: "custody.dev", resource: "*custom*", verbs: ["list", "watch"] },
  listNamespacedCustomObject: { apiGroup: "custody.dev", resource: "*custom*", verbs: ["list", "watch"] },
  patchNamespacedCustomObjectStatus: {
    apiGroup: "custody.dev",
    resource: "*custom*/status",
    verbs: ["patch"],
  },
  readNamespacedSecret: { apiGroup: "", resource: "secrets", verbs: ["get"] },
  createNamespacedSecret: { apiGroup: "", resource: "secrets", verbs: ["create"] },
  patchNamespacedSecret: { apiGroup: "", resource: "secrets", verbs: ["patch"] },
  deleteNamespacedSecret: { apiGroup: "", resource: "secrets", verbs: ["delete"] },
  listSecretForAllNamespaces: { apiGroup: "", resource: "secrets", verbs: ["list", "watch"] },
  listNamespacedSecret: { apiGroup: "", resource: "secrets", verbs: ["list", "watch"] },
  readNamespacedConfigMap: { apiGroup: "", resource: "configmaps", verbs: ["get"] },
  createNamespacedConfigMap: { apiGroup: "", resource: "configmaps", verbs: ["create"] },
  patchNamespacedConfigMap: { apiGroup: "", resource: "configmaps", verbs: ["patch"] },
  deleteNamespacedConfigMap: { apiGroup: "", resource: "configmaps", verbs: ["delete"] },
  listConfigMapForAllNamespaces: { apiGroup: "", resource: "configmaps", verbs: ["list", "watch"] },
  listNamespacedConfigMap: { apiGroup: "", resource: "configmaps", verbs: ["list", "watch"] },
  createNamespacedEvent: { apiGroup: "", resource: "events", verbs: ["create"] },
  readNamespacedPod: { apiGroup: "", resource: "pods", verbs: ["get"] },
  createTokenReview: { apiGroup: "authentication.k8s.io", resource: "tokenreviews", verbs: ["create"] },
  readNamespacedLease: { apiGroup: "coordination.k8s.io", resource: "leases", verbs: ["get"] },
  createNamespacedLease: { apiGroup: "coordination.k8s.io", resource: "leases", verbs: ["create"] },
  replaceNamespacedLease: { apiGroup: "coordination.k8s.io", resource: "leases", verbs: ["update"] },
  readMutatingWebhookConfiguration: {
    apiGroup: "admissionregistration.k8s.io",
    resource: "mutatingwebhookconfigurations",
    verbs: ["get"],
  },
  patchMutatingWebhookConfiguration: {
    apiGroup: "admissionregistration.k8s.io",
    resource: "mutatingwebhookconfigurations",
    verbs: ["patch"],
  },
  readValidatingWebhookConfiguration: {
    apiGroup: "admissionregistration.k8s.io",
    resource: "validatingwebhookconfigurations",
    verbs: ["get"],
  },
  patchValidatingWebhookConfiguration: {
    apiGroup: "admissionregistration.k8s.io",
    resource: "validatingwebhookconfigurations",
    verbs: ["patch"],
  },
};

/** The plurals the custom-object calls are made with (operator/src/store/kubernetes-convert.ts). */
const CUSTOM_PLURALS = ["serviceidentities", "accesspolicies"];

interface Grant {
  readonly scope: Scope;
  readonly namespace: string | undefined;
  readonly role: string;
  readonly apiGroup: string;
  readonly resource: string;
  readonly verb: string;
  readonly resourceNames: readonly string[];
}

function grantsOf(objects: readonly KubeObject[]): Grant[] {
  const grants: Grant[] = [];
  for (const object of objects) {
    if (object.kind !== "Role" && object.kind !== "ClusterRole") continue;
    const rules = (object.rules ?? []) as {
      apiGroups?: string[];
      resources?: string[];
      verbs: string[];
      resourceNames?: string[];
      nonResourceURLs?: string[];
    }[];
    for (const rule of rules) {
      expect(rule.nonResourceURLs, `${object.kind} ${object.metadata.name}: nonResourceURLs`).toBeUndefined();
      for (const apiGroup of rule.apiGroups ?? []) {
        for (const resource of rule.resources ?? []) {
          for (const verb of rule.verbs) {
            grants.push({
              scope: object.kind === "Role" ? "namespace" : "cluster",
              namespace: object.metadata.namespace,
              role: `${object.kind}/${object.metadata.name}`,
              apiGroup,
              resource,
              verb,
              resourceNames: rule.resourceNames ?? [],
            });
          }
        }
      }
    }
  }
  return grants;
}

function describeGrant(grant: Grant): string {
  const names = grant.resourceNames.length === 0 ? "" : ` [${grant.resourceNames.join(",")}]`;
  return `${grant.role}: ${grant.verb} ${grant.apiGroup === "" ? "core" : grant.apiGroup}/${grant.resource}${names}`;
}

/** Names of every client-node API call (CoreV1Api.readNamespacedSecret, …). */
function clientNodeMethods(): Set<string> {
  const methods = new Set<string>();
  for (const [name, value] of Object.entries(k8s)) {
    if (!name.endsWith("Api") || typeof value !== "function") continue;
    const prototype = (value as { prototype?: object }).prototype;
    if (prototype === undefined) continue;
    for (const method of Object.getOwnPropertyNames(prototype)) {
      if (/^(read|create|replace|patch|delete|list|watch|connect)[A-Z]/.test(method)) methods.add(method);
    }
  }
  return methods;
}

async function sourceFiles(directory: string): Promise<string[]> {
  const entries = await readdir(directory, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile() && entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts"))
    .map((entry) => join(entry.parentPath, entry.name));
}

// --- objects against their schemas --------------------------------------------------------------

interface Validatable {
  validate(): void;
}
type ModelClass = new (data: never) => Validatable;

const MODELS: Readonly<Record<string, ModelClass>> = {
  "v1/ServiceAccount": ServiceAccount,
  "v1/Service": Service,
  "apps/v1/Deployment": Deployment,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
  "rbac.authorization.k8s.io/v1/ClusterRole": ClusterRole,
  "rbac.authorization.k8s.io/v1/ClusterRoleBinding": ClusterRoleBinding,
  "rbac.authorization.k8s.io/v1/Role": Role,
  "rbac.authorization.k8s.io/v1/RoleBinding": RoleBinding,
  "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration": MutatingWebhookConfiguration,
  "admissionregistration.k8s.io/v1/ValidatingWebhookConfiguration": ValidatingWebhookConfiguration,
  "apiextensions.k8s.io/v1/CustomResourceDefinition": CustomResourceDefinition,
};

/** kubernetes-models has no Prometheus Operator kinds: their required fields, checked here. */
function monitoringProblems(object: KubeObject): string[] {
  const problems: string[] = [];
  const spec = object.spec as Record<string, unknown> | undefined;
  if (spec === undefined || typeof spec !== "object") return ["spec is missing"];
  const isDuration = (value: unknown) =>
    typeof value === "string" && /^(([0-9]+)(y|w|d|h|m|s|ms))+$/.test(value);
  const checkEndpoints = (key: string): void => {
    const endpoints = spec[key];
    if (!Array.isArray(endpoints) || endpoints.length === 0) {
      problems.push(`spec.${key} is empty`);
      return;
    }
    for (const [index, endpoint] of (endpoints as Record<string, unknown>[]).entries()) {
      if (typeof endpoint.port !== "string" || endpoint.port === "")
        problems.push(`spec.${key}[${index}].port must name a port`);
      if (endpoint.interval !== undefined && !isDuration(endpoint.interval))
        problems.push(`spec.${key}[${index}].interval is not a Prometheus duration`);
      if (
        endpoint.path !== undefined &&
        (typeof endpoint.path !== "string" || !endpoint.path.startsWith("/"))
      )
        problems.push(`spec.${key}[${index}].path must start with /`);
    }
  };
  const checkSelector = () => {
    if (typeof spec.selector !== "object" || spec.selector === null)
      problems.push("spec.selector is required");
  };
  switch (object.kind) {
    case "ServiceMonitor":
      checkSelector();
      checkEndpoints("endpoints");
      break;
    case "PodMonitor":
      checkSelector();
      checkEndpoints("podMetricsEndpoints");
      break;
    case "PrometheusRule": {
      const groups = spec.groups;
      if (!Array.isArray(groups) || groups.length === 0) problems.push("spec.groups is empty");
      for (const group of (groups ?? []) as { name?: unknown; rules?: unknown }[]) {
        if (typeof group.name !== "string") problems.push("a group has no name");
        if (!Array.isArray(group.rules) || group.rules.length === 0)
          problems.push(`group ${group.name}: no rules`);
        for (const rule of (group.rules ?? []) as Record<string, unknown>[]) {
          if (typeof rule.expr !== "string") problems.push(`group ${group.name}: a rule has no expr`);
          if ((typeof rule.alert === "string") === (typeof rule.record === "string"))
            problems.push(`group ${group.name}: a rule must have exactly one of alert and record`);
        }
      }
      break;
    }
    default:
      problems.push(`unexpected kind ${object.kind}`);
  }
  return problems;
}

/** IANA_SVC_NAME: what Kubernetes requires of a named port. */
const PORT_NAME = /^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$/;

// --- helpers ------------------------------------------------------------------------------------

function find(objects: readonly KubeObject[], kind: string, name: string): KubeObject {
  const found = objects.find((object) => object.kind === kind && object.metadata.name === name);
  if (found === undefined) throw new Error(`no ${kind} ${name} was rendered`);
  return found;
}

interface Container {
  name: string;
  args: string[];
  env: { name: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
  ports: { name: string; containerPort: number }[];
  volumeMounts: { name: string; mountPath: string; readOnly?: boolean }[];
  securityContext: Record<string, unknown>;
  [field: string]: unknown;
}

interface PodSpec {
  containers: Container[];
  volumes: {
    name: string;
    secret?: { secretName: string; items?: { key: string; path: string }[] };
    configMap?: { name: string; items?: { key: string; path: string }[] };
    emptyDir?: object;
  }[];
  [field: string]: unknown;
}

function podOf(objects: readonly KubeObject[]): {
  labels: Record<string, string>;
  spec: PodSpec;
  container: Container;
} {
  const deployment = find(objects, "Deployment", "custody-operator") as KubeObject & {
    spec: { template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
  };
  const spec = deployment.spec.template.spec;
  expect(spec.containers).toHaveLength(1);
  return {
    labels: deployment.spec.template.metadata.labels,
    spec,
    container: spec.containers[0] as Container,
  };
}

function flagValue(args: readonly string[], flag: string): string | undefined {
  const index = args.indexOf(flag);
  return index < 0 ? undefined : args[index + 1];
}

function matches(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([key, value]) => labels[key] === value);
}

function runNode(args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ["--import", "tsx", join(ROOT, "cli", "src", "entry.ts"), ...args],
      { cwd: ROOT, env: { ...process.env, POD_NAMESPACE: "" }, timeout: 60_000 },
      (error, stdout, stderr) => {
        if (error !== null && typeof error.code !== "number") {
          reject(error);
          return;
        }
        resolve({ code: typeof error?.code === "number" ? error.code : 0, stdout, stderr });
      },
    );
  });
}

function runTool(command: string, args: readonly string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    execFile(command, [...args], { cwd: ROOT }, (error, stdout, stderr) => {
      if (error !== null && typeof error.code !== "number") {
        reject(error);
        return;
      }
      resolve({ code: typeof error?.code === "number" ? error.code : 0, output: `${stdout}${stderr}` });
    });
  });
}

// --- the suite ----------------------------------------------------------------------------------

describe.skipIf(!haveUnzip)("Helm chart charts/custody", () => {
  let helm: Helm;
  let scratch: string;
  let fullValuesFile: string;
  const renders: Render[] = [];

  const template = async (namespace: string, extra: readonly string[]) => {
    const result = await helm.run([
      "template",
      "custody",
      CHART,
      "--namespace",
      namespace,
      "--include-crds",
      ...extra,
    ]);
    return result;
  };

  beforeAll(async () => {
    helm = await openHelm();
    scratch = await mkdtemp(join(tmpdir(), "custody-helm-test-"));
    fullValuesFile = join(scratch, "full-values.yaml");
    await writeFile(fullValuesFile, FULL_VALUES);
    for (const [name, namespace, extra] of [
      ["default values", "custody-system", []],
      ["every option on", FULL_NAMESPACE, ["--values", fullValuesFile]],
    ] as const) {
      const result = await template(namespace, extra);
      if (result.code !== 0) throw new Error(`helm template (${name}) failed: ${result.stderr}`);
      renders.push({ name, namespace, objects: parseManifests(result.stdout) });
    }
  });

  afterAll(async () => {
    await helm?.close();
    if (scratch !== undefined) await rm(scratch, { recursive: true, force: true });
  });

  it("passes helm lint --strict with the default values and with every option on", async () => {
    for (const extra of [[], ["--values", fullValuesFile]]) {
      const result = await helm.run(["lint", "--strict", CHART, "--namespace", "custody-system", ...extra]);
      expect(result.code, `${result.stdout}${result.stderr}`).toBe(0);
      expect(result.stdout).toContain("1 chart(s) linted, 0 chart(s) failed");
      expect(result.stdout).not.toMatch(/\[(WARNING|ERROR)\]/);
    }
  });

  it("renders what each configuration asks for, and nothing else", () => {
    const kinds = (render: Render) =>
      render.objects
        .map((object) => `${object.kind}/${object.metadata.namespace ?? ""}/${object.metadata.name}`)
        .sort();
    const common = (namespace: string) => [
      "ClusterRole//custody-edit",
      "ClusterRole//custody-operator",
      "ClusterRole//custody-operator-webhooks",
      "ClusterRole//custody-view",
      "ClusterRoleBinding//custody-operator-webhooks",
      "CustomResourceDefinition//accesspolicies.custody.dev",
      "CustomResourceDefinition//serviceidentities.custody.dev",
      `Deployment/${namespace}/custody-operator`,
      "MutatingWebhookConfiguration//custody-sidecar-injector",
      `PodDisruptionBudget/${namespace}/custody-operator`,
      `Role/${namespace}/custody-operator-leader-election`,
      `Role/${namespace}/custody-operator-secrets`,
      `RoleBinding/${namespace}/custody-operator-leader-election`,
      `RoleBinding/${namespace}/custody-operator-secrets`,
      `Service/${namespace}/custody-issuer`,
      `Service/${namespace}/custody-operator-metrics`,
      `Service/${namespace}/custody-webhook`,
      `ServiceAccount/${namespace}/custody-operator`,
      "ValidatingWebhookConfiguration//custody-accesspolicy-validator",
    ];
    const [defaults, full] = renders as [Render, Render];
    expect(kinds(defaults)).toEqual(
      [...common("custody-system"), "ClusterRoleBinding//custody-operator"].sort(),
    );
    expect(kinds(full)).toEqual(
      [
        ...common(FULL_NAMESPACE),
        // watchNamespaces: the operator's ClusterRole bound where it works, not cluster-wide.
        "RoleBinding/payments/custody-operator",
        "RoleBinding/shop/custody-operator",
        `RoleBinding/${FULL_NAMESPACE}/custody-operator`,
        `ServiceMonitor/${FULL_NAMESPACE}/custody-operator`,
        `PodMonitor/${FULL_NAMESPACE}/custody-sidecars`,
        `PrometheusRule/${FULL_NAMESPACE}/custody`,
      ].sort(),
    );
  });

  it("renders only objects that are valid against the Kubernetes schemas", () => {
    for (const render of renders) {
      for (const object of render.objects) {
        const what = `${render.name}: ${object.kind} ${object.metadata.name}`;
        if (object.apiVersion === "monitoring.coreos.com/v1") {
          expect(monitoringProblems(object), what).toEqual([]);
          continue;
        }
        const Model = MODELS[`${object.apiVersion}/${object.kind}`];
        expect(Model, `${what}: no schema for ${object.apiVersion}`).toBeDefined();
        if (Model === undefined) continue;
        expect(() => new Model(structuredClone(object) as never).validate(), what).not.toThrow();
        // What the schemas do not check: names of ports, label syntax.
        expect(object.metadata.name, what).toMatch(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/);
        const labels = (object.metadata.labels ?? {}) as Record<string, string>;
        for (const value of Object.values(labels))
          expect(value, what).toMatch(/^(|[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$/);
      }
      const { container } = podOf(render.objects);
      for (const port of container.ports) expect(port.name, render.name).toMatch(PORT_NAME);
      for (const service of render.objects.filter((object) => object.kind === "Service")) {
        for (const port of (service.spec as { ports: { name: string }[] }).ports)
          expect(port.name).toMatch(PORT_NAME);
      }
    }
  });

  it("grants the operator exactly the allow-list, with no wildcard, to its ServiceAccount only", () => {
    for (const render of renders) {
      // custody-view and custody-edit are for people, through aggregation: checked below.
      const grants = grantsOf(render.objects.filter((object) => !AGGREGATED.includes(object.metadata.name)));
      for (const grant of grants) {
        expect(grant.verb, describeGrant(grant)).not.toBe("*");
        expect(grant.resource, describeGrant(grant)).not.toContain("*");
        expect(grant.apiGroup, describeGrant(grant)).not.toBe("*");
        if (grant.scope === "namespace") expect(grant.namespace, describeGrant(grant)).toBe(render.namespace);
        const allowed = ALLOWED.find(
          (entry) =>
            entry.scope === grant.scope &&
            entry.apiGroup === grant.apiGroup &&
            entry.resource === grant.resource &&
            entry.verbs.includes(grant.verb) &&
            (entry.resourceNames === undefined
              ? grant.resourceNames.length === 0
              : grant.resourceNames.length > 0 &&
                grant.resourceNames.every((name) => entry.resourceNames?.includes(name))),
        );
        expect(allowed, `${render.name}: not in the allow-list: ${describeGrant(grant)}`).toBeDefined();
      }
      // …and everything on it is granted: the operator needs all of it.
      for (const entry of ALLOWED) {
        for (const verb of entry.verbs) {
          const granted = grants.some(
            (grant) =>
              grant.scope === entry.scope &&
              grant.apiGroup === entry.apiGroup &&
              grant.resource === entry.resource &&
              grant.verb === verb &&
              JSON.stringify([...grant.resourceNames].sort()) ===
                JSON.stringify([...(entry.resourceNames ?? [])].sort()),
          );
          expect(granted, `${render.name}: missing ${verb} ${entry.apiGroup}/${entry.resource}`).toBe(true);
        }
      }
      // Bindings: to the chart's roles, for custody-operator in the release namespace, nobody else.
      const roles = new Set(
        render.objects
          .filter(
            (o) => (o.kind === "Role" || o.kind === "ClusterRole") && !AGGREGATED.includes(o.metadata.name),
          )
          .map((o) => `${o.kind}/${o.metadata.name}`),
      );
      const bindings = render.objects.filter(
        (o) => o.kind === "RoleBinding" || o.kind === "ClusterRoleBinding",
      );
      expect(bindings.length).toBeGreaterThan(0);
      for (const binding of bindings) {
        const { roleRef, subjects } = binding as unknown as {
          roleRef: { kind: string; name: string };
          subjects: { kind: string; name: string; namespace: string }[];
        };
        expect(
          roles.has(`${roleRef.kind}/${roleRef.name}`),
          `${binding.metadata.name} → ${roleRef.name}`,
        ).toBe(true);
        expect(subjects).toEqual([
          { kind: "ServiceAccount", name: "custody-operator", namespace: render.namespace },
        ]);
        if (binding.kind === "ClusterRoleBinding" || roleRef.kind === "Role") continue;
        // A RoleBinding of the operator's ClusterRole: only in the release namespace and the watched ones.
        expect(["shop", "payments", render.namespace]).toContain(binding.metadata.namespace);
      }
    }
  });

  it("covers every Kubernetes API call in the operator's code with the allow-list", async () => {
    const methods = clientNodeMethods();
    expect(methods.size).toBeGreaterThan(500);
    const used = new Map<string, string>();
    for (const directory of ["operator/src", "cli/src", "crds/src", "pki/src"]) {
      for (const file of await sourceFiles(join(ROOT, directory))) {
        const text = await readFile(file, "utf8");
        for (const match of text.matchAll(/\.([a-zA-Z]+)\(/g)) {
          const method = match[1] as string;
          if (methods.has(method)) used.set(method, file.slice(ROOT.length + 1));
        }
      }
    }
    // Sanity: the scan sees the calls this list was written from.
    expect([...used.keys()]).toEqual(
      expect.arrayContaining(["readNamespacedLease", "patchMutatingWebhookConfiguration"]),
    );
    for (const [method, file] of used) {
      const permission = API_METHODS[method];
      expect(
        permission,
        `${file} calls ${method}: add it to API_METHODS and, if needed, to the chart's RBAC`,
      ).toBeDefined();
      if (permission === undefined) continue;
      const resources = permission.resource.startsWith("*custom*")
        ? CUSTOM_PLURALS.map((plural) => permission.resource.replace("*custom*", plural))
        : [permission.resource];
      for (const resource of resources) {
        for (const verb of permission.verbs) {
          const allowed = ALLOWED.some(
            (entry) =>
              entry.apiGroup === permission.apiGroup &&
              entry.resource === resource &&
              entry.verbs.includes(verb),
          );
          expect(allowed, `${method} needs ${verb} ${permission.apiGroup}/${resource}`).toBe(true);
        }
      }
    }
    // The owner references that need update on serviceidentities/finalizers.
    const convert = await readFile(join(ROOT, "operator/src/store/kubernetes-convert.ts"), "utf8");
    expect(convert).toContain("blockOwnerDeletion: true");
    // The resource names the allow-list restricts to are the ones the code uses.
    const cli = await readFile(join(ROOT, "operator/src/cli.ts"), "utf8");
    expect(cli).toContain('mutatingName: "custody-sidecar-injector"');
    expect(cli).toContain('validatingName: "custody-accesspolicy-validator"');
    const leader = await readFile(join(ROOT, "operator/src/store/leader.ts"), "utf8");
    expect(leader).toContain('DEFAULT_LEASE_NAME = "custody-operator"');
  });

  it("refuses wrong values with a message naming the value", async () => {
    const cases: readonly { set: string; says: RegExp }[] = [
      { set: "replicaCount=two", says: /'\/replicaCount': got string, want integer/ },
      { set: "replicas=2", says: /additional properties 'replicas' not allowed/ },
      {
        set: "operator.image.pullPolicy=Sometimes",
        says: /'\/operator\/image\/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'/,
      },
      {
        set: "operator.image.registry=example.com",
        says: /'\/operator\/image': additional properties 'registry' not allowed/,
      },
      {
        set: "operator.propagationDelay=2 minutes",
        says: /'\/operator\/propagationDelay': '2 minutes' does not match pattern/,
      },
      { set: "operator.logLevel=verbose", says: /'\/operator\/logLevel': value must be one of/ },
      { set: "operator.concurrency=0", says: /'\/operator\/concurrency': minimum: got 0, want 1/ },
      {
        set: "operator.watchNamespaces={Shop}",
        says: /'\/operator\/watchNamespaces\/0': 'Shop' does not match pattern/,
      },
      {
        set: "operator.leaderElection.leaseDuration=15",
        says: /'\/operator\/leaderElection\/leaseDuration': got number, want string/,
      },
      {
        set: "tokenService.issuer=http://plain.example",
        says: /'\/tokenService\/issuer': 'http:\/\/plain.example' does not match/,
      },
      {
        set: "monitoring.serviceMonitor.enabled=yes",
        says: /'\/monitoring\/serviceMonitor\/enabled': got string, want boolean/,
      },
      { set: "operator.ca.existingSecret=", says: /'\/operator\/ca\/existingSecret'/ },
      {
        set: "sidecar.capture.enabled=yes",
        says: /'\/sidecar\/capture\/enabled': got string, want boolean/,
      },
      {
        set: "sidecar.capture.image.repository=Registry.Example/Init",
        says: /'\/sidecar\/capture\/image\/repository': 'Registry.Example\/Init' does not match pattern/,
      },
    ];
    for (const { set, says } of cases) {
      const result = await template("custody-system", ["--set", set]);
      expect(result.code, `--set ${set} was accepted`).not.toBe(0);
      expect(result.stderr, `--set ${set}`).toContain("values don't meet the specifications of the schema");
      expect(result.stderr, `--set ${set}`).toMatch(says);
    }
  });

  it("ships CRDs byte-for-byte identical to the top-level crds/", async () => {
    const yamlFiles = async (directory: string) =>
      (await readdir(directory)).filter((name) => name.endsWith(".yaml")).sort();
    const top = await yamlFiles(join(ROOT, "crds"));
    expect(top.length).toBeGreaterThan(0);
    expect(await yamlFiles(join(CHART, "crds"))).toEqual(top);
    for (const name of top) {
      const original = await readFile(join(ROOT, "crds", name));
      const copy = await readFile(join(CHART, "crds", name));
      expect(
        copy.equals(original),
        `charts/custody/crds/${name} differs from crds/${name}: cp crds/*.yaml charts/custody/crds/`,
      ).toBe(true);
    }
  });

  it("renders the webhook configurations of operator/manifests/webhooks.yaml, in the release namespace", async () => {
    const manifests = parseManifests(await readFile(join(ROOT, "operator/manifests/webhooks.yaml"), "utf8"));
    for (const render of renders) {
      for (const expected of manifests) {
        const rendered = find(render.objects, expected.kind, expected.metadata.name);
        const text = JSON.stringify(expected.webhooks).replaceAll(
          '"custody-system"',
          JSON.stringify(render.namespace),
        );
        expect(rendered.webhooks, `${render.name}: ${expected.kind}`).toEqual(JSON.parse(text));
        expect(JSON.stringify(rendered)).not.toContain("caBundle");
        expect(rendered.metadata.labels).toMatchObject(expected.metadata.labels as object);
      }
    }
  });

  it.skipIf(!havePromtool)("has a rules file that promtool accepts, and passes its unit tests", async () => {
    const check = await runTool("promtool", ["check", "rules", RULES_FILE]);
    expect(check.code, check.output).toBe(0);
    expect(check.output).toMatch(/SUCCESS: \d+ rules found/);
    const unit = await runTool("promtool", [
      "test",
      "rules",
      join(CHART, "rules", "custody.rules.test.yaml"),
    ]);
    expect(unit.code, unit.output).toBe(0);
    expect(unit.output).toContain("SUCCESS");
  });

  it("puts exactly the rules file's groups into the PrometheusRule, alerts on real metric names", async () => {
    const file = parseYaml(await readFile(RULES_FILE, "utf8")) as {
      groups: { rules: Record<string, string>[] }[];
    };
    const rule = find((renders[1] as Render).objects, "PrometheusRule", "custody");
    expect((rule.spec as { groups: unknown }).groups).toEqual(file.groups);
    expect((rule.metadata.labels as Record<string, string>).release).toBe("prometheus");
    // Every custody_* series an expression reads is one the code registers.
    const registered = new Set<string>();
    for (const directory of ["operator/src", "sidecar/src"]) {
      for (const path of await sourceFiles(join(ROOT, directory))) {
        for (const match of (await readFile(path, "utf8")).matchAll(/name: "(custody_[a-z_]+)"/g))
          registered.add(match[1] as string);
      }
    }
    const rules = file.groups.flatMap((group) => group.rules);
    const recorded = new Set(rules.flatMap((entry) => (entry.record === undefined ? [] : [entry.record])));
    const alerts = new Set(rules.flatMap((entry) => (entry.alert === undefined ? [] : [entry.alert])));
    for (const entry of rules) {
      const what = entry.alert ?? entry.record;
      for (const [name] of (entry.expr ?? "").matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
        if (!name.includes("custody")) continue;
        if (name.includes(":")) {
          expect(recorded, `${what}: ${name} is not recorded in the file`).toContain(name);
        } else {
          const series = name.replace(/_(bucket|sum|count)$/, "");
          expect(registered, `${what}: ${name} is not a metric the code exports`).toContain(series);
        }
      }
    }
    expect([...alerts]).toEqual(
      expect.arrayContaining([
        "CustodyCertificateRenewalFailing",
        "CustodyIdentityTokenExpiringSoon",
        "CustodyIdentityTokenExpired",
        "CustodyTokenServiceRefusingClients",
        "CustodyDenyRateSpike",
        "CustodyRegistryPublishFailing",
        "CustodySidecarRegistryRefused",
        "CustodySidecarRegistryBehind",
      ]),
    );
  });

  it("gives the operator only flags `custody operator` accepts, with values the real CLI parses", async () => {
    const help = await runNode(["operator", "--help"]);
    expect(help.code, help.stderr).toBe(0);
    const flags = new Set(
      [...help.stdout.matchAll(/^\s+(?:-h, )?(--[a-z-]+)/gm)].map((match) => match[1] as string),
    );
    expect(flags).toContain("--leader-elect-lease-duration");
    const kubeconfig = join(scratch, "kubeconfig.yaml");
    // A cluster nobody answers: the CLI only needs to load it, and stops at the (missing) CA before connecting.
    await writeFile(
      kubeconfig,
      [
        "apiVersion: v1",
        "kind: Config",
        "clusters: [{name: none, cluster: {server: 'https://127.0.0.1:1'}}]",
        "users: [{name: none, user: {token: none}}]",
        "contexts: [{name: none, context: {cluster: none, user: none}}]",
        "current-context: none",
      ].join("\n"),
    );
    for (const render of renders) {
      const { container, spec } = podOf(render.objects);
      const [command, ...args] = container.args;
      expect(command).toBe("operator");
      const seen = new Set<string>();
      for (let index = 0; index < args.length; index += 2) {
        const flag = args[index] as string;
        expect(flags, `${render.name}: ${flag} is not a flag of custody operator`).toContain(flag);
        expect(seen.has(flag), `${render.name}: ${flag} given twice`).toBe(false);
        seen.add(flag);
        expect(args[index + 1], `${render.name}: ${flag} has no value`).toBeDefined();
        expect(args[index + 1]?.startsWith("--"), `${render.name}: ${flag} has no value`).toBe(false);
      }
      // $(POD_NAMESPACE) is the pod's namespace, from the downward API.
      expect(flagValue(args, "--namespace")).toBe("$(POD_NAMESPACE)");
      expect(container.env).toContainEqual({
        name: "POD_NAMESPACE",
        valueFrom: { fieldRef: { fieldPath: "metadata.namespace" } },
      });
      // Every file the operator is pointed at is in a mounted volume, under the name the volume gives it.
      for (const value of args.filter((arg) => arg.startsWith("/"))) {
        const mount = container.volumeMounts.find(
          (m) => value === m.mountPath || value.startsWith(`${m.mountPath}/`),
        );
        expect(mount, `${render.name}: ${value} is not in a mounted volume`).toBeDefined();
        if (mount === undefined || value === mount.mountPath) continue;
        const volume = spec.volumes.find((v) => v.name === mount.name);
        const items = volume?.configMap?.items ?? volume?.secret?.items;
        expect(items?.map((item) => item.path)).toContain(posix.relative(mount.mountPath, value));
      }
      // The real parser: with the CA directory swapped for an empty one, `custody operator` must
      // get past every flag (usage errors exit 2) and fail on the missing ca.crt (exit 1).
      const caDirectory = join(scratch, `no-ca-${render.namespace}`);
      const realArgs = args.map((arg) =>
        arg === "$(POD_NAMESPACE)" ? render.namespace : arg === "/var/run/custody/ca" ? caDirectory : arg,
      );
      const run = await runNode(["operator", ...realArgs, "--kubeconfig", kubeconfig]);
      expect(run.stderr, render.name).toContain(`${caDirectory}/ca.crt does not exist`);
      expect(run.code, `${render.name}: ${run.stderr}`).toBe(1);
      // What the CLI only checks once connected: the webhook's flags and the injection settings.
      expect(parseListenAddress(flagValue(args, "--webhook-listen") ?? "")).toBeDefined();
      expect(isDnsLabel(flagValue(args, "--webhook-service") ?? "")).toBe(true);
      expect(() =>
        checkInjectionSettings({
          ...DEFAULT_INJECTION_SETTINGS,
          image: flagValue(args, "--sidecar-image") ?? "",
          initImage: flagValue(args, "--sidecar-init-image") ?? "",
          capture: flagValue(args, "--sidecar-capture") === "true",
          tokenUrl:
            flagValue(args, "--sidecar-token-url") ??
            `https://custody-issuer.${render.namespace}.svc:8443/oauth2/token`,
        }),
      ).not.toThrow();
    }
  });

  it("runs the operator as the brief says: ports, probes, CA, identity, security", () => {
    for (const render of renders) {
      const { container, spec, labels } = podOf(render.objects);
      const args = container.args;
      expect(flagValue(args, "--ca")).toBe("/var/run/custody/ca");
      expect(flagValue(args, "--admin")).toBe("0.0.0.0:15022");
      expect(flagValue(args, "--token-listen")).toBe("0.0.0.0:8443");
      expect(flagValue(args, "--webhook-listen")).toBe("0.0.0.0:9443");
      expect(flagValue(args, "--webhook-service")).toBe("custody-webhook");
      // Traffic capture needs privileged namespaces: off unless asked for.
      if (render === renders[0]) {
        expect(flagValue(args, "--sidecar-capture")).toBe("false");
        expect(flagValue(args, "--sidecar-init-image")).toBe("ghcr.io/custody-dev/custody-init:0.1.0");
      }
      expect(container.ports).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ name: "token", containerPort: 8443 }),
          expect.objectContaining({ name: "webhook", containerPort: 9443 }),
          expect.objectContaining({ name: "admin", containerPort: 15022 }),
        ]),
      );
      expect(container.livenessProbe).toMatchObject({ httpGet: { path: "/healthz", port: "admin" } });
      expect(container.readinessProbe).toMatchObject({ httpGet: { path: "/readyz", port: "admin" } });
      expect(container.securityContext).toEqual({
        runAsNonRoot: true,
        runAsUser: 65532,
        runAsGroup: 65532,
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        capabilities: { drop: ["ALL"] },
        seccompProfile: { type: "RuntimeDefault" },
      });
      expect(spec.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 65532, fsGroup: 65532 });
      expect(spec.serviceAccountName).toBe("custody-operator");
      const ca = spec.volumes.find((volume) => volume.name === "ca");
      expect(ca?.secret?.items?.map((item) => item.path).sort()).toEqual(["ca.crt", "ca.key"]);
      expect(spec.volumes.some((volume) => volume.emptyDir !== undefined)).toBe(true);
      // Services reach the right container ports and select the operator pods.
      const ports = new Map(container.ports.map((port) => [port.name, port.containerPort]));
      for (const [name, port, target] of [
        ["custody-issuer", 8443, 8443],
        ["custody-webhook", 443, 9443],
      ] as const) {
        const service = find(render.objects, "Service", name).spec as {
          selector: Record<string, string>;
          ports: { port: number; targetPort: string }[];
        };
        expect(matches(service.selector, labels)).toBe(true);
        expect(service.ports).toHaveLength(1);
        expect(service.ports[0]?.port).toBe(port);
        expect(ports.get(service.ports[0]?.targetPort ?? "")).toBe(target);
      }
      // The issuer URL is the token Service's name, which the token service's certificate carries.
      const issuer = flagValue(args, "--issuer");
      if (render.namespace === "custody-system")
        expect(issuer).toBe("https://custody-issuer.custody-system.svc:8443");
      const pdb = find(render.objects, "PodDisruptionBudget", "custody-operator").spec as {
        selector: { matchLabels: Record<string, string> };
      };
      expect(matches(pdb.selector.matchLabels, labels)).toBe(true);
      const spread = spec.topologySpreadConstraints as {
        labelSelector: { matchLabels: Record<string, string> };
      }[];
      expect(matches(spread[0]?.labelSelector.matchLabels ?? { none: "x" }, labels)).toBe(true);
    }
  });

  it("wires the non-default values through", () => {
    const full = renders[1] as Render;
    const { container, spec } = podOf(full.objects);
    const deployment = find(full.objects, "Deployment", "custody-operator").spec as { replicas: number };
    expect(deployment.replicas).toBe(3);
    expect(container.image).toBe("registry.example.com/custody/operator:1.2.3");
    expect(container.imagePullPolicy).toBe("Always");
    const args = container.args;
    expect(flagValue(args, "--sidecar-image")).toBe("registry.example.com/custody/sidecar:1.2.3");
    expect(flagValue(args, "--sidecar-token-url")).toBe("https://tokens.example.com/oauth2/token");
    expect(flagValue(args, "--sidecar-capture")).toBe("true");
    expect(flagValue(args, "--sidecar-init-image")).toBe("registry.example.com/custody/init:1.2.3");
    expect(flagValue(args, "--issuer")).toBe("https://tokens.example.com");
    expect(flagValue(args, "--trust-bundle")).toBe("/var/run/custody/trust-bundle/ca-bundle.pem");
    expect(flagValue(args, "--trusted-issuers")).toBe(
      "/var/run/custody/trusted-issuers/trusted-issuers.yaml",
    );
    expect(flagValue(args, "--watch-namespaces")).toBe("shop,payments");
    expect(flagValue(args, "--leader-elect-lease-duration")).toBe("30s");
    expect(flagValue(args, "--log-level")).toBe("debug");
    const volume = (name: string) => spec.volumes.find((v) => v.name === name);
    expect(volume("ca")?.secret).toMatchObject({
      secretName: "cluster-ca",
      items: [
        { key: "tls.crt", path: "ca.crt" },
        { key: "tls.key", path: "ca.key" },
      ],
    });
    expect(volume("trust-bundle")?.configMap).toEqual({
      name: "partner-cas",
      items: [{ key: "bundle.pem", path: "ca-bundle.pem" }],
    });
    expect(volume("trusted-issuers")?.configMap?.name).toBe("user-idps");
    const monitor = find(full.objects, "ServiceMonitor", "custody-operator").spec as {
      selector: { matchLabels: Record<string, string> };
      endpoints: { port: string }[];
    };
    const metrics = find(full.objects, "Service", "custody-operator-metrics");
    expect(matches(monitor.selector.matchLabels, metrics.metadata.labels as Record<string, string>)).toBe(
      true,
    );
    const metricPorts = (metrics.spec as { ports: { name: string }[] }).ports.map((port) => port.name);
    expect(monitor.endpoints.map((endpoint) => endpoint.port).sort()).toEqual([...metricPorts].sort());
    const pods = find(full.objects, "PodMonitor", "custody-sidecars").spec as {
      podMetricsEndpoints: { port: string }[];
    };
    // The port the injection webhook gives every sidecar (operator/src/webhook/inject.ts).
    expect(pods.podMetricsEndpoints[0]?.port).toBe("custody-admin");
  });
});
