/**
 * The app probes a sidecar performs for the kubelet when traffic capture is on: the contract
 * between the injection webhook, which writes them into the sidecar's CUSTODY_APP_PROBES, and the
 * sidecar, which reads them once at start.
 *
 * Why: with capture, a kubelet probe of the app's port would land on the sidecar's TLS port (the
 * app port is redirected there) and one of any other port would be reset. So the webhook points
 * each such probe at the sidecar's admin port, at /app-health/<container>/<kind>, and hands the
 * original over in this document; the sidecar then performs exactly that probe against 127.0.0.1.
 * Nothing else can be asked of it: the request only names a configured probe.
 */
import { z } from "zod";
import { ValidationError } from "./errors.js";
import { parseOrThrow } from "./issues.js";

/** The sidecar's setting (`app-probes`) as the webhook injects it. */
export const APP_PROBES_ENV = "CUSTODY_APP_PROBES";
export const APP_HEALTH_PATH_PREFIX = "/app-health/";
export const INVALID_APP_PROBES = "invalid_app_probes";

export const PROBE_KINDS = ["liveness", "readiness", "startup"] as const;
export type ProbeKind = (typeof PROBE_KINDS)[number];

/** Far above any pod (64 containers × 3 probes with headers), low enough to read without care. */
export const MAX_APP_PROBES_BYTES = 64 * 1024;
/** The sidecar never waits longer on the app, whatever the probe's timeoutSeconds said. */
export const MAX_PROBE_TIMEOUT_SECONDS = 60;
export const MAX_PROBE_HEADERS = 16;

/** RFC 9110 token: what an HTTP header name may be. */
export const HEADER_NAME_PATTERN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$/;
/** A header value without CR, LF or NUL, which could end the header or the request. */
export const HEADER_VALUE_PATTERN = /^[^\r\n\0]{0,4096}$/;
/** An origin-form request target: `/`, then visible ASCII (a query included), nothing to re-parse. */
export const PROBE_PATH_PATTERN = /^\/[\x21-\x7e]{0,2047}$/;
/** A container name, as Kubernetes requires it (a DNS label). */
const CONTAINER_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

const portSchema = z.int().min(1).max(65_535);

const httpProbeSchema = z.strictObject({
  port: portSchema,
  path: z.string().regex(PROBE_PATH_PATTERN, { error: "must be a path starting with / (visible ASCII)" }),
  scheme: z.enum(["HTTP", "HTTPS"]),
  httpHeaders: z
    .array(
      z.strictObject({
        name: z.string().regex(HEADER_NAME_PATTERN, { error: "must be an HTTP header name" }),
        value: z.string().regex(HEADER_VALUE_PATTERN, { error: "must not contain CR, LF or NUL" }),
      }),
    )
    .max(MAX_PROBE_HEADERS),
});

const tcpProbeSchema = z.strictObject({ port: portSchema });

const probeSchema = z
  .strictObject({
    http: httpProbeSchema.optional(),
    tcp: tcpProbeSchema.optional(),
    timeoutSeconds: z.int().min(1).max(MAX_PROBE_TIMEOUT_SECONDS),
  })
  .refine((probe) => (probe.http === undefined) !== (probe.tcp === undefined), {
    error: "must have exactly one of http and tcp",
  });

const containerProbesSchema = z.strictObject({
  liveness: probeSchema.optional(),
  readiness: probeSchema.optional(),
  startup: probeSchema.optional(),
});

const appProbesSchema = z
  .record(
    z.string().regex(CONTAINER_NAME, { error: "must be a container name (a DNS label)" }),
    containerProbesSchema,
  )
  .refine((probes) => Object.keys(probes).length <= 64, { error: "must name at most 64 containers" });

export type HttpProbe = z.output<typeof httpProbeSchema>;
export type TcpProbe = z.output<typeof tcpProbeSchema>;
export type AppProbe = z.output<typeof probeSchema>;
/** Per container name, per kind: the probe the kubelet would have performed. */
export type AppProbes = Readonly<Record<string, Partial<Record<ProbeKind, AppProbe>>>>;

/** Where the rewritten probe points, on the sidecar's admin port. */
export function appHealthPath(container: string, kind: ProbeKind): string {
  return `${APP_HEALTH_PATH_PREFIX}${container}/${kind}`;
}

/**
 * Reads CUSTODY_APP_PROBES strictly: anything it does not know, or any value out of bounds, is a
 * ValidationError (`invalid_app_probes`) naming the field, so a sidecar refuses to start rather
 * than answer probes it was not given.
 */
export function parseAppProbes(text: string, subject = APP_PROBES_ENV): AppProbes {
  if (Buffer.byteLength(text) > MAX_APP_PROBES_BYTES) {
    throw new ValidationError(INVALID_APP_PROBES, subject, [
      { path: "", message: `is larger than ${MAX_APP_PROBES_BYTES} bytes` },
    ]);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ValidationError(INVALID_APP_PROBES, subject, [{ path: "", message: "is not JSON" }]);
  }
  return parseOrThrow(appProbesSchema, value, INVALID_APP_PROBES, subject);
}
