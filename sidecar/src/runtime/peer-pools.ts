/**
 * Connection pools to the peers' inbound ports, over mutual TLS with this workload's certificate:
 * one undici pool per registered service (kept-alive connections, TLS sessions resumed), each
 * checking that the peer's certificate names the SPIFFE id of the service it was opened for.
 *
 * A new certificate or trust bundle retires every pool, and a registry that no longer lists a
 * service (or moved it) retires that service's pool. A retired pool takes no new request, finishes
 * the ones it carries, then closes: destroying it would fail every call in flight at the moment of a
 * certificate rotation. There is at most one live pool per service in the registry.
 */
import { isIP } from "node:net";
import { Pool } from "undici";
import { parseServiceId, spiffeIdFor } from "../../../crds/src/names.js";
import type { RegistryService } from "../../../crds/src/registry-schema.js";
import { spiffeServerCheck } from "../../../pki/src/peer.js";
import type { WorkloadIdentity } from "./identity-files.js";
import type { RegistrySnapshot } from "./registry-source.js";

/** Per peer; requests beyond it wait in the pool's queue. */
const CONNECTIONS_PER_PEER = 128;
/** Below the inbound side's 30 s keep-alive, so the client, not the server, closes an idle connection. */
const KEEP_ALIVE_MS = 20_000;
/** As the sidecar's own request timeout. */
const TIMEOUT_MS = 60_000;

/** `host:port`, the host bare or a bracketed IPv6 address. */
function splitLocation(location: string): { host: string; port: string } {
  const at = location.lastIndexOf(":");
  return { host: location.slice(0, at).replace(/^\[|\]$/g, ""), port: location.slice(at + 1) };
}

function poolKey(service: RegistryService): string {
  return `${service.id} ${service.location}`;
}

export class PeerPools {
  #identity: WorkloadIdentity | undefined;
  #trustBundle: string | undefined;
  #snapshot: RegistrySnapshot | undefined;
  readonly #pools = new Map<string, Pool>();
  readonly #retiring = new Set<Pool>();

  /** The pool for `service` as `snapshot` lists it, with `identity`'s certificate. */
  poolFor(identity: WorkloadIdentity, snapshot: RegistrySnapshot, service: RegistryService): Pool {
    const trustBundle = snapshot.registry.trustBundle;
    if (identity !== this.#identity || trustBundle !== this.#trustBundle) {
      for (const key of [...this.#pools.keys()]) this.#retire(key);
      this.#identity = identity;
      this.#trustBundle = trustBundle;
    }
    if (snapshot !== this.#snapshot) {
      this.#snapshot = snapshot;
      const listed = new Set(snapshot.registry.services.map(poolKey));
      for (const key of [...this.#pools.keys()]) if (!listed.has(key)) this.#retire(key);
    }
    const key = poolKey(service);
    let pool = this.#pools.get(key);
    if (pool === undefined) {
      pool = this.#open(identity, snapshot, service);
      this.#pools.set(key, pool);
    }
    return pool;
  }

  /** Every pool closed at once, requests in flight failed: for shutdown, after the drain. */
  async destroy(): Promise<void> {
    const pools = [...this.#pools.values(), ...this.#retiring];
    this.#pools.clear();
    this.#retiring.clear();
    await Promise.all(pools.map((pool) => pool.destroy().catch(() => undefined)));
  }

  #open(identity: WorkloadIdentity, snapshot: RegistrySnapshot, service: RegistryService): Pool {
    const { host, port } = splitLocation(service.location);
    const expected = spiffeIdFor(snapshot.registry.trustDomain, parseServiceId(service.id));
    return new Pool(`https://${isIP(host) === 6 ? `[${host}]` : host}:${port}`, {
      connections: CONNECTIONS_PER_PEER,
      keepAliveTimeout: KEEP_ALIVE_MS,
      keepAliveMaxTimeout: KEEP_ALIVE_MS,
      headersTimeout: TIMEOUT_MS,
      bodyTimeout: TIMEOUT_MS,
      connect: {
        cert: identity.certificatePem,
        key: identity.keyPem,
        ca: snapshot.registry.trustBundle,
        minVersion: "TLSv1.3",
        // SNI carries host names only (RFC 6066); the peer is checked by its SPIFFE id anyway.
        ...(isIP(host) === 0 ? { servername: host } : {}),
        checkServerIdentity: spiffeServerCheck(expected),
      },
    });
  }

  #retire(key: string): void {
    const pool = this.#pools.get(key);
    if (pool === undefined) return;
    this.#pools.delete(key);
    this.#retiring.add(pool);
    void pool
      .close()
      .catch(() => undefined)
      .finally(() => this.#retiring.delete(pool));
  }
}
