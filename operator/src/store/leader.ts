/**
 * Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics so Custody
 * replicas behave like every other controller: a candidate takes the Lease when it is absent, free
 * (no holder) or expired, and expiry is judged by the local clock from the moment this replica saw
 * the record last change, never by comparing the holder's timestamps with our clock (clocks of
 * two nodes disagree; durations measured on one do not). The leader renews every retry period and
 * steps down when no renewal succeeded within the renew deadline, which is shorter than the lease
 * duration, so it has stopped before anyone else may take over. Writes use the Lease's
 * resourceVersion: of two candidates racing, one gets 409 and stays a candidate.
 *
 * Unlike client-go, a leader that sees another holder step in steps down at once (instead of at
 * its renew deadline), and a replica that lost the lease goes back to being a candidate: its
 * callbacks alternate, started then stopped, as often as leadership changes.
 */
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import {
  CoordinationV1Api,
  type KubeConfig,
  type V1Lease,
  type V1LeaseSpec,
  V1MicroTime,
} from "@kubernetes/client-node";
import type { Logger } from "pino";
import { CustodyError } from "../../../crds/src/errors.js";
import { callApi, describeFailure, statusOf } from "./kubernetes-api.js";

export const DEFAULT_LEASE_NAME = "custody-operator";
/** client-go's JitterFactor: candidates wait between 1 and 2.2 retry periods. */
const JITTER_FACTOR = 1.2;

export class LeaderElectionError extends CustodyError {
  declare readonly code: "leader_election_invalid" | "leader_election_state";
}

export interface LeaderElectorOptions {
  readonly kubeConfig: KubeConfig;
  readonly namespace: string;
  readonly name?: string;
  /** Unique per replica (default: hostname plus a random suffix). */
  readonly identity?: string;
  /** How long a Lease stays valid after its last observed change (default 15 s). */
  readonly leaseDurationMs?: number;
  /** How long the leader keeps leading without a successful renewal (default 10 s). */
  readonly renewDeadlineMs?: number;
  /** Between attempts to acquire or renew (default 2 s). */
  readonly retryPeriodMs?: number;
  readonly logger: Logger;
  readonly now?: () => number;
  readonly random?: () => number;
}

export interface LeaderCallbacks {
  /** Called on becoming leader: start the work only one replica may do. */
  onStartedLeading(): void;
  /** Called on losing or giving up the lease: stop that work now. */
  onStoppedLeading(): void;
}

type Attempt = { readonly ok: true } | { readonly ok: false; readonly heldBy?: string };

function timeText(value: unknown): string | undefined {
  // client-node types MicroTime fields as Dates but hands back the JSON strings it read.
  if (value instanceof Date) return value.toISOString();
  return typeof value === "string" ? value : undefined;
}

function recordKey(spec: V1LeaseSpec | undefined): string {
  return JSON.stringify([
    spec?.holderIdentity ?? "",
    spec?.leaseDurationSeconds ?? 0,
    timeText(spec?.acquireTime) ?? "",
    timeText(spec?.renewTime) ?? "",
    spec?.leaseTransitions ?? 0,
  ]);
}

export class LeaderElector {
  readonly #options: LeaderElectorOptions;
  readonly #api: CoordinationV1Api;
  readonly #name: string;
  readonly #identity: string;
  readonly #leaseDurationMs: number;
  readonly #renewDeadlineMs: number;
  readonly #retryPeriodMs: number;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #logger: Logger;
  readonly #cancel = new AbortController();
  #callbacks: LeaderCallbacks | undefined;
  #leading = false;
  #closed = false;
  #timer: NodeJS.Timeout | undefined;
  #deadline: NodeJS.Timeout | undefined;
  #cycle: Promise<void> | undefined;
  /** The Lease record as last seen, and when (local clock) it was first seen like that. */
  #observedRecord = "";
  #observedAtMs = 0;
  #lastHolder: string | undefined;
  #lastFailure: string | undefined;

  constructor(options: LeaderElectorOptions) {
    this.#options = options;
    this.#api = options.kubeConfig.makeApiClient(CoordinationV1Api);
    this.#name = options.name ?? DEFAULT_LEASE_NAME;
    this.#identity = options.identity ?? `${hostname()}_${randomBytes(4).toString("hex")}`;
    this.#leaseDurationMs = options.leaseDurationMs ?? 15_000;
    this.#renewDeadlineMs = options.renewDeadlineMs ?? 10_000;
    this.#retryPeriodMs = options.retryPeriodMs ?? 2_000;
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#logger = options.logger.child({
      lease: `${options.namespace}/${this.#name}`,
      identity: this.#identity,
    });
    if (!(this.#retryPeriodMs > 0 && this.#renewDeadlineMs > JITTER_FACTOR * this.#retryPeriodMs)) {
      throw new LeaderElectionError(
        "leader_election_invalid",
        `the renew deadline (${this.#renewDeadlineMs} ms) must exceed ${JITTER_FACTOR} retry periods (${this.#retryPeriodMs} ms)`,
      );
    }
    if (this.#leaseDurationMs <= this.#renewDeadlineMs) {
      throw new LeaderElectionError(
        "leader_election_invalid",
        `the lease duration (${this.#leaseDurationMs} ms) must exceed the renew deadline (${this.#renewDeadlineMs} ms), or two replicas could lead at once`,
      );
    }
    if (this.#identity === "")
      throw new LeaderElectionError("leader_election_invalid", "the identity must not be empty");
  }

  get identity(): string {
    return this.#identity;
  }

  get isLeader(): boolean {
    return this.#leading;
  }

  start(callbacks: LeaderCallbacks): void {
    if (this.#callbacks !== undefined || this.#closed) {
      throw new LeaderElectionError(
        "leader_election_state",
        "a LeaderElector starts once and not after close()",
      );
    }
    this.#callbacks = callbacks;
    this.#schedule(0);
  }

  /** Stops; a leader calls onStoppedLeading, then frees the Lease so another replica takes over at once. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#cancel.abort();
    await this.#cycle;
    if (this.#leading) this.#stopLeading(undefined);
    clearTimeout(this.#deadline);
    if (this.#callbacks !== undefined) await this.#release();
  }

  #schedule(delayMs: number): void {
    if (this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#cycle = this.#attempt().finally(() => {
        this.#cycle = undefined;
      });
    }, delayMs);
  }

  async #attempt(): Promise<void> {
    const startedMs = this.#now();
    let attempt: Attempt = { ok: false };
    try {
      attempt = await this.#tryAcquireOrRenew(startedMs);
      this.#lastFailure = undefined;
    } catch (error) {
      if (this.#closed) return;
      const failure = describeFailure(error);
      // Once per kind of failure, not once per retry period.
      if (failure !== this.#lastFailure) {
        this.#logger.warn({ error: failure }, "cannot read or write the leader Lease; retrying");
        this.#lastFailure = failure;
      }
    }
    if (this.#closed) return;
    if (attempt.ok) {
      if (!this.#leading) this.#startLeading();
      this.#armDeadline(startedMs);
    } else if (this.#leading && attempt.heldBy !== undefined) {
      this.#stopLeading(`${attempt.heldBy} holds the lease now`);
    }
    this.#schedule(
      this.#leading ? this.#retryPeriodMs : this.#retryPeriodMs * (1 + this.#random() * JITTER_FACTOR),
    );
  }

  async #tryAcquireOrRenew(nowMs: number): Promise<Attempt> {
    let lease: V1Lease;
    try {
      lease = await this.#call((options) =>
        this.#api.readNamespacedLease({ name: this.#name, namespace: this.#options.namespace }, options),
      );
    } catch (error) {
      if (statusOf(error) !== 404) throw error;
      return this.#create(nowMs);
    }
    const current = lease.spec;
    this.#observe(current, nowMs);
    const holder = current?.holderIdentity ?? "";
    const validForMs = (current?.leaseDurationSeconds ?? 0) * 1000;
    if (holder !== "" && holder !== this.#identity && this.#observedAtMs + validForMs > nowMs) {
      return { ok: false, heldBy: holder };
    }
    const renewing = holder === this.#identity;
    const transitions = current?.leaseTransitions ?? 0;
    const spec: V1LeaseSpec = {
      holderIdentity: this.#identity,
      leaseDurationSeconds: this.#leaseSeconds(),
      acquireTime:
        renewing && current?.acquireTime !== undefined ? current.acquireTime : new V1MicroTime(nowMs),
      renewTime: new V1MicroTime(nowMs),
      leaseTransitions: renewing ? transitions : transitions + 1,
    };
    try {
      const replaced = await this.#call((options) => this.#replace(lease, spec, options));
      this.#observe(replaced.spec, nowMs);
      return { ok: true };
    } catch (error) {
      if (statusOf(error) === 409) return { ok: false };
      throw error;
    }
  }

  async #create(nowMs: number): Promise<Attempt> {
    const spec: V1LeaseSpec = {
      holderIdentity: this.#identity,
      leaseDurationSeconds: this.#leaseSeconds(),
      acquireTime: new V1MicroTime(nowMs),
      renewTime: new V1MicroTime(nowMs),
      leaseTransitions: 0,
    };
    try {
      const created = await this.#call((options) =>
        this.#api.createNamespacedLease(
          {
            namespace: this.#options.namespace,
            body: {
              apiVersion: "coordination.k8s.io/v1",
              kind: "Lease",
              metadata: { name: this.#name },
              spec,
            },
          },
          options,
        ),
      );
      this.#observe(created.spec, nowMs);
      return { ok: true };
    } catch (error) {
      if (statusOf(error) === 409) return { ok: false };
      throw error;
    }
  }

  /** Frees the Lease if this replica holds it, whatever it believes: an answer lost to close() may have made it the holder. */
  async #release(): Promise<void> {
    const call = <T>(run: Parameters<typeof callApi<T>>[2]): Promise<T> =>
      callApi(this.#renewDeadlineMs, undefined, run);
    try {
      const lease = await call((options) =>
        this.#api.readNamespacedLease({ name: this.#name, namespace: this.#options.namespace }, options),
      );
      if (lease.spec?.holderIdentity !== this.#identity) return;
      const nowMs = this.#now();
      const spec: V1LeaseSpec = {
        holderIdentity: "",
        // The shortest a Lease can be: whoever still waits on the old record waits one second.
        leaseDurationSeconds: 1,
        acquireTime: new V1MicroTime(nowMs),
        renewTime: new V1MicroTime(nowMs),
        leaseTransitions: lease.spec.leaseTransitions ?? 0,
      };
      await call((options) => this.#replace(lease, spec, options));
      this.#logger.info("released the leader Lease");
    } catch (error) {
      if (statusOf(error) === 404) return;
      this.#logger.warn(
        { error: describeFailure(error) },
        "cannot release the leader Lease; another replica takes over when it expires",
      );
    }
  }

  #observe(spec: V1LeaseSpec | undefined, nowMs: number): void {
    const key = recordKey(spec);
    if (key !== this.#observedRecord) {
      this.#observedRecord = key;
      this.#observedAtMs = nowMs;
    }
    const holder = spec?.holderIdentity ?? "";
    if (holder !== this.#lastHolder) {
      this.#lastHolder = holder;
      if (holder !== "" && holder !== this.#identity) this.#logger.info({ holder }, "another replica leads");
    }
  }

  #leaseSeconds(): number {
    return Math.max(1, Math.ceil(this.#leaseDurationMs / 1000));
  }

  /**
   * Counted from when the renewing attempt started, not when its answer came: the Lease says it
   * was renewed then, and the other replicas' patience may start as early as that.
   */
  #armDeadline(renewedAtMs: number): void {
    clearTimeout(this.#deadline);
    this.#deadline = setTimeout(
      () => {
        this.#deadline = undefined;
        if (this.#leading) this.#stopLeading(`no renewal succeeded within ${this.#renewDeadlineMs} ms`);
      },
      Math.max(0, renewedAtMs + this.#renewDeadlineMs - this.#now()),
    );
  }

  #startLeading(): void {
    this.#leading = true;
    this.#logger.info("became leader");
    this.#notify("onStartedLeading");
  }

  /** `reason` undefined: closing, which is no news worth a warning. */
  #stopLeading(reason: string | undefined): void {
    this.#leading = false;
    clearTimeout(this.#deadline);
    this.#deadline = undefined;
    if (reason === undefined) this.#logger.info("stopped leading: closing");
    else this.#logger.warn({ reason }, "stopped leading");
    this.#notify("onStoppedLeading");
  }

  #notify(callback: keyof LeaderCallbacks): void {
    try {
      this.#callbacks?.[callback]();
    } catch (error) {
      this.#logger.error(
        { callback, error: error instanceof Error ? error.message : String(error) },
        "a leader election callback threw",
      );
    }
  }

  /** Replaces the Lease read as `lease` (its resourceVersion makes a concurrent change a 409). */
  #replace(
    lease: V1Lease,
    spec: V1LeaseSpec,
    options: Parameters<Parameters<typeof callApi<V1Lease>>[2]>[0],
  ) {
    return this.#api.replaceNamespacedLease(
      {
        name: this.#name,
        namespace: this.#options.namespace,
        body: { apiVersion: "coordination.k8s.io/v1", kind: "Lease", metadata: lease.metadata ?? {}, spec },
      },
      options,
    );
  }

  #call<T>(run: Parameters<typeof callApi<T>>[2]): Promise<T> {
    return callApi(this.#renewDeadlineMs, this.#cancel.signal, run);
  }
}
