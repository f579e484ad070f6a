/**
 * Token service metrics. Labels are bounded sets (grant, OAuth result, refusal reason codes), never
 * a subject or a client: those belong in the audit log line of each request.
 */
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import type { OAuthErrorCode } from "./errors.js";
import type { GrantLabel } from "./grants.js";

export interface IssuerMetrics {
  /** `result` is "issued" or the OAuth error code; `reason` the finer refusal code. */
  requested(
    grant: GrantLabel,
    result: "issued" | OAuthErrorCode,
    reason: string | undefined,
    seconds: number,
  ): void;
  identities(count: number, filesWithProblems: number): void;
  manifestReload(result: "changed" | "unchanged" | "failed"): void;
  signingKeys(published: number, nextRotationAtSeconds: number): void;
  rotation(result: "rotated" | "postponed"): void;
}

const GRANTS: readonly GrantLabel[] = ["client_credentials", "token_exchange"];

export function createIssuerMetrics(registry: Registry): IssuerMetrics {
  const tokens = new Counter({
    name: "custody_issuer_tokens_issued_total",
    help: 'Token requests by grant and result: "issued", or the RFC 6749 error returned.',
    labelNames: ["grant", "result"] as const,
    registers: [registry],
  });
  const refusals = new Counter({
    name: "custody_issuer_refusals_total",
    help: "Refused token requests by the check that refused them (e.g. unknown_issuer, expired, unknown_identity).",
    labelNames: ["grant", "reason"] as const,
    registers: [registry],
  });
  const latency = new Histogram({
    name: "custody_issuer_request_duration_seconds",
    help: "Time to answer a token request, from the complete request body to the response.",
    labelNames: ["grant"] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
    registers: [registry],
  });
  const identities = new Gauge({
    name: "custody_issuer_identities",
    help: "ServiceIdentities the token service currently issues tokens for.",
    registers: [registry],
  });
  const problemFiles = new Gauge({
    name: "custody_issuer_manifest_problems",
    help: "Manifest files or entries currently skipped or kept at their last good version; see the logs.",
    registers: [registry],
  });
  const reloads = new Counter({
    name: "custody_issuer_manifest_reloads_total",
    help: "Reads of the manifest directory by outcome.",
    labelNames: ["result"] as const,
    registers: [registry],
  });
  const keys = new Gauge({
    name: "custody_issuer_signing_keys",
    help: "Keys published in the JWKS (current, next, and retired keys whose tokens may still be live).",
    registers: [registry],
  });
  const nextRotation = new Gauge({
    name: "custody_issuer_next_key_rotation_timestamp_seconds",
    help: "When the next key takes over signing (Unix time).",
    registers: [registry],
  });
  const rotations = new Counter({
    name: "custody_issuer_key_rotations_total",
    help: 'Signing key rotations; "postponed" when retired keys still fill the JWKS.',
    labelNames: ["result"] as const,
    registers: [registry],
  });
  for (const grant of GRANTS) tokens.labels(grant, "issued").inc(0);
  return {
    requested(grant, result, reason, seconds) {
      tokens.labels(grant, result).inc();
      if (reason !== undefined) refusals.labels(grant, reason).inc();
      latency.labels(grant).observe(seconds);
    },
    identities(count, filesWithProblems) {
      identities.set(count);
      problemFiles.set(filesWithProblems);
    },
    manifestReload(result) {
      reloads.labels(result).inc();
    },
    signingKeys(published, nextRotationAtSeconds) {
      keys.set(published);
      nextRotation.set(nextRotationAtSeconds);
    },
    rotation(result) {
      rotations.labels(result).inc();
    },
  };
}
