/**
 * `custody policy check` without the command line: what a target's sidecar would decide about one
 * request, without running anything. It goes through the inbound proxy's own steps
 * (runtime/inbound-decision.ts: chain verification or edge entry, then the policies), minus what a
 * dry run cannot have — the TLS peer — and minus what it must not do: spend the jti, take quota.
 */
import { CustodyError } from "../../../crds/src/errors.js";
import { ChainError } from "../chain/errors.js";
import { CHAIN_SEPARATOR, type ChainLimits, DEFAULT_LIMITS } from "../chain/limits.js";
import { formatOperation, type Operation } from "../chain/normalize.js";
import { describeCallPath } from "../policy/call-path.js";
import type { PolicyVerdict, QuotaLimit } from "../policy/engine.js";
import type { ReplayGuard } from "../replay/guard.js";
import {
  admittedBearerOrigin,
  decidePolicies,
  type RequestOrigin,
  subjectOf,
  verifiedChainOrigin,
} from "../runtime/inbound-decision.js";
import type { RegistrySnapshot } from "../runtime/registry-source.js";
import { linkBinding, shown } from "./inspect.js";

export class PolicyCheckError extends CustodyError {
  declare readonly code: "unknown_target";
  constructor(code: PolicyCheckError["code"], message: string) {
    super(code, message);
  }
}

export interface PolicyCheckInput {
  /** The service receiving the request (its id, e.g. `payments.shop`). */
  readonly target: string;
  readonly operation: Operation;
  /** The `Custody-Chain` value the request carries. */
  readonly chain?: string | undefined;
  /** A bearer token instead, for an edge service (used only without a chain, as the sidecar does). */
  readonly bearer?: string | undefined;
  /** The body it carries: `sha256` undefined for none. Absent: the head's body binding is not checked. */
  readonly body?: { readonly sha256: string | undefined } | undefined;
  readonly nowSeconds: number;
  /** The sidecar's `when-no-policy` setting (default deny). */
  readonly whenNoPolicy?: "allow" | "deny" | undefined;
  readonly limits?: ChainLimits | undefined;
}

export interface PolicyCheckResult {
  /** `audit`: allowed, but an audit-mode policy would have denied. */
  readonly decision: "allow" | "deny" | "audit";
  /** What the target's sidecar would answer, quota aside: 401 for the chain or token, 403 for policy. */
  readonly status: 200 | 401 | 403;
  /** A policy reason (`allowed`, `call_path`, …) or, at status 401, a chain reason (`expired`, …). */
  readonly reason: string;
  readonly explanation: string;
  readonly target: string;
  /** `METHOD /normalized/path?query`: what policies matched. */
  readonly operation: string;
  readonly entry: "chain" | "bearer";
  /** `<namespace>/<name>` of the AccessPolicy that decided (for `audit`, the one that would have denied). */
  readonly policy: string | undefined;
  readonly mode: "enforce" | "audit" | undefined;
  /** The rule that decided; undefined when defaultAction (or no policy) did. */
  readonly rule: string | undefined;
  /** The chain element a 401 is blamed on. */
  readonly element: number | undefined;
  readonly caller: string | undefined;
  /** `<issuer> <subject>` when a user's token started the request and no service called. */
  readonly subject: string | undefined;
  /** `payments.shop ← cart.shop (POST …) ← shop.shop (POST …)`. */
  readonly callPath: string | undefined;
  /** The chain's initial token, as the policies saw it. */
  readonly initialToken: InitialTokenSummary | undefined;
  readonly verdicts: readonly PolicyVerdict[];
  /** Audit-mode verdicts that would have denied. */
  readonly audited: readonly PolicyVerdict[];
  /** The deciding rule's quota: enforced by the sidecar after the decision, not taken here. */
  readonly quota: QuotaLimit | undefined;
  /** What the sidecar checks that a dry run did not, in words. */
  readonly unchecked: readonly string[];
}

export interface InitialTokenSummary {
  /** `identity` (the token service's, of a service), `user` (an IdP's), `delegated` (exchanged). */
  readonly kind: "identity" | "user" | "delegated";
  readonly issuer: string;
  readonly subject: string;
  readonly scopes: readonly string[];
}

/** A dry run spends nothing: every jti is fresh, and none is remembered. */
const NO_REPLAY: ReplayGuard = { claim: async () => true };

function unchecked(
  input: PolicyCheckInput,
  entry: "chain" | "bearer",
  quota: QuotaLimit | undefined,
): string[] {
  const parts: string[] = [];
  if (entry === "chain") {
    parts.push(
      "replay (a dry run spends no jti)",
      "the TLS peer (the head's signer must be the one connected)",
    );
    const head = input.chain?.split(CHAIN_SEPARATOR).at(-1);
    if (input.body === undefined && head !== undefined && linkBinding(head)?.bdh !== undefined) {
      parts.push("the body binding (the head binds a body; give --body-file or --body-sha256)");
    }
  } else {
    parts.push("the TLS client certificate (a dry run has none: a certificate-bound token is refused)");
  }
  if (quota !== undefined) parts.push("quota (a dry run takes none)");
  return parts;
}

/**
 * What `input.target`'s sidecar would decide about the request described by `input`, with the
 * registry of `snapshot`. Throws PolicyCheckError when the target is not in the registry.
 */
export async function checkPolicy(
  snapshot: RegistrySnapshot,
  input: PolicyCheckInput,
): Promise<PolicyCheckResult> {
  const self = snapshot.trust.service(input.target);
  if (self === undefined) {
    throw new PolicyCheckError(
      "unknown_target",
      `${input.target} is not a service of registry generation ${snapshot.generation}.`,
    );
  }
  const limits = input.limits ?? DEFAULT_LIMITS;
  const { operation, nowSeconds } = input;
  const { chain } = input;
  const entry = chain === undefined && self.edge && input.bearer !== undefined ? "bearer" : "chain";
  const base = { target: self.id, operation: formatOperation(operation), entry } as const;
  let origin: RequestOrigin;
  try {
    if (entry === "bearer") {
      origin = admittedBearerOrigin(
        snapshot,
        { self, token: input.bearer ?? "", clientCertificate: undefined, holder: undefined, nowSeconds },
        operation,
        limits,
      );
    } else {
      // Without a body to hold it against, the head's own body hash: that binding is then not checked.
      const head = chain?.split(CHAIN_SEPARATOR).at(-1);
      const bodyHash =
        input.body === undefined
          ? head === undefined
            ? undefined
            : linkBinding(head)?.bdh
          : input.body.sha256;
      origin = await verifiedChainOrigin(
        snapshot,
        chain,
        { self: self.id, operation, bodyHash, nowSeconds },
        NO_REPLAY,
        limits,
      );
    }
  } catch (error) {
    if (!(error instanceof ChainError)) throw error;
    return {
      ...base,
      decision: "deny",
      status: 401,
      reason: error.code,
      explanation: error.message,
      policy: undefined,
      mode: undefined,
      rule: undefined,
      element: error.element,
      caller: undefined,
      subject: undefined,
      callPath: undefined,
      initialToken: undefined,
      verdicts: [],
      audited: [],
      quota: undefined,
      unchecked: unchecked(input, entry, undefined),
    };
  }
  const { from } = origin;
  const decision = decidePolicies(snapshot, input.whenNoPolicy ?? "deny", { target: self, operation, from });
  const wouldDeny = decision.allowed ? decision.audited[0] : undefined;
  const shownVerdict = wouldDeny ?? decision.decidedBy;
  const quota = decision.allowed ? decision.decidedBy?.quota : undefined;
  return {
    ...base,
    decision: !decision.allowed ? "deny" : wouldDeny !== undefined ? "audit" : "allow",
    status: decision.allowed ? 200 : 403,
    reason: wouldDeny?.reason ?? decision.reason,
    explanation: decision.explanation,
    policy: shownVerdict?.policy,
    mode: shownVerdict?.mode,
    rule: shownVerdict?.rule,
    element: undefined,
    caller: from.caller,
    subject: subjectOf(from),
    callPath: describeCallPath(self.id, from.hops),
    initialToken:
      from.initial === undefined
        ? undefined
        : {
            kind: from.initial.kind,
            issuer: shown(from.initial.issuer),
            subject: shown(from.initial.subject),
            scopes: from.initial.scopes.map((scope) => shown(scope)),
          },
    verdicts: decision.verdicts,
    audited: decision.audited,
    quota,
    unchecked: unchecked(input, entry, quota),
  };
}

function verdictLine(verdict: PolicyVerdict): string {
  const outcome = verdict.allowed
    ? "allow"
    : verdict.mode === "audit"
      ? `would deny (${verdict.reason})`
      : `deny (${verdict.reason})`;
  const by = verdict.rule === undefined ? "defaultAction" : `rule ${verdict.rule}`;
  return `  ${verdict.policy} (${verdict.mode}): ${outcome} by ${by}`;
}

/** The result as `custody policy check` prints it: the decision first, then who made it and why. */
export function renderPolicyCheck(result: PolicyCheckResult): string {
  const lines = [`decision: ${result.decision}`];
  const where = result.element === undefined ? "" : ` (element e${result.element})`;
  lines.push(`reason:   ${result.reason}${where}`);
  if (result.policy !== undefined) {
    const rule = result.rule === undefined ? "defaultAction" : `rule ${result.rule}`;
    lines.push(`policy:   ${result.policy} (${result.mode ?? "enforce"}), ${rule}`);
  } else if (result.status === 200 || result.status === 403) {
    lines.push("policy:   none");
  }
  lines.push(`why:      ${shown(result.explanation, 512)}`);
  lines.push(
    `request:  ${result.operation} to ${result.target} (${result.entry === "bearer" ? "bearer token" : "chain"})`,
  );
  if (result.callPath !== undefined) lines.push(`path:     ${result.callPath}`);
  const token = result.initialToken;
  if (token !== undefined) {
    const scopes = token.scopes.length === 0 ? "no scope" : `scope ${token.scopes.join(" ")}`;
    lines.push(`token:    ${token.kind} token of ${token.subject} from ${token.issuer}, ${scopes}`);
  }
  if (result.quota !== undefined) {
    lines.push(`quota:    ${result.quota.requestsPerSecond}/s, burst ${result.quota.burst}, per caller`);
  }
  lines.push(`answer:   the sidecar would answer ${result.status}`);
  if (result.verdicts.length > 1) lines.push("policies:", ...result.verdicts.map(verdictLine));
  if (result.unchecked.length > 0) lines.push(`not checked: ${result.unchecked.join("; ")}.`);
  return `${lines.join("\n")}\n`;
}
