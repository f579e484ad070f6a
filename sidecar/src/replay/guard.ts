import { CustodyError } from "../../../crds/src/errors.js";

/**
 * Replay protection for single-use links: a `jti` may be accepted once. Implementations remember a
 * jti until the link can no longer be accepted anyway (its `exp` plus the clock skew), so memory is
 * bounded by traffic within one link lifetime, never by total traffic.
 */
export interface ReplayGuard {
  /**
   * Records `jti` and answers true when it had not been seen; false when it is a replay.
   * Throws ReplayStoreUnavailableError when the store cannot answer and policy is fail-closed.
   */
  claim(jti: string, expiresAtMs: number): Promise<boolean>;
}

/** The shared store (Redis) did not answer and the guard is configured to fail closed. */
export class ReplayStoreUnavailableError extends CustodyError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("replay_store_unavailable", message, options);
  }
}
