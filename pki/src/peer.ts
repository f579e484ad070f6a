/**
 * Client certificates as a TLS server receives them. `peerCertificateChain` takes what the peer
 * presented off the socket; `VerifiedCertificateCache` remembers chains already verified, by their
 * exact bytes: a workload presents the same chain on every request until it renews it, and parsing
 * and checking it was two thirds of the token service's cost per token (bench/README.md, issuer).
 * A hit is only used with the same trust bundle, and only while every certificate of its path is
 * still within its validity, so the cache never accepts what a fresh verification would refuse.
 */
import { createHash } from "node:crypto";
import type { PeerCertificate, TLSSocket } from "node:tls";
import type { TrustBundle } from "./bundle.js";
import { type VerifiedClientCertificate, verifyClientCertificate } from "./verify.js";

/** RFC 8705 §3.1 `x5t#S256`: base64url SHA-256 of the DER certificate a token is bound to. */
export function certificateThumbprint(der: Uint8Array): string {
  return createHash("sha256").update(der).digest("base64url");
}

/** A TLS server whose certificate does not name the SPIFFE id the client expected there. */
export class ServerIdentityMismatchError extends Error {}

/**
 * A `checkServerIdentity` for a workload's server: its certificate names a SPIFFE id, not a host
 * name. The chain is verified against the CA as usual; this replaces the host-name check with the
 * SPIFFE URI SAN, so a certificate of another service from the same CA is refused in the handshake.
 */
export function spiffeServerCheck(expected: string) {
  return (_host: string, certificate: PeerCertificate): Error | undefined => {
    const names = (certificate.subjectaltname ?? "").split(",").map((name) => name.trim());
    return names.includes(`URI:${expected}`)
      ? undefined
      : new ServerIdentityMismatchError(
          `the server is not ${expected} (its names: ${certificate.subjectaltname ?? "none"})`,
        );
  };
}

/** Longest chain read from a TLS peer: leaf plus intermediates, far beyond any real deployment. */
const MAX_PEER_CHAIN = 8;

/** The certificates the TLS peer presented, leaf first, as DER; empty when it presented none. */
export function peerCertificateChain(socket: TLSSocket): Uint8Array[] {
  const chain: Uint8Array[] = [];
  let certificate: PeerCertificate | undefined = socket.getPeerCertificate(true);
  while (certificate?.raw !== undefined && chain.length < MAX_PEER_CHAIN) {
    chain.push(new Uint8Array(certificate.raw));
    const issuer: PeerCertificate | undefined = (certificate as { issuerCertificate?: PeerCertificate })
      .issuerCertificate;
    if (issuer === undefined || issuer === certificate || issuer.raw?.equals(certificate.raw)) break;
    certificate = issuer;
  }
  return chain;
}

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
