/**
 * ServiceIdentity → Secret `custody-identity.<namespace>.<name>` (in the operator's namespace) and status. Idempotent: it reads the Secret,
 * asks identity-plan what it should hold, writes it only when that differs, and reports. Every
 * step is safe to repeat after a crash: a certificate is issued only when the Secret (read fresh
 * after a conflict) has none usable, and the Secret is the only place keys live.
 */
import type { Logger } from "pino";
import { serviceId } from "../../../crds/src/names.js";
import type { ServiceIdentity } from "../../../crds/src/service-identity.js";
import { certificateTimings } from "../../../crds/src/service-identity.js";
import type { CertificateAuthority } from "../../../pki/src/ca.js";
import { issueCertificate } from "../../../pki/src/issue.js";
import type { KeyAlgorithm as PkiKeyAlgorithm } from "../../../pki/src/keys.js";
import {
  IDENTITY,
  keyOf,
  type ObjectKey,
  type Store,
  StoreConflictError,
  type StoredResource,
  type StoredSecret,
} from "../store/store.js";
import type { Catalog } from "./catalog.js";
import {
  type DesiredCondition,
  kubernetesTime,
  mergeConditions,
  readyCondition,
  sameStatus,
} from "./conditions.js";
import { planIdentity } from "./identity-plan.js";
import {
  fingerprintOf,
  type IdentityMaterial,
  identitySecretKey,
  identitySecretOf,
  type KeyMaterial,
  keyMaterialOf,
  secretBelongsTo,
  serialOf,
} from "./identity-secret.js";
import type { WorkResult } from "./queue.js";

const PKI_ALGORITHMS: Record<ServiceIdentity["spec"]["certificate"]["keyAlgorithm"], PkiKeyAlgorithm> = {
  "ECDSA-P256": "ecdsa-p256",
  Ed25519: "ed25519",
  "RSA-2048": "rsa-2048",
};
/** Fresh reads after a conflict before giving the key back to the queue's back-off. */
const CONFLICT_ATTEMPTS = 3;

export interface IdentityControllerOptions {
  readonly store: Store;
  readonly catalog: Catalog;
  readonly ca: CertificateAuthority;
  /** The operator's own namespace: every identity's Secret lives there, none in a workload's. */
  readonly stateNamespace: string;
  /**
   * ca.crt of every identity Secret: Custody's CA alone. A workload trusts it for its peers and for
   * the token service; a partner CA there could impersonate either.
   */
  readonly meshBundlePem: () => string;
  readonly propagationDelayMs: number;
  readonly isPublished: (kid: string) => boolean;
  readonly logger: Logger;
  readonly now: () => number;
  readonly issued?: () => void;
  /** The current certificate's notAfter of an identity, or undefined once it is gone. */
  readonly certificateExpiry?: (identity: ObjectKey, notAfterMs: number | undefined) => void;
}

export class IdentityController {
  constructor(private readonly options: IdentityControllerOptions) {}

  async reconcile(key: ObjectKey): Promise<WorkResult> {
    const { store, catalog } = this.options;
    const resource = store.resource(IDENTITY, key);
    if (resource === undefined) {
      catalog.forget("identity", key);
      this.options.certificateExpiry?.(key, undefined);
      await this.#removeOrphanSecret(key);
      return {};
    }
    const identity = catalog.effectiveIdentity(resource);
    const check = catalog.checkIdentity(resource);
    if (identity === undefined) {
      await this.#writeStatus(
        resource,
        invalidConditions(resource, check.ok ? "" : check.message),
        undefined,
      );
      return {};
    }

    const secretKey = identitySecretKey(this.options.stateNamespace, key);
    let secret = store.secret(secretKey);
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await this.#converge(resource, identity, secret);
        this.options.certificateExpiry?.(key, result.material.current.certificate.notAfter.getTime());
        const conditions = this.#conditions(resource, result.material, check.ok ? undefined : check.message);
        await this.#writeStatus(resource, conditions, result.material);
        return result.wakeAtMs === undefined
          ? {}
          : { requeueAfterMs: Math.max(0, result.wakeAtMs - this.options.now()) };
      } catch (error) {
        if (!(error instanceof StoreConflictError) || attempt >= CONFLICT_ATTEMPTS) {
          // Told to the object's owner as well as the log: `kubectl describe si` shows why it is stuck.
          store.recordEvent(IDENTITY, resource, resource.uid, {
            type: "Warning",
            reason: "ReconcileFailed",
            message: `${error instanceof Error ? error.message : String(error)}; retrying with back-off`,
          });
          throw error;
        }
        secret = await store.readSecret(secretKey);
      }
    }
  }

  async #converge(
    resource: StoredResource,
    identity: ServiceIdentity,
    secret: StoredSecret | undefined,
  ): Promise<{ material: IdentityMaterial; wakeAtMs: number | undefined }> {
    const { store, catalog, logger } = this.options;
    // A Secret left by a deleted identity of the same name (its garbage collection pending) is not
    // ours to reuse: the new object gets new keys.
    const ownedByThis = secret !== undefined && secretBelongsTo(secret, resource);
    const read = secret !== undefined && ownedByThis ? catalog.material(secret) : undefined;
    const plan = await planIdentity({
      identity,
      material: read !== undefined && "material" in read ? read.material : undefined,
      ...(read !== undefined && "problem" in read ? { unusable: read.problem } : {}),
      caPem: this.options.meshBundlePem(),
      nowMs: this.options.now(),
      propagationDelayMs: this.options.propagationDelayMs,
      isPublished: this.options.isPublished,
      issue: (profile) => this.#issue(resource, identity, profile),
    });
    if (plan.changed) {
      const written = await store.writeSecret(
        identitySecretOf(this.options.stateNamespace, resource, plan.material, secret?.resourceVersion),
      );
      catalog.rememberMaterial(written, plan.material);
      for (const event of plan.events) {
        store.recordEvent(IDENTITY, resource, resource.uid, event);
        logger.info(
          { event: "identity_event", identity: keyOf(resource), reason: event.reason },
          event.message,
        );
      }
    }
    return { material: plan.material, wakeAtMs: plan.wakeAtMs };
  }

  async #issue(resource: StoredResource, identity: ServiceIdentity, profile: string): Promise<KeyMaterial> {
    const { durationMs } = certificateTimings(identity);
    const issued = await issueCertificate(this.options.ca, {
      id: serviceId({ name: resource.name, namespace: resource.namespace }),
      usage: "both",
      keyAlgorithm: PKI_ALGORITHMS[identity.spec.certificate.keyAlgorithm],
      lifetimeSeconds: Math.floor(durationMs / 1000),
      now: new Date(this.options.now()),
    });
    if (issued.notAfterClamped) {
      this.options.store.recordEvent(IDENTITY, resource, resource.uid, {
        type: "Warning",
        reason: "CertificateShortened",
        message: `the certificate was cut to the CA's expiry (${issued.certificate.notAfter.toISOString()}): rotate the CA`,
      });
    }
    this.options.issued?.();
    return keyMaterialOf(issued.certificate, issued.privateKey, profile);
  }

  #conditions(
    resource: StoredResource,
    material: IdentityMaterial,
    invalidMessage: string | undefined,
  ): DesiredCondition[] {
    const generation = resource.generation;
    const { current } = material;
    const issued: DesiredCondition =
      invalidMessage === undefined
        ? {
            type: "CertificateIssued",
            status: "True",
            observedGeneration: generation,
            reason: "Issued",
            message: `certificate ${serialOf(current.certificate)} is valid until ${current.certificate.notAfter.toISOString()}; it renews automatically`,
          }
        : {
            type: "CertificateIssued",
            status: "False",
            observedGeneration: generation,
            reason: "InvalidSpec",
            message: `${invalidMessage}. The last valid version stays in force until the spec is fixed.`,
          };
    const published: DesiredCondition = this.options.isPublished(current.kid)
      ? {
          type: "Published",
          status: "True",
          observedGeneration: generation,
          reason: "Published",
          message: `key ${current.kid} is in the registry`,
        }
      : {
          type: "Published",
          status: "False",
          observedGeneration: generation,
          reason: "PublicationPending",
          message: `key ${current.kid} is waiting to be written into the registry ConfigMaps; if this persists, check the operator's logs`,
        };
    const ready = readyCondition(
      [issued, published],
      generation,
      "the identity's certificate is issued and its key is published",
    );
    return [ready, issued, published];
  }

  async #writeStatus(
    resource: StoredResource,
    conditions: readonly DesiredCondition[],
    material: IdentityMaterial | undefined,
  ): Promise<void> {
    const stored = resource.object.status as Record<string, unknown> | undefined;
    const certificate = material?.current.certificate;
    const status: Record<string, unknown> = {
      observedGeneration: resource.generation,
      conditions: mergeConditions(stored?.conditions, conditions, this.options.now()),
      ...(certificate === undefined
        ? {}
        : {
            certificate: {
              serialNumber: serialOf(certificate),
              notBefore: kubernetesTime(certificate.notBefore.getTime()),
              notAfter: kubernetesTime(certificate.notAfter.getTime()),
              fingerprintSHA256: fingerprintOf(certificate),
            },
            keyId: material?.current.kid,
          }),
    };
    if (sameStatus(stored, status)) return;
    await this.options.store.writeStatus(IDENTITY, resource, status);
  }

  async #removeOrphanSecret(key: ObjectKey): Promise<void> {
    const secretKey = identitySecretKey(this.options.stateNamespace, key);
    if (this.options.store.secret(secretKey) === undefined) return;
    await this.options.store.deleteSecret(secretKey);
    this.options.logger.info(
      { event: "identity_secret_deleted", identity: keyOf(key) },
      "identity deleted: its Secret is removed",
    );
  }
}

function invalidConditions(resource: StoredResource, message: string): DesiredCondition[] {
  const generation = resource.generation;
  const invalid: DesiredCondition = {
    type: "CertificateIssued",
    status: "False",
    observedGeneration: generation,
    reason: "InvalidSpec",
    message: `${message}. Fix the spec; no certificate is issued until it is valid.`,
  };
  const published: DesiredCondition = {
    type: "Published",
    status: "False",
    observedGeneration: generation,
    reason: "InvalidSpec",
    message: "nothing is published for an identity whose spec is invalid",
  };
  return [readyCondition([invalid, published], generation, ""), invalid, published];
}
