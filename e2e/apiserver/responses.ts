/** Response shapes for reads and writes: objects, lists, Tables and PartialObjectMetadata. */
import type { IncomingMessage, ServerResponse } from "node:http";
import { present, type RequestScope, type ServerContext } from "./context.js";
import { type Negotiated, negotiate, sendJson } from "./http.js";
import type { JsonObject } from "./json.js";
import { listObjects } from "./reads.js";
import { apiVersionOf } from "./resources.js";
import { parseIncludeObject, partialObjectMetadata, toTable } from "./table.js";
import type { WatchRequest } from "./watch.js";

export function respondWithList(
  context: ServerContext,
  scope: RequestScope,
  request: IncomingMessage,
  response: ServerResponse,
): void {
  const negotiated = negotiate(request.headers.accept);
  const { items, metadata } = listObjects(context, scope);
  const presented = items.map((item) => present(scope.type, item));
  if (negotiated.shape === "table") {
    const includeObject = parseIncludeObject(scope.query.get("includeObject"));
    sendJson(
      response,
      200,
      toTable(scope.type, presented, metadata, negotiated.metaVersion, includeObject, Date.now()),
    );
  } else if (negotiated.shape === "metadata") {
    sendJson(response, 200, {
      kind: "PartialObjectMetadataList",
      apiVersion: `meta.k8s.io/${negotiated.metaVersion}`,
      metadata,
      items: presented.map((item) => partialObjectMetadata(item, negotiated.metaVersion)),
    });
  } else {
    sendJson(response, 200, {
      kind: scope.type.listKind,
      apiVersion: apiVersionOf(scope.type),
      metadata,
      items: presented,
    });
  }
}

/** Watch events as Tables (`kubectl get -w`: column definitions in the first event only) or metadata. */
export function shapeWatch(scope: RequestScope, negotiated: Negotiated, watch: WatchRequest): WatchRequest {
  if (negotiated.shape === "object") return watch;
  if (negotiated.shape === "metadata") {
    return {
      ...watch,
      present: (object) => partialObjectMetadata(watch.present(object), negotiated.metaVersion),
    };
  }
  const includeObject = parseIncludeObject(scope.query.get("includeObject"));
  let first = true;
  return {
    ...watch,
    present: (object) => {
      const presented = watch.present(object);
      const metadata = {
        resourceVersion: String((presented.metadata as JsonObject | undefined)?.resourceVersion ?? ""),
      };
      const table = toTable(
        scope.type,
        [presented],
        metadata,
        negotiated.metaVersion,
        includeObject,
        Date.now(),
      );
      if (!first) table.columnDefinitions = [];
      first = false;
      return table;
    },
  };
}

export function respondWithObject(
  scope: RequestScope,
  request: IncomingMessage,
  response: ServerResponse,
  object: JsonObject,
  status: number,
  headers: Record<string, string[]> = {},
): void {
  const negotiated = negotiate(request.headers.accept);
  if (negotiated.shape === "table") {
    const includeObject = parseIncludeObject(scope.query.get("includeObject"));
    const metadata = {
      resourceVersion: String((object.metadata as JsonObject | undefined)?.resourceVersion ?? ""),
    };
    sendJson(
      response,
      status,
      toTable(scope.type, [object], metadata, negotiated.metaVersion, includeObject, Date.now()),
      headers,
    );
  } else if (negotiated.shape === "metadata") {
    sendJson(response, status, partialObjectMetadata(object, negotiated.metaVersion), headers);
  } else {
    sendJson(response, status, object, headers);
  }
}
