/** A throwaway redis-server for tests that drive the real one (replay guard, replicas). */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { connect as tcpConnect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { freePort } from "./net.js";
import { realClockEnv } from "./tools.js";

export { freePort };

export const HOST = "127.0.0.1";

/** True once something on `port` answers PING with PONG. */
async function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host: HOST, port });
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

/** A throwaway redis-server on 127.0.0.1 only, keeping nothing on disk. */
export class RedisProcess {
  #child: ChildProcess | undefined;
  constructor(readonly port: number) {}

  get url(): string {
    return `redis://${HOST}:${this.port}`;
  }

  async start(): Promise<void> {
    const child = spawn(
      "redis-server",
      [
        "--bind",
        HOST,
        "--port",
        String(this.port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
      ],
      { stdio: "ignore", env: realClockEnv() },
    );
    this.#child = child;
    // Never outlive the test process, even when it dies before afterAll.
    process.once("exit", () => child.kill("SIGKILL"));
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}`);
      if (await answersPing(this.port)) return;
      await sleep(20);
    }
    throw new Error(`redis-server did not answer PING on ${HOST}:${this.port}`);
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

export async function startRedis(): Promise<RedisProcess> {
  // A free port can be taken between the check and the start: try a few.
  for (let attempt = 1; ; attempt++) {
    const redis = new RedisProcess(await freePort());
    try {
      await redis.start();
      return redis;
    } catch (error) {
      await redis.stop();
      if (attempt === 3) throw error;
    }
  }
}
