/**
 * Two network namespaces joined by a veth pair, for tests that need what the kernel does between
 * two hosts (e2e/test/capture.test.ts: a "pod" and another pod calling it). Everything is made
 * inside namespaces this process creates: the veth pair is created in one namespace with its peer
 * in the other, so the machine's own namespace, interfaces and bridges are never touched, and the
 * addresses (a 10.x /30 and an IPv6 ULA /64) exist only there.
 *
 * Names carry this process's id (`custody-capture-<pid>-…`), so parallel runs never meet, and
 * `create` first removes what a killed earlier run left (namespaces of processes that are gone).
 * Needs root and iproute2's `ip`.
 */
import { execFile } from "node:child_process";

const PREFIX = "custody-capture-";
const COMMAND_TIMEOUT_MS = 20_000;

export class NetnsCommandError extends Error {
  readonly code = "netns_command_failed";
}

export function run(
  command: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      [...args],
      { env, timeout: COMMAND_TIMEOUT_MS, maxBuffer: 4 * 1024 * 1024, encoding: "utf8" },
      (error, stdout, stderr) => {
        if (error === null) resolve({ stdout, stderr });
        else
          reject(new NetnsCommandError(`${command} ${args.join(" ")}: ${(stderr || error.message).trim()}`));
      },
    );
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Namespaces of earlier runs whose process is gone. */
async function removeLeftovers(): Promise<void> {
  const { stdout } = await run("ip", ["netns", "list"]);
  for (const line of stdout.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const pid = Number(/^custody-capture-(\d+)-/.exec(name)?.[1]);
    if (Number.isInteger(pid) && pid !== process.pid && !alive(pid)) {
      await run("ip", ["netns", "del", name]).catch(() => undefined);
    }
  }
}

export interface Side {
  /** The namespace's name, for `ip netns exec`. */
  readonly namespace: string;
  readonly ipv4: string;
  readonly ipv6: string;
}

export class NamespacePair {
  private constructor(
    readonly pod: Side,
    readonly client: Side,
  ) {}

  /**
   * `pod` and `client`, each with loopback up and one end of a veth pair: 10.250.<n>.1 and .2/30,
   * fd00:c0de:<n>::1 and ::2/64 (no duplicate address detection, so usable at once).
   */
  static async create(): Promise<NamespacePair> {
    await removeLeftovers();
    const subnet = process.pid % 250;
    const pod = {
      namespace: `${PREFIX}${process.pid}-pod`,
      ipv4: `10.250.${subnet}.1`,
      ipv6: `fd00:c0de:${subnet}::1`,
    };
    const client = {
      namespace: `${PREFIX}${process.pid}-client`,
      ipv4: `10.250.${subnet}.2`,
      ipv6: `fd00:c0de:${subnet}::2`,
    };
    const pair = new NamespacePair(pod, client);
    try {
      for (const side of [pod, client]) {
        await run("ip", ["netns", "add", side.namespace]);
        await run("ip", ["-n", side.namespace, "link", "set", "lo", "up"]);
      }
      // Interface names are at most 15 characters.
      const podLink = `cc${process.pid}p`;
      const clientLink = `cc${process.pid}c`;
      await run("ip", [
        "-n",
        pod.namespace,
        "link",
        "add",
        podLink,
        "type",
        "veth",
        "peer",
        "name",
        clientLink,
        "netns",
        client.namespace,
      ]);
      for (const [side, link] of [
        [pod, podLink],
        [client, clientLink],
      ] as const) {
        await run("ip", ["-n", side.namespace, "address", "add", `${side.ipv4}/30`, "dev", link]);
        if (await pair.hasIpv6(side)) {
          await run("ip", ["-n", side.namespace, "address", "add", `${side.ipv6}/64`, "dev", link, "nodad"]);
        }
        await run("ip", ["-n", side.namespace, "link", "set", link, "up"]);
      }
    } catch (error) {
      await pair.remove();
      throw error;
    }
    return pair;
  }

  /** Whether the kernel gives this namespace IPv6 (what the init container's script checks too). */
  async hasIpv6(side: Side): Promise<boolean> {
    const { stdout } = await run("ip", [
      "netns",
      "exec",
      side.namespace,
      "sh",
      "-c",
      "[ -e /proc/net/if_inet6 ] && echo yes || echo no",
    ]);
    return stdout.trim() === "yes";
  }

  /** `command` inside the namespace, to completion. */
  exec(
    side: Side,
    command: readonly string[],
    env?: NodeJS.ProcessEnv,
  ): Promise<{ stdout: string; stderr: string }> {
    return run("ip", ["netns", "exec", side.namespace, ...command], env);
  }

  /** Deletes both namespaces (and with them the veth pair); never fails. */
  async remove(): Promise<void> {
    for (const side of [this.pod, this.client]) {
      await run("ip", ["netns", "del", side.namespace]).catch(() => undefined);
    }
  }
}
