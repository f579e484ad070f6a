/**
 * A throwaway Prometheus server (the Debian `prometheus` package) for tests: a scrape config of
 * static targets written into a temporary directory, checked by `promtool check config`, the server
 * started on a free loopback port with its TSDB in that directory, and its HTTP API read as JSON.
 * Nothing leaves the machine: the config names loopback targets only and no remote storage.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { freePort } from "./net.js";

/** One scrape target: `host:port` and the labels Prometheus attaches to everything scraped from it. */
export interface ScrapeTarget {
  readonly address: string;
  readonly labels?: Readonly<Record<string, string>>;
}

export interface ScrapeJob {
  readonly name: string;
  readonly targets: readonly ScrapeTarget[];
  /** Default /metrics. */
  readonly metricsPath?: string;
}

/** The prometheus.yml for these jobs: every target scraped each second, over plain HTTP. */
export function scrapeConfig(jobs: readonly ScrapeJob[]): string {
  return stringify({
    global: { scrape_interval: "1s", scrape_timeout: "1s", evaluation_interval: "1s" },
    scrape_configs: jobs.map((job) => ({
      job_name: job.name,
      metrics_path: job.metricsPath ?? "/metrics",
      scheme: "http",
      // One static config per target, so that each carries labels of its own.
      static_configs: job.targets.map((target) => ({
        targets: [target.address],
        ...(target.labels === undefined ? {} : { labels: { ...target.labels } }),
      })),
    })),
  });
}

export interface PrometheusServer {
  /** http://127.0.0.1:<port> */
  readonly url: string;
  /** The temporary directory holding prometheus.yml and the TSDB (removed by `stop`). */
  readonly directory: string;
  /** GET `/api/v1/<path>`; the `data` of a `success` answer, or throws with Prometheus's error. */
  api<T>(path: string, parameters?: Readonly<Record<string, string>>): Promise<T>;
  /** An instant query. */
  query(promql: string): Promise<readonly Sample[]>;
  /** SIGTERM, waits for the exit (SIGKILL after 10 s), removes the directory. Idempotent. */
  stop(): Promise<void>;
}

/** One element of an instant vector: its labels (`__name__` included) and its value. */
export interface Sample {
  readonly metric: Readonly<Record<string, string>>;
  readonly value: number;
}

/** An element of `/api/v1/targets`' `activeTargets`. */
export interface ActiveTarget {
  readonly labels: Readonly<Record<string, string>>;
  readonly scrapePool: string;
  readonly scrapeUrl: string;
  readonly health: "up" | "down" | "unknown";
  readonly lastError: string;
}

/** Prometheus servers started and not yet stopped: killed should the test worker exit without `stop`. */
const children = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 10_000;
const STDERR_KEPT = 16 * 1024;

/** A whole prometheus.yml, and files it names by relative path (rule files, credentials). */
export interface PrometheusSetup {
  readonly config: string;
  readonly files?: Readonly<Record<string, string>>;
  /** Default: `prometheus` and `promtool` on PATH (Debian's, which has no Kubernetes discovery). */
  readonly binaries?: { readonly prometheus: string; readonly promtool: string };
}

/**
 * Writes the config (static jobs, or a whole prometheus.yml and its files), checks it with
 * `promtool check config` (rule files included), starts `prometheus` and resolves once `/-/ready`
 * answers 200; rejects (with its stderr) if it exits first or is not ready in time.
 */
export async function startPrometheus(
  setup: readonly ScrapeJob[] | PrometheusSetup,
): Promise<PrometheusServer> {
  const directory = await mkdtemp(join(tmpdir(), "custody-prometheus-"));
  const configPath = join(directory, "prometheus.yml");
  const { config, files, binaries } =
    "config" in setup ? setup : { config: scrapeConfig(setup), files: {}, binaries: undefined };
  const { prometheus, promtool } = binaries ?? { prometheus: "prometheus", promtool: "promtool" };
  await writeFile(configPath, config);
  for (const [name, content] of Object.entries(files ?? {})) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) throw new Error(`${name}: a plain file name, please`);
    await writeFile(join(directory, name), content, { mode: 0o600 });
  }
  try {
    execFileSync(promtool, ["check", "config", configPath], { stdio: "pipe" });
  } catch (error) {
    await rm(directory, { recursive: true, force: true });
    const failed = error as { stdout?: Buffer; stderr?: Buffer; message: string };
    throw new Error(
      `promtool check config refused the scrape config: ${failed.stdout?.toString() ?? ""}${failed.stderr?.toString() ?? failed.message}`,
    );
  }
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = spawn(
    prometheus,
    [
      `--config.file=${configPath}`,
      `--storage.tsdb.path=${join(directory, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ],
    { cwd: directory, stdio: ["ignore", "ignore", "pipe"] },
  );
  children.add(child);
  let stderr = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (chunk: string) => {
    stderr = (stderr + chunk).slice(-STDERR_KEPT);
  });
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      children.delete(child);
      resolve();
    });
  });
  let stopped = false;
  const stop = async () => {
    if (!stopped) {
      stopped = true;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const killer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
        await exited;
        clearTimeout(killer);
      }
    }
    await rm(directory, { recursive: true, force: true });
  };

  try {
    await waitUntilReady(url, child, () => stderr);
  } catch (error) {
    await stop();
    throw error;
  }

  const api = async <T>(path: string, parameters: Readonly<Record<string, string>> = {}): Promise<T> => {
    const target = new URL(`/api/v1/${path}`, url);
    for (const [name, value] of Object.entries(parameters)) target.searchParams.set(name, value);
    const response = await fetch(target, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
    const answer = (await response.json()) as {
      status: string;
      data?: T;
      errorType?: string;
      error?: string;
    };
    if (answer.status !== "success" || answer.data === undefined) {
      throw new Error(
        `Prometheus ${target.pathname}: ${answer.errorType ?? response.status} ${answer.error ?? ""}`,
      );
    }
    return answer.data;
  };
  return {
    url,
    directory,
    api,
    async query(promql) {
      const data = await api<{
        resultType: string;
        result: { metric: Record<string, string>; value: [number, string] }[];
      }>("query", { query: promql });
      if (data.resultType !== "vector")
        throw new Error(`${promql}: a ${data.resultType}, not an instant vector`);
      return data.result.map((element) => ({ metric: element.metric, value: Number(element.value[1]) }));
    },
    stop,
  };
}

async function waitUntilReady(url: string, child: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `prometheus exited (${child.exitCode ?? child.signalCode}) before it was ready; stderr:\n${stderr()}`,
      );
    }
    try {
      const response = await fetch(`${url}/-/ready`, { signal: AbortSignal.timeout(2_000) });
      await response.arrayBuffer();
      if (response.status === 200) return;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      throw new Error(
        `prometheus was not ready at ${url}/-/ready within ${READY_TIMEOUT_MS / 1000} s; stderr:\n${stderr()}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
