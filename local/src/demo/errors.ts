import { CustodyError } from "../../../crds/src/errors.js";

export type DemoErrorCode =
  /** examples/shop was not found next to the installed CLI. */
  | "demo_example_missing"
  /** A workload did not become ready (sidecar, app port, published key) in time. */
  | "demo_not_ready"
  /** The working copy's policies.yaml has no readable AccessPolicy of that name. */
  | "demo_policy_not_found"
  /** The registry did not carry a policy change in time. */
  | "demo_policy_not_applied"
  /** Ctrl-C (or SIGTERM) stopped the demo. */
  | "demo_aborted"
  /** An answer the demo cannot read at all (not the outcome of a scenario: those are compared). */
  | "demo_bad_reply";

export class DemoError extends CustodyError {
  declare readonly code: DemoErrorCode;
  constructor(code: DemoErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
