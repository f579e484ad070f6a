import type { LinkAlgorithm } from "./jws.js";

/** Bounds on what a receiver accepts. Defaults are safe; every one is configurable. */
export interface ChainLimits {
  /** Elements in one chain, the initial token included. */
  readonly maxDepth: number;
  readonly maxHeaderBytes: number;
  readonly maxElementBytes: number;
  /** `exp - iat` of a link: links are single-use tickets, not sessions. */
  readonly maxLinkLifetimeSeconds: number;
  /**
   * How long before its receipt the oldest link of a chain may have been issued: the whole call
   * chain is one request in flight, not a session. It bounds what signers who collude could stretch
   * a captured chain to, since only the head's `iat` is held against the receiver's clock.
   */
  readonly maxChainAgeSeconds: number;
  readonly clockSkewSeconds: number;
  /** For links. Never `none`, never HMAC: not even representable here. */
  readonly linkAlgorithms: readonly LinkAlgorithm[];
  /** For initial tokens from issuers (IdPs commonly sign RS256). */
  readonly initialTokenAlgorithms: readonly LinkAlgorithm[];
}

export const DEFAULT_LIMITS: ChainLimits = {
  maxDepth: 16,
  maxHeaderBytes: 16 * 1024,
  maxElementBytes: 4 * 1024,
  maxLinkLifetimeSeconds: 60,
  maxChainAgeSeconds: 300,
  clockSkewSeconds: 5,
  linkAlgorithms: ["ES256", "EdDSA"],
  initialTokenAlgorithms: ["ES256", "EdDSA", "RS256"],
};

/** Default lifetime of a minted link: long enough for one hop with a slow peer, no longer. */
export const DEFAULT_LINK_TTL_SECONDS = 10;

export const CHAIN_HEADER = "custody-chain";
export const CHAIN_SEPARATOR = "~";
