/**
 * `npm run bench:sidecar`: what a pair of sidecars (the caller's outbound, the callee's inbound) adds
 * to a call, against the same call straight to the app, in one run and one process tree: latency at a
 * constant 1,000 requests per second (open loop), the highest rate the pair sustains (closed loop),
 * and the sidecars' resident memory, for chains of depth 1 and 5. Definitions and how to read the
 * output: bench/README.md.
 *
 * Progress goes to stderr; the markdown table to stdout; the numbers to bench/out/sidecar.json.
 * Targets are reported as PASS or MISS and never fail the run; it exits non-zero only if the set-up
 * fails or requests fail (a non-200 answer, an answer that is not the app's, a child process exiting).
 */
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { Pool } from "undici";
import { freePort } from "../e2e/support/net.js";
import { type Mode, measureLoad } from "./load.js";
import { outFile, writeResult } from "./output.js";
import {
  abortOnSignals,
  type Child,
  failureExitCode,
  machineCpuClock,
  processMemory,
  REPO,
  startChild,
  waitUntilReady,
  wasInterrupted,
} from "./proc.js";
import { AnswerError, call, callExpectingRefusal, type Expected, keepAlivePool } from "./sidecar-client.js";
import { measureCryptoFloor } from "./sidecar-floor.js";
import { CALLEE, CALLER, type MeshFiles, mintPrefix, writeMesh } from "./sidecar-mesh.js";
import { measureOpenLoop, type OpenLoopMode } from "./sidecar-open-loop.js";
import {
  type CliRuntime,
  CpuAccount,
  type CpuReading,
  compileCli,
  type Processes,
  RssSamples,
  readCpu,
  tsxRuntime,
} from "./sidecar-processes.js";
import {
  baselineSummary,
  type ModeAccounts,
  type Report,
  render,
  round1,
  round3,
  type SidecarDepthResult,
  targetRows,
} from "./sidecar-report.js";

const RATE_PER_SECOND = 1_000;
const DEPTHS = [1, 5] as const;
/** Open loop: per mode a 2 s warm-up, then 8 rounds × 3 modes × (0.25 s lead-in + 3 s) ≈ 84 s. */
const OPEN_LOOP = { warmupMs: 2_000, leadInMs: 250, roundMs: 3_000, rounds: 8, drainLimitMs: 10_000 };
/** Closed loop: per mode a 1.5 s warm-up, then 8 rounds × 3 modes × 1 s ≈ 29 s. */
const CLOSED_LOOP = { concurrency: 32, warmupMs: 1_500, batchMs: 1_000, rounds: 8 };
/** The depth-5 prefix is minted again this often: its links live 10 s (the library's default). */
const PREFIX_REFRESH_MS = 2_000;
/** Past this many failed requests the run stops early: something is broken, not slow. */
const MAX_FAILURES = 100;
/**
 * Failed requests (any answer but the app's 200 "ok", a connection error) tolerated, as a share of all
 * requests: beyond it the run fails and sidecar.json is not written. Below it they are reported.
 */
const MAX_FAILURE_SHARE = 0.0001;
const DEFAULT_LOG_LEVEL = "warn";
const HOST = "127.0.0.1";
const OUT_FILE = outFile("sidecar");
const APP_ENTRY = join(REPO, "bench/sidecar-app.ts");

function progress(message: string): void {
  process.stderr.write(`${message}\n`);
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = "code" in error && typeof error.code === "string" ? ` (${error.code})` : "";
  return `${error.message}${code}`;
}

/** A mode: where its requests go, what the app must say it received, and its accounts. */
interface ModeSpec extends ModeAccounts {
  /** The processes whose CPU this mode's requests cost (direct: the sidecars, idle). */
  readonly processes: Processes;
  readonly pool: Pool;
  readonly headers: () => Record<string, string>;
  readonly expected: Expected;
}

function sidecarArgs(
  runtime: CliRuntime,
  nodeFlags: readonly string[],
  settings: Record<string, string | number>,
): string[] {
  return [
    ...nodeFlags,
    ...runtime.nodeArgs,
    "sidecar",
    ...Object.entries(settings).flatMap(([key, value]) => [`--${key}`, String(value)]),
  ];
}

/** The sidecars' own counts, from /metrics: what they allowed, refused and sent. */
async function sidecarCounts(adminUrl: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const counts: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const match = /^custody_sidecar_requests_total\{([^}]*)\} (\d+)$/.exec(line);
    if (match === null) continue;
    const labels = Object.fromEntries(
      [...(match[1] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((label) => [label[1], label[2]]),
    );
    const key = `${labels.direction}/${labels.decision}/${labels.reason}`;
    counts[key] = (counts[key] ?? 0) + Number(match[2]);
  }
  return counts;
}

function sum(counts: Record<string, number>, prefix: string): number {
  return Object.entries(counts)
    .filter(([key]) => key.startsWith(prefix))
    .reduce((total, [, value]) => total + value, 0);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      "log-level": { type: "string", default: DEFAULT_LOG_LEVEL },
      tsx: { type: "boolean", default: false },
      "cpu-prof": { type: "boolean", default: false },
      "sidecar-node-options": { type: "string", default: "" },
    },
  });
  const logLevel = values["log-level"];
  // Extra node flags for both sidecars (e.g. "--max-semi-space-size=1"), to try a setting out; they
  // are printed with the results and recorded in sidecar.json.
  const sidecarNodeOptions = values["sidecar-node-options"].split(/\s+/).filter((flag) => flag !== "");
  const started = process.hrtime.bigint();
  const cpu = cpus();
  const cpuDescription = `${cpu.length} × ${cpu[0]?.model ?? "unknown CPU"}`;
  progress(`bench:sidecar: node ${process.version}, OpenSSL ${process.versions.openssl}, ${cpuDescription}`);
  // --cpu-prof: both sidecars run under V8's sampling profiler, which slows them, so the numbers of
  // such a run are not recorded; the profiles are left in a temp directory.
  const profileDirectory = values["cpu-prof"]
    ? mkdtempSync(join(tmpdir(), "custody-bench-sidecar-profile-"))
    : undefined;
  const nodeFlags = [
    ...sidecarNodeOptions,
    ...(profileDirectory === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${profileDirectory}`]),
  ];

  const abort = new AbortController();
  const stopListening = abortOnSignals(abort);

  const directory = mkdtempSync(join(tmpdir(), "custody-bench-sidecar-"));
  const children: Child[] = [];
  const pools: Pool[] = [];
  let prefixTimer: NodeJS.Timeout | undefined;
  // Last resort if the benchmark dies without stopping its children (an uncaught error, process.exit).
  const onExit = () => {
    for (const child of children) {
      try {
        process.kill(child.pid, "SIGKILL");
      } catch {}
    }
    rmSync(directory, { recursive: true, force: true });
  };
  process.once("exit", onExit);
  let failures = 0;
  let requests = 0;
  const failureMessages = new Map<string, number>();
  const onFailure = (mode: string, error: unknown) => {
    failures++;
    const message = `${mode}: ${error instanceof AnswerError ? error.message : describe(error)}`;
    failureMessages.set(message, (failureMessages.get(message) ?? 0) + 1);
    if (failures === 1) progress(`FAILED ${message}`);
    if (failures >= MAX_FAILURES) abort.abort(new Error(`${failures} requests failed`));
  };
  try {
    const ports = await Promise.all(Array.from({ length: 9 }, freePort));
    const [
      appPort,
      outboundPort,
      callerInbound,
      callerAdmin,
      calleeOutbound,
      calleeInbound,
      calleeAdmin,
      plainOutboundPort,
      plainInboundPort,
    ] = ports as [number, number, number, number, number, number, number, number, number];

    progress(
      values.tsx
        ? "sidecars run from source (tsx)"
        : "compiling the CLI (tsconfig.build.json) into a temp directory ...",
    );
    const [runtime, mesh] = await Promise.all([
      values.tsx ? Promise.resolve(tsxRuntime()) : compileCli(join(directory, "build")),
      writeMesh(join(directory, "mesh"), {
        caller: `${HOST}:${callerInbound}`,
        callee: `${HOST}:${calleeInbound}`,
      }),
    ]);
    abort.signal.throwIfAborted();

    const app = startChild(
      "app",
      ["--import", "tsx", APP_ENTRY, String(appPort)],
      join(directory, "app.log"),
    );
    children.push(app);
    const sidecar = (name: string, identity: string, ports: readonly [number, number, number]) =>
      startChild(
        name,
        sidecarArgs(runtime, nodeFlags, {
          identity,
          registry: mesh.registryPath,
          "app-port": appPort,
          outbound: `${HOST}:${ports[0]}`,
          inbound: `${HOST}:${ports[1]}`,
          admin: `${HOST}:${ports[2]}`,
          "when-no-policy": "allow",
          "log-level": logLevel,
        }),
        join(directory, `${name}.log`),
      );
    const caller = sidecar(`${CALLER} sidecar`, mesh.callerIdentity, [
      outboundPort,
      callerInbound,
      callerAdmin,
    ]);
    children.push(caller);
    const callee = sidecar(`${CALLEE} sidecar`, mesh.calleeIdentity, [
      calleeOutbound,
      calleeInbound,
      calleeAdmin,
    ]);
    children.push(callee);
    // The baseline pair: the sidecars' I/O path with nothing else (bench/plain-proxy.ts).
    const plain = (role: "outbound" | "inbound", port: number, identity: string, upstream: string) =>
      startChild(
        `plain ${role}`,
        [...runtime.scriptArgs("bench/plain-proxy.ts"), role, String(port), identity, upstream],
        join(directory, `plain-${role}.log`),
      );
    const plainInbound = plain("inbound", plainInboundPort, mesh.calleeIdentity, String(appPort));
    children.push(plainInbound);
    const plainOutbound = plain(
      "outbound",
      plainOutboundPort,
      mesh.callerIdentity,
      `${HOST}:${plainInboundPort}`,
    );
    children.push(plainOutbound);
    const processes: Processes = { app, caller, callee };
    const plainProcesses: Processes = { app, caller: plainOutbound, callee: plainInbound };
    for (const child of children) {
      void child.exited.then((reason) =>
        abort.abort(new Error(`${child.name} ${reason} during the run\n${child.tail()}`)),
      );
    }
    await Promise.all([
      waitUntilReady(app, `http://${HOST}:${appPort}/`),
      waitUntilReady(caller, `http://${HOST}:${callerAdmin}/readyz`),
      waitUntilReady(callee, `http://${HOST}:${calleeAdmin}/readyz`),
      // Through both plain proxies to the app.
      waitUntilReady(plainOutbound, `http://${HOST}:${plainOutboundPort}/`),
    ]);
    progress(
      `ready: app pid ${app.pid}, ${caller.name} pid ${caller.pid} (outbound :${outboundPort}), ` +
        `${callee.name} pid ${callee.pid} (inbound :${calleeInbound}); sidecars ${runtime.name}, ` +
        `--log-level ${logLevel}; logs in ${directory}`,
    );
    const idleRss = {
      caller: processMemory(caller.pid).rssMb,
      callee: processMemory(callee.pid).rssMb,
    };
    progress(
      `sidecar RSS after start, before any request: ${idleRss.caller.toFixed(1)} MB (${CALLER}), ` +
        `${idleRss.callee.toFixed(1)} MB (${CALLEE})`,
    );

    progress("timing one ES256 link signature and one verification (the pair's cryptographic floor) ...");
    const [floorSigner] = mesh.prefixSigners;
    if (floorSigner === undefined) throw new Error("bench: no signer to time");
    const floor = await measureCryptoFloor(floorSigner);
    const result = await measure(mesh, processes, plainProcesses, {
      appPort,
      outboundPort,
      plainOutboundPort,
      signal: abort.signal,
      onFailure,
      countRequest: () => {
        requests++;
      },
      setPrefixTimer: (timer) => {
        prefixTimer = timer;
      },
      pools,
    });
    if (abort.signal.aborted) throw abort.signal.reason;

    // The sidecars' own counts must match what the client received: every mesh request the client
    // counted was allowed by the inbound sidecar, and the self-check's forged chain was refused.
    // (When requests failed, where each failed is unknown, so the counts cannot be held to this.)
    const callerCounts = await sidecarCounts(`http://${HOST}:${callerAdmin}`);
    const calleeCounts = await sidecarCounts(`http://${HOST}:${calleeAdmin}`);
    const allowed = sum(calleeCounts, "inbound/allow/");
    const denied = sum(calleeCounts, "inbound/deny/");
    const sent = sum(callerCounts, "outbound/allow/");
    const problems: string[] = [];
    if (
      failures === 0 &&
      (allowed !== result.meshAnswers || denied !== 1 || sent !== result.meshAnswers + 1)
    ) {
      problems.push(
        `sidecar metrics: inbound allowed ${allowed} and denied ${denied}, outbound sent ${sent}; ` +
          `the client received ${result.meshAnswers} mesh answers and 1 refusal`,
      );
    }
    const peakRss = {
      caller: processMemory(caller.pid).peakRssMb,
      callee: processMemory(callee.pid).peakRssMb,
      app: processMemory(app.pid).peakRssMb,
    };
    const report: Report = {
      entries: result.entries,
      open: result.open,
      closed: result.closed,
      specs: result.specs,
      baseline: {
        plainOpen: result.plain.open,
        plainClosed: result.plain.closed,
        plainRssMb: result.plain.rssMb,
        floor,
      },
      peakRss,
      idleRss,
      runtime:
        (runtime.name === "compiled" ? "compiled with tsc (as dist/)" : "from source with tsx") +
        (sidecarNodeOptions.length > 0 ? ` with node ${sidecarNodeOptions.join(" ")}` : ""),
      logLevel,
      requests,
      failures,
      settings: { ratePerSecond: RATE_PER_SECOND, openLoop: OPEN_LOOP, closedLoop: CLOSED_LOOP },
    };
    const text = render(report);
    if (failures > MAX_FAILURE_SHARE * requests || problems.length > 0) {
      process.stdout.write(`${text}\n`);
      for (const problem of problems) progress(`FAILED ${problem}`);
      throw new Error(
        `${failures} of ${requests} requests failed${problems.length > 0 ? ", and the counts disagree" : ""}: ` +
          `the numbers above are not valid; ${OUT_FILE} not written`,
      );
    }
    if (failures > 0) {
      for (const [message, count] of failureMessages) progress(`FAILED ×${count} ${message}`);
      progress(
        `WARNING: ${failures} of ${requests} requests failed (tolerated up to ${MAX_FAILURE_SHARE * 100} %)`,
      );
    }
    const rows = targetRows(report);
    const directMaxRps = result.closed[0]?.perSecond ?? Number.NaN;
    const [directOpen] = result.open;
    const output = {
      ...Object.fromEntries(result.entries.map((entry) => [`depth${entry.depth}`, entry])),
      targets: rows,
      baseline: baselineSummary(report),
      environment: {
        node: process.version,
        openssl: process.versions.openssl,
        cpus: cpuDescription,
        sidecars: runtime.name,
        sidecarNodeOptions: sidecarNodeOptions.join(" "),
        logLevel,
        method: "GET /cart/items, no body",
        openLoop: { ratePerSecond: RATE_PER_SECOND, ...OPEN_LOOP },
        closedLoop: CLOSED_LOOP,
        directMaxRps: Math.round(directMaxRps),
        generatorLagP50Ms: round3(directOpen?.lagP50Ms ?? Number.NaN),
        generatorLagP99Ms: round3(directOpen?.lagP99Ms ?? Number.NaN),
        idleRssMb: {
          [`${CALLER} (outbound)`]: round1(idleRss.caller),
          [`${CALLEE} (inbound)`]: round1(idleRss.callee),
        },
        peakRssMb: {
          [`${CALLER} (outbound)`]: round1(peakRss.caller),
          [`${CALLEE} (inbound)`]: round1(peakRss.callee),
          app: round1(peakRss.app),
        },
        cpuUsPerRequest: Object.fromEntries(
          result.specs.map((spec) => [
            spec.name,
            {
              at1000rps: roundAll(spec.openCpu.perRequestUs()),
              atMaxRps: roundAll(spec.closedCpu.perRequestUs()),
            },
          ]),
        ),
        /** Share of one core the machine's other processes took during each mode's rounds: the noise. */
        otherCpuShare: Object.fromEntries(
          result.specs.map((spec) => [
            spec.name,
            { at1000rps: round3(spec.openCpu.otherShare()), atMaxRps: round3(spec.closedCpu.otherShare()) },
          ]),
        ),
        requests,
        failures,
      },
    };
    writeResult("sidecar", output, {
      profiled: profileDirectory !== undefined,
      startedNs: started,
      progress,
    });
    process.stdout.write(`${text}\n`);
  } catch (error) {
    if (!wasInterrupted()) for (const child of children) progress(child.tail(8));
    for (const [message, count] of failureMessages) progress(`FAILED ×${count} ${message}`);
    throw abort.signal.aborted ? abort.signal.reason : error;
  } finally {
    if (prefixTimer !== undefined) clearInterval(prefixTimer);
    await Promise.all(pools.map((pool) => pool.close().catch(() => undefined)));
    await Promise.all(children.map((child) => child.stop()));
    rmSync(directory, { recursive: true, force: true });
    process.off("exit", onExit);
    if (profileDirectory !== undefined) {
      progress(
        `sidecar CPU profiles (one per process, in start order): ${readdirSync(profileDirectory)
          .map((name) => join(profileDirectory, name))
          .join(", ")}`,
      );
    }
    stopListening();
  }
}

function roundAll(reading: CpuReading): Record<string, number> {
  return {
    app: Math.round(reading.app),
    outboundSidecar: Math.round(reading.caller),
    inboundSidecar: Math.round(reading.callee),
    client: Math.round(reading.client),
  };
}

interface MeasureContext {
  readonly appPort: number;
  readonly outboundPort: number;
  readonly plainOutboundPort: number;
  readonly signal: AbortSignal;
  readonly onFailure: (mode: string, error: unknown) => void;
  readonly countRequest: () => void;
  readonly setPrefixTimer: (timer: NodeJS.Timeout) => void;
  readonly pools: Pool[];
}

/** Self-check, then the open-loop latency rounds, then the closed-loop rounds. */
async function measure(
  mesh: MeshFiles,
  processes: Processes,
  plainProcesses: Processes,
  context: MeasureContext,
) {
  const nowSeconds = () => Math.floor(Date.now() / 1000);
  // Depth d: the app propagates d − 1 links (the last of the prefix signers, the head addressed to
  // the caller), and the caller's sidecar appends the d-th.
  const deepest = Math.max(...DEPTHS);
  if (deepest - 1 > mesh.prefixSigners.length) throw new Error(`bench: no signers for depth ${deepest}`);
  const prefixes = new Map<number, string>();
  const mintPrefixes = () => {
    for (const depth of DEPTHS) {
      if (depth > 1) prefixes.set(depth, mintPrefix(mesh.prefixSigners.slice(1 - depth), nowSeconds()));
    }
  };
  mintPrefixes();
  context.setPrefixTimer(setInterval(mintPrefixes, PREFIX_REFRESH_MS));
  const pool = (origin: string) => {
    const created = keepAlivePool(origin);
    context.pools.push(created);
    return created;
  };
  const account = () => ({
    openCpu: new CpuAccount(),
    closedCpu: new CpuAccount(),
    openRss: new RssSamples(),
    closedRss: new RssSamples(),
  });
  const specs: ModeSpec[] = [
    {
      name: "direct",
      depth: 0,
      proxied: false,
      processes,
      pool: pool(`http://${HOST}:${context.appPort}`),
      headers: () => ({}),
      expected: { depth: 0, caller: "-" },
      ...account(),
    },
    ...DEPTHS.map((depth) => ({
      name: `mesh-d${depth}`,
      depth,
      proxied: true,
      processes,
      pool: pool(`http://${HOST}:${context.outboundPort}`),
      headers: (): Record<string, string> => {
        const prefix = prefixes.get(depth);
        return prefix === undefined ? { host: CALLEE } : { host: CALLEE, "custody-chain": prefix };
      },
      expected: { depth, caller: CALLER },
      ...account(),
    })),
    {
      name: "plain pair",
      depth: 0,
      proxied: true,
      processes: plainProcesses,
      pool: pool(`http://${HOST}:${context.plainOutboundPort}`),
      headers: () => ({ host: CALLEE }),
      expected: { depth: 0, caller: "-" },
      ...account(),
    },
  ];
  let meshAnswers = 0;
  const send = (spec: ModeSpec) => async () => {
    context.countRequest();
    await call(spec.pool, spec.headers(), spec.expected);
    if (spec.depth > 0) meshAnswers++;
  };

  // Self-check: one request per mode, and a chain with a forged first link must be refused.
  for (const spec of specs) await send(spec)();
  const meshPool = specs.find((spec) => spec.depth === deepest)?.pool;
  if (meshPool === undefined) throw new Error("bench: no mesh mode");
  const forged = await callExpectingRefusal(meshPool, {
    host: CALLEE,
    "custody-chain": mintPrefix(mesh.prefixSigners, nowSeconds(), { corrupt: true }),
  });
  if (forged.status !== 401 || !forged.body.includes('"reason":"bad_signature"')) {
    throw new Error(
      `self-check: a chain with a forged first link was answered ${forged.status} ${forged.body.slice(0, 200)}, ` +
        "not refused with bad_signature",
    );
  }
  progress(
    `self-check passed: direct and depth ${DEPTHS.join(", ")} reach the app with the expected chain and ` +
      "caller; a chain with a forged link is refused (401 bad_signature)",
  );

  progress(
    `open loop: ${RATE_PER_SECOND}/s, ${OPEN_LOOP.rounds} rounds × ${specs.length} modes × ` +
      `${(OPEN_LOOP.leadInMs + OPEN_LOOP.roundMs) / 1000} s ...`,
  );
  const openModes: OpenLoopMode[] = specs.map((spec) => ({
    name: spec.name,
    send: send(spec),
    beforeRound: () => spec.openCpu.begin(spec.processes),
    afterRound: ({ sent, timed }) => {
      spec.openCpu.end(spec.processes, sent, timed);
      if (spec.proxied) spec.openRss.sample(spec.processes);
    },
  }));
  const open = await measureOpenLoop(openModes, {
    ratePerSecond: RATE_PER_SECOND,
    ...OPEN_LOOP,
    signal: context.signal,
    onFailure: context.onFailure,
    progress,
  });
  context.signal.throwIfAborted();

  progress(
    `closed loop: ${CLOSED_LOOP.concurrency} in flight, ${CLOSED_LOOP.rounds} rounds × ${specs.length} modes × ` +
      `${CLOSED_LOOP.batchMs / 1000} s ...`,
  );
  const closedModes: Mode[] = specs.map((spec) => {
    let operations = 0;
    let batches = 0;
    return {
      name: spec.name,
      prepare: async () => {
        operations = 0;
        spec.closedCpu.begin(spec.processes);
        const operation = send(spec);
        return async () => {
          operations++;
          await operation();
        };
      },
      finish: async () => {
        // The first batch of every mode is its warm-up.
        spec.closedCpu.end(spec.processes, operations, batches++ > 0);
        if (spec.proxied) spec.closedRss.sample(spec.processes);
      },
    };
  });
  const closed = await measureLoad(closedModes, {
    ...CLOSED_LOOP,
    serverCpu: () => {
      const reading = readCpu(processes);
      const plain = readCpu(plainProcesses);
      return reading.app + reading.caller + reading.callee + plain.caller + plain.callee;
    },
    machineCpu: machineCpuClock(),
    signal: context.signal,
    onFailure: context.onFailure,
    progress,
  });
  context.signal.throwIfAborted();

  const [directOpen] = open;
  if (directOpen === undefined) throw new Error("bench: no direct result");
  const entries: SidecarDepthResult[] = DEPTHS.map((depth, index) => {
    const meshOpen = open[index + 1];
    const meshClosed = closed[index + 1];
    const spec = specs[index + 1];
    if (meshOpen === undefined || meshClosed === undefined || spec === undefined)
      throw new Error(`bench: no result at depth ${depth}`);
    return {
      rps: RATE_PER_SECOND,
      depth,
      directP50Ms: round3(directOpen.p50Ms),
      directP99Ms: round3(directOpen.p99Ms),
      meshP50Ms: round3(meshOpen.p50Ms),
      meshP99Ms: round3(meshOpen.p99Ms),
      addedP50Ms: round3(meshOpen.p50Ms - directOpen.p50Ms),
      addedP99Ms: round3(meshOpen.p99Ms - directOpen.p99Ms),
      maxRps: Math.round(meshClosed.perSecond),
      sidecarRssMb: round1(Math.max(spec.openRss.larger, spec.closedRss.larger)),
    };
  });
  const plainOpen = open.at(-1);
  const plainClosed = closed.at(-1);
  const plainSpec = specs.at(-1);
  if (plainOpen === undefined || plainClosed === undefined || plainSpec === undefined)
    throw new Error("bench: no plain-pair result");
  const plain = {
    open: plainOpen,
    closed: plainClosed,
    rssMb: round1(Math.max(plainSpec.openRss.larger, plainSpec.closedRss.larger)),
  };
  return { entries, open, closed, specs, meshAnswers, plain };
}

try {
  await main();
} catch (error) {
  progress(`bench:sidecar: ${describe(error)}`);
  process.exitCode = failureExitCode();
}
