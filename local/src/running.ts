/**
 * What `startLocal` gives back: the whole system running as local processes (operator with its
 * token service, one sidecar and one app per workload), and where each part listens. `custody local
 * up` prints it; `custody demo` and the end-to-end tests drive it over HTTP.
 */

export interface StartLocalOptions {
  /** ServiceIdentity, AccessPolicy and LocalWorkload manifests (watched: changes apply live). */
  readonly directory: string;
  /** CA, issued Secrets, registry, ports and logs; reused by the next run. */
  readonly stateDirectory: string;
  /** Delete the state first: new CA, new identities. */
  readonly reset?: boolean;
  /** External issuers of users' tokens (the `--trusted-issuers` file format of `custody issuer`). */
  readonly trustedIssuersPath?: string;
  /** Third-party CAs whose client certificates may authenticate (`externalSubjects`), PEM. */
  readonly trustBundlePath?: string;
  /** How long a new key is published before a workload switches to it (default 2s locally). */
  readonly propagationDelayMs?: number;
  /** One line per step, for people ("starting sidecar for cart.shop …"). */
  readonly progress: (line: string) => void;
}

export interface RunningWorkload {
  /** LocalWorkload metadata.name / namespace. */
  readonly name: string;
  readonly namespace: string;
  /** `<identity>.<namespace>`: who this workload is in the mesh. */
  readonly serviceId: string;
  /** The app's port on 127.0.0.1 (it is given to the app as $PORT). */
  readonly appPort: number;
  /** The sidecar's ports on 127.0.0.1: inbound (mTLS), outbound (the app's HTTP_PROXY), admin. */
  readonly inboundPort: number;
  readonly outboundPort: number;
  readonly adminPort: number;
  /** http://127.0.0.1:<outbound>: the app's HTTP_PROXY, and its key service under /.custody/. */
  readonly outboundUrl: string;
  /**
   * What the app presents on the outbound port and key service (Proxy-Authorization or Authorization,
   * Basic with any user name): every process of the machine reaches 127.0.0.1.
   */
  readonly clientSecret: string;
  /** The outbound port as the app is given it (its HTTP_PROXY): with the credential as userinfo. */
  readonly appProxyUrl: string;
  /** http://127.0.0.1:<admin>: /metrics, /healthz, /readyz. */
  readonly adminUrl: string;
}

export interface RunningLocal {
  readonly stateDirectory: string;
  /** Custody's CA: ca.crt (and ca.key) as made by `custody pki init`. */
  readonly caDirectory: string;
  /** The token service's endpoint, https://127.0.0.1:<port>/oauth2/token. */
  readonly tokenUrl: string;
  /** The operator's admin port: /metrics, /healthz, /readyz. */
  readonly operatorAdminUrl: string;
  /** The token service's admin port: its /metrics. */
  readonly tokenAdminUrl: string;
  readonly workloads: readonly RunningWorkload[];
  /** The workload of a service id; throws when there is none. */
  workload(serviceId: string): RunningWorkload;
  /** The identity Secret directory (tls.crt, tls.key, ca.crt) of a service id. */
  secretDirectory(serviceId: string): string;
  /** The registry directory (registry-<i>.json) sidecars of `namespace` read. */
  registryDirectory(namespace: string): string;
  /** Stops the operator and its token service (sidecars keep running): offline operation. */
  stopOperator(): Promise<void>;
  /** Starts them again on the same state. */
  startOperator(): Promise<void>;
  /** Stops everything: apps, sidecars, operator; resolves when all have exited. */
  close(): Promise<void>;
}
