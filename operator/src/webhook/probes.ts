/**
 * Probes under traffic capture, rewritten as Istio rewrites them. The kubelet probes from the
 * node, through the pod's network interface: with capture, an httpGet or tcpSocket probe of the app
 * port would reach the sidecar's TLS port instead (a TCP probe would pass while the app is down, an
 * HTTP one fail while it is up), and one of any other captured port would be reset. So each such
 * probe is pointed at the sidecar's admin port, `GET /app-health/<container>/<kind>`, and the
 * original goes to the sidecar (CUSTODY_APP_PROBES), which performs it against 127.0.0.1.
 *
 * Left as they are: probes of a port that stays reachable (the sidecar's, an excluded one), probes
 * of another host (`host:` set: they never enter the pod's network namespace), exec probes (run in
 * the container) and gRPC probes (not rewritten: point them at an excluded port, or use exec). A
 * named port that the container does not declare is left for the kubelet to fail, as without
 * Custody; a port the API server would refuse (a string of digits) is left for it to refuse.
 */
import {
  type AppProbe,
  type AppProbes,
  appHealthPath,
  HEADER_NAME_PATTERN,
  HEADER_VALUE_PATTERN,
  MAX_PROBE_HEADERS,
  MAX_PROBE_TIMEOUT_SECONDS,
  PROBE_KINDS,
  PROBE_PATH_PATTERN,
  type ProbeKind,
} from "../../../crds/src/app-probes.js";
import { CustodyError } from "../../../crds/src/errors.js";
import { recordOf } from "./records.js";
import type { JsonPatchOp } from "./review.js";

/** A probe the sidecar could not perform faithfully: `invalid_probe`, naming it. */
export class ProbeRewriteError extends CustodyError {
  constructor(message: string) {
    super("invalid_probe", message);
  }
}

/** A container of the pod that the kubelet probes, and where it is in the pod's spec. */
export interface ProbedContainer {
  readonly list: "containers" | "initContainers";
  readonly index: number;
  readonly container: Readonly<Record<string, unknown>>;
}

export interface ProbeRewrite {
  readonly ops: JsonPatchOp[];
  /** What the sidecar performs instead; empty when no probe was rewritten. */
  readonly probes: AppProbes;
}

const FIELD: Readonly<Record<ProbeKind, string>> = {
  liveness: "livenessProbe",
  readiness: "readinessProbe",
  startup: "startupProbe",
};
/** What Kubernetes accepts as a port name (IANA_SVC_NAME): at least one letter. */
const PORT_NAME = /^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$/;

/** The port number a probe means, or undefined when it cannot be told (left to the kubelet). */
function resolvePort(port: unknown, container: Readonly<Record<string, unknown>>): number | undefined {
  if (typeof port === "number") return port;
  if (typeof port !== "string" || !PORT_NAME.test(port) || !/[a-z]/.test(port)) return undefined;
  const declared = Array.isArray(container.ports) ? container.ports : [];
  const named = declared.map(recordOf).find((entry) => entry?.name === port);
  return typeof named?.containerPort === "number" ? named.containerPort : undefined;
}

function timeoutOf(probe: Readonly<Record<string, unknown>>): number {
  const given = probe.timeoutSeconds;
  // The kubelet's default is 1 s; the sidecar gives the app at most a minute whatever was asked.
  if (typeof given !== "number" || !Number.isInteger(given) || given < 1) return 1;
  return Math.min(given, MAX_PROBE_TIMEOUT_SECONDS);
}

function httpProbe(
  action: Readonly<Record<string, unknown>>,
  port: number,
  label: string,
): NonNullable<AppProbe["http"]> {
  const rawPath = action.path ?? "";
  if (typeof rawPath !== "string") throw new ProbeRewriteError(`${label}: httpGet.path must be a string.`);
  // As the kubelet reads it: no path is "/", a path without its leading slash gets one.
  const path = rawPath.startsWith("/") ? rawPath : `/${rawPath}`;
  if (!PROBE_PATH_PATTERN.test(path)) {
    throw new ProbeRewriteError(
      `${label}: httpGet.path "${path.slice(0, 64)}" must be at most 2048 visible ASCII characters (percent-encode the rest) for the sidecar to perform it.`,
    );
  }
  const scheme = action.scheme ?? "HTTP";
  if (scheme !== "HTTP" && scheme !== "HTTPS") {
    throw new ProbeRewriteError(`${label}: httpGet.scheme must be HTTP or HTTPS.`);
  }
  const rawHeaders = action.httpHeaders ?? [];
  if (!Array.isArray(rawHeaders) || rawHeaders.length > MAX_PROBE_HEADERS) {
    throw new ProbeRewriteError(
      `${label}: httpGet.httpHeaders must be a list of at most ${MAX_PROBE_HEADERS}.`,
    );
  }
  const httpHeaders = rawHeaders.map((entry) => {
    const header = recordOf(entry);
    const name = header?.name;
    const value = header?.value ?? "";
    if (typeof name !== "string" || !HEADER_NAME_PATTERN.test(name)) {
      throw new ProbeRewriteError(`${label}: httpGet.httpHeaders: a header name is not an HTTP header name.`);
    }
    if (typeof value !== "string" || !HEADER_VALUE_PATTERN.test(value)) {
      throw new ProbeRewriteError(
        `${label}: httpGet.httpHeaders: the value of ${name} must be at most 4096 characters without CR, LF or NUL.`,
      );
    }
    return { name, value };
  });
  return { port, path, scheme, httpHeaders };
}

/**
 * The probe the sidecar performs instead of `probe`, or undefined when `probe` is left as it is.
 * Throws ProbeRewriteError when it would have to be rewritten but cannot be carried faithfully.
 */
function captured(
  probe: Readonly<Record<string, unknown>>,
  container: Readonly<Record<string, unknown>>,
  reachable: (port: number) => boolean,
  label: string,
): AppProbe | undefined {
  const http = recordOf(probe.httpGet);
  const tcp = recordOf(probe.tcpSocket);
  const grpc = recordOf(probe.grpc);
  // A gRPC probe of a captured port would fail for ever (a liveness probe: restarts without end),
  // and the sidecar cannot perform it: refused now rather than a pod that never becomes healthy.
  if (grpc !== undefined && typeof grpc.port === "number" && !reachable(grpc.port)) {
    throw new ProbeRewriteError(
      `${label} is a gRPC probe of port ${grpc.port}, which capture sends to the sidecar: use an httpGet or tcpSocket probe, or exclude the port (custody.dev/capture-exclude-inbound-ports).`,
    );
  }
  const action = http ?? tcp;
  if (action === undefined) return undefined;
  if (typeof action.host === "string" && action.host !== "") return undefined;
  const port = resolvePort(action.port, container);
  if (port === undefined || !Number.isInteger(port) || port < 1 || port > 65_535 || reachable(port)) {
    return undefined;
  }
  const timeoutSeconds = timeoutOf(probe);
  return http === undefined
    ? { tcp: { port }, timeoutSeconds }
    : { http: httpProbe(http, port, label), timeoutSeconds };
}

/**
 * The patch that points every captured httpGet/tcpSocket probe of `containers` at the sidecar's
 * admin port, and the probes the sidecar performs in their place. `reachable(port)` tells the
 * ports capture leaves open; `podLabel` names the pod in refusals.
 */
export function rewriteProbes(
  containers: readonly ProbedContainer[],
  reachable: (port: number) => boolean,
  adminPort: number,
  podLabel: string,
): ProbeRewrite {
  const ops: JsonPatchOp[] = [];
  const probes: Record<string, Partial<Record<ProbeKind, AppProbe>>> = {};
  for (const { list, index, container } of containers) {
    const name = String(container.name);
    for (const kind of PROBE_KINDS) {
      const probe = recordOf(container[FIELD[kind]]);
      if (probe === undefined) continue;
      const label = `${podLabel}: container "${name}" ${FIELD[kind]}`;
      const original = captured(probe, container, reachable, label);
      if (original === undefined) continue;
      const { httpGet: _http, tcpSocket: _tcp, ...timing } = probe;
      ops.push({
        op: "replace",
        path: `/spec/${list}/${index}/${FIELD[kind]}`,
        value: { ...timing, httpGet: { path: appHealthPath(name, kind), port: adminPort, scheme: "HTTP" } },
      });
      probes[name] = { ...probes[name], [kind]: original };
    }
  }
  return { ops, probes };
}
