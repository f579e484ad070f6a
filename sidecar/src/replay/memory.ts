/**
 * In-memory replay guard for one replica. Memory is bounded twice: entries leave when their link
 * could no longer be accepted (exp + skew), and a hard capacity caps the total. At capacity the guard
 * refuses (fails closed) rather than forgetting a jti early, which would reopen a replay window.
 */
import { type ReplayGuard, ReplayStoreUnavailableError } from "./guard.js";

interface Entry {
  readonly jti: string;
  readonly expiresAtMs: number;
}

export interface MemoryReplayGuardOptions {
  readonly capacity?: number;
  readonly now?: () => number;
}

export const DEFAULT_REPLAY_CAPACITY = 200_000;

export class MemoryReplayGuard implements ReplayGuard {
  readonly #seen = new Map<string, number>();
  /** Min-heap on expiry, so purging costs O(log n) per entry however the TTLs interleave. */
  readonly #heap: Entry[] = [];
  readonly #capacity: number;
  readonly #now: () => number;

  constructor(options: MemoryReplayGuardOptions = {}) {
    this.#capacity = options.capacity ?? DEFAULT_REPLAY_CAPACITY;
    if (!Number.isInteger(this.#capacity) || this.#capacity < 1) {
      throw new RangeError("capacity must be a positive whole number");
    }
    this.#now = options.now ?? Date.now;
  }

  get size(): number {
    return this.#seen.size;
  }

  async claim(jti: string, expiresAtMs: number): Promise<boolean> {
    const now = this.#now();
    this.#purge(now);
    if (this.#seen.has(jti)) return false;
    if (expiresAtMs <= now) return true; // already unacceptable by time; nothing to remember
    if (this.#seen.size >= this.#capacity) {
      throw new ReplayStoreUnavailableError(
        `replay guard is full (${this.#capacity} live entries); raise its capacity or use the Redis store.`,
      );
    }
    this.#seen.set(jti, expiresAtMs);
    this.#push({ jti, expiresAtMs });
    return true;
  }

  #purge(now: number): void {
    while (this.#heap.length > 0 && (this.#heap[0] as Entry).expiresAtMs <= now) {
      const entry = this.#pop();
      if (this.#seen.get(entry.jti) === entry.expiresAtMs) this.#seen.delete(entry.jti);
    }
  }

  #push(entry: Entry): void {
    const heap = this.#heap;
    heap.push(entry);
    let child = heap.length - 1;
    while (child > 0) {
      const parent = (child - 1) >> 1;
      if ((heap[parent] as Entry).expiresAtMs <= entry.expiresAtMs) break;
      heap[child] = heap[parent] as Entry;
      child = parent;
    }
    heap[child] = entry;
  }

  #pop(): Entry {
    const heap = this.#heap;
    const top = heap[0] as Entry;
    const last = heap.pop() as Entry;
    if (heap.length === 0) return top;
    let parent = 0;
    for (;;) {
      const left = 2 * parent + 1;
      if (left >= heap.length) break;
      const right = left + 1;
      const smaller =
        right < heap.length && (heap[right] as Entry).expiresAtMs < (heap[left] as Entry).expiresAtMs
          ? right
          : left;
      if ((heap[smaller] as Entry).expiresAtMs >= last.expiresAtMs) break;
      heap[parent] = heap[smaller] as Entry;
      parent = smaller;
    }
    heap[parent] = last;
    return top;
  }
}
