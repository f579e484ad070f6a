import { CustodyError } from "../../../crds/src/errors.js";

/**
 * Every reason a chain can be refused. Stable: they appear in responses, metrics labels, audit logs
 * and tests. Authentication failures (401) all come from here.
 */
export const CHAIN_REASONS = [
  "missing_chain",
  "header_too_large",
  "chain_too_deep",
  "element_too_large",
  "malformed",
  "alg_not_allowed",
  "wrong_type",
  "unknown_key",
  "key_issuer_mismatch",
  "bad_signature",
  "audience_mismatch",
  "peer_mismatch",
  "operation_mismatch",
  "expired",
  "issued_in_future",
  "stale",
  "self_link",
  "chain_too_old",
  "lifetime_too_long",
  "body_mismatch",
  "replayed",
  "replay_store_unavailable",
  "custody_broken",
  "hash_link_broken",
  "out_of_order",
  "initial_token_invalid",
  "initial_token_not_admitted",
  "initial_token_audience",
  "binding_mismatch",
] as const;

export type ChainReason = (typeof CHAIN_REASONS)[number];

export class ChainError extends CustodyError {
  override readonly code: ChainReason;
  /** Index of the offending element in the chain (0 = oldest), when one is to blame. */
  readonly element: number | undefined;

  constructor(code: ChainReason, message: string, element?: number) {
    super(code, message);
    this.code = code;
    this.element = element;
  }
}
