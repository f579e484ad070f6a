/**
 * The watch under every informer, bounded in time. client-node's own asks for no timeout and no
 * bookmarks, so a watch whose connection died without a FIN or RST (a NAT or load balancer that
 * forgot it, a node that vanished) is noticed only by TCP keepalive, many minutes later, and all
 * that time the cache stops changing without a word. Here every watch:
 *
 * - asks the API server to end it after `timeoutSeconds` (jittered up to +25%, so that informers
 *   do not restart in step) and to send bookmarks, which move the resourceVersion forward while
 *   nothing changes: the next watch resumes where this one was, with no re-list and no 410;
 * - is given up when nothing at all (no event, no bookmark) has arrived for `idleMs`. The API
 *   server's watch cache sends a bookmark about every minute and one just before the timeout, so
 *   silence longer than that means the connection is half-open.
 *
 * A watch given up, or ended by the server, ends as a clean close: client-node's ListWatch then
 * opens the next one from the last resourceVersion.
 */
import { type KubeConfig, Watch } from "@kubernetes/client-node";

export interface WatchBounds {
  /** The server ends each watch after this long (before jitter). */
  readonly timeoutSeconds: number;
  /** A watch that received nothing for this long is given up as half-open. */
  readonly idleMs: number;
}

export const DEFAULT_WATCH_BOUNDS: WatchBounds = { timeoutSeconds: 300, idleMs: 150_000 };

type WatchCallback = (phase: string, apiObj: unknown, watchObj?: unknown) => void;
type DoneCallback = (error: unknown) => void;

export class BoundedWatch extends Watch {
  readonly #bounds: WatchBounds;
  readonly #random: () => number;
  readonly #onStalled: (path: string) => void;

  constructor(
    config: KubeConfig,
    bounds: WatchBounds,
    options: { readonly random?: () => number; readonly onStalled?: (path: string) => void } = {},
  ) {
    super(config);
    this.#bounds = bounds;
    this.#random = options.random ?? Math.random;
    this.#onStalled = options.onStalled ?? (() => undefined);
  }

  override async watch(
    path: string,
    queryParams: Record<string, unknown>,
    callback: WatchCallback,
    done: DoneCallback,
  ): Promise<AbortController> {
    let stalled = false;
    let finished = false;
    let controller: AbortController | undefined;
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        stalled = true;
        this.#onStalled(path);
        controller?.abort();
      }, this.#bounds.idleMs);
      timer.unref();
    };
    const finish = (error: unknown) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      // Aborted here for silence: a clean end, so the watch resumes rather than failing the informer.
      done(stalled ? null : error);
    };
    const timeoutSeconds = Math.max(1, Math.round(this.#bounds.timeoutSeconds * (1 + this.#random() / 4)));
    arm();
    controller = await super.watch(
      path,
      { ...queryParams, allowWatchBookmarks: true, timeoutSeconds },
      (phase, object, raw) => {
        arm();
        callback(phase, object, raw);
      },
      finish,
    );
    if (finished) clearTimeout(timer);
    else if (stalled) controller.abort();
    return controller;
  }
}
