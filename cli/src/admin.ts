/**
 * The admin port every long-running component serves (plain HTTP): `/metrics` (Prometheus),
 * `/healthz` (the process answers), `/readyz` (what the component says about itself), and the
 * metrics registry behind it. A component may add routes of its own (the sidecar answers the
 * kubelet's rewritten app probes here), each owning the paths under one prefix.
 */
import { createServer, type Server } from "node:http";
import { collectDefaultMetrics, Registry } from "prom-client";

/** A registry with Node's process metrics under `prefix`, minus what promtool refuses. */
export function createMetricsRegistry(prefix: string): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix });
  // prom-client names three gauges `*_total`, a suffix Prometheus reserves for counters (promtool
  // check metrics fails on them); the gauges without the suffix break the same counts down by type.
  for (const name of ["active_handles_total", "active_requests_total", "active_resources_total"]) {
    registry.removeSingleMetric(`${prefix}nodejs_${name}`);
  }
  return registry;
}

export interface Readiness {
  /** 200 when ready, 503 when not. */
  readonly status: 200 | 503;
  readonly body: Readonly<Record<string, unknown>>;
}

/** An answer of an added route: a JSON body, and its status. */
export interface AdminAnswer {
  readonly status: number;
  readonly body: Readonly<Record<string, unknown>>;
}

/**
 * A route of a component's own: it answers every request whose path starts with `prefix` (never
 * /metrics, /healthz or /readyz), with the path and method it was asked for.
 */
export interface AdminRoute {
  readonly prefix: string;
  answer(path: string, method: string): Promise<AdminAnswer>;
}

export function createAdminServer(
  registry: Registry,
  readiness: () => Readiness,
  routes: readonly AdminRoute[] = [],
): Server {
  return createServer({ maxHeaderSize: 8 * 1024, requestTimeout: 10_000 }, (request, response) => {
    const json = (status: number, body: unknown) => {
      const text = JSON.stringify(body);
      response.writeHead(status, {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(text),
        "cache-control": "no-store",
      });
      response.end(text);
    };
    const path = (request.url ?? "").split("?")[0];
    if (path === "/healthz") return json(200, { status: "ok" });
    if (path === "/readyz") {
      const { status, body } = readiness();
      return json(status, body);
    }
    if (path === "/metrics") {
      void registry.metrics().then((text) => {
        response.writeHead(200, { "content-type": registry.contentType });
        response.end(text);
      });
      return;
    }
    const route = routes.find((candidate) => path?.startsWith(candidate.prefix) === true);
    if (route !== undefined && path !== undefined) {
      route.answer(path, request.method ?? "GET").then(
        (answer) => json(answer.status, answer.body),
        () => json(500, { error: "internal_error" }),
      );
      return;
    }
    json(404, { error: "not_found" });
  });
}
