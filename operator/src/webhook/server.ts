/**
 * The admission webhook server: HTTPS with a certificate from Custody's CA (the API server checks
 * it against the configurations' `caBundle`, kept current by ca-bundle.ts), two routes — sidecar
 * injection and AccessPolicy validation — and one JSON log line per decision. Sidecars reach the
 * same server for their key (identity delivery), trusting the CA from their registry.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { Logger } from "pino";
import { Counter, type Registry } from "prom-client";
import { closeGracefully, drain, type ListenAddress, listen } from "../../../cli/src/serve.js";
import { leaveBodyUnread } from "../../../cli/src/unread-body.js";
import { IDENTITY_DELIVERY_PATH } from "../../../crds/src/identity-delivery.js";
import { serviceId } from "../../../crds/src/names.js";
import type { CertificateAuthority } from "../../../pki/src/ca.js";
import { BodyTooLargeError, ClientAbortedError, readBody, sendJson } from "../http/io.js";
import { issueServerTls, renewServerCertificate } from "../http/server-certificate.js";
import type { IdentityDelivery } from "./identity-delivery.js";
import {
  checkInjectionSettings,
  type IdentityLookup,
  type InjectionSettings,
  injectionPatch,
} from "./inject.js";
import {
  type AdmissionDecision,
  type AdmissionRequest,
  admissionReviewResponse,
  allowUnchanged,
  MAX_REVIEW_BYTES,
  parseAdmissionReview,
  ReviewError,
} from "./review.js";
import { validatePolicyAdmission } from "./validate-policy.js";

export const INJECT_PATH = "/inject";
export const VALIDATE_POLICY_PATH = "/validate-accesspolicy";

export interface WebhookServerOptions {
  readonly ca: CertificateAuthority;
  readonly listen: ListenAddress;
  /** The Kubernetes Service in front of the webhook: its DNS names go into the certificate. */
  readonly serviceName: string;
  readonly namespace: string;
  readonly lookup: IdentityLookup;
  readonly settings: InjectionSettings;
  readonly logger: Logger;
  readonly extraDnsNames?: readonly string[];
  /** Where `custody_webhook_admissions_total` is registered; no metrics without it. */
  readonly metrics?: Registry;
  /** Served at IDENTITY_DELIVERY_PATH: sidecars obtain their key here (same Service, same TLS). */
  readonly delivery?: IdentityDelivery;
}

export interface RunningWebhookServer {
  readonly port: number;
  /** Keeps answering, but closes each connection after its review (see serve.ts `drain`). */
  drain(): void;
  /** Stops accepting, lets reviews in flight finish (at most `graceMs`), then closes. */
  close(graceMs?: number): Promise<void>;
}

type WebhookName = "inject" | "validate-accesspolicy";

interface Route {
  readonly name: WebhookName;
  decide(request: AdmissionRequest): AdmissionDecision;
}

function isPodCreate(request: AdmissionRequest): boolean {
  const { group, version, resource } = request.resource;
  return (
    group === "" &&
    version === "v1" &&
    resource === "pods" &&
    request.subResource === "" &&
    request.operation === "CREATE"
  );
}

/** The pod's name, or its generateName prefix while the API server has not yet picked one. */
function objectName(request: AdmissionRequest): string {
  if (request.name !== "") return request.name;
  const metadata = request.object as { metadata?: { name?: unknown; generateName?: unknown } } | undefined;
  const name = metadata?.metadata?.name ?? "";
  const prefix = metadata?.metadata?.generateName ?? "";
  const shown =
    typeof name === "string" && name !== "" ? name : typeof prefix === "string" ? `${prefix}*` : "";
  return shown.slice(0, 253);
}

function isJsonContentType(header: string | undefined): boolean {
  return /^application\/json\s*(;|$)/i.test(header ?? "");
}

export async function startWebhookServer(options: WebhookServerOptions): Promise<RunningWebhookServer> {
  const { logger, settings, lookup } = options;
  checkInjectionSettings(settings);
  const service = options.serviceName;
  const namespace = options.namespace;
  const id = serviceId({ name: service, namespace });
  const issue = () =>
    issueServerTls(options.ca, {
      id,
      dnsNames: [
        service,
        `${service}.${namespace}`,
        `${service}.${namespace}.svc`,
        `${service}.${namespace}.svc.cluster.local`,
        "localhost",
        ...(options.extraDnsNames ?? []),
      ],
      ipAddresses: ["127.0.0.1", "::1"],
    });
  const admissions =
    options.metrics === undefined
      ? undefined
      : new Counter({
          name: "custody_webhook_admissions_total",
          help: "Admission decisions by webhook, outcome and reason code (injected, identity_not_found, invalid_access_policy, ...).",
          labelNames: ["webhook", "allowed", "reason"] as const,
          registers: [options.metrics],
        });

  const routes: Readonly<Record<string, Route>> = {
    [INJECT_PATH]: {
      name: "inject",
      decide: (request) =>
        isPodCreate(request)
          ? injectionPatch(request.object, request.namespace, lookup, settings)
          : allowUnchanged("not_a_pod_create"),
    },
    [VALIDATE_POLICY_PATH]: { name: "validate-accesspolicy", decide: validatePolicyAdmission },
  };

  const answer = async (route: Route, request: IncomingMessage, response: ServerResponse) => {
    let review: AdmissionRequest;
    try {
      if (!isJsonContentType(request.headers["content-type"])) {
        leaveBodyUnread(request, response);
        sendJson(response, 415, { error: "unsupported_media_type", reason: "expected_json" });
        return;
      }
      review = parseAdmissionReview(await readBody(request, response, MAX_REVIEW_BYTES));
    } catch (error) {
      if (error instanceof ClientAbortedError) return;
      if (error instanceof BodyTooLargeError) {
        sendJson(response, 413, { error: "payload_too_large", reason: "body_too_large" });
      } else if (error instanceof ReviewError) {
        logger.warn(
          { event: "admission_malformed", webhook: route.name, message: error.message },
          "bad review",
        );
        sendJson(response, 400, { error: "bad_request", reason: error.code });
      } else {
        logger.error(
          { event: "admission_error", webhook: route.name, err: describeError(error) },
          "review failed",
        );
        sendJson(response, 500, { error: "internal_error", reason: "internal_error" });
      }
      return;
    }
    let decision: AdmissionDecision;
    try {
      decision = route.decide(review);
    } catch (error) {
      // No decision rather than a guess: the API server applies the webhook's failurePolicy.
      logger.error(
        { event: "admission_error", webhook: route.name, err: describeError(error) },
        "decision failed",
      );
      sendJson(response, 500, { error: "internal_error", reason: "internal_error" });
      return;
    }
    sendJson(response, 200, admissionReviewResponse(review.uid, decision));
    admissions?.inc({ webhook: route.name, allowed: String(decision.allowed), reason: decision.reason });
    const line = {
      event: "admission",
      webhook: route.name,
      uid: review.uid,
      operation: review.operation,
      kind: review.kind.kind,
      namespace: review.namespace,
      name: objectName(review),
      identity: decision.identity,
      allowed: decision.allowed,
      reason: decision.reason,
      patchOperations: decision.allowed ? decision.patch.length : undefined,
      dryRun: review.dryRun,
    };
    if (decision.allowed) logger.info(line, "admitted");
    else logger.warn({ ...line, message: decision.message }, "refused");
  };

  const handle = (request: IncomingMessage, response: ServerResponse) => {
    const path = (request.url ?? "").split("?")[0] ?? "";
    if (path === IDENTITY_DELIVERY_PATH && options.delivery !== undefined) {
      if (request.method !== "POST") {
        return sendJson(
          response,
          405,
          { error: "method_not_allowed", reason: "use_post" },
          { allow: "POST" },
        );
      }
      void options.delivery.handle(request, response);
      return;
    }
    const route = routes[path];
    if (route === undefined) return sendJson(response, 404, { error: "not_found", reason: "unknown_path" });
    if (request.method !== "POST") {
      return sendJson(response, 405, { error: "method_not_allowed", reason: "use_post" }, { allow: "POST" });
    }
    void answer(route, request, response);
  };

  const server = createHttpsServer(
    {
      ...(await issue()),
      minVersion: "TLSv1.2",
      maxHeaderSize: 16 * 1024,
      // The API server gives a webhook at most 30 s (timeoutSeconds); nothing useful happens after.
      requestTimeout: 30_000,
      headersTimeout: 10_000,
      keepAliveTimeout: 30_000,
    },
    handle,
  );
  server.maxConnections = 1024;
  const renewal = renewServerCertificate(server, { issue, logger });
  let port: number;
  try {
    port = await listen(server, options.listen);
  } catch (error) {
    renewal.close();
    throw error;
  }
  logger.info(
    {
      event: "listening",
      component: "webhook",
      port,
      paths: [
        INJECT_PATH,
        VALIDATE_POLICY_PATH,
        ...(options.delivery === undefined ? [] : [IDENTITY_DELIVERY_PATH]),
      ],
    },
    "admission webhooks listening",
  );
  return {
    port,
    drain: () => drain(server),
    async close(graceMs = 10_000) {
      renewal.close();
      await closeGracefully(server, graceMs);
    },
  };
}

function describeError(error: unknown): { message: string; code?: string } {
  if (error instanceof Error) {
    const code = "code" in error && typeof error.code === "string" ? error.code : undefined;
    return code === undefined ? { message: error.message } : { message: error.message, code };
  }
  return { message: String(error) };
}
