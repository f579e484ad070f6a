/**
 * Watch streams: newline-delimited JSON `{type, object}` events over a chunked response, replayed
 * from the store's history after a resourceVersion, then live. Bookmarks, timeouts, 410 Gone as an
 * ERROR event (what informers re-list on), and test hooks to drop every open stream.
 */
import type { ServerResponse } from "node:http";
import type { Logger } from "pino";
import { type ApiError, expired } from "./errors.js";
import type { JsonObject } from "./json.js";
import type { EventType, Store, StoreEvent } from "./store.js";

/** A slow consumer whose unsent events exceed this is disconnected, as the real server does. */
export const MAX_BUFFERED_BYTES = 16 * 1024 * 1024;

export interface WatchRequest {
  readonly storageKey: string;
  /** The kind and apiVersion bookmarks carry (the version the client watches). */
  readonly kind: string;
  readonly apiVersion: string;
  /** Whether an object belongs to this watch (namespace, label and field selectors). */
  readonly matches: (object: JsonObject) => boolean;
  /** Rewrites a stored object for the client (apiVersion of the watched version). */
  readonly present: (object: JsonObject) => JsonObject;
  /** undefined: start now, sending the current objects as ADDED first (resourceVersion "" or "0"). */
  readonly resourceVersion: number | undefined;
  readonly bookmarks: boolean;
  /** sendInitialEvents=true: the initial ADDED events end with an annotated bookmark. */
  readonly sendInitialEvents: boolean;
  readonly timeoutSeconds: number;
  /** The current objects, for watches that start with them. */
  readonly initial: () => JsonObject[];
}

interface OpenWatch {
  readonly storageKey: string;
  close(): void;
}

export class WatchHub {
  private readonly open = new Set<OpenWatch>();

  constructor(
    private readonly store: Store,
    private readonly logger: Logger,
    private readonly bookmarkIntervalMs: number,
    private readonly maxWatches: number,
  ) {}

  get count(): number {
    return this.open.size;
  }

  get full(): boolean {
    return this.open.size >= this.maxWatches;
  }

  /** Streams events to `response` until timeout, client disconnect or dropAll(). */
  serve(request: WatchRequest, response: ServerResponse): void {
    let replay: StoreEvent[] = [];
    let gone: ApiError | undefined;
    if (request.resourceVersion !== undefined) {
      const events = this.store.eventsAfter(request.storageKey, request.resourceVersion);
      if (events === undefined) {
        gone = expired(
          `too old resource version: ${request.resourceVersion} (${this.store.compactedRevision})`,
        );
      } else {
        replay = events;
      }
    }
    response.writeHead(200, {
      "Content-Type": "application/json",
      "Cache-Control": "no-cache, private",
      "Transfer-Encoding": "chunked",
    });
    response.flushHeaders();
    const write = (type: EventType | "BOOKMARK" | "ERROR", object: JsonObject): void => {
      if (response.destroyed || response.writableEnded) return;
      response.write(`${JSON.stringify({ type, object })}\n`);
      if (response.writableLength > MAX_BUFFERED_BYTES) {
        this.logger.warn({ storageKey: request.storageKey }, "watch consumer too slow; closing the stream");
        response.destroy();
      }
    };
    if (gone !== undefined) {
      write("ERROR", gone.toStatus());
      response.end();
      return;
    }
    const bookmark = (annotations?: JsonObject): void => {
      const metadata: JsonObject = { resourceVersion: String(this.store.revision) };
      if (annotations !== undefined) metadata.annotations = annotations;
      write("BOOKMARK", { kind: request.kind, apiVersion: request.apiVersion, metadata });
    };
    const deliver = (event: StoreEvent): void => {
      if (event.storageKey !== request.storageKey) return;
      const now = request.matches(event.object);
      const before =
        event.previous !== undefined && event.type === "MODIFIED" ? request.matches(event.previous) : now;
      if (event.type === "MODIFIED" && before !== now) {
        write(now ? "ADDED" : "DELETED", request.present(event.object));
      } else if (now) {
        write(event.type, request.present(event.object));
      }
    };

    if (request.resourceVersion === undefined) {
      for (const object of request.initial())
        if (request.matches(object)) write("ADDED", request.present(object));
      if (request.sendInitialEvents && request.bookmarks) bookmark({ "k8s.io/initial-events-end": "true" });
    } else {
      for (const event of replay) deliver(event);
    }

    const unsubscribe = this.store.subscribe(deliver);
    const bookmarkTimer = request.bookmarks
      ? setInterval(() => bookmark(), this.bookmarkIntervalMs)
      : undefined;
    const timeoutTimer = setTimeout(() => watch.close(), request.timeoutSeconds * 1000);
    bookmarkTimer?.unref();
    timeoutTimer.unref();
    const watch: OpenWatch = {
      storageKey: request.storageKey,
      close: () => {
        cleanup();
        if (!response.writableEnded) response.end();
      },
    };
    const cleanup = (): void => {
      unsubscribe();
      if (bookmarkTimer !== undefined) clearInterval(bookmarkTimer);
      clearTimeout(timeoutTimer);
      this.open.delete(watch);
    };
    this.open.add(watch);
    response.on("close", cleanup);
  }

  /** Ends every open watch stream (the clients reconnect from their last resourceVersion). */
  dropAll(): number {
    const watches = [...this.open];
    for (const watch of watches) watch.close();
    return watches.length;
  }

  /** Ends the watches of a resource that stopped being served (its CRD was deleted). */
  dropResource(storageKey: string): void {
    for (const watch of [...this.open]) if (watch.storageKey === storageKey) watch.close();
  }
}
