/**
 * admissionregistration.k8s.io/v1 webhook configurations: defaulting and validation like the real
 * strategy, and the parsed form the admission chain works with.
 */
import type { StatusCause } from "./errors.js";
import { isObject, type JsonObject, type JsonValue, stringAt } from "./json.js";
import { nameOf } from "./meta.js";
import { AGE_COLUMN, type Strategy } from "./resources.js";

export type Operation = "CREATE" | "UPDATE" | "DELETE" | "CONNECT";

export interface WebhookRule {
  readonly operations: readonly string[];
  readonly apiGroups: readonly string[];
  readonly apiVersions: readonly string[];
  readonly resources: readonly string[];
  readonly scope: string;
}

export type ClientConfig =
  | { readonly kind: "url"; readonly url: string; readonly caBundle: string | undefined }
  | {
      readonly kind: "service";
      readonly namespace: string;
      readonly name: string;
      readonly path: string;
      readonly port: number;
      readonly caBundle: string | undefined;
    };

export interface Webhook {
  readonly configuration: string;
  readonly name: string;
  readonly clientConfig: ClientConfig;
  readonly rules: readonly WebhookRule[];
  readonly failurePolicy: "Fail" | "Ignore";
  readonly namespaceSelector: JsonValue | undefined;
  readonly objectSelector: JsonValue | undefined;
  readonly timeoutSeconds: number;
  readonly admissionReviewVersions: readonly string[];
}

function strings(value: JsonValue | undefined): string[] {
  return Array.isArray(value) ? value.filter((item): item is string => typeof item === "string") : [];
}

function webhooksOf(configuration: JsonObject): JsonObject[] {
  return Array.isArray(configuration.webhooks) ? configuration.webhooks.filter(isObject) : [];
}

function defaultWebhook(webhook: JsonObject, mutating: boolean): void {
  webhook.failurePolicy ??= "Fail";
  webhook.matchPolicy ??= "Equivalent";
  webhook.namespaceSelector ??= {};
  webhook.objectSelector ??= {};
  webhook.timeoutSeconds ??= 10;
  if (mutating) webhook.reinvocationPolicy ??= "Never";
  if (Array.isArray(webhook.rules)) {
    for (const rule of webhook.rules) if (isObject(rule)) rule.scope ??= "*";
  }
  const clientConfig = webhook.clientConfig;
  if (isObject(clientConfig) && isObject(clientConfig.service)) clientConfig.service.port ??= 443;
}

const OPERATIONS = new Set(["CREATE", "UPDATE", "DELETE", "CONNECT", "*"]);

function validateWebhook(webhook: JsonObject, field: string, names: Set<string>): StatusCause[] {
  const causes: StatusCause[] = [];
  const name = stringAt(webhook, "name") ?? "";
  if (name === "") {
    causes.push({ reason: "FieldValueRequired", field: `${field}.name`, message: "Required value" });
  } else if (name.split(".").length < 3) {
    causes.push({
      reason: "FieldValueInvalid",
      field: `${field}.name`,
      message: `Invalid value: ${JSON.stringify(name)}: should be a domain with at least three segments separated by dots`,
    });
  } else if (names.has(name)) {
    causes.push({
      reason: "FieldValueDuplicate",
      field: `${field}.name`,
      message: `Duplicate value: ${JSON.stringify(name)}`,
    });
  }
  names.add(name);
  const clientConfig = isObject(webhook.clientConfig) ? webhook.clientConfig : undefined;
  const url = stringAt(clientConfig, "url");
  const service =
    clientConfig !== undefined && isObject(clientConfig.service) ? clientConfig.service : undefined;
  if ((url === undefined) === (service === undefined)) {
    causes.push({
      reason: "FieldValueRequired",
      field: `${field}.clientConfig`,
      message: "Required value: exactly one of url or service is required",
    });
  }
  if (url !== undefined) {
    const parsed = URL.canParse(url) ? new URL(url) : undefined;
    if (parsed === undefined || parsed.protocol !== "https:") {
      causes.push({
        reason: "FieldValueInvalid",
        field: `${field}.clientConfig.url`,
        message: `Invalid value: ${JSON.stringify(url)}: 'https' is the only allowed URL scheme`,
      });
    } else if (parsed.hash !== "" || parsed.username !== "" || parsed.search !== "") {
      causes.push({
        reason: "FieldValueInvalid",
        field: `${field}.clientConfig.url`,
        message: `Invalid value: ${JSON.stringify(url)}: fragments, query parameters and user information are not permitted`,
      });
    }
  }
  if (service !== undefined) {
    for (const key of ["namespace", "name"]) {
      if ((stringAt(service, key) ?? "") === "")
        causes.push({
          reason: "FieldValueRequired",
          field: `${field}.clientConfig.service.${key}`,
          message: "Required value",
        });
    }
    const port = service.port;
    if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) {
      causes.push({
        reason: "FieldValueInvalid",
        field: `${field}.clientConfig.service.port`,
        message: `Invalid value: ${JSON.stringify(port ?? null)}: port is not valid: must be between 1 and 65535, inclusive`,
      });
    }
  }
  const caBundle = stringAt(clientConfig, "caBundle");
  if (caBundle !== undefined && !/^[A-Za-z0-9+/]*={0,2}$/.test(caBundle)) {
    causes.push({
      reason: "FieldValueInvalid",
      field: `${field}.clientConfig.caBundle`,
      message: "Invalid value: must be base64 encoded PEM",
    });
  }
  const sideEffects = stringAt(webhook, "sideEffects");
  if (sideEffects !== "None" && sideEffects !== "NoneOnDryRun") {
    causes.push({
      reason: sideEffects === undefined ? "FieldValueRequired" : "FieldValueNotSupported",
      field: `${field}.sideEffects`,
      message:
        sideEffects === undefined
          ? 'Required value: must specify one of "None", "NoneOnDryRun"'
          : `Unsupported value: ${JSON.stringify(sideEffects)}: supported values: "None", "NoneOnDryRun"`,
    });
  }
  const versions = strings(webhook.admissionReviewVersions);
  if (!versions.includes("v1") && !versions.includes("v1beta1")) {
    causes.push({
      reason: "FieldValueRequired",
      field: `${field}.admissionReviewVersions`,
      message: 'Required value: must specify one of "v1", "v1beta1"',
    });
  }
  const timeout = webhook.timeoutSeconds;
  if (typeof timeout !== "number" || timeout < 1 || timeout > 30) {
    causes.push({
      reason: "FieldValueInvalid",
      field: `${field}.timeoutSeconds`,
      message: `Invalid value: ${JSON.stringify(timeout ?? null)}: the timeout value must be between 1 and 30 seconds`,
    });
  }
  const failurePolicy = webhook.failurePolicy;
  if (failurePolicy !== "Fail" && failurePolicy !== "Ignore") {
    causes.push({
      reason: "FieldValueNotSupported",
      field: `${field}.failurePolicy`,
      message: `Unsupported value: ${JSON.stringify(failurePolicy ?? null)}: supported values: "Fail", "Ignore"`,
    });
  }
  const rules = Array.isArray(webhook.rules) ? webhook.rules : [];
  rules.forEach((rule, index) => {
    if (!isObject(rule)) return;
    for (const operation of strings(rule.operations)) {
      if (!OPERATIONS.has(operation)) {
        causes.push({
          reason: "FieldValueNotSupported",
          field: `${field}.rules[${index}].operations`,
          message: `Unsupported value: ${JSON.stringify(operation)}: supported values: "*", "CONNECT", "CREATE", "DELETE", "UPDATE"`,
        });
      }
    }
    for (const key of ["apiGroups", "apiVersions", "resources"]) {
      if (strings(rule[key]).length === 0)
        causes.push({
          reason: "FieldValueRequired",
          field: `${field}.rules[${index}].${key}`,
          message: "Required value",
        });
    }
  });
  return causes;
}

export function webhookConfigurationStrategy(mutating: boolean): Strategy {
  return {
    columns: [
      {
        name: "Webhooks",
        type: "integer",
        format: "",
        description: "The number of webhooks",
        priority: 0,
        cell: (object) => webhooksOf(object).length,
      },
      AGE_COLUMN,
    ],
    selectableFields: [],
    dnsLabelNames: false,
    strategicMerge: true,
    normalize: (configuration) => {
      for (const webhook of webhooksOf(configuration)) defaultWebhook(webhook, mutating);
      return [];
    },
    validate: (configuration) => {
      const names = new Set<string>();
      const causes: StatusCause[] = [];
      const list = configuration.webhooks;
      if (list !== undefined && !Array.isArray(list)) {
        return [
          { reason: "FieldValueTypeInvalid", field: "webhooks", message: "Invalid value: must be a list" },
        ];
      }
      webhooksOf(configuration).forEach((webhook, index) => {
        causes.push(...validateWebhook(webhook, `webhooks[${index}]`, names));
      });
      return causes;
    },
  };
}

/** The webhooks of a stored (defaulted, validated) configuration. */
export function parseWebhooks(configuration: JsonObject): Webhook[] {
  return webhooksOf(configuration).map((webhook) => {
    const clientConfig = isObject(webhook.clientConfig) ? webhook.clientConfig : {};
    const caBundle = stringAt(clientConfig, "caBundle");
    const service = isObject(clientConfig.service) ? clientConfig.service : undefined;
    return {
      configuration: nameOf(configuration),
      name: stringAt(webhook, "name") ?? "",
      clientConfig:
        service === undefined
          ? { kind: "url", url: stringAt(clientConfig, "url") ?? "", caBundle }
          : {
              kind: "service",
              namespace: stringAt(service, "namespace") ?? "",
              name: stringAt(service, "name") ?? "",
              path: stringAt(service, "path") ?? "/",
              port: typeof service.port === "number" ? service.port : 443,
              caBundle,
            },
      rules: (Array.isArray(webhook.rules) ? webhook.rules.filter(isObject) : []).map((rule) => ({
        operations: strings(rule.operations),
        apiGroups: strings(rule.apiGroups),
        apiVersions: strings(rule.apiVersions),
        resources: strings(rule.resources),
        scope: stringAt(rule, "scope") ?? "*",
      })),
      failurePolicy: webhook.failurePolicy === "Ignore" ? "Ignore" : "Fail",
      namespaceSelector: webhook.namespaceSelector,
      objectSelector: webhook.objectSelector,
      timeoutSeconds: typeof webhook.timeoutSeconds === "number" ? webhook.timeoutSeconds : 10,
      admissionReviewVersions: strings(webhook.admissionReviewVersions),
    };
  });
}
