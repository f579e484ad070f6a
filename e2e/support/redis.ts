/** A throwaway redis-server for tests that drive the real one (replay guard, replicas). */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { connect as tcpConnect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { freePort } from "./net.js";
import { realClockEnv } from "./tools.js";

export { freePort };

export const HOST = "127.0.0.1";

/** True once something on `host:port` answers PING with PONG. */
async function answersPing(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host, port });
    let reply = "";
    socket.setTimeout(200, () => socket.destroy());
    socket.on("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      reply += chunk.toString("utf8");
      if (reply.includes("\r\n")) socket.end();
    });
    socket.on("close", () => resolve(reply.startsWith("+PONG")));
    socket.on("error", () => socket.destroy());
  });
}

/**
 * A throwaway redis-server on one address (127.0.0.1 unless told: the test node's pods reach the
 * node at its bridge address), keeping nothing on disk.
 */
export class RedisProcess {
  #child: ChildProcess | undefined;
  constructor(
    readonly port: number,
    readonly host: string = HOST,
  ) {}

  get url(): string {
    return `redis://${this.host}:${this.port}`;
  }

  async start(): Promise<void> {
    const child = spawn(
      "redis-server",
      [
        "--bind",
        this.host,
        "--port",
        String(this.port),
        "--save",
        "",
        "--appendonly",
        "no",
        // Redis's protected mode admits only loopback clients while it has no password: on another
        // address (the test node's bridge, for its Pods) it has to be off.
        "--protected-mode",
        this.host === HOST ? "yes" : "no",
      ],
      { stdio: "ignore", env: realClockEnv() },
    );
    this.#child = child;
    // Never outlive the test process, even when it dies before afterAll.
    process.once("exit", () => child.kill("SIGKILL"));
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}`);
      if (await answersPing(this.host, this.port)) return;
      await sleep(20);
    }
    throw new Error(`redis-server did not answer PING on ${this.host}:${this.port}`);
  }

  async stop(): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, "exit");
    child.kill("SIGKILL");
    await exited;
  }

  /** Freezes the server: connections stay open, nothing is answered (an overloaded Redis). */
  pause(): void {
    this.#child?.kill("SIGSTOP");
  }

  resume(): void {
    this.#child?.kill("SIGCONT");
  }
}

export async function startRedis(host: string = HOST): Promise<RedisProcess> {
  // A free port can be taken between the check and the start: try a few.
  for (let attempt = 1; ; attempt++) {
    const redis = new RedisProcess(await freePort(), host);
    try {
      await redis.start();
      return redis;
    } catch (error) {
      await redis.stop();
      if (attempt === 3) throw error;
    }
  }
}
