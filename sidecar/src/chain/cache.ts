/**
 * A bounded cache of inner links already verified, keyed by the SHA-256 of their exact text. It only
 * saves the signature check and parsing: every relation between elements (custody, hash links,
 * times) and every check of the head is recomputed on each call, and an entry is only used with the
 * trust view it was verified against (a registry update that withdraws a key invalidates it).
 * So a hit can never turn a refusal into an acceptance.
 */
import type { TrustView } from "./trust.js";

export class VerifiedElementCache<T> {
  readonly #entries = new Map<string, { trust: TrustView; value: T }>();
  readonly #capacity: number;

  constructor(capacity = 10_000) {
    if (!Number.isInteger(capacity) || capacity < 0) throw new RangeError("capacity must be a whole number");
    this.#capacity = capacity;
  }

  get size(): number {
    return this.#entries.size;
  }

  get(hash: string, trust: TrustView): T | undefined {
    const entry = this.#entries.get(hash);
    if (entry === undefined) return undefined;
    if (entry.trust !== trust) {
      this.#entries.delete(hash);
      return undefined;
    }
    // Re-insert: Map keeps insertion order, so the oldest entry is always first (LRU eviction).
    this.#entries.delete(hash);
    this.#entries.set(hash, entry);
    return entry.value;
  }

  set(hash: string, trust: TrustView, value: T): void {
    if (this.#capacity === 0) return;
    this.#entries.delete(hash);
    this.#entries.set(hash, { trust, value });
    if (this.#entries.size > this.#capacity) {
      const oldest = this.#entries.keys().next();
      if (!oldest.done) this.#entries.delete(oldest.value);
    }
  }
}
