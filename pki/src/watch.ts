/**
 * Watching mounted files: Secrets, ConfigMaps, manifest directories. Calls `reload` when something
 * under a path may have changed: fs.watch events (debounced), plus a periodic poll because watch
 * events are lost on some file systems and when Kubernetes swaps a mounted volume's `..data`
 * symlink. Reloads never overlap; a trigger during a reload runs one more.
 */
import { type FSWatcher, watch } from "node:fs";

export interface WatchOptions {
  readonly debounceMs?: number;
  readonly pollIntervalMs?: number;
  /** Called with what `reload` threw; the watch goes on. */
  readonly onError: (error: unknown) => void;
}

export class ChangeWatcher {
  readonly #watchers: FSWatcher[] = [];
  readonly #poll: NodeJS.Timeout;
  #debounce: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #again = false;
  #closed = false;

  constructor(
    paths: readonly string[],
    private readonly reload: () => Promise<void>,
    private readonly options: WatchOptions,
  ) {
    for (const path of paths) {
      try {
        const watcher = watch(path, { persistent: false }, () => this.trigger());
        watcher.on("error", () => undefined);
        this.#watchers.push(watcher);
      } catch {
        // Not watchable (missing, or a file system without inotify): the poll still covers it.
      }
    }
    this.#poll = setInterval(() => this.trigger(), options.pollIntervalMs ?? 5_000);
    this.#poll.unref();
  }

  /** Schedules a reload after the debounce delay. */
  trigger(): void {
    if (this.#closed) return;
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => void this.run(), this.options.debounceMs ?? 100);
    this.#debounce.unref();
  }

  /** Runs a reload now (or right after the one in progress) and resolves when it is done. */
  async run(): Promise<void> {
    if (this.#running !== undefined) {
      this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      do {
        this.#again = false;
        try {
          await this.reload();
        } catch (error) {
          this.options.onError(error);
        }
      } while (this.#again && !this.#closed);
    })();
    try {
      await this.#running;
    } finally {
      this.#running = undefined;
    }
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#debounce);
    clearInterval(this.#poll);
    for (const watcher of this.#watchers) watcher.close();
  }
}
