/**
 * Typed API errors. Every failure leaves the server as a meta/v1 Status body with the reason and
 * code the real kube-apiserver uses, so clients (kubectl, client-node) classify them the same way.
 */
import type { JsonObject } from "./json.js";

export interface StatusCause {
  readonly reason: string;
  readonly message: string;
  readonly field?: string;
}

export interface StatusDetails {
  readonly name?: string;
  readonly group?: string;
  readonly kind?: string;
  readonly uid?: string;
  readonly causes?: readonly StatusCause[];
  readonly retryAfterSeconds?: number;
}

export interface GroupResource {
  readonly group: string;
  readonly resource: string;
}

export class ApiError extends Error {
  override readonly name = "ApiError";

  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details: StatusDetails = {},
  ) {
    super(message);
  }

  toStatus(): JsonObject {
    const details: JsonObject = {};
    if (this.details.name !== undefined) details.name = this.details.name;
    if (this.details.group !== undefined) details.group = this.details.group;
    if (this.details.kind !== undefined) details.kind = this.details.kind;
    if (this.details.uid !== undefined) details.uid = this.details.uid;
    if (this.details.causes !== undefined && this.details.causes.length > 0) {
      details.causes = this.details.causes.map((cause) => {
        const entry: JsonObject = { reason: cause.reason, message: cause.message };
        if (cause.field !== undefined) entry.field = cause.field;
        return entry;
      });
    }
    if (this.details.retryAfterSeconds !== undefined)
      details.retryAfterSeconds = this.details.retryAfterSeconds;
    return {
      kind: "Status",
      apiVersion: "v1",
      metadata: {},
      status: "Failure",
      message: this.message,
      reason: this.reason,
      details,
      code: this.code,
    };
  }
}

/** "secrets" or "serviceidentities.custody.dev", as the real server names a resource in messages. */
export function qualifiedResource(gr: GroupResource): string {
  return gr.group === "" ? gr.resource : `${gr.resource}.${gr.group}`;
}

export function notFound(gr: GroupResource, name: string): ApiError {
  return new ApiError(404, "NotFound", `${qualifiedResource(gr)} "${name}" not found`, {
    name,
    group: gr.group,
    kind: gr.resource,
  });
}

export function pathNotFound(): ApiError {
  return new ApiError(404, "NotFound", "the server could not find the requested resource");
}

export function alreadyExists(gr: GroupResource, name: string): ApiError {
  return new ApiError(409, "AlreadyExists", `${qualifiedResource(gr)} "${name}" already exists`, {
    name,
    group: gr.group,
    kind: gr.resource,
  });
}

export function conflict(gr: GroupResource, name: string, why: string): ApiError {
  return new ApiError(
    409,
    "Conflict",
    `Operation cannot be fulfilled on ${qualifiedResource(gr)} "${name}": ${why}`,
    {
      name,
      group: gr.group,
      kind: gr.resource,
    },
  );
}

export const STALE_OBJECT =
  "the object has been modified; please apply your changes to the latest version and try again";

/** 422 Invalid: `Kind.group "name" is invalid: field: message` like field.ErrorList.ToAggregate. */
export function invalid(kind: string, group: string, name: string, causes: readonly StatusCause[]): ApiError {
  const qualifiedKind = group === "" ? kind : `${kind}.${group}`;
  const parts = causes.map((cause) =>
    cause.field === undefined ? cause.message : `${cause.field}: ${cause.message}`,
  );
  const summary = parts.length === 1 ? (parts[0] ?? "") : `[${parts.join(", ")}]`;
  return new ApiError(422, "Invalid", `${qualifiedKind} "${name}" is invalid: ${summary}`, {
    name,
    group,
    kind,
    causes,
  });
}

export function badRequest(message: string): ApiError {
  return new ApiError(400, "BadRequest", message);
}

export function forbidden(gr: GroupResource, name: string, why: string): ApiError {
  const subject = name === "" ? qualifiedResource(gr) : `${qualifiedResource(gr)} "${name}"`;
  return new ApiError(403, "Forbidden", `${subject} is forbidden: ${why}`, {
    name,
    group: gr.group,
    kind: gr.resource,
  });
}

export function methodNotAllowed(): ApiError {
  return new ApiError(
    405,
    "MethodNotAllowed",
    "the server does not allow this method on the requested resource",
  );
}

export function notAcceptable(): ApiError {
  return new ApiError(
    406,
    "NotAcceptable",
    "only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io",
  );
}

export function unsupportedMediaType(contentType: string, accepted: readonly string[]): ApiError {
  return new ApiError(
    415,
    "UnsupportedMediaType",
    `the body of the request was in an unknown format (${contentType || "none"}) - accepted media types include: ${accepted.join(", ")}`,
  );
}

export function expired(message: string): ApiError {
  return new ApiError(410, "Expired", message);
}

export function tooLarge(message: string): ApiError {
  return new ApiError(413, "RequestEntityTooLarge", message);
}

export function tooManyRequests(message: string): ApiError {
  return new ApiError(429, "TooManyRequests", message, { retryAfterSeconds: 1 });
}

export function internalError(message: string): ApiError {
  return new ApiError(500, "InternalError", `Internal error occurred: ${message}`, {
    causes: [{ reason: "UnexpectedServerResponse", message }],
  });
}

export function timeout(message: string): ApiError {
  return new ApiError(504, "Timeout", message);
}
