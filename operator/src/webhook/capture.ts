/**
 * Traffic capture: the rules that leave no way around the sidecar, and the init container that
 * installs them in the pod's network namespace before any other container starts.
 *
 * Why: the sidecar verifies every call that reaches its inbound port, but an app listening on
 * 0.0.0.0 can be called on its own port by any other pod, skipping the verification. With capture,
 * inbound TCP that arrives on any interface but loopback is
 *   - redirected to the sidecar's inbound port when it is for the app port (a direct call meets
 *     the sidecar's mutual TLS and chain check instead of the app),
 *   - left alone for the sidecar's inbound and admin ports and for the ports the pod excludes,
 *   - and reset for every other port: fail closed, whatever else the pod listens on.
 * Loopback is untouched (the sidecar reaches the app at 127.0.0.1, the app reaches itself), and
 * so are packets of connections the pod opened itself (their answers arrive on ephemeral ports).
 *
 * The rules are an iptables-restore input built by one pure function, so what a pod gets is
 * exactly what the tests run through the real iptables-restore (e2e/test/capture.test.ts), and it
 * is readable in the pod's spec (`kubectl get pod -o yaml`): nothing is hidden in the image.
 * The chains are Custody's own (CUSTODY_*); --noflush keeps whatever else the namespace has.
 */
import { CustodyError } from "../../../crds/src/errors.js";

export const INIT_CONTAINER_NAME = "custody-init";
/** The generated rules, read by the init container's script. */
export const CAPTURE_RULES_ENV = "CUSTODY_CAPTURE_RULES";
/** A writable directory for iptables' lock: the root filesystem is read-only. */
export const VOLUME_XTABLES = "custody-xtables";
export const XTABLES_MOUNT_PATH = "/run/xtables";
/** nat: inbound TCP for the app port goes to the sidecar. */
export const REDIRECT_CHAIN = "CUSTODY_INBOUND_REDIRECT";
/** filter: what is not for the sidecar, an excluded port, loopback or an answer is reset. */
export const FILTER_CHAIN = "CUSTODY_INBOUND";
/** A pod has few ports worth exposing past the sidecar; a long list is more likely a mistake. */
export const MAX_EXCLUDED_PORTS = 32;

export interface CapturePorts {
  /** The sidecar's mutual-TLS port, where the app port is redirected. */
  readonly inbound: number;
  /** The sidecar's admin port (metrics, its probes and the app's rewritten ones). */
  readonly admin: number;
  /** The app's port: never reachable from outside the pod but through the sidecar. */
  readonly app: number;
  /** Ports other pods may still reach directly (a metrics port, say). */
  readonly excludedInbound: readonly number[];
}

/** Ports that cannot make sound rules: `invalid_capture_ports`, with what is wrong. */
export class CapturePortsError extends CustodyError {
  constructor(message: string) {
    super("invalid_capture_ports", message);
  }
}

function isPort(value: number): boolean {
  return Number.isInteger(value) && value >= 1 && value <= 65_535;
}

/** Throws CapturePortsError unless every port is 1-65535 and no two of them are the same. */
export function checkCapturePorts(ports: CapturePorts): void {
  const named: [string, number][] = [
    ["the sidecar's inbound port", ports.inbound],
    ["the sidecar's admin port", ports.admin],
    ["the app port", ports.app],
    ...ports.excludedInbound.map((port): [string, number] => [`excluded port ${port}`, port]),
  ];
  const bad = named.find(([, port]) => !isPort(port));
  if (bad !== undefined) throw new CapturePortsError(`${bad[0]} (${bad[1]}) is not a port from 1 to 65535.`);
  if (ports.excludedInbound.length > MAX_EXCLUDED_PORTS) {
    throw new CapturePortsError(`at most ${MAX_EXCLUDED_PORTS} inbound ports can be excluded from capture.`);
  }
  const seen = new Map<number, string>();
  for (const [name, port] of named) {
    const first = seen.get(port);
    if (first !== undefined) {
      throw new CapturePortsError(
        `${name} is ${port}, which is already ${first}: ${
          name.startsWith("excluded")
            ? "an excluded port must be none of the app's and the sidecar's, and listed once"
            : "the ports must differ"
        }.`,
      );
    }
    seen.set(port, name);
  }
}

/**
 * The iptables-restore input (for iptables-restore and ip6tables-restore alike, with --noflush)
 * that captures inbound TCP for `ports`. Throws CapturePortsError for ports that cannot be.
 */
export function captureRules(ports: CapturePorts): string {
  checkCapturePorts(ports);
  const open = [ports.inbound, ports.admin, ...ports.excludedInbound];
  return [
    "# Custody traffic capture (operator/src/webhook/capture.ts): inbound TCP from outside the pod",
    `# reaches the sidecar (app port ${ports.app} -> ${ports.inbound}), the sidecar's ports and the excluded`,
    "# ones; every other port is reset. Loopback and answers to the pod's own connections pass.",
    "*nat",
    `:${REDIRECT_CHAIN} - [0:0]`,
    `-A PREROUTING -p tcp -j ${REDIRECT_CHAIN}`,
    `-A ${REDIRECT_CHAIN} -i lo -j RETURN`,
    `-A ${REDIRECT_CHAIN} -p tcp --dport ${ports.app} -j REDIRECT --to-ports ${ports.inbound}`,
    "COMMIT",
    "*filter",
    `:${FILTER_CHAIN} - [0:0]`,
    `-A INPUT -p tcp -j ${FILTER_CHAIN}`,
    `-A ${FILTER_CHAIN} -i lo -j RETURN`,
    // After the nat table: a redirected connection is seen here on the inbound port.
    ...open.map((port) => `-A ${FILTER_CHAIN} -p tcp --dport ${port} -j RETURN`),
    `-A ${FILTER_CHAIN} -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN`,
    // A stray packet of one of the pod's own connections (out of window, say) must not be answered
    // with a reset, which would end that connection: dropped, as kube-proxy drops them.
    `-A ${FILTER_CHAIN} -p tcp -m conntrack --ctstate INVALID -j DROP`,
    `-A ${FILTER_CHAIN} -p tcp -j REJECT --reject-with tcp-reset`,
    "COMMIT",
    "",
  ].join("\n");
}

/**
 * What the init container runs (`sh -c`), with the rules in CUSTODY_CAPTURE_RULES. IPv6 gets the
 * same rules whenever the pod's network namespace has IPv6 at all (link-local addresses included:
 * a listener on :: is reachable over them); only a namespace without IPv6 skips them. Any failure
 * fails the init container, and with it the pod: it never runs uncaptured.
 */
export const CAPTURE_SCRIPT = [
  "set -eu",
  `printf '%s\\n' "$${CAPTURE_RULES_ENV}" | iptables-restore --noflush --wait=10`,
  'echo "custody-init: IPv4 inbound TCP captured"',
  "if [ -e /proc/net/if_inet6 ]; then",
  `  printf '%s\\n' "$${CAPTURE_RULES_ENV}" | ip6tables-restore --noflush --wait=10`,
  '  echo "custody-init: IPv6 inbound TCP captured"',
  "else",
  '  echo "custody-init: no IPv6 in this pod: IPv4 only"',
  "fi",
].join("\n");

export interface InitContainerSettings {
  readonly image: string;
  readonly imagePullPolicy: string;
}

/**
 * The init container that installs `rules`: root, but with NET_ADMIN and NET_RAW as its only
 * capabilities (what iptables needs in the pod's own network namespace), nothing else writable
 * than the lock directory, and small bounded resources (ResourceQuotas on limits admit it).
 */
export function captureInitContainer(
  rules: string,
  settings: InitContainerSettings,
): Record<string, unknown> {
  return {
    name: INIT_CONTAINER_NAME,
    image: settings.image,
    imagePullPolicy: settings.imagePullPolicy,
    command: ["/bin/sh", "-c", CAPTURE_SCRIPT],
    env: [
      { name: CAPTURE_RULES_ENV, value: rules },
      { name: "XTABLES_LOCKFILE", value: `${XTABLES_MOUNT_PATH}/xtables.lock` },
    ],
    resources: {
      requests: { cpu: "10m", memory: "16Mi" },
      limits: { cpu: "100m", memory: "64Mi" },
    },
    securityContext: {
      runAsUser: 0,
      runAsGroup: 0,
      // Over a pod-level runAsNonRoot: true, which would keep a root container from starting.
      runAsNonRoot: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { add: ["NET_ADMIN", "NET_RAW"], drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    },
    volumeMounts: [{ name: VOLUME_XTABLES, mountPath: XTABLES_MOUNT_PATH }],
    terminationMessagePolicy: "FallbackToLogsOnError",
  };
}

/** The lock directory's volume: a few bytes in memory. */
export function xtablesVolume(): Record<string, unknown> {
  return { name: VOLUME_XTABLES, emptyDir: { medium: "Memory", sizeLimit: "1Mi" } };
}
