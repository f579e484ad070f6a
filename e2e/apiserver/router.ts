/** Maps request paths to discovery documents or to a resource scope, like the real path layout. */
import type { RequestScope } from "./context.js";
import { pathNotFound } from "./errors.js";
import type { Registry } from "./registry.js";

export type Route =
  | { readonly kind: "health" }
  | { readonly kind: "version" }
  | { readonly kind: "api" }
  | { readonly kind: "apis" }
  | { readonly kind: "group"; readonly group: string }
  | { readonly kind: "resources"; readonly group: string; readonly version: string }
  | { readonly kind: "openapi-v2" }
  | { readonly kind: "openapi-v3" }
  | { readonly kind: "openapi-v3-document"; readonly group: string; readonly version: string }
  | { readonly kind: "resource"; readonly scope: RequestScope };

const MAX_PATH_LENGTH = 4096;
const SEGMENT = /^[^/]+$/;

function resourceRoute(
  registry: Registry,
  group: string,
  version: string,
  rest: string[],
  query: URLSearchParams,
): Route {
  if (rest.length === 0) return { kind: "resources", group, version };
  let namespace = "";
  let resource: string | undefined;
  let name = "";
  let subresource = "";
  const namespaceObject =
    group === "" &&
    rest[0] === "namespaces" &&
    (rest.length <= 2 || (rest.length === 3 && (rest[2] === "status" || rest[2] === "finalize")));
  if (rest[0] === "namespaces" && rest.length >= 3 && !namespaceObject) {
    if (rest.length > 5) throw pathNotFound();
    namespace = rest[1] ?? "";
    resource = rest[2];
    name = rest[3] ?? "";
    subresource = rest[4] ?? "";
  } else {
    if (rest.length > 3) throw pathNotFound();
    resource = rest[0];
    name = rest[1] ?? "";
    subresource = rest[2] ?? "";
  }
  const type = resource === undefined ? undefined : registry.lookup(group, version, resource);
  if (type === undefined) throw pathNotFound();
  if (namespace !== "" && !type.namespaced) throw pathNotFound();
  if (type.namespaced && name !== "" && namespace === "") throw pathNotFound();
  if (subresource !== "" && !(subresource === "status" && type.statusSubresource)) throw pathNotFound();
  return { kind: "resource", scope: { type, namespace, name, subresource, query } };
}

export function route(registry: Registry, pathname: string, query: URLSearchParams): Route {
  if (pathname.length > MAX_PATH_LENGTH) throw pathNotFound();
  const segments = pathname.split("/").filter((segment) => segment !== "");
  if (!segments.every((segment) => SEGMENT.test(segment))) throw pathNotFound();
  const decoded = segments.map((segment) => {
    try {
      return decodeURIComponent(segment);
    } catch {
      throw pathNotFound();
    }
  });
  const [first, second, third, fourth] = decoded;
  if (first === "healthz" || first === "livez" || first === "readyz") return { kind: "health" };
  if (first === "version" && decoded.length === 1) return { kind: "version" };
  if (first === "openapi") {
    if (second === "v2" && decoded.length === 2) return { kind: "openapi-v2" };
    if (second === "v3" && decoded.length === 2) return { kind: "openapi-v3" };
    if (second === "v3" && third === "api" && fourth !== undefined && decoded.length === 4) {
      return { kind: "openapi-v3-document", group: "", version: fourth };
    }
    if (second === "v3" && third === "apis" && fourth !== undefined && decoded.length === 5) {
      return { kind: "openapi-v3-document", group: fourth, version: decoded[4] ?? "" };
    }
    throw pathNotFound();
  }
  if (first === "api") {
    if (second === undefined) return { kind: "api" };
    return resourceRoute(registry, "", second, decoded.slice(2), query);
  }
  if (first === "apis") {
    if (second === undefined) return { kind: "apis" };
    if (third === undefined) return { kind: "group", group: second };
    return resourceRoute(registry, second, third, decoded.slice(3), query);
  }
  throw pathNotFound();
}
