/**
 * `npm run bench:issuer`: throughput of the token service (`custody issuer`, run from source as a
 * child process) against the cost of the mTLS handshake alone, at the same concurrency, in one run:
 * bare TLS handshakes with the client certificate, token requests each on a new connection, and
 * token requests over kept-alive connections. Definitions and how to read the output: bench/README.md.
 *
 * Progress goes to stderr; the markdown table to stdout; the numbers to bench/out/issuer.json.
 * Nothing is asserted on speed. It exits non-zero only if something breaks: a request that does not
 * answer 200 with a token, a resumed session, the issuer's metrics disagreeing with what we received.
 */
import { mkdtempSync, readdirSync } from "node:fs";
import type { Agent } from "node:https";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  bareHandshake,
  freshConnectionAgent,
  freshConnectionToken,
  keepAliveAgent,
  negotiated,
  requestToken,
  type TokenAnswer,
} from "./issuer-client.js";
import {
  CLIENT_CLAIMS,
  CLIENT_ID,
  CLIENT_SCOPES,
  type IssuerProcess,
  startIssuerProcess,
  type Target,
} from "./issuer-server.js";
import { type LoadOptions, type Mode, type ModeResult, measureLoad } from "./load.js";
import { markdownTable, outFile, writeResult } from "./output.js";
import { abortOnSignals, failureExitCode, machineCpuClock, wasInterrupted } from "./proc.js";

/** bench/out/issuer.json. */
export interface IssuerBenchResult {
  readonly concurrency: number;
  readonly rounds: number;
  readonly bareHandshakesPerSecond: number;
  readonly freshConnectionTokensPerSecond: number;
  readonly keepAliveTokensPerSecond: number;
  readonly freshToHandshake: number;
  readonly keepAliveToHandshake: number;
  /** The issuer's --log-level: "info" (its default, one log line per token) unless --log-level was given. */
  readonly logLevel: string;
  readonly node: string;
  readonly cpus: string;
}

/** Operations in flight in every mode: each worker starts its next operation when the last one ends. */
const CONCURRENCY = 8;
/** Per mode 1.5 s warm-up, then 12 rounds × 3 modes × 1 s ≈ 41 s of load; ~45 s in all on 2 cores. */
const WARMUP_MS = 1_500;
const BATCH_MS = 1_000;
const ROUNDS = 12;
/** Past this many failed operations the run stops early: something is broken, not slow. */
const MAX_FAILURES = 50;
const DEFAULT_LOG_LEVEL = "info";
/** Median share of a core taken by other processes above which the report says the machine was busy. */
const OTHER_CPU_WARNING = 0.25;
const OUT_FILE = outFile("issuer");

function progress(message: string): void {
  process.stderr.write(`${message}\n`);
}

const round1 = (value: number) => Math.round(value * 10) / 10;
const round3 = (value: number) => Math.round(value * 1000) / 1000;

function must<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`bench: no ${what}`);
  return value;
}

function describe(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = "code" in error && typeof error.code === "string" ? ` (${error.code})` : "";
  return `${error.message}${code}`;
}

/** Counts every token received, so that the issuer's own count can be checked against it. */
class TokenCounter {
  received = 0;
  /** Keep-alive requests after priming (warm-up and timed batches) that opened a new connection: none expected. */
  newKeepAliveConnections = 0;

  count(answer: TokenAnswer): TokenAnswer {
    this.received++;
    return answer;
  }
}

function decodePayload(token: string): Record<string, unknown> {
  const payload = must(token.split(".")[1], "JWT payload");
  return JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as Record<string, unknown>;
}

/** One of each operation, checked in depth once before any timing. */
async function selfCheck(target: Target, counter: TokenCounter): Promise<string> {
  await bareHandshake(target);
  const fresh = freshConnectionAgent(target);
  const keepAlive = keepAliveAgent(target, 1);
  try {
    const answer = counter.count(await freshConnectionToken(target, fresh));
    const claims = decodePayload(answer.accessToken);
    const cnf = claims.cnf as Record<string, unknown> | undefined;
    if (
      claims.sub !== CLIENT_ID ||
      claims.scope !== CLIENT_SCOPES ||
      claims.team !== CLIENT_CLAIMS.team ||
      typeof cnf?.["x5t#S256"] !== "string"
    ) {
      throw new Error(`self-check: unexpected token claims ${JSON.stringify(claims)}`);
    }
    const first = counter.count(await requestToken(target, keepAlive));
    const second = counter.count(await requestToken(target, keepAlive));
    if (first.reusedSocket || !second.reusedSocket || first.socket !== second.socket)
      throw new Error("self-check: the keep-alive agent did not reuse its connection");
  } finally {
    fresh.destroy();
    keepAlive.destroy();
  }
  return negotiated(target);
}

function modes(target: Target, counter: TokenCounter): Mode[] {
  let fresh: Agent | undefined;
  let keepAlive: Agent | undefined;
  return [
    {
      name: "handshake",
      prepare: async () => () => bareHandshake(target),
    },
    {
      name: "fresh",
      prepare: async () => {
        const agent = freshConnectionAgent(target);
        fresh = agent;
        return async () => {
          counter.count(await freshConnectionToken(target, agent));
        };
      },
      finish: async () => fresh?.destroy(),
    },
    {
      name: "keep-alive",
      prepare: async () => {
        const agent = keepAliveAgent(target, CONCURRENCY);
        keepAlive = agent;
        // Untimed: open the CONCURRENCY connections (full handshakes) before the clock starts.
        const opened = await Promise.all(
          Array.from({ length: CONCURRENCY }, async () => counter.count(await requestToken(target, agent))),
        );
        if (new Set(opened.map((answer) => answer.socket)).size !== CONCURRENCY)
          throw new Error(
            `keep-alive: ${CONCURRENCY} concurrent requests did not open ${CONCURRENCY} connections`,
          );
        return async () => {
          const answer = counter.count(await requestToken(target, agent));
          if (!answer.reusedSocket) counter.newKeepAliveConnections++;
        };
      },
      finish: async () => keepAlive?.destroy(),
    },
  ];
}

/** The issuer's own count of issued and refused client_credentials requests, from /metrics. */
async function issuerCounts(target: Target): Promise<{ issued: number; refused: number }> {
  const response = await fetch(new URL("/metrics", target.adminUrl));
  const text = await response.text();
  let issued = 0;
  let refused = 0;
  for (const line of text.split("\n")) {
    const match = /^custody_issuer_tokens_issued_total\{([^}]*)\} (\d+)$/.exec(line);
    if (match === null) continue;
    if (match[1]?.includes('result="issued"')) issued += Number(match[2]);
    else refused += Number(match[2]);
  }
  return { issued, refused };
}

function report(
  result: IssuerBenchResult,
  modeResults: readonly ModeResult[],
  context: { tls: string; newKeepAliveConnections: number; tokens: number },
): string {
  const [handshake] = modeResults;
  const cpu = (value: number) => (Number.isFinite(value) ? value.toFixed(0) : "n/a");
  const share = (value: number) => (Number.isFinite(value) ? `${Math.round(value * 100)} %` : "n/a");
  const labels: Record<string, string> = {
    handshake: "bare mTLS handshakes",
    fresh: "tokens, new connection each",
    "keep-alive": "tokens, kept-alive connections",
  };
  const table = markdownTable(
    [
      "measurement",
      "per second",
      "× handshake",
      "server µs/op",
      "client µs/op",
      "server CPU",
      "client CPU",
      "other CPU",
    ],
    modeResults.map((mode) => [
      labels[mode.name] ?? mode.name,
      mode.perSecond.toFixed(0),
      `${(mode.perSecond / must(handshake, "handshake result").perSecond).toFixed(2)}×`,
      cpu(mode.serverCpuUsPerOp),
      cpu(mode.clientCpuUsPerOp),
      share(mode.serverCpuShare),
      share(mode.clientCpuShare),
      share(mode.otherCpuShare),
    ]),
  );
  const [handshakeCpu, freshCpu, keepAliveCpu] = modeResults.map((mode) => mode.serverCpuUsPerOp);
  const serverCost: string[] = [];
  if (
    handshakeCpu !== undefined &&
    freshCpu !== undefined &&
    keepAliveCpu !== undefined &&
    handshakeCpu > 0
  ) {
    const overhead = freshCpu - handshakeCpu - keepAliveCpu;
    serverCost.push(
      `Server CPU per operation: a token on a kept-alive connection costs ` +
        `${(keepAliveCpu / handshakeCpu).toFixed(2)}× a bare handshake; a token on a new connection ` +
        `${(freshCpu / handshakeCpu).toFixed(2)}× (handshake + keep-alive token ` +
        `${overhead >= 0 ? "+" : "−"} ${Math.abs(overhead).toFixed(0)} µs)`,
    );
  }
  const busiest = Math.max(...modeResults.map((mode) => mode.otherCpuShare));
  const noise =
    busiest > OTHER_CPU_WARNING
      ? [
          `WARNING: other processes took up to ${Math.round(busiest * 100)} % of a core during the batches: ` +
            "the rates are low and noisy; the µs/op columns are less affected",
        ]
      : [];
  return [
    table,
    "",
    `fresh/handshake: ${result.freshToHandshake.toFixed(3)}; ` +
      `keepAlive/handshake: ${result.keepAliveToHandshake.toFixed(3)}`,
    ...serverCost,
    `${result.concurrency} in flight, median of ${result.rounds} interleaved rounds of ${BATCH_MS / 1000} s; ` +
      `issuer --log-level ${result.logLevel}; ${context.tls}; ` +
      `${context.tokens.toLocaleString("en-US")} tokens issued and checked; ` +
      `${context.newKeepAliveConnections} keep-alive requests needed a new connection after priming`,
    `µs/op: CPU time per operation of the issuer process (server) and of this one (client); CPU: share of ` +
      `one core over a batch (other: every other process of the machine); medians over the rounds.`,
    ...noise,
  ].join("\n");
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      "log-level": { type: "string", default: DEFAULT_LOG_LEVEL },
      "cpu-prof": { type: "boolean", default: false },
    },
  });
  const logLevel = values["log-level"];
  // --cpu-prof: the issuer runs under V8's sampling profiler, which slows it, so the numbers of such a
  // run are not recorded; the profile is left in a temp directory for DevTools or speedscope.
  const profileDirectory = values["cpu-prof"]
    ? mkdtempSync(join(tmpdir(), "custody-bench-issuer-profile-"))
    : undefined;
  const started = process.hrtime.bigint();
  const cpu = cpus();
  const cpuDescription = `${cpu.length} × ${cpu[0]?.model ?? "unknown CPU"}`;
  progress(`bench:issuer: node ${process.version}, OpenSSL ${process.versions.openssl}, ${cpuDescription}`);

  const abort = new AbortController();
  const stopListening = abortOnSignals(abort);

  progress(`starting custody issuer (--log-level ${logLevel}) ...`);
  const issuer: IssuerProcess = await startIssuerProcess(
    logLevel,
    profileDirectory === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${profileDirectory}`],
  );
  void issuer.exited.then((reason) => abort.abort(new Error(`custody issuer ${reason} during the run`)));
  let failures = 0;
  const failureMessages = new Map<string, number>();
  try {
    abort.signal.throwIfAborted();
    const { target } = issuer;
    progress(`issuer pid ${issuer.pid} at ${target.tokenUrl.href}; log ${issuer.logFile}`);
    const counter = new TokenCounter();
    const tls = await selfCheck(target, counter);
    progress(`self-check passed (${tls}): token for ${CLIENT_ID} with its scope, claim and cnf`);

    const options: LoadOptions = {
      concurrency: CONCURRENCY,
      warmupMs: WARMUP_MS,
      batchMs: BATCH_MS,
      rounds: ROUNDS,
      serverCpu: issuer.cpu,
      machineCpu: machineCpuClock(),
      signal: abort.signal,
      onFailure: (mode, error) => {
        failures++;
        const message = `${mode}: ${describe(error)}`;
        failureMessages.set(message, (failureMessages.get(message) ?? 0) + 1);
        if (failures === 1) progress(`FAILED ${message}`);
        if (failures >= MAX_FAILURES) abort.abort(new Error(`${failures} operations failed`));
      },
      progress,
    };
    if (issuer.cpu === undefined) progress("no /proc: the server's CPU time is not reported");
    const results = await measureLoad(modes(target, counter), options);
    if (abort.signal.aborted) throw abort.signal.reason;

    const [handshake, fresh, keepAlive] = results.map((mode) => mode.perSecond);
    const bareHandshakesPerSecond = round1(must(handshake, "handshake rate"));
    const freshConnectionTokensPerSecond = round1(must(fresh, "fresh rate"));
    const keepAliveTokensPerSecond = round1(must(keepAlive, "keep-alive rate"));
    const result: IssuerBenchResult = {
      concurrency: CONCURRENCY,
      rounds: ROUNDS,
      bareHandshakesPerSecond,
      freshConnectionTokensPerSecond,
      keepAliveTokensPerSecond,
      freshToHandshake: round3(freshConnectionTokensPerSecond / bareHandshakesPerSecond),
      keepAliveToHandshake: round3(keepAliveTokensPerSecond / bareHandshakesPerSecond),
      logLevel,
      node: process.version,
      cpus: cpuDescription,
    };

    const counts = await issuerCounts(target);
    if (counts.issued !== counter.received || counts.refused !== 0) {
      failures++;
      failureMessages.set(
        `issuer metrics: ${counts.issued} issued and ${counts.refused} refused, ` +
          `but ${counter.received} tokens were received`,
        1,
      );
    }
    const text = report(result, results, {
      tls,
      newKeepAliveConnections: counter.newKeepAliveConnections,
      tokens: counter.received,
    });
    if (failures > 0) {
      process.stdout.write(`${text}\n`);
      throw new Error(`${failures} failures: the numbers above are not valid; ${OUT_FILE} not written`);
    }
    writeResult("issuer", result, { profiled: profileDirectory !== undefined, startedNs: started, progress });
    process.stdout.write(`${text}\n`);
  } catch (error) {
    if (!wasInterrupted()) progress(issuer.tail());
    for (const [message, count] of failureMessages) progress(`FAILED ×${count} ${message}`);
    // The first cause, when there is one (the issuer died, a signal, too many failures), not a consequence.
    throw abort.signal.aborted ? abort.signal.reason : error;
  } finally {
    await issuer.stop();
    if (profileDirectory !== undefined) {
      // One file per thread; the main thread's is the largest.
      progress(
        `issuer CPU profiles: ${readdirSync(profileDirectory)
          .map((name) => join(profileDirectory, name))
          .join(", ")}`,
      );
    }
    stopListening();
  }
}

try {
  await main();
} catch (error) {
  progress(`bench:issuer: ${describe(error)}`);
  process.exitCode = failureExitCode();
}
