import { applyPatch, type Operation } from "fast-json-patch";
import { describe, expect, it } from "vitest";
import { validateServiceIdentity } from "../../crds/src/manifest.js";
import type { ServiceIdentity } from "../../crds/src/service-identity.js";
import {
  ANNOTATION_INJECTED,
  checkInjectionSettings,
  DEFAULT_INJECTION_SETTINGS,
  type IdentityLookup,
  InjectionSettingsError,
  injectionPatch,
  SIDECAR_CONTAINER_NAME,
} from "../src/webhook/inject.js";
import { type AdmissionDecision, admissionReviewResponse } from "../src/webhook/review.js";

const NAMESPACE = "shop";

function identity(name: string, spec: Record<string, unknown> = {}): ServiceIdentity {
  return validateServiceIdentity({
    apiVersion: "custody.dev/v1alpha1",
    kind: "ServiceIdentity",
    metadata: { name, namespace: NAMESPACE },
    spec,
  });
}

const identities = new Map<string, ServiceIdentity>([
  [`${NAMESPACE}/cart`, identity("cart")],
  [`${NAMESPACE}/payments`, identity("payments", { serviceAccountName: "payments-sa" })],
]);
const lookup: IdentityLookup = { identity: (namespace, name) => identities.get(`${namespace}/${name}`) };

interface Container {
  name: string;
  image?: string;
  env?: { name: string; value?: string }[];
  ports?: { containerPort: number; protocol?: string }[];
  [key: string]: unknown;
}

interface Pod {
  apiVersion: string;
  kind: string;
  metadata: { name?: string; namespace?: string; annotations?: Record<string, string> };
  spec: {
    serviceAccountName?: string;
    containers: Container[];
    initContainers?: Container[];
    volumes?: Record<string, unknown>[];
    [key: string]: unknown;
  };
}

function pod(
  annotations: Record<string, string> = { "custody.dev/inject": "true" },
  spec: Partial<Pod["spec"]> = {},
): Pod {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: "cart-1", namespace: NAMESPACE, annotations },
    spec: {
      serviceAccountName: "cart",
      containers: [
        {
          name: "app",
          image: "cart:1",
          ports: [{ containerPort: 8080 }],
          env: [{ name: "MODE", value: "a" }],
        },
        { name: "helper", image: "busybox:1" },
      ],
      ...spec,
    },
  };
}

function inject(input: unknown, settings = DEFAULT_INJECTION_SETTINGS): AdmissionDecision {
  return injectionPatch(input, NAMESPACE, lookup, settings);
}

/** The pod as the API server stores it after applying the webhook's patch. */
function injected(input: Pod, settings = DEFAULT_INJECTION_SETTINGS): Pod {
  const decision = inject(input, settings);
  if (!decision.allowed) throw new Error(`refused: ${decision.message}`);
  // Through JSON, exactly as the patch travels in the AdmissionReview.
  const patch = JSON.parse(JSON.stringify(decision.patch));
  // An independent RFC 6902 implementation applies it, validating every operation.
  return applyPatch(JSON.parse(JSON.stringify(input)) as Pod, patch as Operation[], true, false).newDocument;
}

function sidecarOf(result: Pod): Container {
  const sidecar = [...(result.spec.initContainers ?? []), ...result.spec.containers].find(
    (container) => container.name === SIDECAR_CONTAINER_NAME,
  );
  if (sidecar === undefined) throw new Error("no sidecar");
  return sidecar;
}

function envOf(container: Container): Record<string, string | undefined> {
  return Object.fromEntries((container.env ?? []).map((variable) => [variable.name, variable.value]));
}

function refusal(decision: AdmissionDecision) {
  if (decision.allowed) throw new Error("expected a refusal");
  return decision;
}

describe("injectionPatch", () => {
  it("adds the sidecar as a native sidecar, its volumes, the proxy variables and the annotations", () => {
    const result = injected(pod());
    expect(result.spec.containers.map((container) => container.name)).toEqual(["app", "helper"]);
    expect(result.spec.initContainers?.map((container) => container.name)).toEqual([SIDECAR_CONTAINER_NAME]);
    const sidecar = sidecarOf(result);
    expect(sidecar).toMatchObject({
      image: "ghcr.io/custody-dev/custody-sidecar:0.1.0",
      imagePullPolicy: "IfNotPresent",
      args: ["sidecar"],
      restartPolicy: "Always",
      ports: [
        { name: "custody-inbound", containerPort: 15006, protocol: "TCP" },
        { name: "custody-admin", containerPort: 15020, protocol: "TCP" },
      ],
      startupProbe: { httpGet: { path: "/readyz", port: 15020 }, periodSeconds: 1 },
      readinessProbe: { httpGet: { path: "/readyz", port: 15020 } },
      livenessProbe: { httpGet: { path: "/healthz", port: 15020 } },
      resources: { requests: { cpu: "50m", memory: "64Mi" }, limits: { cpu: "1", memory: "256Mi" } },
      securityContext: {
        runAsNonRoot: true,
        runAsUser: 65532,
        runAsGroup: 65532,
        readOnlyRootFilesystem: true,
        allowPrivilegeEscalation: false,
        capabilities: { drop: ["ALL"] },
        seccompProfile: { type: "RuntimeDefault" },
      },
      volumeMounts: [
        { name: "custody-token", mountPath: "/var/run/secrets/custody", readOnly: true },
        { name: "custody-registry", mountPath: "/var/run/custody/registry", readOnly: true },
        { name: "custody-tmp", mountPath: "/tmp" },
      ],
    });
    expect(envOf(sidecar)).toEqual({
      CUSTODY_IDENTITY_URL: "https://custody-webhook.custody-system.svc/v1/identity",
      CUSTODY_IDENTITY_TOKEN: "/var/run/secrets/custody/token",
      CUSTODY_REGISTRY: "/var/run/custody/registry",
      CUSTODY_APP_PORT: "8080",
      CUSTODY_OUTBOUND: "127.0.0.1:15001",
      CUSTODY_INBOUND: "0.0.0.0:15006",
      CUSTODY_ADMIN: "0.0.0.0:15020",
      // A native sidecar is stopped after the app has exited: nothing is left to drain for.
      CUSTODY_SHUTDOWN_DELAY: "0s",
      CUSTODY_OUTBOUND_POLICY: "passthrough",
      CUSTODY_LOG_LEVEL: "info",
    });

    const [tokenVolume, registryVolume, tmpVolume, ...others] = result.spec.volumes ?? [];
    expect(others).toEqual([]);
    // No Secret: the key is obtained from the operator with this token, bound to the pod and to
    // Custody's audience (the pod's API-server token would be refused).
    expect(tokenVolume).toEqual({
      name: "custody-token",
      projected: {
        defaultMode: 0o444,
        sources: [{ serviceAccountToken: { audience: "custody", expirationSeconds: 3600, path: "token" } }],
      },
    });
    const sources = (registryVolume as { projected: { sources: { configMap: Record<string, unknown> }[] } })
      .projected.sources;
    // Every shard the publisher may write (64), the first required, the others optional.
    expect(sources).toHaveLength(64);
    expect(sources[0]?.configMap).toEqual({
      name: "custody-registry",
      items: [{ key: "registry-0.json", path: "registry-0.json" }],
    });
    expect(sources[63]?.configMap).toEqual({
      name: "custody-registry-63",
      items: [{ key: "registry-63.json", path: "registry-63.json" }],
      optional: true,
    });
    expect(sources.slice(1).every((source) => source.configMap.optional === true)).toBe(true);
    expect(tmpVolume).toEqual({ name: "custody-tmp", emptyDir: { sizeLimit: "1Gi" } });

    const proxy = {
      HTTP_PROXY: "http://127.0.0.1:15001",
      http_proxy: "http://127.0.0.1:15001",
      HTTPS_PROXY: "http://127.0.0.1:15001",
      https_proxy: "http://127.0.0.1:15001",
      // Loopback, the cloud metadata endpoint and the Kubernetes API never go through the sidecar.
      NO_PROXY:
        "localhost,127.0.0.1,::1,169.254.169.254,metadata.google.internal,kubernetes.default.svc,kubernetes.default",
      no_proxy:
        "localhost,127.0.0.1,::1,169.254.169.254,metadata.google.internal,kubernetes.default.svc,kubernetes.default",
    };
    const [app, helper] = result.spec.containers;
    expect(envOf(app as Container)).toEqual({ MODE: "a", ...proxy });
    expect(envOf(helper as Container)).toEqual(proxy);

    expect(result.metadata.annotations).toEqual({
      "custody.dev/inject": "true",
      "prometheus.io/scrape": "true",
      "prometheus.io/port": "15020",
      "prometheus.io/path": "/metrics",
      [ANNOTATION_INJECTED]: "cart",
    });
  });

  it("escapes annotation keys as JSON pointers and appends to existing volumes", () => {
    const withVolume = pod(undefined, { volumes: [{ name: "data", emptyDir: {} }] });
    const decision = inject(withVolume);
    if (!decision.allowed) throw new Error(decision.message);
    const paths = decision.patch.map((operation) => operation.path);
    expect(paths).toContain("/metadata/annotations/prometheus.io~1scrape");
    expect(paths).toContain("/metadata/annotations/custody.dev~1injected");
    expect(paths.filter((path) => path === "/spec/volumes/-")).toHaveLength(3);
    expect(injected(withVolume).spec.volumes?.map((volume) => volume.name)).toEqual([
      "data",
      "custody-token",
      "custody-registry",
      "custody-tmp",
    ]);
  });

  it("is idempotent: an injected pod is admitted again without change", () => {
    const once = injected(pod());
    expect(inject(once)).toEqual({ allowed: true, patch: [], reason: "already_injected" });
    // Even with more containers than a fresh pod may have: the first admission already judged it.
    const crowded = { ...once, spec: { ...once.spec, containers: [...once.spec.containers] } };
    for (let index = 0; index < 70; index++) crowded.spec.containers.push({ name: `c${index}` });
    expect(inject(crowded)).toMatchObject({ allowed: true, patch: [] });
    const asContainer = injected(pod(), { ...DEFAULT_INJECTION_SETTINGS, mode: "container" });
    expect(inject(asContainer)).toEqual({ allowed: true, patch: [], reason: "already_injected" });
  });

  it("reinvoked after another mesh's injector, refuses a proxy that takes the sidecar's ports", () => {
    const once = injected(pod());
    // What Istio's injector adds: istio-init, then istio-proxy, which binds 15001, 15006, 15020, ...
    // without declaring them.
    const withIstio = {
      ...once,
      spec: {
        ...once.spec,
        initContainers: [...(once.spec.initContainers ?? []), { name: "istio-init" }],
        containers: [...once.spec.containers, { name: "istio-proxy", ports: [{ containerPort: 15090 }] }],
      },
    };
    const denied = refusal(inject(withIstio));
    expect(denied).toMatchObject({ code: 400, reason: "mesh_port_conflict" });
    expect(denied.message).toContain('container "istio-proxy"');
    expect(denied.message).toContain("sidecar.ports");
    // With Custody's ports moved away from Istio's, both fit in one pod.
    const moved = { ...DEFAULT_INJECTION_SETTINGS, ports: { outbound: 16001, inbound: 16006, admin: 16020 } };
    const movedOnce = injected(pod(), moved);
    const movedWithIstio = {
      ...movedOnce,
      spec: { ...movedOnce.spec, containers: [...movedOnce.spec.containers, { name: "istio-proxy" }] },
    };
    expect(inject(movedWithIstio, moved)).toEqual({ allowed: true, patch: [], reason: "already_injected" });
    // And a container added later that declares one of the sidecar's ports.
    const declared = {
      ...once,
      spec: {
        ...once.spec,
        containers: [...once.spec.containers, { name: "late", ports: [{ containerPort: 15006 }] }],
      },
    };
    expect(refusal(inject(declared)).reason).toBe("port_conflict");
  });

  it("puts the sidecar before the pod's own init containers, which get the proxy variables too", () => {
    const result = injected(
      pod(undefined, {
        initContainers: [{ name: "migrate", image: "migrate:1", env: [{ name: "A", value: "1" }] }],
      }),
    );
    expect(result.spec.initContainers?.map((container) => container.name)).toEqual([
      SIDECAR_CONTAINER_NAME,
      "migrate",
    ]);
    expect(envOf(result.spec.initContainers?.[1] as Container)).toMatchObject({
      A: "1",
      HTTP_PROXY: "http://127.0.0.1:15001",
    });
  });

  it("in container mode, appends an ordinary container that drains after SIGTERM", () => {
    const settings = { ...DEFAULT_INJECTION_SETTINGS, mode: "container" as const };
    const result = injected(pod(undefined, { initContainers: [{ name: "migrate" }] }), settings);
    expect(result.spec.containers.map((container) => container.name)).toEqual([
      "app",
      "helper",
      SIDECAR_CONTAINER_NAME,
    ]);
    // Init containers run before the sidecar exists: a proxy variable would break their calls.
    expect(result.spec.initContainers).toEqual([{ name: "migrate" }]);
    const sidecar = sidecarOf(result);
    expect(sidecar.restartPolicy).toBeUndefined();
    expect(envOf(sidecar).CUSTODY_SHUTDOWN_DELAY).toBe("5s");
  });

  it("moves every port with the settings: sidecar, proxy variables, scrape annotation", () => {
    const settings = {
      ...DEFAULT_INJECTION_SETTINGS,
      ports: { outbound: 16001, inbound: 16006, admin: 16020 },
    };
    const result = injected(pod(), settings);
    const sidecar = sidecarOf(result);
    expect(sidecar.ports).toEqual([
      { name: "custody-inbound", containerPort: 16006, protocol: "TCP" },
      { name: "custody-admin", containerPort: 16020, protocol: "TCP" },
    ]);
    expect(envOf(sidecar)).toMatchObject({
      CUSTODY_OUTBOUND: "127.0.0.1:16001",
      CUSTODY_INBOUND: "0.0.0.0:16006",
      CUSTODY_ADMIN: "0.0.0.0:16020",
    });
    expect(sidecar).toMatchObject({ startupProbe: { httpGet: { port: 16020 } } });
    expect(envOf(result.spec.containers[0] as Container).HTTP_PROXY).toBe("http://127.0.0.1:16001");
    expect(result.metadata.annotations?.["prometheus.io/port"]).toBe("16020");
    // The defaults are free for the app then.
    expect(
      injected(pod({ "custody.dev/inject": "true", "custody.dev/app-port": "15006" }), settings),
    ).toBeDefined();
    expect(
      refusal(inject(pod({ "custody.dev/inject": "true", "custody.dev/app-port": "16006" }), settings))
        .reason,
    ).toBe("app_port_conflict");
  });

  it("tells the sidecars the shared Redis's failure mode when there is one, and nothing when not", () => {
    expect(envOf(sidecarOf(injected(pod()))).CUSTODY_REDIS_URL).toBeUndefined();
    const shared = {
      ...DEFAULT_INJECTION_SETTINGS,
      redisUrl: "redis://redis.custody-system.svc:6379",
      redisFailureMode: "open" as const,
    };
    const env = envOf(sidecarOf(injected(pod(), shared)));
    expect(env).toMatchObject({ CUSTODY_REPLAY_FAILURE_MODE: "open" });
    // Not in the spec (a password would be readable by every reader of the pod, and in the
    // webhook's answer): identity delivery hands it to the sidecar.
    expect(JSON.stringify(injected(pod(), shared))).not.toContain("redis.custody-system.svc");
    expect(env.CUSTODY_REDIS_URL).toBeUndefined();
    expect(() => checkInjectionSettings({ ...shared, redisUrl: "http://nope" })).toThrow(/redisUrl/);
  });

  it("takes the outbound policy from the pod's annotation over the settings", () => {
    const closed = injected(
      pod({ "custody.dev/inject": "true", "custody.dev/outbound-policy": "registry-only" }),
    );
    expect(envOf(sidecarOf(closed)).CUSTODY_OUTBOUND_POLICY).toBe("registry-only");
    const settings = { ...DEFAULT_INJECTION_SETTINGS, outboundPolicy: "registry-only" as const };
    expect(envOf(sidecarOf(injected(pod(), settings))).CUSTODY_OUTBOUND_POLICY).toBe("registry-only");
    const denied = refusal(
      inject(pod({ "custody.dev/inject": "true", "custody.dev/outbound-policy": "open" })),
    );
    expect(denied).toMatchObject({ code: 400, reason: "invalid_outbound_policy" });
  });

  it("takes the sidecar's resources from the pod's annotations over the settings", () => {
    const annotations = {
      "custody.dev/inject": "true",
      "custody.dev/sidecar-cpu-request": "200m",
      "custody.dev/sidecar-cpu-limit": "2",
      "custody.dev/sidecar-memory-limit": "1Gi",
    };
    expect(sidecarOf(injected(pod(annotations))).resources).toEqual({
      requests: { cpu: "200m", memory: "64Mi" },
      limits: { cpu: "2", memory: "1Gi" },
    });
    const notQuantity = refusal(
      inject(pod({ ...annotations, "custody.dev/sidecar-memory-request": "lots" })),
    );
    expect(notQuantity).toMatchObject({ code: 400, reason: "invalid_sidecar_resources" });
    expect(notQuantity.message).toContain("custody.dev/sidecar-memory-request");
    const aboveLimit = refusal(
      inject(pod({ "custody.dev/inject": "true", "custody.dev/sidecar-cpu-request": "1500m" })),
    );
    expect(aboveLimit).toMatchObject({ code: 400, reason: "invalid_sidecar_resources" });
    expect(aboveLimit.message).toContain("cpu request (1500m) exceeds its limit (1)");
    // Units are compared, not strings: 512Mi is below 1Gi.
    const units = {
      "custody.dev/inject": "true",
      "custody.dev/sidecar-memory-request": "512Mi",
      "custody.dev/sidecar-memory-limit": "1Gi",
    };
    expect(sidecarOf(injected(pod(units))).resources).toMatchObject({ requests: { memory: "512Mi" } });
  });

  it("leaves pods alone that did not ask for a sidecar", () => {
    expect(inject(pod({}))).toEqual({ allowed: true, patch: [], reason: "not_requested" });
    expect(inject(pod({ "custody.dev/inject": "false" }))).toMatchObject({ allowed: true, patch: [] });
    expect(inject({ kind: "Pod" })).toMatchObject({ allowed: true, patch: [] });
    expect(inject(null)).toMatchObject({ allowed: true, patch: [] });
  });

  it("refuses a pod naming an identity that does not exist", () => {
    const denied = refusal(inject(pod({ "custody.dev/inject": "true", "custody.dev/identity": "ghost" })));
    expect(denied).toMatchObject({ code: 403, reason: "identity_not_found", identity: "ghost" });
    expect(denied.message).toContain('ServiceIdentity "ghost"');
    expect(denied.message).toContain('namespace "shop"');
    // Without the annotation the identity is the service account's name.
    const bySa = refusal(inject(pod(undefined, { serviceAccountName: "orders" })));
    expect(bySa.reason).toBe("identity_not_found");
    expect(bySa.message).toContain('ServiceIdentity "orders"');
    expect(bySa.message).toContain("service account");
  });

  it("defaults the service account to default", () => {
    const { serviceAccountName: _, ...spec } = pod().spec;
    const denied = refusal(inject({ ...pod(), spec }));
    expect(denied.message).toContain('ServiceIdentity "default"');
  });

  it("refuses a pod whose service account is not the identity's, naming both", () => {
    const denied = refusal(
      inject(
        pod(
          { "custody.dev/inject": "true", "custody.dev/identity": "cart" },
          { serviceAccountName: "default" },
        ),
      ),
    );
    expect(denied).toMatchObject({ code: 403, reason: "service_account_mismatch", identity: "cart" });
    expect(denied.message).toContain('service account "cart"');
    expect(denied.message).toContain('service account "default"');
    // payments requires payments-sa, even for a pod whose service account is called payments.
    const payments = refusal(
      inject(
        pod(
          { "custody.dev/inject": "true", "custody.dev/identity": "payments" },
          { serviceAccountName: "payments" },
        ),
      ),
    );
    expect(payments.message).toContain('"payments-sa"');
    expect(payments.message).toContain('runs as service account "payments"');
  });

  it("uses the identity named by custody.dev/identity", () => {
    const result = injected(
      pod(
        { "custody.dev/inject": "true", "custody.dev/identity": "payments" },
        { serviceAccountName: "payments-sa" },
      ),
    );
    expect(result.metadata.annotations?.[ANNOTATION_INJECTED]).toBe("payments");
    expect(JSON.stringify(result.spec.volumes)).not.toContain("secretName");
  });

  it("refuses an identity annotation that cannot be a ServiceIdentity name", () => {
    const denied = refusal(inject(pod({ "custody.dev/inject": "true", "custody.dev/identity": "Cart!" })));
    expect(denied).toMatchObject({ code: 400, reason: "invalid_identity_name" });
    expect(denied.message).toContain("custody.dev/identity");
  });

  it("lets the user's own proxy variables win", () => {
    const custom = pod(undefined, {
      containers: [
        {
          name: "app",
          ports: [{ containerPort: 8080 }],
          env: [
            { name: "HTTP_PROXY", value: "http://corp-proxy:3128" },
            { name: "no_proxy", value: "internal" },
          ],
        },
      ],
    });
    const app = injected(custom).spec.containers[0] as Container;
    expect(envOf(app)).toEqual({
      HTTP_PROXY: "http://corp-proxy:3128",
      no_proxy: "internal",
      http_proxy: "http://127.0.0.1:15001",
      HTTPS_PROXY: "http://127.0.0.1:15001",
      https_proxy: "http://127.0.0.1:15001",
      NO_PROXY:
        "localhost,127.0.0.1,::1,169.254.169.254,metadata.google.internal,kubernetes.default.svc,kubernetes.default",
    });
  });

  it("adds the no-proxy annotation's entries, and refuses a malformed list", () => {
    const annotations = {
      "custody.dev/inject": "true",
      "custody.dev/no-proxy": " .svc.cluster.local, 10.0.0.0/8,,localhost",
    };
    const app = injected(pod(annotations)).spec.containers[0] as Container;
    expect(envOf(app).NO_PROXY).toBe(
      "localhost,127.0.0.1,::1,169.254.169.254,metadata.google.internal,kubernetes.default.svc,kubernetes.default,.svc.cluster.local,10.0.0.0/8",
    );
    // The API server's address as pods see it, from the operator's own KUBERNETES_SERVICE_HOST.
    const withApi = { ...DEFAULT_INJECTION_SETTINGS, apiServerHosts: ["10.0.0.1"] };
    expect(envOf(injected(pod(), withApi).spec.containers[0] as Container).NO_PROXY).toBe(
      `localhost,127.0.0.1,::1,169.254.169.254,metadata.google.internal,kubernetes.default.svc,kubernetes.default,10.0.0.1`,
    );
    for (const bad of ["a b", "x;y", "$(evil)", "a,".repeat(40), "x".repeat(3000)]) {
      const denied = refusal(inject(pod({ "custody.dev/inject": "true", "custody.dev/no-proxy": bad })));
      expect(denied).toMatchObject({ code: 400, reason: "invalid_no_proxy" });
    }
  });

  it("takes the app port from the annotation, else the first app container's first TCP port", () => {
    const annotated = injected(pod({ "custody.dev/inject": "true", "custody.dev/app-port": "9090" }));
    expect(envOf(sidecarOf(annotated)).CUSTODY_APP_PORT).toBe("9090");
    const udpFirst = pod(undefined, {
      containers: [
        {
          name: "app",
          ports: [
            { containerPort: 53, protocol: "UDP" },
            { containerPort: 8443, protocol: "TCP" },
          ],
        },
      ],
    });
    expect(envOf(sidecarOf(injected(udpFirst))).CUSTODY_APP_PORT).toBe("8443");
  });

  it("refuses an app port it cannot use", () => {
    for (const value of ["abc", "0", "70000", "80 ", "-1", "1e3", ""]) {
      const denied = refusal(inject(pod({ "custody.dev/inject": "true", "custody.dev/app-port": value })));
      expect(denied).toMatchObject({ code: 400, reason: "invalid_app_port" });
      expect(denied.message).toContain("custody.dev/app-port");
    }
    const sidecarPort = refusal(
      inject(pod({ "custody.dev/inject": "true", "custody.dev/app-port": "15006" })),
    );
    expect(sidecarPort.reason).toBe("app_port_conflict");
    const noPorts = refusal(
      inject(
        pod(undefined, { containers: [{ name: "app" }, { name: "web", ports: [{ containerPort: 80 }] }] }),
      ),
    );
    expect(noPorts).toMatchObject({ code: 400, reason: "app_port_unknown" });
    expect(noPorts.message).toContain('container "app" declares no TCP containerPort');
    expect(noPorts.message).toContain('custody.dev/app-port: "<port>"');
    const clash = refusal(
      inject(
        pod(undefined, {
          containers: [{ name: "app", ports: [{ containerPort: 8080 }, { containerPort: 15020 }] }],
        }),
      ),
    );
    expect(clash.reason).toBe("port_conflict");
  });

  it("refuses malformed pods with the field at fault", () => {
    const notArray = refusal(inject({ ...pod(), spec: { containers: "app" } }));
    expect(notArray).toMatchObject({ code: 400, reason: "malformed_pod" });
    expect(notArray.message).toContain("spec.containers");
    const noSpec = refusal(inject({ ...pod(), spec: undefined }));
    expect(noSpec.message).toContain("spec");
    const tooMany = pod(undefined, {
      containers: Array.from({ length: 65 }, (_, index) => ({
        name: `c${index}`,
        ports: [{ containerPort: 8080 }],
      })),
    });
    expect(refusal(inject(tooMany)).reason).toBe("malformed_pod");
    const badPort = pod(undefined, { containers: [{ name: "app", ports: [{ containerPort: 0 }] }] });
    expect(refusal(inject(badPort)).message).toContain("spec.containers[0].ports[0].containerPort");
    const noNamespace = { ...pod(), metadata: { name: "x", annotations: { "custody.dev/inject": "true" } } };
    expect(refusal(injectionPatch(noNamespace, "", lookup, DEFAULT_INJECTION_SETTINGS)).reason).toBe(
      "malformed_pod",
    );
  });

  it("refuses hostNetwork pods and volume name clashes", () => {
    expect(refusal(inject(pod(undefined, { hostNetwork: true }))).reason).toBe("host_network");
    const clash = refusal(inject(pod(undefined, { volumes: [{ name: "custody-tmp", emptyDir: {} }] })));
    expect(clash).toMatchObject({ reason: "volume_conflict" });
    expect(clash.message).toContain('"custody-tmp"');
  });

  it("keeps the app's own prometheus.io annotations", () => {
    const annotations = { "custody.dev/inject": "true", "prometheus.io/port": "9102" };
    expect(injected(pod(annotations)).metadata.annotations).toEqual({
      ...annotations,
      [ANNOTATION_INJECTED]: "cart",
    });
  });

  it("follows the settings: image, shards, token URL, log level, resources", () => {
    const settings = {
      ...DEFAULT_INJECTION_SETTINGS,
      image: "registry.local/custody:dev",
      imagePullPolicy: "Always" as const,
      tokenUrl: "https://custody-issuer.custody-system.svc:8443/oauth2/token",
      registryShards: 2,
      logLevel: "debug" as const,
      resources: { requests: { cpu: "10m" }, limits: { cpu: "1", memory: "128Mi" } },
    };
    const result = injected(pod(), settings);
    const sidecar = sidecarOf(result);
    expect(sidecar).toMatchObject({
      image: "registry.local/custody:dev",
      imagePullPolicy: "Always",
      resources: settings.resources,
    });
    expect(envOf(sidecar)).toMatchObject({
      CUSTODY_TOKEN_URL: settings.tokenUrl,
      CUSTODY_LOG_LEVEL: "debug",
    });
    const registry = result.spec.volumes?.[1] as { projected: { sources: unknown[] } };
    expect(registry.projected.sources).toHaveLength(2);
  });
});

describe("checkInjectionSettings", () => {
  it("accepts the defaults and refuses what would break pods", () => {
    expect(() => checkInjectionSettings(DEFAULT_INJECTION_SETTINGS)).not.toThrow();
    const bad = {
      ...DEFAULT_INJECTION_SETTINGS,
      registryShards: 0,
      tokenUrl: "http://plain",
      tmpSizeLimit: "lots",
    };
    expect(() => checkInjectionSettings(bad)).toThrow(InjectionSettingsError);
    expect(() => checkInjectionSettings(bad)).toThrow(/tokenUrl.*registryShards.*tmpSizeLimit/);
    const more = {
      ...DEFAULT_INJECTION_SETTINGS,
      resources: { requests: { memory: "2Gi" }, limits: { memory: "1Gi" } },
      ports: { outbound: 15001, inbound: 15001, admin: 15020 },
      shutdownDelay: "soon",
    };
    expect(() => checkInjectionSettings(more)).toThrow(
      /requests.memory must not exceed.*ports.outbound, ports.inbound and ports.admin must differ.*shutdownDelay/,
    );
  });
});

describe("admissionReviewResponse", () => {
  it("carries the patch as base64 JSON and a refusal as a Status", () => {
    const decision = inject(pod());
    const review = admissionReviewResponse("u-1", decision) as {
      response: { uid: string; allowed: boolean; patchType: string; patch: string };
    };
    expect(review).toMatchObject({ apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview" });
    expect(review.response).toMatchObject({ uid: "u-1", allowed: true, patchType: "JSONPatch" });
    expect(JSON.parse(Buffer.from(review.response.patch, "base64").toString("utf8"))).toEqual(
      decision.allowed ? decision.patch : undefined,
    );
    expect(admissionReviewResponse("u-2", { allowed: true, patch: [], reason: "not_requested" })).toEqual({
      apiVersion: "admission.k8s.io/v1",
      kind: "AdmissionReview",
      response: { uid: "u-2", allowed: true },
    });
    const denied = admissionReviewResponse("u-3", inject(pod(undefined, { serviceAccountName: "default" })));
    expect(denied).toMatchObject({
      response: {
        uid: "u-3",
        allowed: false,
        status: { status: "Failure", code: 403, reason: "identity_not_found" },
      },
    });
  });
});
