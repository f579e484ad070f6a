/**
 * Keeps `clientConfig.caBundle` of the webhook configurations equal to Custody's CA, so the API
 * server trusts the webhook's certificate without anyone pasting base64 into a manifest (and after
 * `kubectl apply` of a manifest that has none). Each write names the resourceVersion it read, so
 * it never overwrites a concurrent edit of the webhook list; a configuration that does not exist
 * yet is waited for, never an error that stops the operator.
 */
import {
  AdmissionregistrationV1Api,
  ApiException,
  type KubeConfig,
  type V1MutatingWebhookConfiguration,
  type V1ValidatingWebhookConfiguration,
} from "@kubernetes/client-node";
import type { Logger } from "pino";
import { CustodyError } from "../../../crds/src/errors.js";
import type { JsonPatchOp } from "./review.js";

/** Stale reads in a row before giving up until the next interval: only a busy writer gets here. */
const MAX_ATTEMPTS = 5;

export interface CaBundleOptions {
  readonly kubeConfig: KubeConfig;
  readonly mutatingName: string;
  readonly validatingName: string;
  /** Custody's CA certificate(s), PEM. */
  readonly caPem: string;
  readonly logger: Logger;
  readonly intervalMs: number;
}

export interface CaBundleKeeper {
  close(): void;
  /** One pass over both configurations; never rejects (problems are logged and retried later). */
  syncNow(): Promise<void>;
}

type Configuration = V1MutatingWebhookConfiguration | V1ValidatingWebhookConfiguration;

interface ConfigurationKind {
  readonly kind: "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration";
  readonly name: string;
  read(name: string): Promise<Configuration>;
  patch(name: string, body: readonly JsonPatchOp[]): Promise<unknown>;
}

type SyncResult = "unchanged" | "updated" | "missing";

export class CaBundleError extends CustodyError {}

function statusOf(error: unknown): number | undefined {
  return error instanceof ApiException ? error.code : undefined;
}

/** The patch that sets every stale caBundle, or undefined when all are current. */
export function caBundlePatch(configuration: Configuration, caBundle: string): JsonPatchOp[] | undefined {
  const stale = (configuration.webhooks ?? []).flatMap((webhook, index) =>
    webhook.clientConfig?.caBundle === caBundle ? [] : [index],
  );
  if (stale.length === 0) return undefined;
  const resourceVersion = configuration.metadata?.resourceVersion;
  if (resourceVersion === undefined)
    throw new CaBundleError("no_resource_version", "the configuration has no resourceVersion");
  // Indexes are only meaningful for the list as read: the test makes a concurrent change fail.
  return [
    { op: "test", path: "/metadata/resourceVersion", value: resourceVersion },
    ...stale.map(
      (index): JsonPatchOp => ({
        op: "add",
        path: `/webhooks/${index}/clientConfig/caBundle`,
        value: caBundle,
      }),
    ),
  ];
}

async function syncOne(target: ConfigurationKind, caBundle: string): Promise<SyncResult> {
  for (let attempt = 1; ; attempt++) {
    let current: Configuration;
    try {
      current = await target.read(target.name);
    } catch (error) {
      if (statusOf(error) === 404) return "missing";
      throw error;
    }
    const patch = caBundlePatch(current, caBundle);
    if (patch === undefined) return "unchanged";
    try {
      await target.patch(target.name, patch);
      return "updated";
    } catch (error) {
      // 422: the test on the resourceVersion failed (changed since the read); 409: a conflict.
      const status = statusOf(error);
      if ((status === 409 || status === 422) && attempt < MAX_ATTEMPTS) continue;
      throw error;
    }
  }
}

export function keepCaBundleCurrent(options: CaBundleOptions): CaBundleKeeper {
  const { logger } = options;
  const api = options.kubeConfig.makeApiClient(AdmissionregistrationV1Api);
  const caBundle = Buffer.from(options.caPem, "utf8").toString("base64");
  const targets: ConfigurationKind[] = [
    {
      kind: "MutatingWebhookConfiguration",
      name: options.mutatingName,
      read: (name) => api.readMutatingWebhookConfiguration({ name }),
      patch: (name, body) => api.patchMutatingWebhookConfiguration({ name, body }),
    },
    {
      kind: "ValidatingWebhookConfiguration",
      name: options.validatingName,
      read: (name) => api.readValidatingWebhookConfiguration({ name }),
      patch: (name, body) => api.patchValidatingWebhookConfiguration({ name, body }),
    },
  ];
  // Say "missing" once per absence, not once per interval.
  const missing = new Set<string>();

  const syncTarget = async (target: ConfigurationKind) => {
    const fields = { kind: target.kind, name: target.name };
    try {
      const result = await syncOne(target, caBundle);
      if (result === "missing") {
        if (!missing.has(target.kind)) {
          logger.warn(
            { event: "webhook_configuration_missing", ...fields },
            "webhook configuration not found; will keep checking",
          );
        }
        missing.add(target.kind);
        return;
      }
      missing.delete(target.kind);
      if (result === "updated") logger.info({ event: "ca_bundle_updated", ...fields }, "caBundle updated");
    } catch (error) {
      logger.warn(
        {
          event: "ca_bundle_sync_failed",
          ...fields,
          status: statusOf(error),
          err: { message: error instanceof Error ? error.message : String(error) },
        },
        "could not update caBundle; will retry",
      );
    }
  };

  // One pass at a time: a syncNow during a timer pass waits for it, then runs its own.
  let running: Promise<void> = Promise.resolve();
  let closed = false;
  const syncNow = (): Promise<void> => {
    running = running.then(async () => {
      if (closed) return;
      for (const target of targets) await syncTarget(target);
    });
    return running;
  };
  void syncNow();
  const timer = setInterval(() => void syncNow(), options.intervalMs);
  timer.unref();
  return {
    syncNow,
    close() {
      closed = true;
      clearInterval(timer);
    },
  };
}
