/**
 * Recipient service ids → the public keys a JWE is sealed to, from the registry document. One
 * directory per registry generation (like RegistryTrustView): keys are imported once.
 *
 * Only a service's `current` key is used. A service key is its workload certificate's key, the same
 * one that signs its call links (the registry has no separate encryption key), and of the key types
 * the registry allows only EC P-256 can agree keys with ECDH-ES. A recipient whose current key is Ed25519 or RSA, or whose
 * JWK says `use: "sig"` (RFC 7517 §4.2: signing only), is refused with `no_encryption_key`: there is
 * no sound conversion from those keys, and none is attempted.
 *
 * Rotation: the sealer uses the current key its registry shows. A JWE sealed to a key that then
 * became `previous` can be opened only by a sidecar that still holds that private key (open() takes
 * several keys for this); one that does not answers `not_a_recipient`, and the sender must seal
 * again with the new registry. JWEs are for messages in transit, not for storage across rotations.
 */
import { createPublicKey, type JsonWebKey, type KeyObject } from "node:crypto";
import type { Registry, RegistryServiceKey } from "../../../crds/src/registry-schema.js";
import { KeyServiceError } from "./errors.js";
import type { JweRecipient } from "./jwe.js";
import { MAX_RECIPIENTS } from "./jwe.js";
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
  readonly recipient: JweRecipient | undefined;
  /** Why the service cannot be a recipient, when it cannot. */
  readonly refusal: string | undefined;
  readonly notAfterMs: number;
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
      if (current.jwk.use === "sig") {
        this.#services.set(service.id, {
          recipient: undefined,
          refusal: `the current key of ${service.id} is published for signing only (use: sig).`,
          notAfterMs,
        });
        continue;
      }
      const publicKey = importKey(current.jwk);
      if (publicKey === undefined || agreementCurve(publicKey) === undefined) {
        this.#services.set(service.id, {
          recipient: undefined,
          refusal: `the current key of ${service.id} is ${current.jwk.kty} (${current.jwk.alg}); ECDH-ES needs an EC P-256 key.`,
          notAfterMs,
        });
        continue;
      }
      this.#services.set(service.id, {
        recipient: { serviceId: service.id, kid: current.kid, publicKey },
        refusal: undefined,
        notAfterMs,
      });
    }
  }

  /** The current encryption key of one service. */
  recipient(serviceId: string): JweRecipient {
    const entry = this.#services.get(serviceId);
    if (entry === undefined) {
      throw new KeyServiceError("unknown_recipient", `${serviceId.slice(0, 256)} is not in the registry.`);
    }
    if (entry.recipient === undefined) throw new KeyServiceError("no_encryption_key", entry.refusal ?? "");
    if (this.#now() > entry.notAfterMs) {
      throw new KeyServiceError("unknown_recipient", `the current key of ${serviceId} has expired.`);
    }
    return entry.recipient;
  }

  /** Keys for `serviceIds`, in order; each service once, at most MAX_RECIPIENTS. */
  resolve(serviceIds: readonly string[]): JweRecipient[] {
    if (serviceIds.length === 0) throw new KeyServiceError("no_recipients", "name at least one recipient.");
    if (serviceIds.length > MAX_RECIPIENTS) {
      throw new KeyServiceError("too_many_recipients", `at most ${MAX_RECIPIENTS} recipients.`);
    }
    if (new Set(serviceIds).size !== serviceIds.length) {
      throw new KeyServiceError("duplicate_recipient", "a recipient service is named twice.");
    }
    return serviceIds.map((serviceId) => this.recipient(serviceId));
  }
}
