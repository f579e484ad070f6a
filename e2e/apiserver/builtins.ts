/**
 * The built-in resources Custody touches, with the defaulting and validation of their real
 * strategies that matter to clients (secret stringData, namespace labels, pod defaults, …).
 */
import { crdStrategy } from "./crd.js";
import { badRequest, type StatusCause } from "./errors.js";
import { isObject, type JsonObject, type JsonValue, objectAt, put, stringAt } from "./json.js";
import { isDnsSubdomain, metadataOf, nameOf } from "./meta.js";
import { AGE_COLUMN, type Column, NO_CAUSES, type ResourceType, type Strategy } from "./resources.js";
import { webhookConfigurationStrategy } from "./webhook-config.js";

export const MAX_DATA_BYTES = 1024 * 1024;
const CONFIG_KEY = /^[-._a-zA-Z0-9]+$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function column(name: string, description: string, cell: Column["cell"], type = "string"): Column {
  return { name, type, format: "", description, priority: 0, cell };
}

function strategy(overrides: Partial<Strategy>): Strategy {
  return {
    columns: [AGE_COLUMN],
    selectableFields: [],
    dnsLabelNames: false,
    strategicMerge: true,
    normalize: () => [],
    validate: () => [...NO_CAUSES],
    ...overrides,
  };
}

interface BuiltinNames {
  readonly group: string;
  readonly version: string;
  readonly plural: string;
  readonly kind: string;
  readonly namespaced: boolean;
  readonly shortNames?: readonly string[];
  readonly categories?: readonly string[];
  readonly statusSubresource?: boolean;
  readonly tracksGeneration?: boolean;
  readonly returnDeletedObject?: boolean;
}

function builtin(names: BuiltinNames, behaviour: Strategy): ResourceType {
  return {
    group: names.group,
    version: names.version,
    plural: names.plural,
    singular: names.kind.toLowerCase(),
    kind: names.kind,
    listKind: `${names.kind}List`,
    namespaced: names.namespaced,
    shortNames: names.shortNames ?? [],
    categories: names.categories ?? [],
    statusSubresource: names.statusSubresource ?? false,
    tracksGeneration: names.tracksGeneration ?? false,
    returnDeletedObject: names.returnDeletedObject ?? false,
    crdName: undefined,
    strategy: behaviour,
  };
}

function dataKeyCauses(
  data: JsonValue | undefined,
  field: string,
  values: "string" | "base64",
): StatusCause[] {
  const causes: StatusCause[] = [];
  if (data === undefined) return causes;
  if (!isObject(data))
    return [{ reason: "FieldValueTypeInvalid", field, message: "Invalid value: must be a map" }];
  for (const [key, value] of Object.entries(data)) {
    if (!CONFIG_KEY.test(key) || key.length > 253) {
      causes.push({
        reason: "FieldValueInvalid",
        field: `${field}[${key}]`,
        message: `Invalid value: ${JSON.stringify(key)}: a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')`,
      });
    }
    if (typeof value !== "string") {
      causes.push({
        reason: "FieldValueTypeInvalid",
        field: `${field}[${key}]`,
        message: "Invalid value: must be a string",
      });
    } else if (values === "base64" && !BASE64.test(value)) {
      throw badRequest(`illegal base64 data in ${field}[${key}]`);
    }
  }
  return causes;
}

function dataBytes(data: JsonValue | undefined, base64: boolean): number {
  if (!isObject(data)) return 0;
  let total = 0;
  for (const [key, value] of Object.entries(data)) {
    if (typeof value !== "string") continue;
    total += key.length + (base64 ? Buffer.from(value, "base64").length : Buffer.byteLength(value));
  }
  return total;
}

function immutableCauses(
  object: JsonObject,
  old: JsonObject | undefined,
  fields: readonly string[],
): StatusCause[] {
  if (old === undefined || old.immutable !== true) return [];
  const causes: StatusCause[] = [];
  for (const field of fields) {
    if (JSON.stringify(object[field] ?? null) !== JSON.stringify(old[field] ?? null)) {
      causes.push({
        reason: "FieldValueForbidden",
        field,
        message: "Forbidden: field is immutable when `immutable` is set",
      });
    }
  }
  if (object.immutable !== true) {
    causes.push({
      reason: "FieldValueForbidden",
      field: "immutable",
      message: "Forbidden: field is immutable when `immutable` is set",
    });
  }
  return causes;
}

const namespaces = builtin(
  {
    group: "",
    version: "v1",
    plural: "namespaces",
    kind: "Namespace",
    namespaced: false,
    shortNames: ["ns"],
    statusSubresource: true,
    returnDeletedObject: true,
  },
  strategy({
    dnsLabelNames: true,
    selectableFields: ["status.phase"],
    columns: [
      column(
        "Status",
        "The phase of the namespace",
        (ns) => stringAt(objectAt(ns, "status"), "phase") ?? null,
      ),
      AGE_COLUMN,
    ],
    normalize: (namespace) => {
      const metadata = metadataOf(namespace);
      put(objectAt(metadata, "labels"), "kubernetes.io/metadata.name", nameOf(namespace));
      const spec = objectAt(namespace, "spec");
      if (!Array.isArray(spec.finalizers)) spec.finalizers = ["kubernetes"];
      const status = objectAt(namespace, "status");
      status.phase = metadata.deletionTimestamp === undefined ? "Active" : "Terminating";
      return [];
    },
  }),
);

const secrets = builtin(
  { group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true },
  strategy({
    selectableFields: ["type"],
    columns: [
      column("Type", "The type of the secret", (secret) => stringAt(secret, "type") ?? null),
      column(
        "Data",
        "The number of entries in data",
        (secret) => (isObject(secret.data) ? Object.keys(secret.data).length : 0),
        "integer",
      ),
      AGE_COLUMN,
    ],
    normalize: (secret) => {
      if (typeof secret.type !== "string" || secret.type === "") secret.type = "Opaque";
      const stringData = secret.stringData;
      if (isObject(stringData)) {
        const data = objectAt(secret, "data");
        for (const [key, value] of Object.entries(stringData)) {
          if (typeof value === "string") put(data, key, Buffer.from(value).toString("base64"));
        }
      }
      delete secret.stringData;
      return [];
    },
    validate: (secret, old) => {
      const causes = dataKeyCauses(secret.data, "data", "base64");
      if (dataBytes(secret.data, true) > MAX_DATA_BYTES) {
        causes.push({
          reason: "FieldValueTooLong",
          field: "data",
          message: `Too long: must have at most ${MAX_DATA_BYTES} bytes`,
        });
      }
      if (old !== undefined && old.type !== secret.type) {
        causes.push({
          reason: "FieldValueInvalid",
          field: "type",
          message: `Invalid value: ${JSON.stringify(secret.type)}: field is immutable`,
        });
      }
      return [...causes, ...immutableCauses(secret, old, ["data"])];
    },
  }),
);

const configmaps = builtin(
  { group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true, shortNames: ["cm"] },
  strategy({
    columns: [
      column(
        "Data",
        "The number of entries in data and binaryData",
        (cm) =>
          (isObject(cm.data) ? Object.keys(cm.data).length : 0) +
          (isObject(cm.binaryData) ? Object.keys(cm.binaryData).length : 0),
        "integer",
      ),
      AGE_COLUMN,
    ],
    validate: (configMap, old) => {
      const causes = [
        ...dataKeyCauses(configMap.data, "data", "string"),
        ...dataKeyCauses(configMap.binaryData, "binaryData", "base64"),
      ];
      if (isObject(configMap.data) && isObject(configMap.binaryData)) {
        for (const key of Object.keys(configMap.binaryData)) {
          if (Object.hasOwn(configMap.data, key)) {
            causes.push({
              reason: "FieldValueInvalid",
              field: `data[${key}]`,
              message: `Invalid value: ${JSON.stringify(key)}: duplicate of key present in binaryData`,
            });
          }
        }
      }
      if (dataBytes(configMap.data, false) + dataBytes(configMap.binaryData, true) > MAX_DATA_BYTES) {
        causes.push({
          reason: "FieldValueTooLong",
          field: "data",
          message: `Too long: must have at most ${MAX_DATA_BYTES} bytes`,
        });
      }
      return [...causes, ...immutableCauses(configMap, old, ["data", "binaryData"])];
    },
  }),
);

function defaultContainers(list: JsonValue | undefined): void {
  if (!Array.isArray(list)) return;
  for (const container of list) {
    if (!isObject(container)) continue;
    const image = stringAt(container, "image") ?? "";
    if (container.imagePullPolicy === undefined) {
      const tagged = /:[^/]+$/.test(image.split("@")[0] ?? "") && !image.endsWith(":latest");
      container.imagePullPolicy = tagged || image.includes("@") ? "IfNotPresent" : "Always";
    }
    container.terminationMessagePath ??= "/dev/termination-log";
    container.terminationMessagePolicy ??= "File";
    container.resources ??= {};
    if (Array.isArray(container.ports)) {
      for (const port of container.ports) if (isObject(port)) port.protocol ??= "TCP";
    }
  }
}

function containerCauses(list: JsonValue | undefined, field: string, required: boolean): StatusCause[] {
  if (list === undefined || (Array.isArray(list) && list.length === 0)) {
    return required ? [{ reason: "FieldValueRequired", field, message: "Required value" }] : [];
  }
  if (!Array.isArray(list))
    return [{ reason: "FieldValueTypeInvalid", field, message: "Invalid value: must be a list" }];
  const causes: StatusCause[] = [];
  const names = new Set<string>();
  list.forEach((container, index) => {
    const at = `${field}[${index}]`;
    if (!isObject(container)) {
      causes.push({
        reason: "FieldValueTypeInvalid",
        field: at,
        message: "Invalid value: must be an object",
      });
      return;
    }
    const name = stringAt(container, "name") ?? "";
    if (name === "")
      causes.push({ reason: "FieldValueRequired", field: `${at}.name`, message: "Required value" });
    else if (names.has(name))
      causes.push({
        reason: "FieldValueDuplicate",
        field: `${at}.name`,
        message: `Duplicate value: ${JSON.stringify(name)}`,
      });
    names.add(name);
    if ((stringAt(container, "image") ?? "") === "")
      causes.push({ reason: "FieldValueRequired", field: `${at}.image`, message: "Required value" });
  });
  return causes;
}

function podReady(pod: JsonObject): string {
  const spec = isObject(pod.spec) ? pod.spec : {};
  const total = Array.isArray(spec.containers) ? spec.containers.length : 0;
  const statuses =
    isObject(pod.status) && Array.isArray(pod.status.containerStatuses) ? pod.status.containerStatuses : [];
  const ready = statuses.filter((status) => isObject(status) && status.ready === true).length;
  return `${ready}/${total}`;
}

const pods = builtin(
  {
    group: "",
    version: "v1",
    plural: "pods",
    kind: "Pod",
    namespaced: true,
    shortNames: ["po"],
    categories: ["all"],
    statusSubresource: true,
    returnDeletedObject: true,
  },
  strategy({
    selectableFields: [
      "spec.nodeName",
      "spec.serviceAccountName",
      "spec.schedulerName",
      "spec.restartPolicy",
      "status.phase",
      "status.podIP",
      "status.nominatedNodeName",
    ],
    columns: [
      column("Ready", "The aggregate readiness state of this pod for accepting traffic.", podReady),
      column("Status", "The aggregate status of the containers in this pod.", (pod) =>
        isObject(pod.status) ? (stringAt(pod.status, "phase") ?? null) : null,
      ),
      column(
        "Restarts",
        "The number of times the containers in this pod have been restarted.",
        () => 0,
        "string",
      ),
      AGE_COLUMN,
    ],
    normalize: (pod, old) => {
      const spec = objectAt(pod, "spec");
      const serviceAccount =
        stringAt(spec, "serviceAccountName") ?? stringAt(spec, "serviceAccount") ?? "default";
      spec.serviceAccountName = serviceAccount;
      spec.serviceAccount = serviceAccount;
      spec.restartPolicy ??= "Always";
      spec.dnsPolicy ??= "ClusterFirst";
      spec.schedulerName ??= "default-scheduler";
      spec.terminationGracePeriodSeconds ??= 30;
      spec.securityContext ??= {};
      spec.enableServiceLinks ??= true;
      spec.priority ??= 0;
      spec.preemptionPolicy ??= "PreemptLowerPriority";
      defaultContainers(spec.containers);
      defaultContainers(spec.initContainers);
      if (old === undefined) {
        const status = objectAt(pod, "status");
        status.phase ??= "Pending";
        status.qosClass ??= "BestEffort";
      }
      return [];
    },
    validate: (pod) => {
      const spec = isObject(pod.spec) ? pod.spec : {};
      const causes = [
        ...containerCauses(spec.containers, "spec.containers", true),
        ...containerCauses(spec.initContainers, "spec.initContainers", false),
      ];
      const serviceAccount = stringAt(spec, "serviceAccountName") ?? "";
      if (!isDnsSubdomain(serviceAccount)) {
        causes.push({
          reason: "FieldValueInvalid",
          field: "spec.serviceAccountName",
          message: `Invalid value: ${JSON.stringify(serviceAccount)}: must be a DNS subdomain`,
        });
      }
      return causes;
    },
  }),
);

const serviceaccounts = builtin(
  {
    group: "",
    version: "v1",
    plural: "serviceaccounts",
    kind: "ServiceAccount",
    namespaced: true,
    shortNames: ["sa"],
  },
  strategy({}),
);

const events = builtin(
  { group: "", version: "v1", plural: "events", kind: "Event", namespaced: true, shortNames: ["ev"] },
  strategy({
    selectableFields: [
      "involvedObject.kind",
      "involvedObject.namespace",
      "involvedObject.name",
      "involvedObject.uid",
      "involvedObject.apiVersion",
      "involvedObject.resourceVersion",
      "involvedObject.fieldPath",
      "reason",
      "reportingComponent",
      "source",
      "type",
    ],
    columns: [
      column("Type", "Type of this event", (event) => stringAt(event, "type") ?? null),
      column("Reason", "Why the action was taken", (event) => stringAt(event, "reason") ?? null),
      column(
        "Message",
        "A human-readable description of the status of this operation",
        (event) => stringAt(event, "message") ?? null,
      ),
      AGE_COLUMN,
    ],
  }),
);

const leases = builtin(
  { group: "coordination.k8s.io", version: "v1", plural: "leases", kind: "Lease", namespaced: true },
  strategy({
    columns: [
      column("Holder", "The holder of the lease", (lease) =>
        isObject(lease.spec) ? (stringAt(lease.spec, "holderIdentity") ?? null) : null,
      ),
      AGE_COLUMN,
    ],
    validate: (lease) => {
      const duration = isObject(lease.spec) ? lease.spec.leaseDurationSeconds : undefined;
      if (duration !== undefined && (typeof duration !== "number" || duration <= 0)) {
        return [
          {
            reason: "FieldValueInvalid",
            field: "spec.leaseDurationSeconds",
            message: `Invalid value: ${JSON.stringify(duration)}: must be greater than 0`,
          },
        ];
      }
      return [];
    },
  }),
);

const mutatingWebhookConfigurations = builtin(
  {
    group: "admissionregistration.k8s.io",
    version: "v1",
    plural: "mutatingwebhookconfigurations",
    kind: "MutatingWebhookConfiguration",
    namespaced: false,
    categories: ["api-extensions"],
    tracksGeneration: true,
  },
  webhookConfigurationStrategy(true),
);

const validatingWebhookConfigurations = builtin(
  {
    group: "admissionregistration.k8s.io",
    version: "v1",
    plural: "validatingwebhookconfigurations",
    kind: "ValidatingWebhookConfiguration",
    namespaced: false,
    categories: ["api-extensions"],
    tracksGeneration: true,
  },
  webhookConfigurationStrategy(false),
);

const customResourceDefinitions = builtin(
  {
    group: "apiextensions.k8s.io",
    version: "v1",
    plural: "customresourcedefinitions",
    kind: "CustomResourceDefinition",
    namespaced: false,
    shortNames: ["crd", "crds"],
    categories: ["api-extensions"],
    statusSubresource: true,
    tracksGeneration: true,
  },
  crdStrategy(),
);

export const BUILTIN_TYPES: readonly ResourceType[] = [
  namespaces,
  secrets,
  configmaps,
  pods,
  serviceaccounts,
  events,
  leases,
  mutatingWebhookConfigurations,
  validatingWebhookConfigurations,
  customResourceDefinitions,
];

export const NAMESPACES = namespaces;
export const SERVICE_ACCOUNTS = serviceaccounts;
export const PODS = pods;
export const CRDS = customResourceDefinitions;
export const MUTATING_WEBHOOKS = mutatingWebhookConfigurations;
export const VALIDATING_WEBHOOKS = validatingWebhookConfigurations;
