/** Request dispatch: discovery and OpenAPI documents, reads, watches and writes. */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { RequestScope, ServerContext } from "./context.js";
import { remove, removeCollection } from "./deletes.js";
import {
  apiGroup,
  apiGroupList,
  apiResourceList,
  apiVersions,
  OPENAPI_V2_PROTOBUF,
  openApiV3Document,
  openApiV3Index,
  versionInfo,
} from "./discovery.js";
import { methodNotAllowed, pathNotFound, tooManyRequests } from "./errors.js";
import { decodeBody, mediaType, negotiate, readBody, sendJson, warningHeaders } from "./http.js";
import type { JsonObject, JsonValue } from "./json.js";
import { getObject, isWatch, listObjects, watchRequest } from "./reads.js";
import { respondWithList, respondWithObject, shapeWatch } from "./responses.js";
import { route } from "./router.js";
import { checkPatchType, create, patch, update, type WriteResult } from "./writes.js";

async function handleResource(
  context: ServerContext,
  scope: RequestScope,
  request: IncomingMessage,
  response: ServerResponse,
  watchTimeoutSeconds: number,
): Promise<void> {
  const method = request.method ?? "GET";
  if (method === "GET") {
    if (isWatch(scope.query)) {
      const negotiated = negotiate(request.headers.accept);
      if (context.watches.full) throw tooManyRequests("too many open watches");
      context.watches.serve(
        shapeWatch(scope, negotiated, watchRequest(context, scope, watchTimeoutSeconds)),
        response,
      );
      return;
    }
    if (scope.name === "") {
      respondWithList(context, scope, request, response);
      return;
    }
    respondWithObject(scope, request, response, getObject(context, scope), 200);
    return;
  }
  if (!["POST", "PUT", "PATCH", "DELETE"].includes(method)) throw methodNotAllowed();
  const contentType = request.headers["content-type"];
  if (method === "PATCH") checkPatchType(scope.type, mediaType(contentType));
  const raw = await readBody(request);
  const body: JsonValue | undefined =
    raw.length === 0 ? undefined : decodeBody(raw, method === "PATCH" ? "application/json" : contentType);
  let result: WriteResult;
  switch (method) {
    case "POST":
      result = await create(context, scope, body ?? null);
      break;
    case "PUT":
      result = await update(context, scope, body ?? null);
      break;
    case "PATCH":
      result = await patch(context, scope, body ?? null, mediaType(contentType));
      break;
    default:
      if (scope.name === "") {
        const { items } = listObjects(context, { ...scope, query: withoutPaging(scope.query) });
        result = await removeCollection(context, scope, body, items);
      } else {
        result = await remove(context, scope, body);
      }
  }
  const headers = warningHeaders(result.warnings);
  if (isObjectValue(result.body) && result.body.kind !== "Status") {
    respondWithObject(scope, request, response, result.body, result.status, headers);
  } else {
    sendJson(response, result.status, result.body, headers);
  }
}

function isObjectValue(value: JsonValue): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function withoutPaging(query: URLSearchParams): URLSearchParams {
  const copy = new URLSearchParams(query);
  copy.delete("limit");
  copy.delete("continue");
  return copy;
}

export async function handle(
  context: ServerContext,
  request: IncomingMessage,
  response: ServerResponse,
  address: () => string,
  watchTimeoutSeconds: number,
): Promise<void> {
  const url = new URL(request.url ?? "/", "http://localhost");
  const target = route(context.registry, url.pathname, url.searchParams);
  const method = request.method ?? "GET";
  if (target.kind !== "resource" && method !== "GET" && method !== "HEAD") throw methodNotAllowed();
  switch (target.kind) {
    case "health":
      response.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
      response.end("ok");
      return;
    case "version":
      sendJson(response, 200, versionInfo());
      return;
    case "api":
      sendJson(response, 200, apiVersions(address()));
      return;
    case "apis":
      sendJson(response, 200, apiGroupList(context.registry));
      return;
    case "group": {
      const group = apiGroup(context.registry, target.group);
      if (group === undefined) throw pathNotFound();
      sendJson(response, 200, group);
      return;
    }
    case "resources": {
      const list = apiResourceList(context.registry, target.group, target.version);
      if (list === undefined) throw pathNotFound();
      sendJson(response, 200, list);
      return;
    }
    case "openapi-v2":
      response.writeHead(200, {
        "Content-Type": "application/octet-stream",
        "Content-Length": OPENAPI_V2_PROTOBUF.length,
      });
      response.end(OPENAPI_V2_PROTOBUF);
      return;
    case "openapi-v3":
      sendJson(response, 200, openApiV3Index(context.registry));
      return;
    case "openapi-v3-document": {
      const document = openApiV3Document(context.registry, target.group, target.version);
      if (document === undefined) throw pathNotFound();
      sendJson(response, 200, document);
      return;
    }
    case "resource":
      await handleResource(context, target.scope, request, response, watchTimeoutSeconds);
      return;
  }
}
