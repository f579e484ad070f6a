/**
 * Injection with traffic capture: the init container and where it goes, the switch (operator
 * setting, pod annotation), the excluded ports, the refusals, and the kubelet's probes pointed at
 * the sidecar with the originals handed to it. Patches are applied by an independent RFC 6902
 * implementation, as in webhook-inject.test.ts.
 */
import { applyPatch, type Operation } from "fast-json-patch";
import { describe, expect, it } from "vitest";
import { EXIT_USAGE, runCommand } from "../../cli/src/kit.js";
import { APP_PROBES_ENV, parseAppProbes } from "../../crds/src/app-probes.js";
import { validateServiceIdentity } from "../../crds/src/manifest.js";
import type { ServiceIdentity } from "../../crds/src/service-identity.js";
import { captureIO } from "../../pki/test/support.js";
import { operatorCommand } from "../src/cli.js";
import {
  CAPTURE_RULES_ENV,
  captureRules,
  INIT_CONTAINER_NAME,
  VOLUME_XTABLES,
} from "../src/webhook/capture.js";
import {
  checkInjectionSettings,
  DEFAULT_INJECTION_SETTINGS,
  type IdentityLookup,
  type InjectionSettings,
  injectionPatch,
  SIDECAR_CONTAINER_NAME,
} from "../src/webhook/inject.js";
import type { AdmissionDecision } from "../src/webhook/review.js";

const NAMESPACE = "shop";
const cart: ServiceIdentity = validateServiceIdentity({
  apiVersion: "custody.dev/v1alpha1",
  kind: "ServiceIdentity",
  metadata: { name: "cart", namespace: NAMESPACE },
  spec: {},
});
const lookup: IdentityLookup = {
  identity: (namespace, name) => (namespace === NAMESPACE && name === "cart" ? cart : undefined),
};
const CAPTURING: InjectionSettings = { ...DEFAULT_INJECTION_SETTINGS, capture: true };

type Container = Record<string, unknown> & { name: string };
interface Pod {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string; annotations: Record<string, string> };
  spec: {
    serviceAccountName: string;
    containers: Container[];
    initContainers?: Container[];
    volumes?: unknown[];
  };
}

function pod(annotations: Record<string, string> = {}, spec: Partial<Pod["spec"]> = {}): Pod {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name: "cart-1",
      namespace: NAMESPACE,
      annotations: { "custody.dev/inject": "true", ...annotations },
    },
    spec: {
      serviceAccountName: "cart",
      containers: [{ name: "app", image: "cart:1", ports: [{ containerPort: 8080, name: "http" }] }],
      ...spec,
    },
  };
}

function inject(input: Pod, settings = CAPTURING): AdmissionDecision {
  return injectionPatch(structuredClone(input), NAMESPACE, lookup, settings);
}

function injected(input: Pod, settings = CAPTURING): Pod {
  const decision = inject(input, settings);
  if (!decision.allowed) throw new Error(`refused: ${decision.message}`);
  const patch = JSON.parse(JSON.stringify(decision.patch)) as Operation[];
  return applyPatch(structuredClone(input), patch, true, false).newDocument;
}

function refusal(decision: AdmissionDecision) {
  if (decision.allowed) throw new Error("expected a refusal");
  return decision;
}

function names(containers: readonly Container[] | undefined): string[] {
  return (containers ?? []).map((container) => container.name);
}

function envOf(container: Container | undefined): Record<string, string> {
  const env = (container?.env ?? []) as { name: string; value: string }[];
  return Object.fromEntries(env.map((variable) => [variable.name, variable.value]));
}

function container(result: Pod, name: string): Container {
  const found = [...(result.spec.initContainers ?? []), ...result.spec.containers].find(
    (c) => c.name === name,
  );
  if (found === undefined) throw new Error(`no container ${name}`);
  return found;
}

const rewritten = (name: string, kind: string, timing: Record<string, unknown> = {}) => ({
  ...timing,
  httpGet: { path: `/app-health/${name}/${kind}`, port: 15020, scheme: "HTTP" },
});

describe("injection with traffic capture", () => {
  it("is off by default: no init container, no lock volume, probes as they were", () => {
    const probe = { httpGet: { path: "/ready", port: 8080 } };
    const input = pod(
      {},
      { containers: [{ name: "app", ports: [{ containerPort: 8080 }], readinessProbe: probe }] },
    );
    const result = injected(input, DEFAULT_INJECTION_SETTINGS);
    expect(names(result.spec.initContainers)).toEqual([SIDECAR_CONTAINER_NAME]);
    expect(result.spec.containers[0]?.readinessProbe).toEqual(probe);
    expect(JSON.stringify(result.spec.volumes)).not.toContain(VOLUME_XTABLES);
    expect(envOf(container(result, SIDECAR_CONTAINER_NAME))[APP_PROBES_ENV]).toBeUndefined();
  });

  it("puts custody-init first, before the native sidecar, with the rules for the pod's ports", () => {
    const result = injected(pod());
    expect(names(result.spec.initContainers)).toEqual([INIT_CONTAINER_NAME, SIDECAR_CONTAINER_NAME]);
    const init = container(result, INIT_CONTAINER_NAME);
    expect(envOf(init)[CAPTURE_RULES_ENV]).toBe(
      captureRules({ inbound: 15006, admin: 15020, app: 8080, excludedInbound: [] }),
    );
    expect(init).toMatchObject({
      image: DEFAULT_INJECTION_SETTINGS.initImage,
      imagePullPolicy: "IfNotPresent",
      securityContext: { runAsUser: 0, capabilities: { add: ["NET_ADMIN", "NET_RAW"], drop: ["ALL"] } },
    });
    expect(init.restartPolicy).toBeUndefined();
    expect(result.spec.volumes).toContainEqual({
      name: VOLUME_XTABLES,
      emptyDir: { medium: "Memory", sizeLimit: "1Mi" },
    });
  });

  it("goes before the pod's own init containers, and before the sidecar in container mode", () => {
    const withInit = pod({}, { initContainers: [{ name: "migrate", image: "migrate:1" }] });
    expect(names(injected(withInit).spec.initContainers)).toEqual([
      INIT_CONTAINER_NAME,
      SIDECAR_CONTAINER_NAME,
      "migrate",
    ]);
    const containerMode = { ...CAPTURING, mode: "container" as const };
    const plain = injected(pod(), containerMode);
    expect(names(plain.spec.initContainers)).toEqual([INIT_CONTAINER_NAME]);
    expect(names(plain.spec.containers)).toEqual(["app", SIDECAR_CONTAINER_NAME]);
    expect(names(injected(withInit, containerMode).spec.initContainers)).toEqual([
      INIT_CONTAINER_NAME,
      "migrate",
    ]);
  });

  it("takes the pod's annotation over the operator's setting, both ways", () => {
    const off = injected(pod({ "custody.dev/capture": "false" }));
    expect(names(off.spec.initContainers)).toEqual([SIDECAR_CONTAINER_NAME]);
    const on = injected(pod({ "custody.dev/capture": "true" }), DEFAULT_INJECTION_SETTINGS);
    expect(names(on.spec.initContainers)).toEqual([INIT_CONTAINER_NAME, SIDECAR_CONTAINER_NAME]);
    expect(refusal(inject(pod({ "custody.dev/capture": "yes" })))).toMatchObject({
      code: 400,
      reason: "invalid_capture",
      identity: "cart",
    });
  });

  it("leaves the excluded ports open, with the moved sidecar ports and the annotated app port", () => {
    const settings = { ...CAPTURING, ports: { outbound: 16001, inbound: 16006, admin: 16020 } };
    const result = injected(
      pod({ "custody.dev/app-port": "3000", "custody.dev/capture-exclude-inbound-ports": " 9090, 9091 ," }),
      settings,
    );
    expect(envOf(container(result, INIT_CONTAINER_NAME))[CAPTURE_RULES_ENV]).toBe(
      captureRules({ inbound: 16006, admin: 16020, app: 3000, excludedInbound: [9090, 9091] }),
    );
  });

  it("refuses excluded ports that are not ports, or would open the app or repeat the sidecar's", () => {
    for (const [listed, message] of [
      ["9090,http", /"http" is not a port/],
      ["9090;9091", /"9090;9091" is not a port/],
      ["70000", /excluded port 70000 .* is not a port from 1 to 65535/],
      ["0", /is not a port from 1 to 65535/],
      ["8080", /already the app port/],
      ["15020", /already the sidecar's admin port/],
      ["9090,9090", /listed once/],
      [Array.from({ length: 33 }, (_, index) => 20_000 + index).join(","), /at most 32/],
      ["1,".repeat(200), /too long/],
    ] as const) {
      const denied = refusal(inject(pod({ "custody.dev/capture-exclude-inbound-ports": listed })));
      expect(denied.reason, listed).toBe("invalid_capture_ports");
      expect(denied.code).toBe(400);
      expect(denied.message, listed).toMatch(message);
    }
    // Without capture the list is not read.
    expect(
      inject(pod({ "custody.dev/capture-exclude-inbound-ports": "http" }), DEFAULT_INJECTION_SETTINGS)
        .allowed,
    ).toBe(true);
  });

  it("refuses a pod that already has a container named custody-init", () => {
    const named = pod({}, { initContainers: [{ name: INIT_CONTAINER_NAME, image: "x" }] });
    expect(refusal(inject(named))).toMatchObject({ code: 400, reason: "container_conflict" });
    expect(inject(named, DEFAULT_INJECTION_SETTINGS).allowed).toBe(true);
  });
});

describe("probes under traffic capture", () => {
  const timing = { initialDelaySeconds: 2, periodSeconds: 5, timeoutSeconds: 3, failureThreshold: 4 };
  const app: Container = {
    name: "app",
    image: "cart:1",
    ports: [
      { containerPort: 8080, name: "http" },
      { containerPort: 9090, name: "metrics" },
    ],
    readinessProbe: {
      ...timing,
      httpGet: {
        path: "/ready?full=1",
        port: 8080,
        scheme: "HTTPS",
        httpHeaders: [{ name: "X-Probe", value: "kubelet" }],
      },
    },
    livenessProbe: { tcpSocket: { port: "http" }, periodSeconds: 10 },
    startupProbe: { httpGet: { path: "healthz", port: "metrics" }, failureThreshold: 30 },
  };

  it("points captured httpGet and tcpSocket probes at the sidecar and hands it the originals", () => {
    const result = injected(pod({}, { containers: [app] }));
    const rewrittenApp = container(result, "app");
    expect(rewrittenApp.readinessProbe).toEqual(rewritten("app", "readiness", timing));
    expect(rewrittenApp.livenessProbe).toEqual(rewritten("app", "liveness", { periodSeconds: 10 }));
    // A port that is not the app's is captured too (reset from outside): the sidecar probes it.
    expect(rewrittenApp.startupProbe).toEqual(rewritten("app", "startup", { failureThreshold: 30 }));
    const probes = parseAppProbes(envOf(container(result, SIDECAR_CONTAINER_NAME))[APP_PROBES_ENV] ?? "");
    expect(probes).toEqual({
      app: {
        readiness: {
          http: {
            port: 8080,
            path: "/ready?full=1",
            scheme: "HTTPS",
            httpHeaders: [{ name: "X-Probe", value: "kubelet" }],
          },
          timeoutSeconds: 3,
        },
        liveness: { tcp: { port: 8080 }, timeoutSeconds: 1 },
        startup: {
          http: { port: 9090, path: "/healthz", scheme: "HTTP", httpHeaders: [] },
          timeoutSeconds: 1,
        },
      },
    });
  });

  it("refuses a gRPC probe of a captured port: it would fail for ever", () => {
    const input = pod(
      {},
      {
        containers: [
          { name: "app", ports: [{ containerPort: 8080 }], livenessProbe: { grpc: { port: 8080 } } },
        ],
      },
    );
    const decision = inject(input);
    expect(decision).toMatchObject({ allowed: false, reason: "invalid_probe" });
  });

  it("leaves alone probes of open ports, of other hosts, exec and gRPC probes of open ports, and unresolvable ports", () => {
    const untouched: Container = {
      name: "app",
      ports: [{ containerPort: 8080 }, { containerPort: 9090 }],
      readinessProbe: { httpGet: { path: "/metrics", port: 9090 } },
      livenessProbe: { exec: { command: ["true"] } },
      startupProbe: { grpc: { port: 9090 } },
    };
    const others: Container = {
      name: "other",
      readinessProbe: { httpGet: { host: "10.1.2.3", path: "/", port: 8080 } },
      livenessProbe: { tcpSocket: { port: "undeclared" } },
      startupProbe: { httpGet: { port: "8080" } },
    };
    const input = pod(
      { "custody.dev/capture-exclude-inbound-ports": "9090" },
      { containers: [untouched, others] },
    );
    const decision = inject(input);
    if (!decision.allowed) throw new Error(decision.message);
    expect(decision.patch.some((op) => op.op === "replace")).toBe(false);
    const result = injected(input);
    expect(result.spec.containers).toEqual(input.spec.containers.map((c) => expect.objectContaining(c)));
    expect(envOf(container(result, SIDECAR_CONTAINER_NAME))[APP_PROBES_ENV]).toBeUndefined();
    // Probes of the sidecar's own ports are not captured either.
    const own = pod(
      {},
      {
        containers: [
          { name: "app", ports: [{ containerPort: 8080 }], livenessProbe: { tcpSocket: { port: 15020 } } },
        ],
      },
    );
    expect(container(injected(own), "app").livenessProbe).toEqual({ tcpSocket: { port: 15020 } });
  });

  it("rewrites the probes of the pod's own native sidecars, at their index before the init containers go in", () => {
    const helper: Container = {
      name: "log-shipper",
      image: "shipper:1",
      restartPolicy: "Always",
      readinessProbe: { httpGet: { path: "/ok", port: 7000 } },
    };
    const input = pod({}, { initContainers: [{ name: "migrate", image: "m:1" }, helper] });
    const result = injected(input);
    expect(names(result.spec.initContainers)).toEqual([
      INIT_CONTAINER_NAME,
      SIDECAR_CONTAINER_NAME,
      "migrate",
      "log-shipper",
    ]);
    expect(container(result, "log-shipper").readinessProbe).toEqual(rewritten("log-shipper", "readiness"));
    expect(container(result, "migrate").readinessProbe).toBeUndefined();
    const probes = parseAppProbes(envOf(container(result, SIDECAR_CONTAINER_NAME))[APP_PROBES_ENV] ?? "");
    expect(probes["log-shipper"]?.readiness?.http?.port).toBe(7000);
  });

  it("caps the sidecar's wait on the app at 60 s, and keeps the kubelet's own timing", () => {
    const slow: Container = {
      name: "app",
      ports: [{ containerPort: 8080 }],
      livenessProbe: { tcpSocket: { port: 8080 }, timeoutSeconds: 300 },
    };
    const result = injected(pod({}, { containers: [slow] }));
    expect(container(result, "app").livenessProbe).toEqual(
      rewritten("app", "liveness", { timeoutSeconds: 300 }),
    );
    const probes = parseAppProbes(envOf(container(result, SIDECAR_CONTAINER_NAME))[APP_PROBES_ENV] ?? "");
    expect(probes.app?.liveness?.timeoutSeconds).toBe(60);
  });

  it("refuses a captured probe the sidecar could not perform as written", () => {
    const withProbe = (httpGet: Record<string, unknown>) =>
      pod(
        {},
        { containers: [{ name: "app", ports: [{ containerPort: 8080 }], readinessProbe: { httpGet } }] },
      );
    for (const [httpGet, message] of [
      [{ port: 8080, path: "/with space" }, /httpGet.path/],
      [{ port: 8080, path: "/é" }, /httpGet.path/],
      [{ port: 8080, scheme: "FTP" }, /scheme must be HTTP or HTTPS/],
      [{ port: 8080, httpHeaders: [{ name: "X", value: "a\r\nInjected: 1" }] }, /without CR, LF or NUL/],
      [{ port: 8080, httpHeaders: [{ name: "Bad Name", value: "x" }] }, /not an HTTP header name/],
      [
        { port: 8080, httpHeaders: Array.from({ length: 17 }, () => ({ name: "X", value: "y" })) },
        /at most 16/,
      ],
    ] as const) {
      const denied = refusal(inject(withProbe(httpGet)));
      expect(denied).toMatchObject({ code: 400, reason: "invalid_probe", identity: "cart" });
      expect(denied.message).toMatch(/pod shop\/cart-1: container "app" readinessProbe/);
      expect(denied.message).toMatch(message);
      // Without capture the probe is the kubelet's business, as before.
      expect(inject(withProbe(httpGet), DEFAULT_INJECTION_SETTINGS).allowed).toBe(true);
    }
  });
});

describe("the switch", () => {
  it("is a setting the operator checks: an image reference and a boolean", () => {
    expect(() => checkInjectionSettings(CAPTURING)).not.toThrow();
    expect(() => checkInjectionSettings({ ...CAPTURING, initImage: "two words" })).toThrow(
      /initImage must be an image reference/,
    );
  });

  it("is --sidecar-capture true|false, refused otherwise before anything starts", async () => {
    const captured = captureIO();
    const code = await runCommand(
      operatorCommand,
      ["--ca", "/nonexistent", "--sidecar-capture", "yes"],
      captured.io,
    );
    expect(code).toBe(EXIT_USAGE);
    expect(captured.stderr()).toContain("--sidecar-capture must be true or false");
    const help = captureIO();
    await runCommand(operatorCommand, ["--help"], help.io);
    expect(help.stdout()).toContain("--sidecar-capture B");
    expect(help.stdout()).toContain(
      `--sidecar-init-image IMAGE  image of that init container (default ${DEFAULT_INJECTION_SETTINGS.initImage})`,
    );
  });
});
