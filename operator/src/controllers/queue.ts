/**
 * The work queue behind every controller, in the manner of client-go's: a key waits at most once
 * (adding it again while it waits only moves it earlier), one key is never worked on by two
 * workers at once (a key added while it runs waits for that run to end), a failed key comes back
 * with exponential back-off, and a key may ask to come back later (certificate renewal, key
 * expiry). Bounded: at most `maxKeys` distinct keys wait, beyond that adds are refused and
 * counted, which a full re-sync repairs.
 */

export interface WorkQueueOptions {
  readonly concurrency: number;
  /** First retry delay after a failure; doubles per consecutive failure of the same key. */
  readonly baseRetryMs: number;
  readonly maxRetryMs: number;
  readonly maxKeys: number;
  readonly now?: () => number;
}

/** What one run of a key asks for next: nothing, or to run again after `requeueAfterMs`. */
export interface WorkResult {
  readonly requeueAfterMs?: number;
}

export type Worker = (key: string) => Promise<WorkResult | undefined>;

export interface QueueObserver {
  processed(key: string, outcome: "ok" | "error", seconds: number, error?: unknown): void;
  dropped(key: string): void;
}

/** The longest timer Node honours; a requeue further out is clamped (and simply runs early). */
const MAX_TIMER_MS = 2_147_483_647;

export class WorkQueue {
  readonly #options: WorkQueueOptions;
  readonly #now: () => number;
  /** Key → when it is due. */
  readonly #due = new Map<string, number>();
  readonly #running = new Set<string>();
  /** Keys added while running: due again (at that time) once the run ends. */
  readonly #dirty = new Map<string, number>();
  readonly #failures = new Map<string, number>();
  readonly #urgent = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #timerAt = Number.POSITIVE_INFINITY;
  #stopped = true;
  #idleWaiters: (() => void)[] = [];

  constructor(
    private readonly worker: Worker,
    options: WorkQueueOptions,
    private readonly observer?: QueueObserver,
  ) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  get length(): number {
    return this.#due.size;
  }

  start(): void {
    this.#stopped = false;
    this.#pump();
  }

  /** Stops starting new work; runs in progress finish. Waiting keys are forgotten. */
  stop(): void {
    this.#stopped = true;
    this.#due.clear();
    this.#dirty.clear();
    this.#failures.clear();
    this.#urgent.clear();
    this.#clearTimer();
  }

  add(key: string, delayMs = 0, options: { readonly urgent?: boolean } = {}): void {
    const at = this.#now() + Math.max(0, delayMs);
    if (options.urgent === true) this.#urgent.add(key);
    if (this.#running.has(key)) {
      const pending = this.#dirty.get(key);
      if (pending === undefined || at < pending) this.#dirty.set(key, at);
      return;
    }
    const pending = this.#due.get(key);
    if (pending !== undefined) {
      if (at < pending) this.#due.set(key, at);
    } else if (this.#due.size >= this.#options.maxKeys) {
      this.observer?.dropped(key);
      return;
    } else {
      this.#due.set(key, at);
    }
    this.#pump();
  }

  /** Resolves when nothing is due now and nothing runs (for tests and orderly shutdown). */
  idle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  #isIdle(): boolean {
    if (this.#running.size > 0) return false;
    const now = this.#now();
    for (const at of this.#due.values()) if (at <= now) return false;
    return true;
  }

  #pump(): void {
    if (this.#stopped) return;
    const now = this.#now();
    let nextAt = Number.POSITIVE_INFINITY;
    const urgentFirst = [...this.#urgent].flatMap((key) => {
      const at = this.#due.get(key);
      return at === undefined ? [] : [[key, at] as const];
    });
    for (const [key, at] of [...urgentFirst, ...this.#due]) {
      if (this.#running.size >= this.#options.concurrency) break;
      if (!this.#due.has(key)) continue;
      if (at <= now) {
        this.#due.delete(key);
        this.#urgent.delete(key);
        this.#run(key);
      } else if (at < nextAt) {
        nextAt = at;
      }
    }
    if (this.#running.size < this.#options.concurrency) this.#arm(nextAt);
    if (this.#isIdle()) this.#notifyIdle();
  }

  #arm(at: number): void {
    if (at === Number.POSITIVE_INFINITY || at >= this.#timerAt) return;
    this.#clearTimer();
    this.#timerAt = at;
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        this.#timerAt = Number.POSITIVE_INFINITY;
        this.#pump();
      },
      Math.min(MAX_TIMER_MS, Math.max(0, at - this.#now())),
    );
    this.#timer.unref();
  }

  #clearTimer(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#timerAt = Number.POSITIVE_INFINITY;
  }

  #run(key: string): void {
    this.#running.add(key);
    const started = process.hrtime.bigint();
    void this.worker(key)
      .then(
        (result) => {
          this.#failures.delete(key);
          this.observer?.processed(key, "ok", secondsSince(started));
          return result?.requeueAfterMs;
        },
        (error: unknown) => {
          const failures = (this.#failures.get(key) ?? 0) + 1;
          this.#failures.set(key, failures);
          this.observer?.processed(key, "error", secondsSince(started), error);
          return backoff(this.#options.baseRetryMs, this.#options.maxRetryMs, failures);
        },
      )
      .then((requeueAfterMs) => {
        this.#running.delete(key);
        const dirty = this.#dirty.get(key);
        this.#dirty.delete(key);
        if (!this.#stopped) {
          if (dirty !== undefined) this.add(key, dirty - this.#now());
          if (requeueAfterMs !== undefined) this.add(key, requeueAfterMs);
        }
        this.#pump();
      });
  }

  #notifyIdle(): void {
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const resolve of waiters) resolve();
  }
}

/** base · 2^(n-1), capped, with ±20 % jitter so replicas retrying the same object spread out. */
export function backoff(baseMs: number, maxMs: number, failures: number): number {
  const exponential = Math.min(maxMs, baseMs * 2 ** Math.min(30, failures - 1));
  return Math.round(exponential * (0.8 + Math.random() * 0.4));
}

function secondsSince(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}
