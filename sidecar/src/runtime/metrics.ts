/**
 * Sidecar metrics (prom-client, on a registry of their own). Label values are bounded sets: the
 * direction, allow/deny, and reason codes — never a caller, a path or a policy name (those are in
 * the audit line of each decision).
 */
import { Counter, Gauge, Histogram, type Registry } from "prom-client";

export interface SidecarMetrics {
  inbound(
    decision: "allow" | "deny",
    reason: string,
    seconds: number,
    depth: number,
    chainBytes: number,
  ): void;
  outbound(result: "sent" | "refused", reason: string, seconds: number): void;
  identityToken(expiresAtMs: number | undefined): void;
  registry(result: "loaded" | "unchanged" | "refused", generation: number | undefined): void;
}

export function createSidecarMetrics(registry: Registry): SidecarMetrics {
  const requests = new Counter({
    name: "custody_sidecar_requests_total",
    help: "Requests by direction (inbound, outbound), decision and reason code.",
    labelNames: ["direction", "decision", "reason"] as const,
    registers: [registry],
  });
  const latency = new Histogram({
    name: "custody_sidecar_inbound_decision_seconds",
    help: "Time from the complete inbound request body to the decision: certificate, chain, policy, quota.",
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1],
    registers: [registry],
  });
  const depth = new Histogram({
    name: "custody_sidecar_chain_depth",
    help: "Elements in the Custody-Chain of allowed inbound calls.",
    buckets: [1, 2, 3, 4, 5, 6, 8, 10, 12, 16],
    registers: [registry],
  });
  const bytes = new Histogram({
    name: "custody_sidecar_chain_bytes",
    help: "Size of the received Custody-Chain header in bytes.",
    buckets: [256, 512, 1024, 2048, 4096, 8192, 16384],
    registers: [registry],
  });
  const outboundLatency = new Histogram({
    name: "custody_sidecar_outbound_duration_seconds",
    help: "Time of an outbound call through the sidecar until the peer's response headers arrive.",
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [registry],
  });
  const tokenExpiry = new Gauge({
    name: "custody_sidecar_identity_token_expiry_timestamp_seconds",
    help: "When the identity token in use expires (Unix time); 0 without one.",
    registers: [registry],
  });
  const generation = new Gauge({
    name: "custody_sidecar_registry_generation",
    help: "Generation of the registry in use.",
    registers: [registry],
  });
  const reloads = new Counter({
    name: "custody_sidecar_registry_reloads_total",
    help: 'Registry reads by outcome; "refused" keeps the last good registry (see the logs).',
    labelNames: ["result"] as const,
    registers: [registry],
  });
  // A labelled child per series, looked up once: prom-client hashes the label values on every
  // labels() call. Bounded: directions × decisions × reason codes, all fixed in the code.
  const series = new Map<string, Counter.Internal>();
  const count = (direction: string, decision: string, reason: string) => {
    const key = `${direction} ${decision} ${reason}`;
    let child = series.get(key);
    if (child === undefined) {
      child = requests.labels(direction, decision, reason);
      series.set(key, child);
    }
    child.inc();
  };
  return {
    inbound(decision, reason, seconds, chainDepth, chainBytes) {
      count("inbound", decision, reason);
      latency.observe(seconds);
      if (decision === "allow") depth.observe(chainDepth);
      if (chainBytes > 0) bytes.observe(chainBytes);
    },
    outbound(result, reason, seconds) {
      count("outbound", result === "sent" ? "allow" : "deny", reason);
      if (result === "sent") outboundLatency.observe(seconds);
    },
    identityToken(expiresAtMs) {
      tokenExpiry.set(expiresAtMs === undefined ? 0 : expiresAtMs / 1000);
    },
    registry(result, current) {
      reloads.labels(result).inc();
      if (current !== undefined) generation.set(current);
    },
  };
}
