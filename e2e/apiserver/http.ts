/** HTTP plumbing: bounded bodies, content negotiation and JSON/Status responses. */
import type { IncomingMessage, ServerResponse } from "node:http";
import { parse as parseYaml } from "yaml";
import { ApiError, badRequest, notAcceptable, tooLarge } from "./errors.js";
import type { JsonValue } from "./json.js";
import { decodeProtobuf, PROTOBUF } from "./protobuf.js";

/** The real server's request body limit. */
export const MAX_BODY_BYTES = 3 * 1024 * 1024;

/** Reads the whole body; 413 as soon as it exceeds the limit (by Content-Length or by counting). */
export async function readBody(request: IncomingMessage, limit = MAX_BODY_BYTES): Promise<Buffer> {
  const declared = Number(request.headers["content-length"] ?? "0");
  if (declared > limit) {
    request.resume();
    throw tooLarge(`Request entity too large: limit is ${limit}`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > limit) {
      request.resume();
      throw tooLarge(`Request entity too large: limit is ${limit}`);
    }
    chunks.push(buffer);
  }
  return Buffer.concat(chunks);
}

/** The media type without parameters, lower-cased ("application/json"). */
export function mediaType(header: string | undefined): string {
  return (header ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
}

/** Decodes a JSON or YAML request body (the real server accepts both for objects). */
export function decodeBody(body: Buffer, contentType: string | undefined): JsonValue {
  const type = mediaType(contentType);
  if (type === PROTOBUF) return decodeProtobuf(body);
  const text = body.toString("utf8");
  if (type === "application/yaml" || type === "application/apply-patch+yaml") {
    try {
      return parseYaml(text, { maxAliasCount: 100 }) as JsonValue;
    } catch (error) {
      throw badRequest(
        `the body of the request is not valid YAML: ${error instanceof Error ? error.message : String(error)}`,
      );
    }
  }
  if (type !== "" && type !== "application/json" && !type.endsWith("+json") && type !== "*/*") {
    throw new ApiError(
      415,
      "UnsupportedMediaType",
      `the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf`,
    );
  }
  try {
    return JSON.parse(text) as JsonValue;
  } catch (error) {
    throw badRequest(
      `couldn't get version/kind; json parse error: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
}

export type ResponseShape = "object" | "table" | "metadata";

export interface Negotiated {
  readonly shape: ResponseShape;
  /** apiVersion of a Table/PartialObjectMetadata answer (meta.k8s.io/v1 or v1beta1). */
  readonly metaVersion: string;
}

/**
 * Content negotiation for reads: JSON objects, or `as=Table` / `as=PartialObjectMetadata(List)`
 * from meta.k8s.io when the client prefers them. Protobuf-only clients get 406.
 */
export function negotiate(accept: string | undefined): Negotiated {
  if (accept === undefined || accept.trim() === "") return { shape: "object", metaVersion: "v1" };
  let json = false;
  for (const entry of accept.split(",")) {
    const [type, ...parameters] = entry.split(";").map((part) => part.trim());
    const params = new Map(
      parameters.map((parameter) => {
        const [key, value] = parameter.split("=");
        return [(key ?? "").trim(), (value ?? "").trim()] as const;
      }),
    );
    const base = (type ?? "").toLowerCase();
    if (base !== "application/json" && base !== "*/*" && base !== "application/*") continue;
    const as = params.get("as");
    if (as === undefined) {
      json = true;
      break;
    }
    if (params.get("g") !== "meta.k8s.io") continue;
    const version = params.get("v") ?? "v1";
    if (version !== "v1" && version !== "v1beta1") continue;
    if (as === "Table") return { shape: "table", metaVersion: version };
    if (as === "PartialObjectMetadata" || as === "PartialObjectMetadataList")
      return { shape: "metadata", metaVersion: version };
  }
  if (!json) throw notAcceptable();
  return { shape: "object", metaVersion: "v1" };
}

export function sendJson(
  response: ServerResponse,
  status: number,
  body: JsonValue,
  headers: Record<string, string | string[]> = {},
): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    "Content-Type": "application/json",
    "Cache-Control": "no-cache, private",
    "Content-Length": Buffer.byteLength(text),
    ...headers,
  });
  response.end(text);
}

export function sendError(response: ServerResponse, error: ApiError): void {
  sendJson(response, error.code, error.toStatus());
}

/** RFC 7234 Warning headers, as the real server sends admission and validation warnings. */
export function warningHeaders(warnings: readonly string[]): Record<string, string[]> {
  if (warnings.length === 0) return {};
  const unique = [...new Set(warnings)].slice(0, 64);
  return { Warning: unique.map((warning) => `299 - ${JSON.stringify(warning.replace(/[\r\n]/g, " "))}`) };
}
