/**
 * Client certificates already verified, by the exact bytes presented: a workload refreshing its
 * token (or a client on a kept-alive connection) presents the same chain again and again, and
 * parsing and checking it was two thirds of the cost of a token (bench/README.md, issuer). A hit is
 * only used with the same trust bundle, and only while every certificate of its path is still
 * within its validity, so the cache never accepts what a fresh verification would refuse.
 */
import { createHash } from "node:crypto";
import type { TrustBundle } from "../../../pki/src/bundle.js";
import { type VerifiedClientCertificate, verifyClientCertificate } from "../../../pki/src/verify.js";

export class VerifiedCertificateCache {
  readonly #entries = new Map<string, { bundle: TrustBundle; verified: VerifiedClientCertificate }>();

  constructor(private readonly capacity = 4096) {}

  /** verifyClientCertificate, or its earlier answer for the same chain, bundle and a valid time. */
  verify(bundle: TrustBundle, chain: readonly Uint8Array[], now: Date): VerifiedClientCertificate {
    const hash = createHash("sha256");
    for (const der of chain) hash.update(der).update("\u0000");
    const key = hash.digest("base64url");
    const hit = this.#entries.get(key);
    const time = now.getTime();
    if (
      hit !== undefined &&
      hit.bundle === bundle &&
      hit.verified.path.every(
        (certificate) => certificate.notBefore.getTime() <= time && time <= certificate.notAfter.getTime(),
      )
    ) {
      return hit.verified;
    }
    this.#entries.delete(key);
    const verified = verifyClientCertificate(bundle, chain, { now });
    this.#entries.set(key, { bundle, verified });
    if (this.#entries.size > this.capacity) {
      const oldest = this.#entries.keys().next().value;
      if (oldest !== undefined) this.#entries.delete(oldest);
    }
    return verified;
  }
}
