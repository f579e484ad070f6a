/**
 * The cryptographic floor of a call through the sidecar pair: one ES256 link signature (outbound)
 * and one verification (inbound) per call, timed in the benchmark's own process with the library's
 * own functions, before the load starts. From it and the direct mode's CPU per request, the highest
 * share of the direct max rps a pair could reach on this machine even if everything else it does
 * (HTTP, TLS, policy) cost nothing: the max rps of a CPU-bound run scales as 1 / CPU per request.
 */
import { createPublicKey } from "node:crypto";
import { parseCompactJws, signCompactJws, verifySignature } from "../sidecar/src/chain/jws.js";
import { LINK_TYPE } from "../sidecar/src/chain/link.js";
import type { LinkSigner } from "../sidecar/src/chain/mint.js";
import { measure, syncRunner } from "./timing.js";

export interface CryptoFloor {
  /** µs of one link signature and one verification (median batch). */
  readonly signUs: number;
  readonly verifyUs: number;
}

/** A link-sized claim set: what the caller's sidecar signs for `GET /cart/items`. */
const CLAIMS = {
  iss: "shop.shop",
  aud: "cart.shop",
  op: "GET /cart/items",
  jti: "AAAAAAAAAAAAAAAAAAAAAA",
  iat: 1_800_000_000,
  exp: 1_800_000_010,
};

export async function measureCryptoFloor(signer: LinkSigner): Promise<CryptoFloor> {
  const header = { alg: "ES256", typ: LINK_TYPE, kid: signer.kid };
  const publicKey = createPublicKey(signer.privateKey);
  const jws = parseCompactJws(signCompactJws(header, CLAIMS, signer.privateKey), 0);
  const [signUs = Number.NaN, verifyUs = Number.NaN] = await measure(
    [
      syncRunner(() => signCompactJws(header, CLAIMS, signer.privateKey).length > 0),
      syncRunner(() => verifySignature("ES256", publicKey, jws.signingInput, jws.signature)),
    ],
    { warmupMs: 200, batchMs: 20, batches: 15 },
  );
  return { signUs, verifyUs };
}

/**
 * The highest share of the direct max rps any pair that signs and verifies once per call can reach:
 * direct costs `directUs` of CPU per request (app + client), a pair at least that plus the crypto.
 */
export function ceilingShare(floor: CryptoFloor, directUs: number): number {
  return directUs / (directUs + floor.signUs + floor.verifyUs);
}
