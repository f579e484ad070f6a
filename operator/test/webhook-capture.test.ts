/**
 * Traffic capture's rules as text: what iptables-restore is given, line by line, and the ports it
 * refuses to make rules from. That the rules really capture is shown with the real iptables in
 * network namespaces (e2e/test/capture.test.ts); here, that they say what they should.
 */
import { describe, expect, it } from "vitest";
import {
  CAPTURE_RULES_ENV,
  CAPTURE_SCRIPT,
  CapturePortsError,
  captureInitContainer,
  captureRules,
  checkCapturePorts,
  FILTER_CHAIN,
  INIT_CONTAINER_NAME,
  MAX_EXCLUDED_PORTS,
  REDIRECT_CHAIN,
  VOLUME_XTABLES,
  xtablesVolume,
} from "../src/webhook/capture.js";

const PORTS = { inbound: 15006, admin: 15020, app: 8080, excludedInbound: [9090, 9091] };

/** The rules without their comments, as iptables-restore reads them. */
function ruleLines(text: string): string[] {
  return text.split("\n").filter((line) => line !== "" && !line.startsWith("#"));
}

function refusal(ports: typeof PORTS): CapturePortsError {
  try {
    checkCapturePorts(ports);
  } catch (error) {
    if (error instanceof CapturePortsError) return error;
    throw error;
  }
  throw new Error("expected a refusal");
}

describe("captureRules", () => {
  it("redirects the app port to the sidecar, keeps the sidecar's and excluded ports, resets the rest", () => {
    expect(ruleLines(captureRules(PORTS))).toEqual([
      "*nat",
      ":CUSTODY_INBOUND_REDIRECT - [0:0]",
      "-A PREROUTING -p tcp -j CUSTODY_INBOUND_REDIRECT",
      "-A CUSTODY_INBOUND_REDIRECT -i lo -j RETURN",
      "-A CUSTODY_INBOUND_REDIRECT -p tcp --dport 8080 -j REDIRECT --to-ports 15006",
      "COMMIT",
      "*filter",
      ":CUSTODY_INBOUND - [0:0]",
      "-A INPUT -p tcp -j CUSTODY_INBOUND",
      "-A CUSTODY_INBOUND -i lo -j RETURN",
      "-A CUSTODY_INBOUND -p tcp --dport 15006 -j RETURN",
      "-A CUSTODY_INBOUND -p tcp --dport 15020 -j RETURN",
      "-A CUSTODY_INBOUND -p tcp --dport 9090 -j RETURN",
      "-A CUSTODY_INBOUND -p tcp --dport 9091 -j RETURN",
      "-A CUSTODY_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
      "-A CUSTODY_INBOUND -p tcp -m conntrack --ctstate INVALID -j DROP",
      "-A CUSTODY_INBOUND -p tcp -j REJECT --reject-with tcp-reset",
      "COMMIT",
    ]);
  });

  it("only adds chains of Custody's own and jumps to them: nothing else of the namespace is flushed", () => {
    const lines = ruleLines(captureRules(PORTS));
    const declared = lines.filter((line) => line.startsWith(":")).map((line) => line.split(" ")[0]?.slice(1));
    expect(declared).toEqual([REDIRECT_CHAIN, FILTER_CHAIN]);
    for (const chain of declared) expect(chain).toMatch(/^CUSTODY_/);
    const builtIn = lines.filter((line) => /^-A (PREROUTING|INPUT|OUTPUT|FORWARD|POSTROUTING) /.test(line));
    expect(builtIn).toEqual([
      "-A PREROUTING -p tcp -j CUSTODY_INBOUND_REDIRECT",
      "-A INPUT -p tcp -j CUSTODY_INBOUND",
    ]);
    // The chains only refuse: what they leave alone returns to the built-in chain's own verdict.
    expect(lines.some((line) => line.includes("-j ACCEPT"))).toBe(false);
    // Loopback (the sidecar's calls to 127.0.0.1:<app>, the app's to itself) is never touched, and
    // no locally made connection is redirected (no OUTPUT rule).
    for (const chain of [REDIRECT_CHAIN, FILTER_CHAIN]) {
      const own = lines.filter((line) => line.startsWith(`-A ${chain} `));
      expect(own[0]).toBe(`-A ${chain} -i lo -j RETURN`);
    }
  });

  it("with no excluded ports, leaves only the sidecar's two ports open", () => {
    const lines = ruleLines(captureRules({ ...PORTS, excludedInbound: [] }));
    const ports = lines.map((line) => / --dport (\d+) /.exec(line)?.[1]).filter((port) => port !== undefined);
    expect(ports).toEqual(["8080", "15006", "15020"]);
  });

  it("moves with the sidecar's ports", () => {
    const lines = ruleLines(captureRules({ inbound: 16006, admin: 16020, app: 3000, excludedInbound: [] }));
    expect(lines).toContain("-A CUSTODY_INBOUND_REDIRECT -p tcp --dport 3000 -j REDIRECT --to-ports 16006");
    expect(lines).toContain("-A CUSTODY_INBOUND -p tcp --dport 16006 -j RETURN");
    expect(lines).toContain("-A CUSTODY_INBOUND -p tcp --dport 16020 -j RETURN");
  });

  it("refuses a port out of range or not a whole number", () => {
    for (const ports of [
      { ...PORTS, app: 0 },
      { ...PORTS, app: 65_536 },
      { ...PORTS, inbound: 1.5 },
      { ...PORTS, admin: Number.NaN },
      { ...PORTS, excludedInbound: [9090, 70_000] },
    ]) {
      const error = refusal(ports);
      expect(error.code).toBe("invalid_capture_ports");
      expect(error.message).toMatch(/is not a port from 1 to 65535/);
      expect(() => captureRules(ports)).toThrow(CapturePortsError);
    }
  });

  it("refuses ports that are not distinct, naming both", () => {
    expect(refusal({ ...PORTS, admin: 15006 }).message).toMatch(
      /the sidecar's admin port is 15006, which is already the sidecar's inbound port/,
    );
    expect(refusal({ ...PORTS, app: 15020 }).message).toMatch(/the app port is 15020/);
    // Excluding the app port would open the app to every pod: that is not an exclusion.
    expect(refusal({ ...PORTS, excludedInbound: [8080] }).message).toMatch(
      /excluded port 8080 is 8080, which is already the app port/,
    );
    expect(refusal({ ...PORTS, excludedInbound: [15006] }).message).toMatch(/already the sidecar's inbound/);
    expect(refusal({ ...PORTS, excludedInbound: [9090, 9090] }).message).toMatch(/listed once/);
  });

  it(`refuses more than ${MAX_EXCLUDED_PORTS} excluded ports`, () => {
    const many = Array.from({ length: MAX_EXCLUDED_PORTS + 1 }, (_, index) => 20_000 + index);
    expect(refusal({ ...PORTS, excludedInbound: many }).message).toMatch(/at most 32/);
    expect(() => captureRules({ ...PORTS, excludedInbound: many.slice(1) })).not.toThrow();
  });
});

describe("the init container", () => {
  it("runs the rules from its environment through iptables-restore, and ip6tables-restore where there is IPv6", () => {
    const container = captureInitContainer(captureRules(PORTS), {
      image: "ghcr.io/custody-dev/custody-init:0.1.0",
      imagePullPolicy: "IfNotPresent",
    });
    expect(container).toMatchObject({
      name: INIT_CONTAINER_NAME,
      image: "ghcr.io/custody-dev/custody-init:0.1.0",
      imagePullPolicy: "IfNotPresent",
      command: ["/bin/sh", "-c", CAPTURE_SCRIPT],
      env: [
        { name: CAPTURE_RULES_ENV, value: captureRules(PORTS) },
        { name: "XTABLES_LOCKFILE", value: "/run/xtables/xtables.lock" },
      ],
      volumeMounts: [{ name: VOLUME_XTABLES, mountPath: "/run/xtables" }],
    });
    expect(CAPTURE_SCRIPT.split("\n")).toEqual([
      "set -eu",
      `printf '%s\\n' "$CUSTODY_CAPTURE_RULES" | iptables-restore --noflush --wait=10`,
      'echo "custody-init: IPv4 inbound TCP captured"',
      "if [ -e /proc/net/if_inet6 ]; then",
      `  printf '%s\\n' "$CUSTODY_CAPTURE_RULES" | ip6tables-restore --noflush --wait=10`,
      '  echo "custody-init: IPv6 inbound TCP captured"',
      "else",
      '  echo "custody-init: no IPv6 in this pod: IPv4 only"',
      "fi",
    ]);
    // The kubelet expands $(NAME) in commands and values: neither may contain one.
    expect(CAPTURE_SCRIPT).not.toContain("$(");
    expect(captureRules(PORTS)).not.toContain("$(");
    expect(xtablesVolume()).toEqual({
      name: VOLUME_XTABLES,
      emptyDir: { medium: "Memory", sizeLimit: "1Mi" },
    });
  });

  it("is root with NET_ADMIN and NET_RAW only, read-only, no escalation, RuntimeDefault seccomp, bounded", () => {
    const container = captureInitContainer("", { image: "x", imagePullPolicy: "Never" });
    expect(container.securityContext).toEqual({
      runAsUser: 0,
      runAsGroup: 0,
      runAsNonRoot: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { add: ["NET_ADMIN", "NET_RAW"], drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    });
    expect(container.resources).toEqual({
      requests: { cpu: "10m", memory: "16Mi" },
      limits: { cpu: "100m", memory: "64Mi" },
    });
    expect(container.restartPolicy).toBeUndefined();
  });
});
