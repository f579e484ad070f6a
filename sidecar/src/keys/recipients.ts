/**
 * Recipient service ids → the public keys a JWE is sealed to, from the registry document. One
 * directory per registry generation (like RegistryTrustView): keys are imported once.
 *
 * A service's `current` key is used, and its `next` key while it has one. A service key is its workload certificate's key, the same
 * one that signs its call links (the registry has no separate encryption key), and of the key types
 * the registry allows only EC P-256 can agree keys with ECDH-ES. A recipient whose current key is Ed25519 or RSA, or whose
 * JWK says `use: "sig"` (RFC 7517 §4.2: signing only), is refused with `no_encryption_key`: there is
 * no sound conversion from those keys, and none is attempted.
 *
 * Rotation: while a service rotates, the registry lists its `next` key and its sidecar already
 * holds that key (the identity Secret carries it), so a JWE is sealed to both: whichever key the
 * recipient uses when the message arrives opens it, and no message in flight is lost to the switch.
 * Never to a `previous` key: a key being retired may be retired because it leaked. JWEs are for
 * messages in transit, not for storage across rotations.
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from "node:crypto";
import type { Registry, RegistryServiceKey } from "../../../crds/src/registry-schema.js";
import { KeyServiceError } from "./errors.js";
import type { JweRecipient } from "./jwe.js";
import { MAX_RECIPIENTS } from "./jwe.js";

/** Services one JWE may be sealed for: each may bring two keys during a rotation. */
export const MAX_RECIPIENT_SERVICES = Math.floor(MAX_RECIPIENTS / 2);

import { agreementCurve } from "./key-agreement.js";

/** The registry schema already checked the JWK; a key that still does not import is just not usable. */
function importKey(jwk: RegistryServiceKey["jwk"]): KeyObject | undefined {
  try {
    return createPublicKey({ key: jwk as JsonWebKey, format: "jwk" });
  } catch {
    return undefined;
  }
}

interface DirectoryEntry {
  /** The current key first, then the next one if it can agree keys too; empty when refused. */
  readonly recipients: readonly JweRecipient[];
  /** Why the service cannot be a recipient, when it cannot. */
  readonly refusal: string | undefined;
  readonly notAfterMs: number;
}

/** Why `key` cannot take part in ECDH-ES, or its imported public key. */
function agreementKey(
  serviceId: string,
  key: RegistryServiceKey,
): { publicKey: KeyObject } | { refusal: string } {
  if (key.jwk.use === "sig") {
    return { refusal: `the ${key.status} key of ${serviceId} is published for signing only (use: sig).` };
  }
  const publicKey = importKey(key.jwk);
  if (publicKey === undefined || agreementCurve(publicKey) === undefined) {
    return {
      refusal: `the ${key.status} key of ${serviceId} is ${key.jwk.kty} (${key.jwk.alg}); ECDH-ES needs an EC P-256 key.`,
    };
  }
  return { publicKey };
}

export class RecipientDirectory {
  readonly generation: number;
  readonly #services = new Map<string, DirectoryEntry>();
  readonly #now: () => number;

  constructor(registry: Pick<Registry, "generation" | "services">, options: { now?: () => number } = {}) {
    this.#now = options.now ?? Date.now;
    this.generation = registry.generation;
    for (const service of registry.services) {
      const current = service.keys.find((key) => key.status === "current");
      if (current === undefined) continue; // the schema requires one; a registry without it lists no recipient
      const notAfterMs = Date.parse(current.notAfter);
      const usable = agreementKey(service.id, current);
      if ("refusal" in usable) {
        this.#services.set(service.id, { recipients: [], refusal: usable.refusal, notAfterMs });
        continue;
      }
      const recipients: JweRecipient[] = [
        { serviceId: service.id, kid: current.kid, publicKey: usable.publicKey },
      ];
      const next = service.keys.find((key) => key.status === "next");
      const nextUsable = next === undefined ? undefined : agreementKey(service.id, next);
      if (next !== undefined && nextUsable !== undefined && "publicKey" in nextUsable) {
        recipients.push({ serviceId: service.id, kid: next.kid, publicKey: nextUsable.publicKey });
      }
      this.#services.set(service.id, { recipients, refusal: undefined, notAfterMs });
    }
  }

  /** The encryption keys of one service: its current key, and its next key during a rotation. */
  recipientsOf(serviceId: string): readonly JweRecipient[] {
    const entry = this.#services.get(serviceId);
    if (entry === undefined) {
      throw new KeyServiceError("unknown_recipient", `${serviceId.slice(0, 256)} is not in the registry.`);
    }
    if (entry.recipients.length === 0) throw new KeyServiceError("no_encryption_key", entry.refusal ?? "");
    if (this.#now() > entry.notAfterMs) {
      throw new KeyServiceError("unknown_recipient", `the current key of ${serviceId} has expired.`);
    }
    return entry.recipients;
  }

  /** Keys for `serviceIds`, in order; each service once, at most MAX_RECIPIENT_SERVICES. */
  resolve(serviceIds: readonly string[]): JweRecipient[] {
    if (serviceIds.length === 0) throw new KeyServiceError("no_recipients", "name at least one recipient.");
    if (serviceIds.length > MAX_RECIPIENT_SERVICES) {
      throw new KeyServiceError("too_many_recipients", `at most ${MAX_RECIPIENT_SERVICES} recipients.`);
    }
    if (new Set(serviceIds).size !== serviceIds.length) {
      throw new KeyServiceError("duplicate_recipient", "a recipient service is named twice.");
    }
    return serviceIds.flatMap((serviceId) => this.recipientsOf(serviceId));
  }
}
