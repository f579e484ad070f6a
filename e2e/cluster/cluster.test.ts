/**
 * Custody installed the way a user installs it, on a one-node Kubernetes cluster that really runs
 * Pods (e2e/cluster/host.ts: the real control plane, kubelet, kube-proxy, containerd, runc, CNI):
 *
 * - `helm install` of the chart with the images built from this checkout; the operator's Pods run
 *   from the chart's Deployment, with its arguments and ServiceAccount, and serve the webhooks;
 * - the shop example (e2e/kind's manifests) applied with kubectl: the real webhook injects the
 *   sidecar, the Pods get their identities, names resolve as in a cluster, and the demo's seven
 *   scenarios pass through the same MeshAccess as on kind (e2e/kind/scenarios.ts);
 * - day-2 operations: a rolling restart of the operator while Pods are admitted, the leader killed,
 *   a workload's certificate rotated under traffic, a Deployment scaled up and down under traffic,
 *   a namespace deleted;
 * - a real Prometheus discovering the operator and the sidecars through kubernetes_sd_configs, as
 *   the chart's ServiceMonitor and PodMonitor intend, and evaluating the chart's rules;
 * - traffic capture in a privileged namespace: a direct call to a pod's app port does not reach
 *   the app, the call through its sidecar does, and its probes pass through the sidecar.
 *
 * The steps depend on each other and run in order. KEEP_CLUSTER=1 leaves the cluster running
 * afterwards (see e2e/cluster/README.md).
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "node:tls";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { parseServiceId, spiffeIdFor } from "../../crds/src/names.js";
import { loadRegistry } from "../../crds/src/registry.js";
import type { Registry } from "../../crds/src/registry-schema.js";
import { callInbound } from "../../local/src/demo/client.js";
import { CUSTOMER_SCOPE, type DemoIdp, mintUserToken } from "../../local/src/demo/idp.js";
import { readIdp, registryTextsOf } from "../kind/scenarios.js";
import { type ClusterHost, startClusterHost } from "../support/cluster-host.js";
import { requireControlPlane } from "../support/control-plane.js";
import { tail } from "../support/daemons.js";
import { type Helm, openHelm } from "../support/helm.js";
import { type Kubectl, kubectlFor } from "../support/kubectl.js";
import { nodeBinaries, requireNode } from "../support/node.js";
import { type PrometheusServer, startPrometheus } from "../support/prometheus.js";
import { translateMonitors } from "../support/prometheus-monitors.js";
import { type RedisProcess, startRedis } from "../support/redis.js";
import { requireTool } from "../support/tools.js";

const READY =
  requireTool("kubectl") &&
  requireTool("unzip") &&
  requireTool("openssl") &&
  requireTool("redis-server") &&
  requireControlPlane() &&
  requireNode();
const KEEP = process.env.KEEP_CLUSTER === "1";
const SYSTEM = "custody-system";
const SHOP = "shop";
const BATCH = "batch";
const OUTSIDE = "outside";
const CAPTURED = "captured";
const INBOUND_PORT = 15006;
const MINUTE = 60_000;

function progress(line: string): void {
  process.stderr.write(`[cluster] ${line}\n`);
}

interface Meta {
  readonly name: string;
  readonly namespace?: string;
  readonly labels?: Record<string, string>;
  readonly annotations?: Record<string, string>;
  readonly deletionTimestamp?: string;
}

interface Container {
  readonly name: string;
  readonly image: string;
  readonly args?: string[];
  readonly env?: { name: string; value?: string }[];
  readonly restartPolicy?: string;
  readonly resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  readonly readinessProbe?: Probe;
  readonly livenessProbe?: Probe;
}

interface Probe {
  readonly httpGet?: { path: string; port: number | string };
}

interface PodObject {
  readonly metadata: Meta;
  readonly spec: {
    readonly nodeName?: string;
    readonly serviceAccountName?: string;
    readonly containers: Container[];
    readonly initContainers?: Container[];
  };
  readonly status: {
    readonly phase?: string;
    readonly podIP?: string;
    readonly conditions?: { type: string; status: string }[];
    readonly containerStatuses?: {
      name: string;
      ready: boolean;
      restartCount: number;
      containerID?: string;
    }[];
    readonly initContainerStatuses?: {
      name: string;
      state?: { terminated?: { exitCode: number } };
    }[];
  };
}

interface List<T> {
  readonly items: T[];
}

/** Polls `probe` until it returns something other than a string; the string says what is awaited. */
async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | string>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    let answer: T | string;
    try {
      answer = await probe();
    } catch (error) {
      answer = error instanceof Error ? error.message : String(error);
    }
    if (typeof answer !== "string") return answer;
    if (answer !== last) progress(`waiting for ${what}: ${answer}`);
    last = answer;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s (${answer})`);
    await sleep(1_000);
  }
}

/** The injected sidecar: a native sidecar (an init container that keeps running) on this server. */
function sidecarOf(pod: PodObject | undefined): Container | undefined {
  return pod?.spec.initContainers?.find(
    (container) => container.name === "custody-sidecar" && container.restartPolicy === "Always",
  );
}

function ready(pod: PodObject): boolean {
  return (
    pod.metadata.deletionTimestamp === undefined &&
    pod.status.phase === "Running" &&
    pod.status.conditions?.some((condition) => condition.type === "Ready" && condition.status === "True") ===
      true
  );
}

function node(args: readonly string[], env: NodeJS.ProcessEnv): Promise<{ code: number; output: string }> {
  return run(process.execPath, args, env);
}

function run(
  command: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(
      command,
      [...args],
      { env, maxBuffer: 16 * 1024 * 1024, timeout: 15 * MINUTE },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : 1;
        resolve({ code, output: `${stdout}${stderr}` });
      },
    );
  });
}

/** The serial number of the certificate a TLS server presents (no client certificate offered). */
function servedCertificateSerial(host: string, port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, ca, checkServerIdentity: () => undefined, timeout: 5_000 }, () => {
      const serial = socket.getPeerCertificate().serialNumber;
      socket.destroy();
      resolve(serial.toLowerCase());
    });
    socket.once("error", reject);
    socket.once("timeout", () => socket.destroy(new Error("TLS handshake timed out")));
  });
}

/** Checkouts through shop's Service address, one after the other, until `stop()`. */
class CheckoutTraffic {
  readonly failures: string[] = [];
  succeeded = 0;
  #running = true;
  readonly #done: Promise<void>;

  constructor(target: { host: string; ca: string; spiffeId: string }, idp: DemoIdp) {
    this.#done = (async () => {
      for (let order = 0; this.#running; order++) {
        const token = mintUserToken(idp, { subject: "customer-42", scopes: [CUSTOMER_SCOPE] });
        try {
          const reply = await callInbound(
            { host: target.host, port: INBOUND_PORT, ca: target.ca, spiffeId: target.spiffeId },
            {
              method: "POST",
              path: "/checkout",
              headers: { authorization: `Bearer ${token}` },
              body: JSON.stringify({ orderId: String(2000 + order), card: "4242 4242 4242 4242" }),
            },
          );
          if (reply.status === 200 && reply.body.includes("paid")) this.succeeded++;
          else this.failures.push(`${new Date().toISOString()} ${reply.status} ${reply.body.slice(0, 200)}`);
        } catch (error) {
          this.failures.push(
            `${new Date().toISOString()} ${error instanceof Error ? error.message : String(error)}`,
          );
        }
        await sleep(50);
      }
    })();
  }

  async stop(): Promise<void> {
    this.#running = false;
    await this.#done;
  }
}

describe.skipIf(!READY).sequential("Custody on a one-node cluster that runs its Pods", () => {
  let host: ClusterHost;
  let work: string;
  let kubectl: Kubectl;
  let helm: Helm;
  let prometheus: PrometheusServer | undefined;
  let redis: RedisProcess | undefined;
  let idp: DemoIdp;
  let ca: string;
  let failed = false;

  const ok = async (args: readonly string[], input?: string): Promise<string> => {
    const result = await kubectl(args, input);
    if (result.code !== 0) throw new Error(`kubectl ${args.join(" ")}: ${result.stderr.trim()}`);
    return result.stdout;
  };
  const json = async <T>(args: readonly string[]): Promise<T> =>
    JSON.parse(await ok([...args, "-o", "json"])) as T;
  const pods = async (namespace: string, selector?: string) =>
    (
      await json<List<PodObject>>([
        "-n",
        namespace,
        "get",
        "pods",
        ...(selector === undefined ? [] : ["-l", selector]),
      ])
    ).items;
  const registryOf = async (namespace: string): Promise<Registry | undefined> => {
    const texts = registryTextsOf(await json(["-n", namespace, "get", "configmaps"]));
    return texts.length === 0 ? undefined : loadRegistry(texts);
  };
  /** Until the Deployment's Pods are exactly `replicas`, all Ready, none terminating. */
  const rolledOut = (namespace: string, name: string, replicas: number, timeoutMs = 5 * MINUTE) =>
    until(`${namespace}/${name} with ${replicas} Ready Pods`, timeoutMs, async () => {
      const all = await pods(namespace, `app.kubernetes.io/name=${name}`);
      const current = all.filter(ready);
      return current.length === replicas && all.length === replicas
        ? current
        : `${current.length} Ready of ${all.length} Pods`;
    });
  const shopTarget = async () => {
    const service = await json<{ spec: { clusterIP: string } }>(["-n", SHOP, "get", "service", "shop"]);
    const registry = await registryOf(SHOP);
    if (registry === undefined) throw new Error("no registry in shop");
    return {
      host: service.spec.clusterIP,
      ca,
      spiffeId: spiffeIdFor(registry.trustDomain, parseServiceId("shop.shop")),
    };
  };

  /** Runs one of e2e/cluster/apps in a batch Deployment's app container; what it printed, as JSON. */
  const runBatchApp = async <T>(deployment: string, script: string, ...args: string[]): Promise<T> =>
    JSON.parse(
      (
        await ok([
          "-n",
          BATCH,
          "exec",
          `deploy/${deployment}`,
          "-c",
          "app",
          "--",
          "node",
          `/apps/${script}`,
          ...args,
        ])
      ).trim(),
    ) as T;

  /**
   * Runs `during` while checkouts flow through shop's Service, then expects none of them to have
   * failed and more than `atLeast` to have gone through.
   */
  const underCheckouts = async (what: string, atLeast: number, during: () => Promise<void>) => {
    const traffic = new CheckoutTraffic(await shopTarget(), idp);
    try {
      await during();
    } finally {
      await traffic.stop();
    }
    progress(`${what}: ${traffic.succeeded} checkouts, ${traffic.failures.length} failed`);
    expect(traffic.failures).toEqual([]);
    expect(traffic.succeeded).toBeGreaterThan(atLeast);
  };

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), "custody-cluster-"));
    host = await startClusterHost({ keep: KEEP, log: (line) => process.stderr.write(`${line}\n`) });
    kubectl = kubectlFor(host.state.kubeconfig, join(work, "kubectl-cache"));
    helm = await openHelm();
    progress(`cluster up: Kubernetes ${host.state.kubernetesVersion} at ${host.state.server}`);
  }, 20 * MINUTE);

  afterEach((context) => {
    if (context.task.result?.state === "fail") failed = true;
  });

  afterAll(async () => {
    if (failed && host !== undefined) {
      for (const args of [
        ["get", "nodes,pods", "-A", "-o", "wide"],
        ["get", "events", "-A", "--sort-by=.lastTimestamp"],
        ["-n", SYSTEM, "logs", "-l", "app.kubernetes.io/component=operator", "--tail=80", "--prefix"],
        [
          "-n",
          SHOP,
          "logs",
          "-l",
          "app.kubernetes.io/part-of=custody-e2e",
          "--all-containers",
          "--tail=40",
          "--prefix",
        ],
        // The capture step's pod, init container included (absent when the step did not run).
        [
          "-n",
          CAPTURED,
          "logs",
          "-l",
          "app.kubernetes.io/name=guarded",
          "--all-containers",
          "--tail=40",
          "--prefix",
        ],
      ]) {
        const result = await kubectl(args);
        process.stderr.write(`\n---- kubectl ${args.join(" ")}\n${result.stdout}${result.stderr}`);
      }
      for (const component of ["kubelet", "containerd", "kube-proxy"]) {
        const path = join(host.state.logs.node, `${component}.log`);
        process.stderr.write(`\n---- ${path}\n${await tail(path, 60)}\n`);
      }
    }
    await prometheus?.stop();
    await redis?.stop();
    await helm?.close();
    await host?.stop();
    if (host?.kept === true) {
      progress(`the cluster stays up (KEEP_CLUSTER=1): export KUBECONFIG=${host.state.kubeconfig}`);
      progress("when done: make e2e-cluster-down");
    }
    if (work !== undefined) await rm(work, { recursive: true, force: true });
  }, 5 * MINUTE);

  it(
    "helm install: the operator runs from the chart's Deployment, as its ServiceAccount, and serves the webhooks",
    async () => {
      await ok(["apply", "-f", "crds/"]);
      await ok([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/serviceidentities.custody.dev",
        "crd/accesspolicies.custody.dev",
      ]);
      await ok(["create", "namespace", SYSTEM]);
      const caDirectory = join(work, "ca");
      const init = await node(["bin/custody.mjs", "pki", "init", "--out", caDirectory], process.env);
      expect(init.code, init.output).toBe(0);
      ca = await readFile(join(caDirectory, "ca.crt"), "utf8");
      await ok([
        "-n",
        SYSTEM,
        "create",
        "secret",
        "generic",
        "custody-ca",
        `--from-file=ca.crt=${join(caDirectory, "ca.crt")}`,
        `--from-file=ca.key=${join(caDirectory, "ca.key")}`,
      ]);
      const idpDirectory = join(work, "idp");
      const made = await node(
        ["--import", "tsx", "e2e/kind/scenarios.ts", "idp", "--out", idpDirectory],
        process.env,
      );
      expect(made.code, made.output).toBe(0);
      idp = await readIdp(idpDirectory);
      await ok([
        "-n",
        SYSTEM,
        "create",
        "configmap",
        "custody-trusted-issuers",
        `--from-file=trusted-issuers.json=${join(idpDirectory, "trusted-issuers.json")}`,
      ]);
      const [operatorRepository, operatorTag] = host.state.operatorImage.split(/:(?=[^:]+$)/);
      const [sidecarRepository, sidecarTag] = host.state.sidecarImage.split(/:(?=[^:]+$)/);
      const [initRepository, initTag] = host.state.initImage.split(/:(?=[^:]+$)/);
      const installed = await helm.run([
        "install",
        "custody",
        "charts/custody",
        "--namespace",
        SYSTEM,
        "--kubeconfig",
        host.state.kubeconfig,
        "--set",
        `operator.image.repository=${operatorRepository}`,
        "--set",
        `operator.image.tag=${operatorTag}`,
        "--set",
        "operator.image.pullPolicy=IfNotPresent",
        "--set",
        `sidecar.image.repository=${sidecarRepository}`,
        "--set",
        `sidecar.image.tag=${sidecarTag}`,
        // Capture stays off by default; the capture step's pod asks for it with its annotation.
        "--set",
        `sidecar.capture.image.repository=${initRepository}`,
        "--set",
        `sidecar.capture.image.tag=${initTag}`,
        "--set",
        "operator.trustedIssuers.existingConfigMap=custody-trusted-issuers",
        "--wait",
        "--timeout",
        "5m",
      ]);
      expect(installed.code, installed.stderr).toBe(0);

      const operators = (await pods(SYSTEM, "app.kubernetes.io/component=operator")).filter(ready);
      expect(operators).toHaveLength(2);
      for (const pod of operators) {
        expect(pod.spec.nodeName).toBe(host.state.node);
        expect(pod.spec.serviceAccountName).toBe("custody-operator");
        const [container] = pod.spec.containers;
        expect(container?.image).toBe(host.state.operatorImage);
        expect(container?.args?.[0]).toBe("operator");
        expect(container?.args).toContain("--webhook-service");
      }
      // The chart shipped the caBundle itself (read from the CA Secret at install), so the webhooks
      // work before any operator runs, and after a replace of the configurations.
      const manifest = await helm.run([
        "get",
        "manifest",
        "custody",
        "-n",
        SYSTEM,
        "--kubeconfig",
        host.state.kubeconfig,
      ]);
      expect(manifest.code, manifest.stderr).toBe(0);
      const shipped = parseAllDocuments(manifest.stdout)
        .map(
          (document) =>
            document.toJS() as { kind?: string; webhooks?: { clientConfig: { caBundle?: string } }[] },
        )
        .filter((object) => object?.kind?.endsWith("WebhookConfiguration"));
      expect(shipped).toHaveLength(2);
      for (const configuration of shipped) {
        for (const webhook of configuration.webhooks ?? []) {
          expect(webhook.clientConfig.caBundle).toBe(Buffer.from(ca).toString("base64"));
        }
      }
      // The keeper (one of these Pods) writes Custody's CA into the webhook configurations.
      await until("the injection webhook's caBundle", MINUTE, async () => {
        const configuration = await json<{ webhooks: { clientConfig: { caBundle?: string } }[] }>([
          "get",
          "mutatingwebhookconfiguration",
          "custody-sidecar-injector",
        ]);
        return configuration.webhooks.every((webhook) => (webhook.clientConfig.caBundle ?? "") !== "")
          ? true
          : "no caBundle yet";
      });
    },
    10 * MINUTE,
  );

  it(
    "the shop example: injected Pods start with the sidecar the webhook wrote, and get their identities",
    async () => {
      await ok(["create", "namespace", SHOP]);
      await ok([
        "label",
        "namespace",
        SHOP,
        "custody.dev/injection=enabled",
        "pod-security.kubernetes.io/enforce=restricted",
      ]);
      await ok(["apply", "-f", "examples/shop/identities.yaml", "-f", "examples/shop/policies.yaml"]);
      await ok(["-n", SHOP, "wait", "--for=condition=Ready", "--timeout=120s", "serviceidentities", "--all"]);
      await ok(["-n", SHOP, "wait", "--for=condition=Ready", "--timeout=120s", "accesspolicies", "--all"]);
      await ok([
        "-n",
        SHOP,
        "create",
        "configmap",
        "shop-apps",
        "--from-file=examples/shop/apps/",
        "--from-file=e2e/kind/apps/",
      ]);
      await ok(["apply", "-f", "e2e/kind/shop.yaml"]);
      for (const name of ["shop", "cart", "payments"]) {
        const [pod] = await rolledOut(SHOP, name, 1);
        const containers = [...(pod?.spec.initContainers ?? []), ...(pod?.spec.containers ?? [])];
        expect(sidecarOf(pod)?.image, `${name}'s Pod: ${containers.map((c) => c.name).join(", ")}`).toBe(
          host.state.sidecarImage,
        );
        expect(pod?.status.containerStatuses?.every((status) => status.ready)).toBe(true);
        // The sidecar has its identity: its /readyz (through the API server's pod proxy) answers.
        const readyz = JSON.parse(
          await ok([
            "get",
            "--raw",
            `/api/v1/namespaces/${SHOP}/pods/${pod?.metadata.name}:15020/proxy/readyz`,
          ]),
        ) as Record<string, unknown>;
        expect(typeof readyz.generation).toBe("number");
      }
    },
    10 * MINUTE,
  );

  it(
    "names resolve as in a cluster: <service>.<namespace>.svc from inside a Pod, as the registry's locations say",
    async () => {
      const registry = await registryOf(SHOP);
      const payments = registry?.services.find((service) => service.id === "payments.shop");
      expect(payments?.location).toBe("payments.shop.svc:15006");
      const clusterIp = (
        await json<{ spec: { clusterIP: string } }>(["-n", SHOP, "get", "service", "payments"])
      ).spec.clusterIP;
      const resolved = await ok([
        "-n",
        SHOP,
        "exec",
        "deploy/cart",
        "-c",
        "app",
        "--",
        "node",
        "-e",
        "require('node:dns').lookup('payments.shop.svc', { family: 4 }, (error, address) => console.log(error ? error.code : address))",
      ]);
      expect(resolved.trim()).toBe(clusterIp);
    },
    2 * MINUTE,
  );

  it(
    "the demo's seven scenarios pass on it, through the same MeshAccess as on kind",
    async () => {
      // Prometheus from now on: the scenarios' allowed and denied calls are what it should see.
      prometheus = await startMonitoring();
      const played = await node(
        [
          "--import",
          "tsx",
          "e2e/kind/scenarios.ts",
          "run",
          "--ca",
          join(work, "ca", "ca.crt"),
          "--idp",
          join(work, "idp"),
          "--namespace",
          SHOP,
        ],
        { ...process.env, KUBECONFIG: host.state.kubeconfig, TMPDIR: work },
      );
      process.stderr.write(played.output);
      expect(played.output).toContain("PASS: 7 of 7 outcomes as expected");
      expect(played.code).toBe(0);
    },
    12 * MINUTE,
  );

  it(
    "day 2: a rolling restart of the operator while Pods are admitted: no admission fails",
    async () => {
      const before = (await pods(SYSTEM, "app.kubernetes.io/component=operator")).map(
        (pod) => pod.metadata.name,
      );
      await ok(["-n", SYSTEM, "rollout", "restart", "deployment/custody-operator"]);
      const cart = await json<Record<string, unknown>>(["-n", SHOP, "get", "deployment", "cart"]);
      const template = (cart.spec as { template: { metadata: Meta; spec: unknown } }).template;
      const outcomes: string[] = [];
      let admitted = 0;
      let finished = false;
      const rollout = ok([
        "-n",
        SYSTEM,
        "rollout",
        "status",
        "deployment/custody-operator",
        "--timeout=5m",
      ]).finally(() => {
        finished = true;
      });
      // Pods as a ReplicaSet creates them, checked by the API server (webhooks included) without
      // being stored: every creation during the rollout must pass admission and carry a sidecar.
      // Two clients, so that admissions overlap the moments replicas come and go.
      const admit = async (client: number) => {
        for (let index = 0; !finished || index < 5; index++) {
          const name = `admission-${client}-${index}`;
          const pod = {
            apiVersion: "v1",
            kind: "Pod",
            metadata: { ...template.metadata, name, namespace: SHOP },
            spec: template.spec,
          };
          const result = await kubectl(
            ["create", "--dry-run=server", "-o", "json", "-f", "-"],
            JSON.stringify(pod),
          );
          if (result.code !== 0) {
            outcomes.push(`${name}: ${result.stderr.trim()}`);
          } else {
            const created = JSON.parse(result.stdout) as PodObject;
            if (sidecarOf(created) !== undefined) admitted++;
            else outcomes.push(`${name}: admitted without a sidecar`);
          }
          await sleep(100);
        }
      };
      await Promise.all([admit(1), admit(2)]);
      await rollout;
      // The replaced replicas drain (--shutdown-delay) and stop; until they have, one may still lead.
      const after = await until("only the new operator replicas", 2 * MINUTE, async () => {
        const all = await pods(SYSTEM, "app.kubernetes.io/component=operator");
        return all.length === 2 && all.every(ready) ? all : `${all.length} operator Pods`;
      });
      expect(after.every((pod) => !before.includes(pod.metadata.name))).toBe(true);
      expect(outcomes).toEqual([]);
      expect(admitted).toBeGreaterThanOrEqual(10);
      progress(`${admitted} Pods admitted during the operator's rolling restart`);
    },
    8 * MINUTE,
  );

  it(
    "day 2: the leader killed, the other replica takes over and reconciles",
    async () => {
      const lease = async () =>
        (
          await json<{ spec: { holderIdentity?: string } }>([
            "-n",
            SYSTEM,
            "get",
            "lease",
            "custody-operator",
          ])
        ).spec.holderIdentity ?? "";
      const { leader } = await until("a leader", 2 * MINUTE, async () => {
        const holder = await lease();
        return holder === "" ? "no holder" : { leader: holder };
      });
      const operators = await pods(SYSTEM, "app.kubernetes.io/component=operator");
      const leaderPod = operators.find((pod) => leader.includes(pod.metadata.name));
      expect(leaderPod, `the Lease names ${leader}`).toBeDefined();
      expect(leaderPod?.metadata.deletionTimestamp).toBeUndefined();
      const containerId = leaderPod?.status.containerStatuses?.[0]?.containerID?.replace(
        /^containerd:\/\//,
        "",
      );
      expect(containerId).toBeDefined();
      // SIGKILL to the container's process, as the kernel's OOM killer or a crash would end it.
      const killed = await node(
        ["--import", "tsx", "e2e/cluster/host.ts", "kill-container", String(containerId)],
        process.env,
      );
      expect(killed.code, killed.output).toBe(0);
      const { successor } = await until("another replica leading", 3 * MINUTE, async () => {
        const holder = await lease();
        return holder !== "" && holder !== leader ? { successor: holder } : `still ${holder}`;
      });
      progress(`leader ${leader} killed; ${successor} leads`);
      // The new leader reconciles: a new identity becomes Ready.
      await ok(
        ["apply", "-f", "-"],
        JSON.stringify({
          apiVersion: "custody.dev/v1alpha1",
          kind: "ServiceIdentity",
          metadata: { name: "after-failover", namespace: SHOP },
          spec: { environment: "dev", scopes: ["audit.read"] },
        }),
      );
      await ok([
        "-n",
        SHOP,
        "wait",
        "--for=condition=Ready",
        "--timeout=120s",
        "serviceidentity/after-failover",
      ]);
      // And the killed container came back (the kubelet restarts it).
      await until("the killed operator restarted", 3 * MINUTE, async () => {
        const pod = (await pods(SYSTEM, "app.kubernetes.io/component=operator")).find(
          (candidate) => candidate.metadata.name === leaderPod?.metadata.name,
        );
        const restarts = pod?.status.containerStatuses?.[0]?.restartCount ?? 0;
        return pod !== undefined && ready(pod) && restarts >= 1 ? true : `restarts ${restarts}`;
      });
      await ok(["-n", SHOP, "delete", "serviceidentity", "after-failover"]);
    },
    8 * MINUTE,
  );

  it(
    "day 2: cart's certificate rotated under traffic: no call fails",
    async () => {
      const secret = async () =>
        (
          await json<{ data: Record<string, string> }>([
            "-n",
            SYSTEM,
            "get",
            "secret",
            `custody-identity.${SHOP}.cart`,
          ])
        ).data;
      const serialOf = async (pem: string) => {
        const { X509Certificate } = await import("node:crypto");
        return new X509Certificate(pem).serialNumber.toLowerCase();
      };
      const oldSerial = await serialOf(Buffer.from((await secret())["tls.crt"] ?? "", "base64").toString());
      const [cartPod] = await rolledOut(SHOP, "cart", 1);
      const cartIp = cartPod?.status.podIP ?? "";
      expect(await servedCertificateSerial(cartIp, INBOUND_PORT, ca)).toBe(oldSerial);

      await underCheckouts("rotation under traffic", 20, async () => {
        // A new certificate profile is a normal rotation: next key published, the Secret switched
        // after the propagation delay, the sidecar reloading it from its volume.
        await ok([
          "-n",
          SHOP,
          "patch",
          "serviceidentity",
          "cart",
          "--type=merge",
          "-p",
          '{"spec":{"certificate":{"duration":"25h"}}}',
        ]);
        const { newSerial } = await until("cart's Secret with a new certificate", 6 * MINUTE, async () => {
          const serial = await serialOf(Buffer.from((await secret())["tls.crt"] ?? "", "base64").toString());
          return serial !== oldSerial ? { newSerial: serial } : "the old certificate";
        });
        await until("cart's sidecar serving the new certificate", 4 * MINUTE, async () => {
          const served = await servedCertificateSerial(cartIp, INBOUND_PORT, ca);
          return served === newSerial ? true : `serves ${served}`;
        });
        await sleep(10_000);
      });
    },
    15 * MINUTE,
  );

  it(
    "day 2: payments scaled up and down under traffic: no call fails",
    async () => {
      await underCheckouts("scale 1 → 3 → 1 under traffic", 20, async () => {
        await ok(["-n", SHOP, "scale", "deployment/payments", "--replicas=3"]);
        const scaled = await rolledOut(SHOP, "payments", 3);
        for (const pod of scaled) {
          expect(sidecarOf(pod)).toBeDefined();
        }
        await sleep(15_000);
        await ok(["-n", SHOP, "scale", "deployment/payments", "--replicas=1"]);
        await rolledOut(SHOP, "payments", 1);
        await sleep(10_000);
      });
    },
    12 * MINUTE,
  );

  it(
    "native sidecars in a namespace under a ResourceQuota: a Job completes, its first call goes through, the app stops before its sidecar",
    async () => {
      // A service outside the mesh, with a certificate made now, for the outbound-policy step.
      const tls = join(work, "outside-tls");
      await mkdir(tls, { recursive: true });
      const made = await run("openssl", [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        join(tls, "tls.key"),
        "-out",
        join(tls, "tls.crt"),
        "-days",
        "2",
        "-subj",
        "/CN=outside.outside.svc",
        "-addext",
        "subjectAltName=DNS:outside.outside.svc",
      ]);
      expect(made.code, made.output).toBe(0);
      await ok([
        "apply",
        "-f",
        "e2e/cluster/outside.yaml",
        "--selector",
        "kubernetes.io/metadata.name=outside",
      ]);
      await ok([
        "-n",
        OUTSIDE,
        "create",
        "secret",
        "tls",
        "outside-tls",
        `--cert=${join(tls, "tls.crt")}`,
        `--key=${join(tls, "tls.key")}`,
      ]);
      await ok(["-n", OUTSIDE, "create", "configmap", "outside-apps", "--from-file=e2e/cluster/apps/"]);
      await ok(["apply", "-f", "e2e/cluster/outside.yaml"]);
      // The apps' ConfigMaps first, in the namespace made first: the Deployments mount them.
      await ok(["apply", "-f", "e2e/cluster/batch.yaml", "--selector", "kubernetes.io/metadata.name=batch"]);
      await ok(["-n", BATCH, "create", "configmap", "batch-apps", "--from-file=e2e/cluster/apps/"]);
      await ok([
        "-n",
        BATCH,
        "create",
        "configmap",
        "outside-ca",
        `--from-file=ca.crt=${join(tls, "tls.crt")}`,
      ]);
      await ok(["apply", "-f", "e2e/cluster/batch.yaml"]);
      await ok([
        "-n",
        BATCH,
        "wait",
        "--for=condition=Ready",
        "--timeout=120s",
        "serviceidentities",
        "--all",
      ]);
      await ok(["-n", BATCH, "wait", "--for=condition=Ready", "--timeout=120s", "accesspolicies", "--all"]);
      // The Pods exist at all: the quota admitted them, so every container declared requests and
      // limits of cpu and memory, the sidecar's from the chart's defaults.
      const [sink] = await rolledOut(BATCH, "sink", 1);
      expect(sidecarOf(sink)?.resources).toEqual({
        requests: { cpu: "50m", memory: "64Mi" },
        limits: { cpu: "1", memory: "256Mi" },
      });
      const quota = await json<{ status: { used: Record<string, string> } }>([
        "-n",
        BATCH,
        "get",
        "resourcequota",
        "compute",
      ]);
      expect(quota.status.used["limits.cpu"]).toBeDefined();

      // The Job: its app's first call, made at its first instant without a retry, went through,
      // and the Job completed although its sidecar is a long-running process. (Started once sink
      // is ready: the call is to test the caller's start, not the callee's.)
      await ok(["apply", "-f", "e2e/cluster/report-job.yaml"]);
      await until("Job batch/report Complete", 3 * MINUTE, async () => {
        const job = await json<{
          status: { conditions?: { type: string; status: string }[]; failed?: number };
        }>(["-n", BATCH, "get", "job", "report"]);
        if ((job.status.failed ?? 0) > 0) {
          const logs = await kubectl(["-n", BATCH, "logs", "job/report", "-c", "app"]);
          throw new Error(`Job report failed: ${logs.stdout}${logs.stderr}`);
        }
        const complete = job.status.conditions?.some(
          (condition) => condition.type === "Complete" && condition.status === "True",
        );
        return complete === true ? true : "not complete";
      });
      const [jobPod] = await pods(BATCH, "app.kubernetes.io/name=report");
      // The pod's own annotation set the sidecar's CPU limit.
      expect(sidecarOf(jobPod)?.resources?.limits).toEqual({ cpu: "500m", memory: "256Mi" });
      expect(jobPod?.status.phase).toBe("Succeeded");
      const reports = async () =>
        (await ok(["-n", BATCH, "logs", "deploy/sink", "-c", "app"]))
          .split("\n")
          .filter((line) => line.startsWith("{"))
          .map((line) => JSON.parse(JSON.parse(line).body as string) as { from: string; what: string });
      expect(await reports()).toContainEqual({ from: jobPod?.metadata.name, what: "first-instant" });

      // Deletion: the app calls out a second after its SIGTERM; that goes through only if the
      // kubelet stops the app before the sidecar.
      const [emitter] = await rolledOut(BATCH, "emitter", 1);
      const name = emitter?.metadata.name ?? "";
      expect(await reports()).toContainEqual({ from: name, what: "started" });
      await ok(["-n", BATCH, "delete", "pod", name, "--wait=true", "--timeout=90s"]);
      expect(await reports()).toContainEqual({ from: name, what: "stopping" });
    },
    10 * MINUTE,
  );

  it(
    "outbound traffic outside the mesh: passthrough reaches an HTTP and an HTTPS service, registry-only refuses both",
    async () => {
      await rolledOut(OUTSIDE, "outside", 1);
      const egress = (deployment: string) =>
        runBatchApp<Record<"http" | "https", { status: number; body: string }>>(
          deployment,
          "egress.mjs",
          "http://outside.outside.svc:8080/",
          "https://outside.outside.svc:8443/",
          "/ca/ca.crt",
        );
      await rolledOut(BATCH, "emitter", 1);
      const open = await egress("emitter");
      expect(open.http).toEqual({ status: 200, body: "outside over http" });
      // TLS end to end: the app checked outside's certificate; the sidecar only carried bytes.
      expect(open.https).toEqual({ status: 200, body: "outside over https" });

      await rolledOut(BATCH, "closed", 1);
      const closed = await egress("closed");
      expect(closed.http.status).toBe(502);
      expect(JSON.parse(closed.http.body)).toMatchObject({ reason: "unknown_service" });
      expect(closed.https.status).toBe(403);
      expect(JSON.parse(closed.https.body)).toMatchObject({ reason: "passthrough_disabled" });
    },
    5 * MINUTE,
  );

  it(
    "an identity's key reaches only its own pods: none is in a Secret of its namespace; another service account, or a pod that opted out, is refused",
    async () => {
      // Nothing in the workload namespaces holds a private key: the identities' state is in the
      // operator's namespace, which the workloads' owners need not be able to read.
      for (const namespace of [SHOP, BATCH]) {
        const secrets = await json<{
          items: { metadata: { name: string }; data?: Record<string, string> }[];
        }>(["-n", namespace, "get", "secrets"]);
        const withKeys = secrets.items.filter(
          (secret) => secret.metadata.name.startsWith("custody-") || secret.data?.["tls.key"] !== undefined,
        );
        expect(withKeys.map((secret) => secret.metadata.name)).toEqual([]);
      }
      await ok(["-n", SYSTEM, "get", "secret", `custody-identity.${BATCH}.reporter`]);
      // The injected pods obtained theirs from the operator, with their own tokens.
      const [sink] = await rolledOut(BATCH, "sink", 1);
      const sidecarLog = await ok(["-n", BATCH, "logs", sink?.metadata.name ?? "", "-c", "custody-sidecar"]);
      expect(sidecarLog).toContain('"event":"identity_delivered"');

      await ok(["apply", "-f", "e2e/cluster/intruders.yaml"]);
      await ok([
        "-n",
        BATCH,
        "wait",
        "--for=condition=Ready",
        "--timeout=120s",
        "pod/intruder",
        "pod/opted-out",
      ]);
      const CUSTODY_TOKEN = "/var/run/secrets/custody/token";
      const API_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token";
      const steal = async (pod: string) =>
        JSON.parse(
          (
            await ok([
              "-n",
              BATCH,
              "exec",
              pod,
              "-c",
              "app",
              "--",
              "node",
              "/apps/steal.mjs",
              `https://custody-webhook.${SYSTEM}.svc/v1/identity`,
              CUSTODY_TOKEN,
              API_TOKEN,
            ])
          ).trim(),
        ) as Record<string, { status: number; reason: string; key: boolean }>;
      // Another service account, naming reporter's identity: no injection asked, no key.
      const intruder = await steal("intruder");
      expect(intruder[CUSTODY_TOKEN]).toEqual({ status: 403, reason: "injection_disabled", key: false });
      // Its API-server token is not a token for Custody's audience.
      expect(intruder[API_TOKEN]).toEqual({ status: 401, reason: "token_invalid", key: false });
      // reporter's own service account, but the pod opted out of injection.
      const optedOut = await steal("opted-out");
      expect(optedOut[CUSTODY_TOKEN]).toEqual({ status: 403, reason: "injection_disabled", key: false });
      expect(optedOut[API_TOKEN]).toEqual({ status: 401, reason: "token_invalid", key: false });
      // And a pod of another service account that asks for injection with reporter's identity is
      // not even created: admission applies the same rule.
      const refused = await kubectl(
        ["apply", "-f", "-"],
        JSON.stringify({
          apiVersion: "v1",
          kind: "Pod",
          metadata: {
            name: "intruder-injected",
            namespace: BATCH,
            annotations: { "custody.dev/inject": "true", "custody.dev/identity": "reporter" },
          },
          spec: {
            serviceAccountName: "intruder",
            containers: [{ name: "app", image: "node:24-bookworm-slim" }],
          },
        }),
      );
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(
        /service_account_mismatch|may only be used by pods running as service account/,
      );
      await ok(["-n", BATCH, "delete", "pod", "intruder", "opted-out", "--wait=false"]);
    },
    4 * MINUTE,
  );

  it(
    "quota across replicas: with the sidecars sharing buckets through Redis, two replicas together hold the rule's rate",
    async () => {
      // Redis on the node's bridge address, where Pods reach it; the operator is told to inject it.
      redis = await startRedis(host.state.nodeAddress);
      const upgraded = await helm.run([
        "upgrade",
        "custody",
        "charts/custody",
        "--namespace",
        SYSTEM,
        "--kubeconfig",
        host.state.kubeconfig,
        "--reuse-values",
        "--set",
        `sidecar.redis.url=${redis.url}`,
        "--wait",
        "--timeout",
        "5m",
      ]);
      expect(upgraded.code, upgraded.stderr).toBe(0);
      await until("the operators injecting Redis", 3 * MINUTE, async () => {
        const all = await pods(SYSTEM, "app.kubernetes.io/component=operator");
        const current = all.filter(
          (pod) => ready(pod) && (pod.spec.containers[0]?.args ?? []).includes(redis?.url ?? ""),
        );
        return current.length === 2 && all.length === 2
          ? true
          : `${current.length} of ${all.length} operator Pods with Redis`;
      });
      await ok(["apply", "-f", "e2e/cluster/limited.yaml"]);
      await ok(["-n", BATCH, "wait", "--for=condition=Ready", "--timeout=120s", "serviceidentity/limited"]);
      const replicas = await rolledOut(BATCH, "limited", 2);
      for (const pod of replicas) {
        // The URL is not in the spec: the sidecar got it with its identity.
        expect(JSON.stringify(sidecarOf(pod)?.env ?? [])).not.toContain(redis.url);
        expect(sidecarOf(pod)?.env).toContainEqual({ name: "CUSTODY_REPLAY_FAILURE_MODE", value: "closed" });
      }
      const burst = (count: number) =>
        runBatchApp<{ statuses: Record<string, number>; answeredBy: string[]; ms: number }>(
          "emitter",
          "burst.mjs",
          "http://limited.batch/reports",
          String(count),
        );
      // Until emitter's sidecar knows limited.batch (the registry reaches it through its volume).
      await until("limited.batch reachable from emitter", 3 * MINUTE, async () => {
        const probe = await burst(1);
        return probe.statuses["200"] === 1 ? true : JSON.stringify(probe.statuses);
      });
      await sleep(6_000); // the bucket back to full: burst 4 at one call a second
      const metricsOf = async (pod: PodObject) => {
        const text = await ok([
          "get",
          "--raw",
          `/api/v1/namespaces/${BATCH}/pods/${pod.metadata.name}:15020/proxy/metrics`,
        ]);
        const count = (result: string) =>
          Number(
            new RegExp(`^custody_quota_decisions_total\\{result="${result}"\\} (\\d+)`, "m").exec(
              text,
            )?.[1] ?? 0,
          );
        return { allowed: count("allowed"), limited: count("limited") };
      };
      const before = await Promise.all(replicas.map(metricsOf));
      const result = await burst(16);
      const after = await Promise.all(replicas.map(metricsOf));
      progress(`quota burst of 16 over 2 replicas: ${JSON.stringify(result)}`);
      const allowed = result.statuses["200"] ?? 0;
      // Burst 4, plus at most what refilled while the burst ran (one a second), plus rounding.
      expect(allowed).toBeGreaterThanOrEqual(4);
      expect(allowed).toBeLessThanOrEqual(4 + Math.ceil(result.ms / 1000) + 1);
      expect(result.statuses["429"]).toBe(16 - allowed);
      // Both replicas decided some of the calls: each alone would have granted a burst of 4.
      const decided = after.map((counts, index) => {
        const earlier = before[index] ?? { allowed: 0, limited: 0 };
        return counts.allowed - earlier.allowed + counts.limited - earlier.limited;
      });
      expect(
        decided.every((count) => count > 0),
        `decisions per replica: ${decided.join(", ")}`,
      ).toBe(true);
    },
    10 * MINUTE,
  );

  it(
    "a registry of more than 8 shards reaches the sidecars: checkouts go through on it",
    async () => {
      // 4 KiB shards instead of 900 KiB, and 40 more identities: this small mesh then needs as
      // many ConfigMaps as one of some thousands of services would. (A shard holds its header,
      // ~2 KiB, and at least one entry.)
      const extra = Array.from({ length: 40 }, (_, index) => ({
        apiVersion: "custody.dev/v1alpha1",
        kind: "ServiceIdentity",
        metadata: { name: `filler-${index}`, namespace: SHOP },
        spec: { environment: "dev", serviceAccountName: "default" },
      }));
      await ok(["apply", "-f", "-"], JSON.stringify({ apiVersion: "v1", kind: "List", items: extra }));
      await ok(["-n", SHOP, "wait", "--for=condition=Ready", "--timeout=180s", "serviceidentities", "--all"]);
      const args = (
        await json<{ spec: { template: { spec: { containers: Container[] } } } }>([
          "-n",
          SYSTEM,
          "get",
          "deployment",
          "custody-operator",
        ])
      ).spec.template.spec.containers[0]?.args;
      const patch = [
        {
          op: "replace",
          path: "/spec/template/spec/containers/0/args",
          value: [...(args ?? []), "--registry-shard-bytes", "4096"],
        },
      ];
      await ok([
        "-n",
        SYSTEM,
        "patch",
        "deployment",
        "custody-operator",
        "--type=json",
        "-p",
        JSON.stringify(patch),
      ]);
      await ok(["-n", SYSTEM, "rollout", "status", "deployment/custody-operator", "--timeout=5m"]);
      const shards = await until("shop's registry in more than 8 shards", 3 * MINUTE, async () => {
        const configMaps = await json<List<{ metadata: Meta }>>([
          "-n",
          SHOP,
          "get",
          "configmaps",
          "-l",
          "custody.dev/registry-shard",
        ]);
        const count = configMaps.items.length;
        return count > 8 ? count : `${count} shards`;
      });
      const published = await registryOf(SHOP);
      expect(published?.services.map((service) => service.id)).toEqual(
        expect.arrayContaining(["shop.shop", "cart.shop", "payments.shop"]),
      );
      // Every shop sidecar has loaded that generation, from all of its shards.
      await until("the shop sidecars on the sharded registry", 3 * MINUTE, async () => {
        const behind: string[] = [];
        for (const pod of await pods(SHOP, "app.kubernetes.io/part-of=custody-e2e")) {
          const readyz = JSON.parse(
            await ok([
              "get",
              "--raw",
              `/api/v1/namespaces/${SHOP}/pods/${pod.metadata.name}:15020/proxy/readyz`,
            ]),
          ) as { generation?: number };
          if (readyz.generation !== published?.generation)
            behind.push(`${pod.metadata.name}: ${readyz.generation}`);
        }
        return behind.length === 0 ? true : behind.join(", ");
      });
      await underCheckouts(`${shards} shards`, 5, () => sleep(5_000));
    },
    10 * MINUTE,
  );

  it(
    "the webhook's reach: while it cannot be called, only Pods that ask for a sidecar are refused",
    async () => {
      const configuration = "custody-sidecar-injector";
      const service = (name: string) =>
        JSON.stringify([{ op: "replace", path: "/webhooks/0/clientConfig/service/name", value: name }]);
      const plain = {
        apiVersion: "v1",
        kind: "Pod",
        metadata: { name: "plain", namespace: BATCH },
        spec: {
          securityContext: {
            runAsNonRoot: true,
            runAsUser: 1000,
            seccompProfile: { type: "RuntimeDefault" },
          },
          containers: [
            {
              name: "app",
              image: "node:24-bookworm-slim",
              resources: {
                requests: { cpu: "10m", memory: "32Mi" },
                limits: { cpu: "100m", memory: "64Mi" },
              },
              securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
            },
          ],
        },
      };
      const asking = {
        ...plain,
        metadata: {
          ...plain.metadata,
          name: "asking",
          annotations: { "custody.dev/inject": "true", "custody.dev/app-port": "8080" },
        },
        spec: { ...plain.spec, serviceAccountName: "reporter" },
      };
      const create = (pod: unknown) =>
        kubectl(["create", "--dry-run=server", "-o", "json", "-f", "-"], JSON.stringify(pod));
      await ok([
        "patch",
        "mutatingwebhookconfiguration",
        configuration,
        "--type=json",
        "-p",
        service("custody-webhook-gone"),
      ]);
      try {
        // matchConditions: the API server does not call the webhook for a Pod that does not ask.
        const created = await create(plain);
        expect(created.code, created.stderr).toBe(0);
        const refused = await create(asking);
        expect(refused.code).not.toBe(0);
        expect(refused.stderr).toContain("inject.custody.dev");
      } finally {
        await ok([
          "patch",
          "mutatingwebhookconfiguration",
          configuration,
          "--type=json",
          "-p",
          service("custody-webhook"),
        ]);
      }
      const admitted = await create(asking);
      expect(admitted.code, admitted.stderr).toBe(0);
      expect(sidecarOf(JSON.parse(admitted.stdout) as PodObject)).toBeDefined();
    },
    3 * MINUTE,
  );

  it(
    "day 2: a namespace deleted: everything of Custody in it goes, and its identity leaves the other registries",
    async () => {
      await ok(["apply", "-f", "e2e/cluster/ledger.yaml"]);
      await ok(["-n", "ledger", "wait", "--for=condition=Ready", "--timeout=120s", "serviceidentity/ledger"]);
      await rolledOut("ledger", "ledger", 1);
      await until("ledger in shop's registry", 2 * MINUTE, async () =>
        (await registryOf(SHOP))?.services.some((service) => service.id === "ledger.ledger") === true
          ? true
          : "not yet",
      );
      await ok(["delete", "namespace", "ledger", "--wait=false"]);
      await until("namespace ledger gone", 5 * MINUTE, async () => {
        const result = await kubectl(["get", "namespace", "ledger", "-o", "json"]);
        if (result.code !== 0 && result.stderr.includes("NotFound")) return true;
        const namespace = JSON.parse(result.stdout || "{}") as {
          status?: { conditions?: { message?: string }[] };
        };
        return `terminating: ${(namespace.status?.conditions ?? []).map((condition) => condition.message).join("; ")}`;
      });
      await until("ledger gone from shop's registry", 3 * MINUTE, async () =>
        (await registryOf(SHOP))?.services.some((service) => service.id === "ledger.ledger") === false
          ? true
          : "still listed",
      );
      // Nothing of Custody's is left anywhere for that namespace.
      const leftovers = await json<List<{ metadata: Meta }>>([
        "get",
        "serviceidentities,accesspolicies",
        "-A",
      ]);
      expect(leftovers.items.filter((item) => item.metadata.namespace === "ledger")).toEqual([]);
    },
    12 * MINUTE,
  );

  it(
    "Prometheus discovers the operator and the sidecars through kubernetes_sd_configs and evaluates the chart's rules",
    async () => {
      const server = prometheus;
      expect(server).toBeDefined();
      if (server === undefined) return;
      const targets = await until("every target up", 3 * MINUTE, async () => {
        const { activeTargets } = await server.api<{
          activeTargets: { labels: Record<string, string>; health: string; lastError: string }[];
        }>("targets", { state: "active" });
        const operatorTargets = activeTargets.filter(
          (target) => target.labels.job === "custody-operator-metrics",
        );
        const sidecarTargets = activeTargets.filter(
          (target) => target.labels.job === `${SYSTEM}/custody-sidecars`,
        );
        const down = [...operatorTargets, ...sidecarTargets].filter((target) => target.health !== "up");
        const inShop = sidecarTargets.filter((target) => target.labels.namespace === SHOP).length;
        if (operatorTargets.length !== 4 || inShop < 3 || down.length > 0) {
          return `${operatorTargets.length} operator and ${sidecarTargets.length} sidecar targets (${sidecarTargets
            .map((target) => `${target.labels.namespace}/${target.labels.pod}`)
            .join(
              ", ",
            )}), down: ${down.map((target) => `${target.labels.pod} ${target.lastError}`).join("; ")}`;
        }
        return { operatorTargets, sidecarTargets };
      });
      // The labels the alert rules use come from discovery.
      for (const target of targets.sidecarTargets) {
        expect([SHOP, BATCH]).toContain(target.labels.namespace);
        expect(target.labels.pod).toMatch(/^(shop|cart|payments|sink|emitter|closed|limited)-/);
      }
      expect(
        targets.sidecarTargets.filter((target) => target.labels.namespace === SHOP).length,
      ).toBeGreaterThanOrEqual(3);
      await until("denials counted per namespace by the recording rules", 3 * MINUTE, async () => {
        const denials = await server.query(
          'namespace_reason:custody_sidecar_inbound_denials:rate5m{namespace="shop"}',
        );
        return denials.length > 0 ? true : "no series yet";
      });
      const registryGeneration = await server.query("custody:operator_registry_generation:max");
      expect(registryGeneration[0]?.value ?? 0).toBeGreaterThan(0);
      const { groups } = await server.api<{
        groups: {
          name: string;
          rules: { name: string; health: string; lastError?: string; type: string }[];
        }[];
      }>("rules");
      expect(groups.map((group) => group.name).sort()).toEqual(["custody.alerts", "custody.rules"]);
      const unhealthy = groups
        .flatMap((group) => group.rules)
        .filter((rule) => rule.health !== "ok")
        .map((rule) => `${rule.name}: ${rule.health} ${rule.lastError ?? ""}`);
      expect(unhealthy).toEqual([]);
    },
    8 * MINUTE,
  );

  it(
    "traffic capture: another pod's direct call to the app port does not reach the app, the call through the sidecar does, and probes pass through the sidecar",
    async () => {
      // Capture's init container needs NET_ADMIN: a namespace under the restricted level refuses
      // such a pod (Pod Security admission), whatever the webhook injects.
      const sink = await json<{ spec: { template: { metadata: Meta; spec: unknown } } }>([
        "-n",
        BATCH,
        "get",
        "deployment",
        "sink",
      ]);
      const restricted = {
        apiVersion: "v1",
        kind: "Pod",
        metadata: {
          ...sink.spec.template.metadata,
          name: "captured-in-restricted",
          namespace: BATCH,
          annotations: { ...sink.spec.template.metadata.annotations, "custody.dev/capture": "true" },
        },
        spec: sink.spec.template.spec,
      };
      const refused = await kubectl(
        ["create", "--dry-run=server", "-o", "json", "-f", "-"],
        JSON.stringify(restricted),
      );
      expect(refused.code, refused.stdout).not.toBe(0);
      expect(refused.stderr).toMatch(/violates PodSecurity "restricted/);
      expect(refused.stderr).toContain("custody-init");

      // A privileged namespace admits it.
      await ok([
        "apply",
        "-f",
        "e2e/cluster/captured.yaml",
        "--selector",
        `kubernetes.io/metadata.name=${CAPTURED}`,
      ]);
      await ok(["-n", CAPTURED, "create", "configmap", "captured-apps", "--from-file=e2e/cluster/apps/"]);
      await ok(["apply", "-f", "e2e/cluster/captured.yaml"]);
      await ok([
        "-n",
        CAPTURED,
        "wait",
        "--for=condition=Ready",
        "--timeout=120s",
        "serviceidentity/guarded",
      ]);
      await ok(["-n", CAPTURED, "wait", "--for=condition=Ready", "--timeout=120s", "accesspolicy/guarded"]);
      // Ready: its readiness probe, an httpGet of the app port, passed through the sidecar.
      const [guarded] = await rolledOut(CAPTURED, "guarded", 1);
      if (guarded === undefined) throw new Error("no guarded Pod");
      const name = guarded.metadata.name;
      const inits = guarded.spec.initContainers ?? [];
      expect(inits.map((container) => container.name)).toEqual(["custody-init", "custody-sidecar"]);
      expect(inits[0]?.image).toBe(host.state.initImage);
      const app = guarded.spec.containers.find((container) => container.name === "app");
      expect(app?.readinessProbe?.httpGet).toMatchObject({ path: "/app-health/app/readiness", port: 15020 });
      expect(app?.livenessProbe?.httpGet).toMatchObject({ path: "/app-health/app/liveness", port: 15020 });
      expect(sidecarOf(guarded)?.env?.some((variable) => variable.name === "CUSTODY_APP_PROBES")).toBe(true);
      const initStatus = guarded.status.initContainerStatuses?.find(
        (status) => status.name === "custody-init",
      );
      expect(initStatus?.state?.terminated?.exitCode).toBe(0);
      // What the kubelet asks for, through the API server's pod proxy: the sidecar probed the app.
      const probed = JSON.parse(
        await ok([
          "get",
          "--raw",
          `/api/v1/namespaces/${CAPTURED}/pods/${name}:15020/proxy/app-health/app/readiness`,
        ]),
      ) as Record<string, unknown>;
      expect(probed).toMatchObject({ status: "ok", detail: "status 200" });

      // From emitter (reporter.batch, another namespace): the direct calls, and the way in.
      await rolledOut(BATCH, "emitter", 1);
      interface Answer {
        readonly status?: number;
        readonly body?: string;
        readonly error?: string;
      }
      type Knock = Record<"direct" | "directTls" | "notExcluded" | "excluded" | "mesh", Answer>;
      const podIp = guarded.status.podIP ?? "";
      expect(podIp).not.toBe("");
      // Until emitter's sidecar knows guarded.captured (the registry reaches it through its volume).
      const knocked = await until(
        "guarded.captured reachable from emitter through its sidecar",
        3 * MINUTE,
        async () => {
          const answer = await runBatchApp<Knock>(
            "emitter",
            "knock.mjs",
            podIp,
            "http://guarded.captured/reports",
          );
          return answer.mesh.status === 200 ? answer : JSON.stringify(answer.mesh);
        },
      );
      progress(`traffic capture, from emitter: ${JSON.stringify(knocked)}`);
      expect(knocked.mesh).toEqual({ status: 200, body: "reached the app" });
      // Straight to the app port, the connection lands at the sidecar: plain HTTP gets no HTTP
      // answer at all (it is the sidecar's TLS port), and TLS without a client certificate gets
      // the sidecar's refusal.
      expect(knocked.direct.status, JSON.stringify(knocked.direct)).toBeUndefined();
      expect(knocked.direct.error).toBeDefined();
      expect(knocked.directTls.status).toBe(401);
      expect(JSON.parse(knocked.directTls.body ?? "{}")).toMatchObject({ reason: "no_client_certificate" });
      // Another port the app listens on is reset; the one the pod excludes answers.
      expect(knocked.notExcluded).toEqual({ error: "ECONNREFUSED" });
      expect(knocked.excluded).toEqual({ status: 200, body: "metrics" });
      // The app saw only the calls its sidecar verified, each with its caller.
      const seen = (await ok(["-n", CAPTURED, "logs", `pod/${name}`, "-c", "app"]))
        .split("\n")
        .filter((line) => line.startsWith("{"))
        .map((line) => JSON.parse(line) as { port: number; path: string; caller: string | null });
      const onAppPort = seen.filter((entry) => entry.port === 8080);
      expect(onAppPort.length).toBeGreaterThanOrEqual(1);
      expect(onAppPort.filter((entry) => entry.caller !== "reporter.batch")).toEqual([]);
      expect(seen.filter((entry) => entry.port === 9090)).toEqual([]);
    },
    8 * MINUTE,
  );

  /** A Prometheus outside the cluster, as its ServiceAccount, configured from the chart's monitors. */
  async function startMonitoring(): Promise<PrometheusServer> {
    await ok(["create", "namespace", "monitoring"]);
    await ok(["-n", "monitoring", "create", "serviceaccount", "prometheus"]);
    await ok([
      "create",
      "clusterrole",
      "prometheus-discovery",
      "--verb=get,list,watch",
      "--resource=pods,services,endpoints,endpointslices.discovery.k8s.io,nodes",
    ]);
    await ok([
      "create",
      "clusterrolebinding",
      "prometheus-discovery",
      "--clusterrole=prometheus-discovery",
      "--serviceaccount=monitoring:prometheus",
    ]);
    const token = (await ok(["-n", "monitoring", "create", "token", "prometheus", "--duration=2h"])).trim();
    const rendered = await helm.run([
      "template",
      "custody",
      "charts/custody",
      "--namespace",
      SYSTEM,
      "--set",
      "monitoring.serviceMonitor.enabled=true",
      "--set",
      "monitoring.serviceMonitor.interval=5s",
      "--set",
      "monitoring.podMonitor.enabled=true",
      "--set",
      "monitoring.podMonitor.interval=5s",
      "--set",
      "monitoring.prometheusRule.enabled=true",
      "--show-only",
      "templates/monitoring.yaml",
    ]);
    expect(rendered.code, rendered.stderr).toBe(0);
    const objects = parseAllDocuments(rendered.stdout).map((document) => document.toJS() as unknown);
    const kubeconfig = await readFile(host.state.kubeconfig, "utf8");
    const caData = /certificate-authority-data: (\S+)/.exec(kubeconfig)?.[1] ?? "";
    const translated = translateMonitors(
      objects,
      { apiServer: host.state.server, caFile: "kubernetes-ca.crt", tokenFile: "token" },
      { scrapeInterval: "5s", evaluationInterval: "5s" },
    );
    const files: Record<string, string> = {
      "kubernetes-ca.crt": Buffer.from(caData, "base64").toString(),
      token,
      ...(translated.rules === undefined ? {} : { "rules.yaml": translated.rules }),
    };
    await writeFile(join(work, "prometheus.yml"), translated.config);
    const { prometheus: prometheusBinary, promtool } = nodeBinaries();
    return startPrometheus({
      config: translated.config,
      files,
      binaries: { prometheus: prometheusBinary, promtool },
    });
  }
});
