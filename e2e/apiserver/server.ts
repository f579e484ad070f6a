/**
 * A small Kubernetes API server for tests: the real REST protocol over plain HTTP on loopback,
 * faithful enough for kubectl and @kubernetes/client-node. See README.md for what is covered.
 */
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { type Logger, pino } from "pino";
import { AdmissionChain, defaultServiceResolver, type ServiceResolver } from "./admission.js";
import { BUILTIN_TYPES, CRDS, NAMESPACES } from "./builtins.js";
import type { ServerContext } from "./context.js";
import { ApiError, internalError } from "./errors.js";
import { GarbageCollector, timestamp } from "./gc.js";
import { handle } from "./handler.js";
import { sendError } from "./http.js";
import type { JsonObject } from "./json.js";
import { writeKubeconfig } from "./kubeconfig.js";
import { nameOf } from "./meta.js";
import { Registry } from "./registry.js";
import { storageKeyOf } from "./resources.js";
import { Store } from "./store.js";
import { WatchHub } from "./watch.js";
import { createDefaultServiceAccount } from "./writes.js";

export interface ApiServerOptions {
  /** 0 or absent: any free port. */
  readonly port?: number;
  readonly host?: string;
  /** How often watches with allowWatchBookmarks=true get a BOOKMARK (default 60 s, like the real server). */
  readonly bookmarkIntervalMs?: number;
  /** Change events kept for watches; a watch from before the oldest gets 410 Gone (default 10 000). */
  readonly historyLimit?: number;
  /** Default watch length when the client sends no timeoutSeconds (default 1800 s). */
  readonly watchTimeoutSeconds?: number;
  /** Maps webhook service references to URLs (default https://127.0.0.1:<port><path>). */
  readonly serviceResolver?: ServiceResolver;
  /** Request logs (default: pino JSON on stderr at level $LOG_LEVEL or "info"). */
  readonly logger?: Logger;
  /** Bounds: stored objects (default 100 000) and open watches (default 1 000). */
  readonly maxObjects?: number;
  readonly maxWatches?: number;
}

export interface RunningApiServer {
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
  /** Forgets watch history: watches resuming from an older resourceVersion get 410 Gone. */
  compact(): void;
  /** Ends every open watch stream; returns how many were open. */
  dropWatches(): number;
  /** Writes a kubeconfig for kubectl and client-node. */
  kubeconfig(path: string): Promise<void>;
}

const INITIAL_NAMESPACES = ["default", "kube-system", "kube-public", "kube-node-lease"];

function seedNamespaces(context: ServerContext): void {
  for (const name of INITIAL_NAMESPACES) {
    const namespace: JsonObject = {
      apiVersion: "v1",
      kind: "Namespace",
      metadata: {
        name,
        uid: randomUUID(),
        creationTimestamp: timestamp(new Date()),
        labels: { "kubernetes.io/metadata.name": name },
      },
      spec: { finalizers: ["kubernetes"] },
      status: { phase: "Active" },
    };
    context.store.create(storageKeyOf(NAMESPACES), namespace);
    createDefaultServiceAccount(context, name);
  }
}

/** Keeps the registry in step with stored CRDs: serve on create/update, stop after final deletion. */
function watchCrds(context: ServerContext): void {
  const key = storageKeyOf(CRDS);
  context.store.subscribe((event) => {
    if (event.storageKey !== key) return;
    if (event.type === "DELETED") {
      for (const storage of context.registry.removeCrd(nameOf(event.object)))
        context.watches.dropResource(storage);
      return;
    }
    try {
      context.registry.syncCrd(event.object);
    } catch (error) {
      context.logger.error({ err: error, crd: nameOf(event.object) }, "cannot serve the resources of a CRD");
    }
  });
}

function defaultLogger(): Logger {
  return pino({ name: "apiserver", level: process.env.LOG_LEVEL ?? "info" }, pino.destination(2));
}

export async function startApiServer(options: ApiServerOptions = {}): Promise<RunningApiServer> {
  const logger = options.logger ?? defaultLogger();
  const host = options.host ?? "127.0.0.1";
  const store = new Store({
    historyLimit: options.historyLimit ?? 10_000,
    maxObjects: options.maxObjects ?? 100_000,
  });
  const registry = new Registry(BUILTIN_TYPES);
  const watches = new WatchHub(
    store,
    logger,
    options.bookmarkIntervalMs ?? 60_000,
    options.maxWatches ?? 1_000,
  );
  const context: ServerContext = {
    store,
    registry,
    admission: new AdmissionChain(store, options.serviceResolver ?? defaultServiceResolver, logger),
    gc: new GarbageCollector(store, logger),
    watches,
    logger,
  };
  watchCrds(context);
  seedNamespaces(context);
  const watchTimeoutSeconds = options.watchTimeoutSeconds ?? 1800;
  let boundAddress = "";

  const server = createServer((request, response) => {
    const started = performance.now();
    const path = (request.url ?? "/").split("?")[0] ?? "/";
    response.on("finish", () => {
      logger.info(
        {
          method: request.method,
          path,
          status: response.statusCode,
          ms: Math.round(performance.now() - started),
        },
        "request",
      );
    });
    handle(context, request, response, () => boundAddress, watchTimeoutSeconds).catch((error: unknown) => {
      const apiError =
        error instanceof ApiError
          ? error
          : internalError(error instanceof Error ? error.message : String(error));
      if (!(error instanceof ApiError))
        logger.error({ err: error, method: request.method, path }, "request failed");
      if (response.headersSent) {
        response.destroy();
        return;
      }
      sendError(response, apiError);
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(options.port ?? 0, host);
  await once(server, "listening");
  const port = (server.address() as AddressInfo).port;
  boundAddress = `${host}:${port}`;
  const url = `http://${host}:${port}`;
  logger.info({ url }, "API server listening");

  return {
    url,
    port,
    compact: () => store.compact(),
    dropWatches: () => watches.dropAll(),
    kubeconfig: (path) => writeKubeconfig(path, url),
    close: async () => {
      context.gc.close();
      watches.dropAll();
      const closed = once(server, "close");
      server.close();
      server.closeAllConnections();
      await closed;
    },
  };
}
