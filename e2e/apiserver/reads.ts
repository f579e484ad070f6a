/** GET of one object, lists (selectors, pagination) and watch parameters. */

import { present, type RequestScope, type ServerContext, storageKey } from "./context.js";
import { badRequest, expired, notFound, timeout } from "./errors.js";
import type { JsonObject } from "./json.js";
import { nameOf, namespaceOf, objectKey } from "./meta.js";
import { apiVersionOf, groupResource } from "./resources.js";
import { labelsOf, parseFieldSelector, parseLabelSelector } from "./selectors.js";
import type { WatchRequest } from "./watch.js";

export const DEFAULT_WATCH_TIMEOUT_SECONDS = 30 * 60;
export const MAX_WATCH_TIMEOUT_SECONDS = 60 * 60;
const CONTINUE_VERSION = "meta.k8s.io/v1";

export interface ListResult {
  /** Stored objects of the page (not yet presented). */
  readonly items: JsonObject[];
  readonly metadata: JsonObject;
}

export function getObject(context: ServerContext, scope: RequestScope): JsonObject {
  const object = context.store.get(storageKey(scope), scope.namespace, scope.name);
  if (object === undefined) throw notFound(groupResource(scope.type), scope.name);
  return present(scope.type, object);
}

function parseRevision(value: string | null, parameter: string): number | undefined {
  if (value === null || value === "" || value === "0") return undefined;
  if (!/^[0-9]{1,15}$/.test(value))
    throw badRequest(`${parameter}: Invalid value: "${value}": must be a resource version`);
  return Number(value);
}

function matcher(scope: RequestScope): (object: JsonObject) => boolean {
  const labels = parseLabelSelector(scope.query.get("labelSelector"));
  const fields = parseFieldSelector(scope.query.get("fieldSelector"), [
    "metadata.name",
    "metadata.namespace",
    ...scope.type.strategy.selectableFields,
  ]);
  const name = scope.name;
  return (object) =>
    (scope.namespace === "" || namespaceOf(object) === scope.namespace) &&
    (name === "" || nameOf(object) === name) &&
    labels.matches(labelsOf(object)) &&
    fields.matches(object);
}

interface ContinueToken {
  readonly rv: number;
  readonly start: string;
}

function encodeContinue(token: ContinueToken): string {
  return Buffer.from(JSON.stringify({ v: CONTINUE_VERSION, rv: token.rv, start: token.start })).toString(
    "base64url",
  );
}

function decodeContinue(value: string): ContinueToken {
  try {
    const parsed = JSON.parse(Buffer.from(value, "base64url").toString("utf8")) as Record<string, unknown>;
    if (parsed.v === CONTINUE_VERSION && typeof parsed.rv === "number" && typeof parsed.start === "string") {
      return { rv: parsed.rv, start: parsed.start };
    }
  } catch {
    // fall through
  }
  throw badRequest("continue key is not valid: the token is not one this server issued");
}

/**
 * A list page. `continue` pages carry the first page's resourceVersion; they read current state
 * (not a snapshot at that revision), which is consistent for list-then-watch clients. A token older
 * than the watch history gets 410 Expired like the real server's compacted tokens.
 */
export function listObjects(context: ServerContext, scope: RequestScope): ListResult {
  const matches = matcher(scope);
  const limitText = scope.query.get("limit");
  const limit = limitText === null || limitText === "" ? 0 : Number(limitText);
  if (!Number.isInteger(limit) || limit < 0)
    throw badRequest(`limit: Invalid value: "${limitText}": must be a non-negative integer`);
  const continueText = scope.query.get("continue");
  const token = continueText === null || continueText === "" ? undefined : decodeContinue(continueText);
  const requested = parseRevision(scope.query.get("resourceVersion"), "resourceVersion");
  if (requested !== undefined && requested > context.store.revision) {
    throw timeout(`Too large resource version: ${requested}, current: ${context.store.revision}`);
  }
  if (token !== undefined && token.rv < context.store.compactedRevision) {
    throw expired(
      "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
    );
  }
  const revision = token?.rv ?? context.store.revision;
  const all = context.store
    .list(storageKey(scope), scope.namespace === "" ? undefined : scope.namespace)
    .filter((object) => token === undefined || objectKey(namespaceOf(object), nameOf(object)) > token.start)
    .filter(matches);
  const items = limit > 0 ? all.slice(0, limit) : all;
  const metadata: JsonObject = { resourceVersion: String(revision) };
  const last = items[items.length - 1];
  if (limit > 0 && all.length > items.length && last !== undefined) {
    metadata.continue = encodeContinue({ rv: revision, start: objectKey(namespaceOf(last), nameOf(last)) });
    if (!scope.query.get("labelSelector") && !scope.query.get("fieldSelector")) {
      metadata.remainingItemCount = all.length - items.length;
    }
  }
  return { items, metadata };
}

function booleanParameter(value: string | null): boolean {
  return value === "1" || value === "true";
}

export function isWatch(query: URLSearchParams): boolean {
  return booleanParameter(query.get("watch"));
}

export function watchRequest(
  context: ServerContext,
  scope: RequestScope,
  defaultTimeoutSeconds: number,
): WatchRequest {
  const matches = matcher(scope);
  const timeoutText = scope.query.get("timeoutSeconds");
  const requestedTimeout =
    timeoutText === null || timeoutText === "" ? defaultTimeoutSeconds : Number(timeoutText);
  if (!Number.isFinite(requestedTimeout) || requestedTimeout < 0) {
    throw badRequest(`timeoutSeconds: Invalid value: "${timeoutText}": must be a non-negative number`);
  }
  const sendInitialEvents = booleanParameter(scope.query.get("sendInitialEvents"));
  let resourceVersion = parseRevision(scope.query.get("resourceVersion"), "resourceVersion");
  if (sendInitialEvents) resourceVersion = undefined;
  return {
    storageKey: storageKey(scope),
    kind: scope.type.kind,
    apiVersion: apiVersionOf(scope.type),
    matches,
    present: (object) => present(scope.type, object),
    resourceVersion,
    bookmarks: booleanParameter(scope.query.get("allowWatchBookmarks")),
    sendInitialEvents,
    timeoutSeconds: Math.min(
      requestedTimeout === 0 ? defaultTimeoutSeconds : requestedTimeout,
      MAX_WATCH_TIMEOUT_SECONDS,
    ),
    initial: () =>
      context.store.list(storageKey(scope), scope.namespace === "" ? undefined : scope.namespace),
  };
}
