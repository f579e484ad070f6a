/**
 * What the controllers share: each resource validated once per version, the last valid version of
 * each (a malformed update never replaces a good one: the registry keeps publishing the last valid
 * identity and policy until the object is fixed or deleted), and identity Secrets parsed once per
 * version. Nothing here is state that a restart could lose harmfully: identities are re-validated
 * from the store, policies are seeded from the published registry, Secrets are re-read.
 */
import type { CompiledPolicy } from "../../../crds/src/compiled-policy.js";
import { compilePolicy } from "../../../crds/src/compiled-policy.js";
import { validateServiceIdentity } from "../../../crds/src/manifest.js";
import { serviceId } from "../../../crds/src/names.js";
import type { ServiceIdentity } from "../../../crds/src/service-identity.js";
import { keyOf, type ObjectKey, type StoredResource, type StoredSecret } from "../store/store.js";
import { type IdentityMaterial, identityOfSecret, readIdentityMaterial } from "./identity-secret.js";

export type Validated<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly message: string };

interface Versioned<T> {
  readonly uid: string;
  readonly resourceVersion: string;
  readonly result: T;
}

/** How many parsed Secrets are kept; beyond, the oldest are parsed again when next needed. */
const MAX_PARSED_SECRETS = 20_000;

export class Catalog {
  readonly #identityChecks = new Map<string, Versioned<Validated<ServiceIdentity>>>();
  readonly #lastValidIdentity = new Map<
    string,
    { readonly uid: string; readonly identity: ServiceIdentity }
  >();
  readonly #policyChecks = new Map<string, Versioned<Validated<CompiledPolicy>>>();
  readonly #lastValidPolicy = new Map<string, CompiledPolicy>();
  readonly #materials = new Map<
    string,
    { readonly resourceVersion: string; readonly result: MaterialResult }
  >();

  constructor(readonly trustDomain: string) {}

  /** The identity as it is now, validated (defaults applied), or why it is invalid. */
  checkIdentity(resource: StoredResource): Validated<ServiceIdentity> {
    const key = keyOf(resource);
    const result = cached(this.#identityChecks, key, resource, (): Validated<ServiceIdentity> => {
      try {
        return { ok: true, value: validateServiceIdentity(withNamespace(resource)) };
      } catch (error) {
        return { ok: false, message: messageOf(error) };
      }
    });
    if (result.ok) this.#lastValidIdentity.set(key, { uid: resource.uid, identity: result.value });
    return result;
  }

  /** The identity to act on: valid now, else its last valid version (for the same object). */
  effectiveIdentity(resource: StoredResource): ServiceIdentity | undefined {
    const check = this.checkIdentity(resource);
    if (check.ok) return check.value;
    const last = this.#lastValidIdentity.get(keyOf(resource));
    return last?.uid === resource.uid ? last.identity : undefined;
  }

  checkPolicy(resource: StoredResource): Validated<CompiledPolicy> {
    const key = keyOf(resource);
    const result = cached(this.#policyChecks, key, resource, (): Validated<CompiledPolicy> => {
      try {
        return { ok: true, value: compilePolicy(withNamespace(resource), { namespace: resource.namespace }) };
      } catch (error) {
        return { ok: false, message: messageOf(error) };
      }
    });
    if (result.ok) this.#lastValidPolicy.set(key, result.value);
    return result;
  }

  /** What sidecars enforce for this policy: its current version if valid, else the last valid one. */
  effectivePolicy(resource: StoredResource): CompiledPolicy | undefined {
    const check = this.checkPolicy(resource);
    return check.ok ? check.value : this.#lastValidPolicy.get(keyOf(resource));
  }

  lastValidPolicy(key: ObjectKey): CompiledPolicy | undefined {
    return this.#lastValidPolicy.get(keyOf(key));
  }

  /** Seeds a policy's last valid version from the registry, so a restart keeps enforcing it. */
  rememberPolicy(policy: CompiledPolicy): void {
    const key = keyOf(policy);
    if (!this.#lastValidPolicy.has(key)) this.#lastValidPolicy.set(key, policy);
  }

  forget(kind: "identity" | "policy", key: ObjectKey): void {
    const id = keyOf(key);
    if (kind === "identity") {
      this.#identityChecks.delete(id);
      this.#lastValidIdentity.delete(id);
    } else {
      this.#policyChecks.delete(id);
      this.#lastValidPolicy.delete(id);
    }
  }

  /** What the controller just wrote: the publisher need not parse it again. */
  rememberMaterial(secret: StoredSecret, material: IdentityMaterial): void {
    if (secret.resourceVersion === undefined) return;
    if (this.#materials.size >= MAX_PARSED_SECRETS) this.#materials.clear();
    this.#materials.set(keyOf(secret), { resourceVersion: secret.resourceVersion, result: { material } });
  }

  /** The credentials in an identity Secret, parsed once per Secret version. */
  material(secret: StoredSecret): MaterialResult {
    const key = keyOf(secret);
    const hit = this.#materials.get(key);
    if (
      hit !== undefined &&
      secret.resourceVersion !== undefined &&
      hit.resourceVersion === secret.resourceVersion
    ) {
      return hit.result;
    }
    const identity = identityOfSecret(secret) ?? { namespace: "", name: "" };
    const result = readIdentityMaterial(secret, {
      trustDomain: this.trustDomain,
      serviceId: serviceId(identity),
    });
    if (secret.resourceVersion !== undefined) {
      if (this.#materials.size >= MAX_PARSED_SECRETS) this.#materials.clear();
      this.#materials.set(key, { resourceVersion: secret.resourceVersion, result });
    }
    return result;
  }
}

export type MaterialResult = { readonly material: IdentityMaterial } | { readonly problem: string };

function cached<T>(
  map: Map<string, Versioned<T>>,
  key: string,
  resource: StoredResource,
  compute: () => T,
): T {
  const hit = map.get(key);
  if (hit !== undefined && hit.uid === resource.uid && hit.resourceVersion === resource.resourceVersion) {
    return hit.result;
  }
  const result = compute();
  map.set(key, { uid: resource.uid, resourceVersion: resource.resourceVersion, result });
  return result;
}

/**
 * What the user declared: the object with metadata.namespace filled in (a local manifest may leave
 * it out) and without `status`, which is the operator's own output and never makes a spec invalid.
 */
function withNamespace(resource: StoredResource): Record<string, unknown> {
  const { status: _status, metadata, ...rest } = resource.object;
  const base = typeof metadata === "object" && metadata !== null ? metadata : {};
  return { ...rest, metadata: { ...base, namespace: resource.namespace } };
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
