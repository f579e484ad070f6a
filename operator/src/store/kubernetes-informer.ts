/**
 * A client-node informer that keeps running. client-node re-lists on 410 Gone by itself, but any
 * other failure (API server down, list refused, watch answered with an error status) reports to
 * its error handlers and stops the informer for good; this restarts it with jittered exponential
 * back-off, and tells when the first list has been applied (the cache is synced).
 */
import {
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  ListWatch,
} from "@kubernetes/client-node";
import type { Logger } from "pino";
import { describeFailure, statusOf } from "./kubernetes-api.js";
import { BoundedWatch, DEFAULT_WATCH_BOUNDS, type WatchBounds } from "./kubernetes-watch.js";

export interface Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 1_000, maxMs: 30_000 };
/** How long stop() waits for a start caught mid-list before it stops the informer again. */
const STOP_GRACE_MS = 5_000;

export interface SupervisedInformerOptions<T extends KubernetesObject> {
  readonly kubeConfig: KubeConfig;
  /** The watch path, e.g. /api/v1/secrets. */
  readonly path: string;
  /** The matching list call; it must apply `labelSelector` too. */
  readonly list: () => Promise<KubernetesListObject<T>>;
  readonly labelSelector?: string;
  /** For logs and errors: "Secrets in all namespaces". */
  readonly description: string;
  readonly logger: Logger;
  readonly onUpsert: (object: T) => void;
  readonly onRemove: (object: T) => void;
  /** Every complete list, before the informer applies it: the authoritative state at its resourceVersion. */
  readonly onListed: (list: KubernetesListObject<T>) => void;
  readonly backoff?: Backoff;
  /** Each watch's server timeout and the silence after which it is given up (kubernetes-watch.ts). */
  readonly watchBounds?: WatchBounds;
  readonly random?: () => number;
}

/** Base delay doubling per failure up to the cap, then jittered into [half, full] against lockstep retries. */
export function backoffDelay(backoff: Backoff, attempt: number, random: () => number): number {
  const base = Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(base * (0.5 + random() / 2));
}

function hintFor(error: unknown): string {
  switch (statusOf(error)) {
    case 401:
      return " (the kubeconfig's credentials were refused)";
    case 403:
      return " (RBAC: the operator needs list and watch on it)";
    case 404:
      return " (not served: are the Custody CRDs installed?)";
    default:
      return "";
  }
}

/** What the owner of informers of different object types needs of each. */
export interface RunningInformer {
  readonly description: string;
  readonly isSynced: boolean;
  readonly synced: Promise<void>;
  readonly lastError: string | undefined;
  start(): void;
  stop(): Promise<void>;
}

export class SupervisedInformer<T extends KubernetesObject> implements RunningInformer {
  readonly #options: SupervisedInformerOptions<T>;
  readonly #informer: ListWatch<T>;
  readonly #synced: Promise<void>;
  #markSynced: () => void = () => undefined;
  #isSynced = false;
  #stopped = false;
  #failures = 0;
  #attempt = 0;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #lastError: string | undefined;

  constructor(options: SupervisedInformerOptions<T>) {
    this.#options = options;
    this.#synced = new Promise((resolve) => {
      this.#markSynced = resolve;
    });
    const watch = new BoundedWatch(options.kubeConfig, options.watchBounds ?? DEFAULT_WATCH_BOUNDS, {
      ...(options.random === undefined ? {} : { random: options.random }),
      onStalled: () =>
        options.logger.warn(
          { informer: options.description },
          "watch silent for too long (a half-open connection): opening a new one",
        ),
    });
    this.#informer = new ListWatch<T>(
      options.path,
      watch,
      async () => {
        const list = await options.list();
        options.onListed(list);
        return list;
      },
      false,
      options.labelSelector,
    );
    this.#informer.on("add", options.onUpsert);
    this.#informer.on("update", options.onUpsert);
    this.#informer.on("delete", options.onRemove);
    this.#informer.on("error", (error: unknown) => this.#failed(error));
  }

  get description(): string {
    return this.#options.description;
  }

  get isSynced(): boolean {
    return this.#isSynced;
  }

  /** Resolves once a list has been applied and its watch opened; never rejects. */
  get synced(): Promise<void> {
    return this.#synced;
  }

  /** The latest failure, with a hint at its usual cause; undefined once running. */
  get lastError(): string | undefined {
    return this.#lastError;
  }

  start(): void {
    if (this.#stopped || this.#running !== undefined) return;
    this.#run();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    // client-node reports the abort of its watch to the error handlers: #failed ignores it now.
    await this.#informer.stop();
    // A start caught mid-list opens its watch once the list returns (client-node checks for stop
    // only before listing): wait for it, bounded, and stop once more.
    if (this.#running !== undefined) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.#running,
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, STOP_GRACE_MS);
        }),
      ]);
      clearTimeout(timer);
      await this.#informer.stop();
    }
  }

  #run(): void {
    if (this.#stopped) return;
    const failuresBefore = this.#failures;
    this.#running = this.#informer.start().then(
      () => {
        // start() resolves after failures too (they go to the error handlers): only a clean run counts.
        if (this.#stopped || this.#failures !== failuresBefore) return;
        this.#attempt = 0;
        this.#lastError = undefined;
        if (!this.#isSynced) {
          this.#isSynced = true;
          this.#options.logger.debug({ informer: this.#options.description }, "informer synced");
          this.#markSynced();
        }
      },
      (error: unknown) => this.#failed(error),
    );
  }

  #failed(error: unknown): void {
    if (this.#stopped) return;
    this.#failures += 1;
    this.#lastError = `${describeFailure(error)}${hintFor(error)}`;
    // One failure can be reported more than once; one restart is enough.
    if (this.#timer !== undefined) return;
    const delayMs = backoffDelay(
      this.#options.backoff ?? DEFAULT_BACKOFF,
      this.#attempt,
      this.#options.random ?? Math.random,
    );
    this.#attempt += 1;
    this.#options.logger.warn(
      { informer: this.#options.description, error: this.#lastError, retryInMs: delayMs },
      "informer failed; restarting it",
    );
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#run();
    }, delayMs);
    this.#timer.unref();
  }
}
