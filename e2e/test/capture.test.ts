/**
 * Traffic capture for real, without a cluster: the init container the webhook injects, run with
 * the real iptables-restore (Debian's, as in the custody-init image) inside a "pod" network
 * namespace, and another namespace joined to it by a veth pair standing for another pod.
 *
 * In the pod, plain TCP servers stand for the app (on 0.0.0.0/:: as most apps listen), the
 * sidecar's inbound and admin ports, a port the pod excludes, and one more port the app opened.
 * Before the rules, the other pod reaches each of them directly; after them, a direct call to the
 * app port lands at the sidecar, the extra port is reset, the excluded port and the sidecar's
 * answer; inside the pod, loopback (the sidecar's way to the app) and the pod's own connections
 * out are untouched. Over IPv4, and IPv6 where the kernel has it.
 *
 * Root and iproute2 are needed (skipped visibly otherwise, failed under CUSTODY_REQUIRE_ALL=1).
 * The namespaces are this test's own (support/netns.ts): nothing of the machine's network changes.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { applyPatch, type Operation } from "fast-json-patch";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { validateServiceIdentity } from "../../crds/src/manifest.js";
import { CAPTURE_RULES_ENV, INIT_CONTAINER_NAME } from "../../operator/src/webhook/capture.js";
import { DEFAULT_INJECTION_SETTINGS, injectionPatch } from "../../operator/src/webhook/inject.js";
import { terminate } from "../support/daemons.js";
import { NamespacePair, type Side } from "../support/netns.js";
import { requireRoot, requireTool } from "../support/tools.js";

const READY =
  requireRoot("network namespaces and iptables need") &&
  requireTool("ip") &&
  requireTool("iptables-restore") &&
  requireTool("ip6tables-restore") &&
  requireTool("iptables-save");

const KNOCK = fileURLToPath(new URL("../support/tcp-knock.mjs", import.meta.url));
const APP = 8080;
const INBOUND = 15006;
const ADMIN = 15020;
const EXCLUDED = 9091;
/** A port the app listens on too, which the pod did not exclude. */
const EXTRA = 9090;
/** A server in the other namespace, which the pod calls out to. */
const OUTSIDE = 7000;

interface InitContainer {
  readonly name: string;
  readonly command: string[];
  readonly env: { name: string; value: string }[];
}

/** The custody-init container the webhook injects into a pod that asks for capture. */
function injectedInitContainer(): InitContainer {
  const pod = {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name: "cart-1",
      namespace: "shop",
      annotations: {
        "custody.dev/inject": "true",
        "custody.dev/capture": "true",
        "custody.dev/capture-exclude-inbound-ports": String(EXCLUDED),
      },
    },
    spec: { serviceAccountName: "cart", containers: [{ name: "app", ports: [{ containerPort: APP }] }] },
  };
  const cart = validateServiceIdentity({
    apiVersion: "custody.dev/v1alpha1",
    kind: "ServiceIdentity",
    metadata: { name: "cart", namespace: "shop" },
    spec: {},
  });
  const decision = injectionPatch(
    structuredClone(pod),
    "shop",
    { identity: () => cart },
    DEFAULT_INJECTION_SETTINGS,
  );
  if (!decision.allowed) throw new Error(decision.message);
  const patched = applyPatch(structuredClone(pod), JSON.parse(JSON.stringify(decision.patch)) as Operation[])
    .newDocument as unknown as { spec: { initContainers: InitContainer[] } };
  const init = patched.spec.initContainers[0];
  if (init?.name !== INIT_CONTAINER_NAME) throw new Error("custody-init is not the first init container");
  return init;
}

describe
  .skipIf(!READY)
  .sequential("traffic capture in a pod's network namespace, with the real iptables", () => {
    let pair: NamespacePair;
    let lockDirectory: string;
    let ipv6 = false;
    const servers: ChildProcess[] = [];

    /** A tcp-knock server in `side`, once it listens. */
    const serve = async (side: Side, ...labels: string[]) => {
      const child = spawn(
        "ip",
        ["netns", "exec", side.namespace, process.execPath, KNOCK, "serve", ...labels],
        {
          stdio: ["ignore", "pipe", "pipe"],
        },
      );
      servers.push(child);
      let output = "";
      child.stdout?.setEncoding("utf8");
      child.stderr?.setEncoding("utf8");
      child.stderr?.on("data", (chunk: string) => {
        output += chunk;
      });
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`server in ${side.namespace}: not ready: ${output}`)),
          10_000,
        );
        child.stdout?.on("data", (chunk: string) => {
          output += chunk;
          if (output.includes("ready")) {
            clearTimeout(timer);
            resolve();
          }
        });
        child.once("exit", (code) => {
          clearTimeout(timer);
          reject(new Error(`server in ${side.namespace} exited ${code}: ${output}`));
        });
      });
    };

    /** Who answers at each of `targets`, as seen from `side`. */
    const knock = async (side: Side, ...targets: string[]): Promise<Record<string, string>> =>
      JSON.parse((await pair.exec(side, [process.execPath, KNOCK, "knock", ...targets])).stdout) as Record<
        string,
        string
      >;

    const at = (address: string, port: number) =>
      address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;

    beforeAll(async () => {
      pair = await NamespacePair.create();
      ipv6 = (await pair.hasIpv6(pair.pod)) && (await pair.hasIpv6(pair.client));
      if (!ipv6) process.stderr.write("NOTE: this kernel gives network namespaces no IPv6: IPv4 only.\n");
      lockDirectory = await mkdtemp(join(tmpdir(), "custody-capture-"));
      await serve(
        pair.pod,
        `app=${APP}`,
        `sidecar=${INBOUND}`,
        `admin=${ADMIN}`,
        `excluded=${EXCLUDED}`,
        `extra=${EXTRA}`,
      );
      await serve(pair.client, `outside=${OUTSIDE}`);
    }, 60_000);

    afterAll(async () => {
      await Promise.all(servers.map((child) => terminate(child, 2_000)));
      await pair?.remove();
      if (lockDirectory !== undefined) await rm(lockDirectory, { recursive: true, force: true });
    });

    it("without the rules, another pod reaches every port of the pod directly", async () => {
      const addresses = [pair.pod.ipv4, ...(ipv6 ? [pair.pod.ipv6] : [])];
      for (const address of addresses) {
        expect(await knock(pair.client, at(address, APP), at(address, EXTRA))).toEqual({
          [at(address, APP)]: "app",
          [at(address, EXTRA)]: "extra",
        });
      }
    });

    it("the injected custody-init container installs the webhook's rules with iptables-restore and ip6tables-restore", async () => {
      const init = injectedInitContainer();
      const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin" };
      for (const variable of init.env) env[variable.name] = variable.value;
      // The pod mounts an emptyDir at /run/xtables for iptables' lock; here a directory of the test's.
      env.XTABLES_LOCKFILE = join(lockDirectory, "xtables.lock");
      const { stdout } = await pair.exec(pair.pod, init.command, env);
      expect(stdout).toContain("custody-init: IPv4 inbound TCP captured");
      expect(stdout).toContain(ipv6 ? "custody-init: IPv6 inbound TCP captured" : "custody-init: no IPv6");
      const saved = (await pair.exec(pair.pod, ["iptables-save"])).stdout;
      expect(saved).toContain(
        `-A CUSTODY_INBOUND_REDIRECT -p tcp -m tcp --dport ${APP} -j REDIRECT --to-ports ${INBOUND}`,
      );
      expect(saved).toContain("-A CUSTODY_INBOUND -p tcp -j REJECT --reject-with tcp-reset");
      if (ipv6) expect((await pair.exec(pair.pod, ["ip6tables-save"])).stdout).toContain("CUSTODY_INBOUND");
      expect(env[CAPTURE_RULES_ENV]).toContain(`--dport ${EXCLUDED} -j RETURN`);
    });

    it("from another pod: the app port lands at the sidecar, another port is reset, the excluded and the sidecar's ports answer", async () => {
      const addresses = [pair.pod.ipv4, ...(ipv6 ? [pair.pod.ipv6] : [])];
      for (const address of addresses) {
        expect(
          await knock(
            pair.client,
            at(address, APP),
            at(address, EXTRA),
            at(address, EXCLUDED),
            at(address, INBOUND),
            at(address, ADMIN),
          ),
          address,
        ).toEqual({
          // Redirected: the caller meets the sidecar (in a pod, its mutual TLS and chain check).
          [at(address, APP)]: "sidecar",
          // Reset at once (a refused connection), although the app listens there.
          [at(address, EXTRA)]: "ECONNREFUSED",
          [at(address, EXCLUDED)]: "excluded",
          [at(address, INBOUND)]: "sidecar",
          [at(address, ADMIN)]: "admin",
        });
      }
    });

    it("inside the pod: loopback reaches the app (the sidecar's way to it), and so does the pod's own address", async () => {
      expect(
        await knock(pair.pod, at("127.0.0.1", APP), at(pair.pod.ipv4, APP), at("127.0.0.1", EXTRA)),
      ).toEqual({
        [at("127.0.0.1", APP)]: "app",
        [at(pair.pod.ipv4, APP)]: "app",
        [at("127.0.0.1", EXTRA)]: "extra",
      });
      if (ipv6) expect(await knock(pair.pod, at("::1", APP))).toEqual({ [at("::1", APP)]: "app" });
    });

    it("the pod's own connections out get their answers: only connections made to it are captured", async () => {
      expect(await knock(pair.pod, at(pair.client.ipv4, OUTSIDE))).toEqual({
        [at(pair.client.ipv4, OUTSIDE)]: "outside",
      });
      if (ipv6) {
        expect(await knock(pair.pod, at(pair.client.ipv6, OUTSIDE))).toEqual({
          [at(pair.client.ipv6, OUTSIDE)]: "outside",
        });
      }
    });
  });
