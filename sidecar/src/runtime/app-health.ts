/**
 * The app's probes, performed by the sidecar for the kubelet when traffic capture is on. Capture
 * sends the kubelet's probes of the app port to the sidecar's TLS port (and resets those of other
 * ports), so the webhook points them at the admin port, `GET /app-health/<container>/<kind>`, and
 * hands the originals over (CUSTODY_APP_PROBES, crds/src/app-probes.ts). This route performs them
 * as the kubelet would: an HTTP(S) GET whose status 200-399 means healthy (HTTPS without checking
 * the certificate, as the kubelet does), or a TCP connect.
 *
 * Always against 127.0.0.1, and only the configured probes: the request names a probe and nothing
 * else, so the admin port (which any pod may reach) cannot be made to call another host or port.
 * Redirects are not followed (a 3xx is success, as the kubelet treats a redirect to another host).
 * Bounded: each probe has its timeout (at most 60 s), and concurrent requests for one probe share
 * the attempt in flight, so callers cannot multiply the connections made to the app.
 */
import { request as httpRequest, type OutgoingHttpHeaders } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect } from "node:net";
import type { AdminAnswer, AdminRoute } from "../../../cli/src/admin.js";
import {
  APP_HEALTH_PATH_PREFIX,
  type AppProbe,
  type AppProbes,
  type HttpProbe,
  PROBE_KINDS,
  type TcpProbe,
} from "../../../crds/src/app-probes.js";

/** Where every probe goes: the app's own loopback, never another address. */
const APP_HOST = "127.0.0.1";

interface Outcome {
  readonly healthy: boolean;
  readonly detail: string;
}

function settleOnce(resolve: (outcome: Outcome) => void): (outcome: Outcome) => void {
  let settled = false;
  return (outcome) => {
    if (settled) return;
    settled = true;
    resolve(outcome);
  };
}

function httpHeadersOf(probe: HttpProbe): OutgoingHttpHeaders {
  // The kubelet's defaults; the probe's own headers replace them, and repeat when listed twice.
  const headers: Record<string, string | string[]> = { "user-agent": "kube-probe/custody", accept: "*/*" };
  const given = new Set<string>();
  for (const { name, value } of probe.httpHeaders) {
    const key = name.toLowerCase();
    const current = headers[key];
    if (!given.has(key) || current === undefined) headers[key] = value;
    else headers[key] = [...(Array.isArray(current) ? current : [current]), value];
    given.add(key);
  }
  return headers;
}

function performHttp(probe: HttpProbe, timeoutMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const finish = settleOnce(resolve);
    const send = probe.scheme === "HTTPS" ? httpsRequest : httpRequest;
    const call = send(
      {
        host: APP_HOST,
        port: probe.port,
        path: probe.path,
        method: "GET",
        headers: httpHeadersOf(probe),
        agent: false,
        // As the kubelet: an HTTPS probe does not check the app's certificate.
        ...(probe.scheme === "HTTPS" ? { rejectUnauthorized: false } : {}),
      },
      (response) => {
        const status = response.statusCode ?? 0;
        // The status is the answer; the body is not read.
        response.destroy();
        clearTimeout(timer);
        finish({ healthy: status >= 200 && status < 400, detail: `status ${status}` });
      },
    );
    const timer = setTimeout(() => {
      call.destroy();
      finish({ healthy: false, detail: `no answer within ${timeoutMs / 1000} s` });
    }, timeoutMs);
    call.once("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      finish({ healthy: false, detail: error.code ?? error.message });
    });
    call.end();
  });
}

function performTcp(probe: TcpProbe, timeoutMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const finish = settleOnce(resolve);
    const socket = connect({ host: APP_HOST, port: probe.port });
    const timer = setTimeout(() => {
      socket.destroy();
      finish({ healthy: false, detail: `no connection within ${timeoutMs / 1000} s` });
    }, timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.destroy();
      finish({ healthy: true, detail: "connected" });
    });
    socket.once("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      finish({ healthy: false, detail: error.code ?? error.message });
    });
  });
}

function perform(probe: AppProbe): Promise<Outcome> {
  const timeoutMs = probe.timeoutSeconds * 1000;
  if (probe.http !== undefined) return performHttp(probe.http, timeoutMs);
  if (probe.tcp !== undefined) return performTcp(probe.tcp, timeoutMs);
  return Promise.resolve({ healthy: false, detail: "no probe action" });
}

/** The admin route `/app-health/<container>/<kind>` over the configured probes. */
export function createAppHealthRoute(probes: AppProbes): AdminRoute {
  const known = new Map<string, AppProbe>();
  for (const [container, kinds] of Object.entries(probes)) {
    for (const kind of PROBE_KINDS) {
      const probe = kinds[kind];
      if (probe !== undefined) known.set(`${container}/${kind}`, probe);
    }
  }
  const inFlight = new Map<string, Promise<Outcome>>();
  return {
    prefix: APP_HEALTH_PATH_PREFIX,
    async answer(path: string, method: string): Promise<AdminAnswer> {
      if (method !== "GET" && method !== "HEAD") {
        return { status: 405, body: { error: "method_not_allowed", reason: "method_not_allowed" } };
      }
      const name = path.slice(APP_HEALTH_PATH_PREFIX.length);
      const probe = known.get(name);
      if (probe === undefined) {
        return { status: 404, body: { error: "not_found", reason: "unknown_probe" } };
      }
      let attempt = inFlight.get(name);
      if (attempt === undefined) {
        attempt = perform(probe).finally(() => inFlight.delete(name));
        inFlight.set(name, attempt);
      }
      const outcome = await attempt;
      return outcome.healthy
        ? { status: 200, body: { status: "ok", probe: name, detail: outcome.detail } }
        : {
            status: 503,
            body: { status: "failed", reason: "probe_failed", probe: name, detail: outcome.detail },
          };
    },
  };
}
