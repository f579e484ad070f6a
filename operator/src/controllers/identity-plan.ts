/**
 * The credential lifecycle of one identity as a function of its Secret, its spec and the clock:
 * what the Secret should hold next, what happened (events) and when to look again. Rotation never
 * leaves a gap: the next key is issued and *published* first, the Secret switches to it only after
 * the registry carrying it has had `propagationDelayMs` to reach every sidecar, and the previous
 * public key stays published until its certificate expires.
 */
import type { ServiceIdentity } from "../../../crds/src/service-identity.js";
import { certificateTimings, serviceAccountNameOf } from "../../../crds/src/service-identity.js";
import type { StoreEvent } from "../store/store.js";
import type { IdentityMaterial, KeyMaterial } from "./identity-secret.js";

export interface PlanInput {
  readonly identity: ServiceIdentity;
  /** What the Secret holds now; undefined when it is absent or unusable. */
  readonly material: IdentityMaterial | undefined;
  /** Why an existing Secret is unusable, for the event. */
  readonly unusable?: string;
  readonly caPem: string;
  readonly nowMs: number;
  readonly propagationDelayMs: number;
  /** Whether every namespace's registry carries this kid. */
  readonly isPublished: (kid: string) => boolean;
  /** Issues a key pair and certificate for the identity's current certificate profile. */
  readonly issue: (profile: string) => Promise<KeyMaterial>;
}

export interface Plan {
  readonly material: IdentityMaterial;
  /** False when the Secret already holds exactly `material`. */
  readonly changed: boolean;
  readonly events: readonly StoreEvent[];
  /** When the next time-driven step is due (renewal, promotion, withdrawal of the previous key). */
  readonly wakeAtMs: number | undefined;
}

/**
 * What a certificate is issued for: a change of any part re-issues (through a normal rotation).
 * The service account is part of it: handing an identity to another service account must take
 * the key away from the pods of the previous one, which hold it in memory until it is replaced.
 */
export function certificateProfile(identity: ServiceIdentity): string {
  const { keyAlgorithm, duration } = identity.spec.certificate;
  return `${keyAlgorithm}/${duration}/sa=${serviceAccountNameOf(identity)}`;
}

export async function planIdentity(input: PlanInput): Promise<Plan> {
  const { identity, nowMs } = input;
  const profile = certificateProfile(identity);
  const events: StoreEvent[] = [];
  const { renewBeforeMs } = certificateTimings(identity);

  if (input.material === undefined || input.material.current.certificate.notAfter.getTime() <= nowMs) {
    const current = await input.issue(profile);
    const why =
      input.material !== undefined
        ? "the certificate had expired"
        : input.unusable !== undefined
          ? `${input.unusable}`
          : undefined;
    events.push({
      type: why === undefined ? "Normal" : "Warning",
      reason: "CertificateIssued",
      message: `issued certificate ${current.certificate.serialNumber.toLowerCase()} (key ${current.kid}), valid until ${current.certificate.notAfter.toISOString()}${why === undefined ? "" : `, replacing the Secret's: ${why}`}`,
    });
    const material: IdentityMaterial = { current, caPem: input.caPem };
    return {
      material,
      changed: true,
      events,
      wakeAtMs: wakeOf(material, renewBeforeMs, input.propagationDelayMs),
    };
  }

  let material: IdentityMaterial = input.material;
  let changed = false;
  const update = (next: IdentityMaterial) => {
    material = next;
    changed = true;
  };

  if (material.caPem !== input.caPem) update({ ...material, caPem: input.caPem });

  if (material.previous !== undefined && material.previous.notAfterMs <= nowMs) {
    events.push({
      type: "Normal",
      reason: "PreviousKeyWithdrawn",
      message: `key ${material.previous.kid} expired and is no longer published`,
    });
    const { previous: _expired, ...rest } = material;
    update(rest);
  }

  const renewAt = material.current.certificate.notAfter.getTime() - renewBeforeMs;
  const renewalDue = nowMs >= renewAt || material.current.profile !== profile;
  if (renewalDue && (material.next === undefined || material.next.profile !== profile)) {
    const next = await input.issue(profile);
    const { nextPublishedAtMs: _stale, ...rest } = material;
    update({ ...rest, next });
    events.push({
      type: "Normal",
      reason: "RotationStarted",
      message: `issued the next certificate ${next.certificate.serialNumber.toLowerCase()} (key ${next.kid}); it is published before the workload switches to it`,
    });
  }

  if (
    material.next !== undefined &&
    material.nextPublishedAtMs === undefined &&
    input.isPublished(material.next.kid)
  ) {
    update({ ...material, nextPublishedAtMs: nowMs });
  }

  const next = material.next;
  const publishedAt = material.nextPublishedAtMs;
  if (next !== undefined && publishedAt !== undefined && nowMs >= publishedAt + input.propagationDelayMs) {
    const old = material.current;
    update({
      current: next,
      previous: { kid: old.kid, jwk: old.jwk, notAfterMs: old.certificate.notAfter.getTime() },
      caPem: material.caPem,
    });
    events.push({
      type: "Normal",
      reason: "CertificateRotated",
      message: `the workload now uses key ${next.kid}; key ${old.kid} stays published until ${old.certificate.notAfter.toISOString()}`,
    });
  }

  return { material, changed, events, wakeAtMs: wakeOf(material, renewBeforeMs, input.propagationDelayMs) };
}

function wakeOf(
  material: IdentityMaterial,
  renewBeforeMs: number,
  propagationDelayMs: number,
): number | undefined {
  const times: number[] = [material.current.certificate.notAfter.getTime()];
  if (material.next === undefined)
    times.push(material.current.certificate.notAfter.getTime() - renewBeforeMs);
  if (material.nextPublishedAtMs !== undefined) times.push(material.nextPublishedAtMs + propagationDelayMs);
  if (material.previous !== undefined) times.push(material.previous.notAfterMs);
  return Math.min(...times);
}
