/**
 * Dynamic admission: MutatingWebhookConfigurations and ValidatingWebhookConfigurations called
 * like the real server calls them — admission.k8s.io/v1 AdmissionReview over HTTPS verified with
 * the webhook's caBundle, rules/namespaceSelector/objectSelector matching, JSONPatch responses,
 * failurePolicy and timeouts. Not implemented: matchConditions (CEL), reinvocationPolicy
 * IfNeeded, matchPolicy Equivalent across versions.
 */
import { randomUUID } from "node:crypto";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import type { Logger } from "pino";
import { MUTATING_WEBHOOKS, NAMESPACES, VALIDATING_WEBHOOKS } from "./builtins.js";
import { ApiError, internalError } from "./errors.js";
import { isObject, type JsonObject, type JsonValue, stringAt } from "./json.js";
import { nameOf } from "./meta.js";
import { jsonPatch } from "./patch.js";
import { apiVersionOf, type ResourceType, storageKeyOf } from "./resources.js";
import { labelSelectorFromObject, labelsOf } from "./selectors.js";
import type { Store } from "./store.js";
import { type Operation, parseWebhooks, type Webhook, type WebhookRule } from "./webhook-config.js";

/** A webhook's Kubernetes Service, to be mapped to a URL this process can reach. */
export interface ServiceReference {
  readonly namespace: string;
  readonly name: string;
  readonly port: number;
  readonly path: string;
}

/**
 * Maps a webhook's service reference to a URL. There is no cluster network here; the default sends
 * `https://127.0.0.1:<port><path>` and verifies the certificate for `<name>.<namespace>.svc`.
 */
export type ServiceResolver = (service: ServiceReference) => string;

export const defaultServiceResolver: ServiceResolver = (service) =>
  `https://127.0.0.1:${service.port}${service.path}`;

export const MAX_WEBHOOK_RESPONSE_BYTES = 3 * 1024 * 1024;

export interface AdmissionAttributes {
  readonly operation: Operation;
  readonly type: ResourceType;
  readonly subResource: string;
  readonly namespace: string;
  readonly name: string;
  readonly object: JsonObject | undefined;
  readonly oldObject: JsonObject | undefined;
  readonly dryRun: boolean;
  readonly options: JsonObject;
}

class WebhookCallError extends Error {
  override readonly name = "WebhookCallError";
}

function ruleMatches(rule: WebhookRule, attributes: AdmissionAttributes): boolean {
  const { type, subResource } = attributes;
  const any = (list: readonly string[], value: string): boolean => list.includes("*") || list.includes(value);
  if (!any(rule.operations, attributes.operation)) return false;
  if (!any(rule.apiGroups, type.group) || !any(rule.apiVersions, type.version)) return false;
  const resource = subResource === "" ? type.plural : `${type.plural}/${subResource}`;
  const resourceMatches = rule.resources.some((pattern) => {
    if (pattern === "*/*" || pattern === resource) return true;
    if (subResource === "") return pattern === "*";
    return pattern === `${type.plural}/*` || pattern === `*/${subResource}`;
  });
  if (!resourceMatches) return false;
  if (rule.scope === "Cluster") return !type.namespaced;
  if (rule.scope === "Namespaced") return type.namespaced;
  return true;
}

function reviewRequest(attributes: AdmissionAttributes, uid: string): JsonObject {
  const { type } = attributes;
  const kind = { group: type.group, version: type.version, kind: type.kind };
  const resource = { group: type.group, version: type.version, resource: type.plural };
  const request: JsonObject = {
    uid,
    kind,
    resource,
    requestKind: kind,
    requestResource: resource,
    name: attributes.name,
    operation: attributes.operation,
    userInfo: { username: "system:admin", groups: ["system:masters", "system:authenticated"] },
    object: attributes.object ?? null,
    oldObject: attributes.oldObject ?? null,
    dryRun: attributes.dryRun,
    options: attributes.options,
  };
  if (attributes.subResource !== "") {
    request.subResource = attributes.subResource;
    request.requestSubResource = attributes.subResource;
  }
  if (attributes.namespace !== "") request.namespace = attributes.namespace;
  return { apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview", request };
}

/** The 4xx Status a denial becomes: `admission webhook "name" denied the request: message`. */
function denial(webhook: Webhook, status: JsonValue | undefined): ApiError {
  const result = isObject(status) ? status : {};
  const code = typeof result.code === "number" && result.code >= 400 ? result.code : 400;
  const message = stringAt(result, "message") ?? "";
  const reason = stringAt(result, "reason") ?? "";
  const deniedBy = `admission webhook "${webhook.name}" denied the request`;
  const text =
    message !== ""
      ? `${deniedBy}: ${message}`
      : reason !== ""
        ? `${deniedBy}: ${reason}`
        : `${deniedBy} without explanation`;
  return new ApiError(code, reason, text);
}

export class AdmissionChain {
  constructor(
    private readonly store: Store,
    private readonly resolver: ServiceResolver,
    private readonly logger: Logger,
  ) {}

  /** Runs the mutating webhooks in order; returns the mutated object and the webhooks' warnings. */
  async mutate(attributes: AdmissionAttributes, warnings: string[]): Promise<JsonObject | undefined> {
    let current = attributes;
    for (const webhook of this.matching(MUTATING_WEBHOOKS, current)) {
      const response = await this.call(webhook, current, warnings);
      if (response === undefined) continue;
      const patch = stringAt(response, "patch");
      if (patch === undefined || current.object === undefined) continue;
      if (response.patchType !== "JSONPatch") {
        throw internalError(
          `webhook "${webhook.name}" returned a patch of unsupported type ${JSON.stringify(response.patchType ?? null)}`,
        );
      }
      let operations: JsonValue;
      try {
        operations = JSON.parse(Buffer.from(patch, "base64").toString("utf8")) as JsonValue;
      } catch {
        throw internalError(`webhook "${webhook.name}" returned a patch that is not JSON`);
      }
      let patched: JsonValue;
      try {
        patched = jsonPatch(current.object, operations);
      } catch (error) {
        throw internalError(
          `JSON patch of webhook "${webhook.name}" could not be applied: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
      if (!isObject(patched))
        throw internalError(`webhook "${webhook.name}" patched the object into a non-object`);
      current = { ...current, object: patched };
    }
    return current.object;
  }

  /** Runs the validating webhooks; throws the first denial. */
  async validate(attributes: AdmissionAttributes, warnings: string[]): Promise<void> {
    for (const webhook of this.matching(VALIDATING_WEBHOOKS, attributes)) {
      await this.call(webhook, attributes, warnings);
    }
  }

  private matching(configurationType: ResourceType, attributes: AdmissionAttributes): Webhook[] {
    if (
      storageKeyOf(attributes.type) === storageKeyOf(MUTATING_WEBHOOKS) ||
      storageKeyOf(attributes.type) === storageKeyOf(VALIDATING_WEBHOOKS)
    ) {
      return [];
    }
    const configurations = this.store.list(storageKeyOf(configurationType));
    return configurations
      .sort((a, b) => nameOf(a).localeCompare(nameOf(b)))
      .flatMap(parseWebhooks)
      .filter((webhook) => webhook.rules.some((rule) => ruleMatches(rule, attributes)))
      .filter((webhook) => this.selectorsMatch(webhook, attributes));
  }

  private selectorsMatch(webhook: Webhook, attributes: AdmissionAttributes): boolean {
    const objectSelector = labelSelectorFromObject(webhook.objectSelector);
    const objectMatches =
      (attributes.object !== undefined && objectSelector.matches(labelsOf(attributes.object))) ||
      (attributes.oldObject !== undefined && objectSelector.matches(labelsOf(attributes.oldObject)));
    if (!objectMatches) return false;
    const namespaceSelector = labelSelectorFromObject(webhook.namespaceSelector);
    if (namespaceSelector.empty) return true;
    if (attributes.type.plural === "namespaces" && attributes.type.group === "") {
      return namespaceSelector.matches(labelsOf(attributes.object ?? attributes.oldObject));
    }
    if (!attributes.type.namespaced) return true;
    const namespace = this.store.get(storageKeyOf(NAMESPACES), "", attributes.namespace);
    return namespace !== undefined && namespaceSelector.matches(labelsOf(namespace));
  }

  /** Calls one webhook; undefined when it failed and its failurePolicy is Ignore. */
  private async call(
    webhook: Webhook,
    attributes: AdmissionAttributes,
    warnings: string[],
  ): Promise<JsonObject | undefined> {
    const uid = randomUUID();
    let response: JsonObject;
    const target = this.target(webhook);
    try {
      const review = await this.post(target, webhook, reviewRequest(attributes, uid));
      const body = isObject(review) ? review.response : undefined;
      if (!isObject(body)) throw new WebhookCallError("the AdmissionReview has no response");
      if (body.uid !== uid)
        throw new WebhookCallError(
          `expected response.uid=${JSON.stringify(uid)}, got ${JSON.stringify(body.uid ?? "")}`,
        );
      response = body;
    } catch (error) {
      const detail = `failed calling webhook "${webhook.name}": failed to call webhook: Post "${target.url}": ${error instanceof Error ? error.message : String(error)}`;
      if (webhook.failurePolicy === "Ignore") {
        this.logger.warn({ webhook: webhook.name }, `${detail} (failurePolicy Ignore)`);
        return undefined;
      }
      throw internalError(detail);
    }
    if (Array.isArray(response.warnings)) {
      for (const warning of response.warnings) if (typeof warning === "string") warnings.push(warning);
    }
    if (response.allowed !== true) throw denial(webhook, response.status);
    this.logger.debug(
      { webhook: webhook.name, operation: attributes.operation, resource: apiVersionOf(attributes.type) },
      "webhook allowed",
    );
    return response;
  }

  private target(webhook: Webhook): {
    readonly url: string;
    readonly serverName: string | undefined;
    readonly ca: string | undefined;
  } {
    const config = webhook.clientConfig;
    const ca =
      config.caBundle === undefined || config.caBundle === ""
        ? undefined
        : Buffer.from(config.caBundle, "base64").toString("utf8");
    const base =
      config.kind === "url"
        ? config.url
        : this.resolver({
            namespace: config.namespace,
            name: config.name,
            port: config.port,
            path: config.path,
          });
    const url = new URL(base);
    url.searchParams.set("timeout", `${webhook.timeoutSeconds}s`);
    const serverName = config.kind === "service" ? `${config.name}.${config.namespace}.svc` : undefined;
    return { url: url.toString(), serverName, ca };
  }

  private post(
    target: {
      readonly url: string;
      readonly serverName: string | undefined;
      readonly ca: string | undefined;
    },
    webhook: Webhook,
    review: JsonObject,
  ): Promise<JsonValue> {
    const url = new URL(target.url);
    const body = JSON.stringify(review);
    const options = {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "Content-Length": Buffer.byteLength(body),
      },
      ...(target.ca === undefined ? {} : { ca: target.ca }),
      ...(target.serverName === undefined ? {} : { servername: target.serverName }),
    };
    return new Promise((resolve, reject) => {
      const onResponse = (response: IncomingMessage): void => {
        const chunks: Buffer[] = [];
        let size = 0;
        response.on("data", (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_WEBHOOK_RESPONSE_BYTES) {
            request.destroy(
              new WebhookCallError(`the response is larger than ${MAX_WEBHOOK_RESPONSE_BYTES} bytes`),
            );
            return;
          }
          chunks.push(chunk);
        });
        response.on("end", () => {
          clearTimeout(timer);
          const text = Buffer.concat(chunks).toString("utf8");
          if (response.statusCode !== 200) {
            reject(
              new WebhookCallError(
                `the server responded with the status code ${response.statusCode} (${text.slice(0, 200)})`,
              ),
            );
            return;
          }
          try {
            resolve(JSON.parse(text) as JsonValue);
          } catch {
            reject(new WebhookCallError("the response is not JSON"));
          }
        });
        response.on("error", reject);
      };
      const request =
        url.protocol === "http:"
          ? httpRequest(url, options, onResponse)
          : httpsRequest(url, options, onResponse);
      const timer = setTimeout(
        () => request.destroy(new WebhookCallError("context deadline exceeded")),
        webhook.timeoutSeconds * 1000,
      );
      request.on("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
      request.end(body);
    });
  }
}
