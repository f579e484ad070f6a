/**
 * core/v1 Events about ServiceIdentities and AccessPolicies, best effort: an Event that cannot be
 * written is logged, never an error. Bounded twice over, because a reconcile loop that goes wrong
 * can report the same thing in a tight loop: a repeat of the same (object, type, reason, message)
 * within the de-duplication window is suppressed, and beyond `maxInFlight` unanswered creates new
 * Events are dropped (and counted) rather than queued.
 */
import { randomBytes } from "node:crypto";
import type { CoreV1Api, CoreV1Event } from "@kubernetes/client-node";
import type { Logger } from "pino";
import { callApi, describeFailure } from "./kubernetes-api.js";
import { CUSTODY_API_VERSION } from "./kubernetes-convert.js";
import type { ResourceKind, StoreEvent } from "./store.js";

const MAX_MESSAGE_BYTES = 1024;
const MAX_NAME_LENGTH = 253;
/** Entries kept for de-duplication; beyond it the oldest are forgotten (and may repeat once). */
const MAX_REMEMBERED = 1_000;

export interface EventRecorderOptions {
  readonly core: CoreV1Api;
  /** `source.component` of every Event. */
  readonly component: string;
  readonly logger: Logger;
  readonly requestTimeoutMs: number;
  /** Aborts Events still in flight (on close). */
  readonly cancel: AbortSignal;
  readonly maxInFlight?: number;
  readonly dedupeWindowMs?: number;
  readonly now?: () => number;
}

export interface EventSubject {
  readonly kind: ResourceKind;
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
}

/** Cuts `text` to at most `maxBytes` of UTF-8 without splitting a character, marking the cut. */
export function truncateUtf8(text: string, maxBytes: number): string {
  if (Buffer.byteLength(text, "utf8") <= maxBytes) return text;
  const marker = "…";
  const budget = maxBytes - Buffer.byteLength(marker, "utf8");
  let kept = "";
  let bytes = 0;
  for (const character of text) {
    const size = Buffer.byteLength(character, "utf8");
    if (bytes + size > budget) break;
    kept += character;
    bytes += size;
  }
  return `${kept}${marker}`;
}

/** `<object>.<16 hex digits>`, like client-go's recorder, still a valid name for a 253-character object. */
function eventNameOf(objectName: string): string {
  const suffix = randomBytes(8).toString("hex");
  const room = MAX_NAME_LENGTH - suffix.length - 1;
  const stem = objectName.length <= room ? objectName : objectName.slice(0, room).replace(/[^a-z0-9]+$/, "");
  return `${stem}.${suffix}`;
}

export class EventRecorder {
  readonly #options: EventRecorderOptions;
  readonly #maxInFlight: number;
  readonly #windowMs: number;
  readonly #now: () => number;
  /** De-duplication key → when it may be recorded again. */
  readonly #recent = new Map<string, number>();
  readonly #inFlight = new Set<Promise<void>>();
  #dropped = 0;
  #suppressed = 0;
  #dropping = false;

  constructor(options: EventRecorderOptions) {
    this.#options = options;
    this.#maxInFlight = options.maxInFlight ?? 100;
    this.#windowMs = options.dedupeWindowMs ?? 60_000;
    this.#now = options.now ?? Date.now;
  }

  /** Events not written because too many were in flight. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Repeats not written because the same Event was recorded within the window. */
  get suppressed(): number {
    return this.#suppressed;
  }

  record(subject: EventSubject, event: StoreEvent): void {
    if (this.#options.cancel.aborted) return;
    const message = truncateUtf8(event.message, MAX_MESSAGE_BYTES);
    const nowMs = this.#now();
    const key = [
      subject.kind,
      subject.namespace,
      subject.name,
      subject.uid,
      event.type,
      event.reason,
      message,
    ].join("\u0000");
    const until = this.#recent.get(key);
    if (until !== undefined && until > nowMs) {
      this.#suppressed += 1;
      return;
    }
    if (this.#inFlight.size >= this.#maxInFlight) {
      this.#dropped += 1;
      // One line per burst: a storm of drops must not become a storm of log lines.
      if (!this.#dropping) {
        this.#dropping = true;
        this.#options.logger.warn(
          { maxInFlight: this.#maxInFlight, dropped: this.#dropped, reason: event.reason },
          "too many Events in flight; dropping new ones until the API server catches up",
        );
      }
      return;
    }
    this.#dropping = false;
    this.#remember(key, nowMs);
    const pending = this.#create(subject, event, message, nowMs).finally(() =>
      this.#inFlight.delete(pending),
    );
    this.#inFlight.add(pending);
  }

  /** Waits for the Events in flight (each bounded by the request timeout). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.#inFlight]);
  }

  #remember(key: string, nowMs: number): void {
    this.#recent.delete(key);
    if (this.#recent.size >= MAX_REMEMBERED) {
      for (const [remembered, until] of this.#recent) if (until <= nowMs) this.#recent.delete(remembered);
    }
    // Insertion order is age order: forget the oldest first.
    for (const oldest of this.#recent.keys()) {
      if (this.#recent.size < MAX_REMEMBERED) break;
      this.#recent.delete(oldest);
    }
    this.#recent.set(key, nowMs + this.#windowMs);
  }

  async #create(subject: EventSubject, event: StoreEvent, message: string, nowMs: number): Promise<void> {
    const { core, component, logger, requestTimeoutMs, cancel } = this.#options;
    const at = new Date(nowMs);
    const body: CoreV1Event = {
      metadata: { name: eventNameOf(subject.name), namespace: subject.namespace },
      involvedObject: {
        apiVersion: CUSTODY_API_VERSION,
        kind: subject.kind,
        name: subject.name,
        namespace: subject.namespace,
        uid: subject.uid,
      },
      reason: event.reason,
      message,
      type: event.type,
      source: { component },
      reportingComponent: component,
      firstTimestamp: at,
      lastTimestamp: at,
      count: 1,
    };
    try {
      await callApi(requestTimeoutMs, cancel, (options) =>
        core.createNamespacedEvent({ namespace: subject.namespace, body }, options),
      );
    } catch (error) {
      if (cancel.aborted) return;
      logger.warn(
        {
          object: `${subject.kind} ${subject.namespace}/${subject.name}`,
          reason: event.reason,
          error: describeFailure(error),
        },
        "cannot record an Event",
      );
    }
  }
}
