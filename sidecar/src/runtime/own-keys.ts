/**
 * This workload's keys as the registry names them. A key is usable for signing links and opening
 * sealed messages only under its published kid, found by matching public keys: the registry is
 * the only source of kids, so a key the registry does not carry (yet) is simply not used.
 */
import { createPublicKey, type KeyObject } from "node:crypto";
import type { LinkSigner } from "../chain/mint.js";
import type { RecipientKey } from "../keys/jwe.js";
import type { WorkloadIdentity } from "./identity-files.js";
import type { RegistrySnapshot } from "./registry-source.js";

/** The kid under which the registry lists `publicKey` for `serviceId`, if it does. */
function publishedKidOf(
  snapshot: RegistrySnapshot,
  serviceId: string,
  publicKey: KeyObject,
): string | undefined {
  const own = snapshot.registry.services.find((entry) => entry.id === serviceId);
  const spki = publicKey.export({ type: "spki", format: "der" });
  for (const key of own?.keys ?? []) {
    const published = createPublicKey({ key: { ...key.jwk }, format: "jwk" }).export({
      type: "spki",
      format: "der",
    });
    if (published.equals(spki)) return key.kid;
  }
  return undefined;
}

/** This workload's link signer: its certificate's key under its registry kid (none while unpublished). */
export function signerFor(identity: WorkloadIdentity, snapshot: RegistrySnapshot): LinkSigner | undefined {
  const kid = publishedKidOf(snapshot, identity.serviceId, identity.leaf.publicKey);
  return kid === undefined
    ? undefined
    : { serviceId: identity.serviceId, kid, privateKey: identity.privateKey };
}

/**
 * The keys a sealed message to this workload may be addressed to: its current key and, during a
 * rotation, the next one (sealers address both, so messages in flight survive the switch).
 */
export function openingKeysFor(identity: WorkloadIdentity, snapshot: RegistrySnapshot): RecipientKey[] {
  const keys: RecipientKey[] = [];
  const current = signerFor(identity, snapshot);
  if (current !== undefined) keys.push(current);
  if (identity.nextPrivateKey !== undefined) {
    const kid = publishedKidOf(snapshot, identity.serviceId, createPublicKey(identity.nextPrivateKey));
    if (kid !== undefined && kid !== current?.kid) keys.push({ kid, privateKey: identity.nextPrivateKey });
  }
  return keys;
}
