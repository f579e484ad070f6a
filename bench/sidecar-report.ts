/**
 * What bench/sidecar.ts reports: the entries of bench/out/sidecar.json, the targets with their
 * verdicts, and the tables printed at the end.
 */
import type { ModeResult } from "./load.js";
import { markdownTable } from "./output.js";
import { type CryptoFloor, ceilingShare } from "./sidecar-floor.js";
import type { OpenLoopResult } from "./sidecar-open-loop.js";
import type { CpuAccount, RssSamples } from "./sidecar-processes.js";

/** One entry of bench/out/sidecar.json per depth: exactly these fields. */
export interface SidecarDepthResult {
  /** The constant rate of the latency measurement. */
  readonly rps: number;
  readonly depth: number;
  readonly directP50Ms: number;
  readonly directP99Ms: number;
  readonly meshP50Ms: number;
  readonly meshP99Ms: number;
  /** mesh − direct, at the same percentile. */
  readonly addedP50Ms: number;
  readonly addedP99Ms: number;
  /** Through the pair, closed loop. */
  readonly maxRps: number;
  /** The larger of the two sidecars' resident set, the highest sampled while this depth ran. */
  readonly sidecarRssMb: number;
}

export const TARGETS = { addedP50Ms: 0.6, addedP99Ms: 1.5, maxRpsShare: 0.4, sidecarRssMb: 80 } as const;
/** Share of a core taken by other processes above which the report says the machine was busy. */
const OTHER_CPU_WARNING = 0.25;

/** How the run was made, for the notes under the tables. */
export interface RunSettings {
  readonly ratePerSecond: number;
  readonly openLoop: { readonly rounds: number; readonly roundMs: number };
  readonly closedLoop: { readonly concurrency: number; readonly rounds: number; readonly batchMs: number };
}

/** One mode's accounts: CPU per process and sidecar memory, at 1,000 rps (open) and at max rps (closed). */
export interface ModeAccounts {
  readonly name: string;
  /** 0: no chain (direct to the app, or through the plain pair). */
  readonly depth: number;
  /** Whether the requests went through a pair of proxies (whose CPU the table shows). */
  readonly proxied: boolean;
  readonly openCpu: CpuAccount;
  readonly closedCpu: CpuAccount;
  readonly openRss: RssSamples;
  readonly closedRss: RssSamples;
}

export const round3 = (value: number) => Math.round(value * 1000) / 1000;
export const round1 = (value: number) => Math.round(value * 10) / 10;
const ms = (value: number) => value.toFixed(3);
const verdict = (pass: boolean) => (pass ? "PASS" : "MISS");

export interface Report {
  readonly entries: readonly SidecarDepthResult[];
  readonly open: readonly OpenLoopResult[];
  readonly closed: readonly ModeResult[];
  readonly specs: readonly ModeAccounts[];
  readonly baseline: Baseline;
  readonly peakRss: { readonly caller: number; readonly callee: number; readonly app: number };
  readonly idleRss: { readonly caller: number; readonly callee: number };
  readonly runtime: string;
  readonly logLevel: string;
  readonly requests: number;
  readonly failures: number;
  readonly settings: RunSettings;
}

/** What the sidecar pair is held against besides the direct call, measured in the same run. */
export interface Baseline {
  /** bench/plain-proxy.ts: the sidecars' I/O path (HTTP, mutual TLS, relay) and nothing else. */
  readonly plainOpen: OpenLoopResult;
  readonly plainClosed: ModeResult;
  /** The larger of the plain proxies' resident set, the highest sampled while they carried load. */
  readonly plainRssMb: number;
  readonly floor: CryptoFloor;
}

/** The baselines as sidecar.json records them: the plain pair, Custody beyond it, the crypto floor. */
export function baselineSummary(report: Report) {
  const [directOpen] = report.open;
  const directMaxRps = report.closed[0]?.perSecond ?? Number.NaN;
  const { plainOpen, plainClosed, plainRssMb, floor } = report.baseline;
  const depth1 = report.entries.find((entry) => entry.depth === 1);
  const direct = report.specs[0]?.closedCpu.perRequestUs();
  const directUs = direct === undefined ? Number.NaN : direct.app + direct.client;
  return {
    plainPair: {
      addedP50Ms: round3(plainOpen.p50Ms - (directOpen?.p50Ms ?? Number.NaN)),
      addedP99Ms: round3(plainOpen.p99Ms - (directOpen?.p99Ms ?? Number.NaN)),
      maxRps: Math.round(plainClosed.perSecond),
      maxRpsShareOfDirect: round3(plainClosed.perSecond / directMaxRps),
      rssMb: plainRssMb,
    },
    custodyBeyondPlainPair: {
      depth: 1,
      addedP50Ms: round3((depth1?.meshP50Ms ?? Number.NaN) - plainOpen.p50Ms),
      addedP99Ms: round3((depth1?.meshP99Ms ?? Number.NaN) - plainOpen.p99Ms),
      maxRpsShareOfPlainPair: round3((depth1?.maxRps ?? Number.NaN) / plainClosed.perSecond),
    },
    cryptoFloor: {
      signUs: round1(floor.signUs),
      verifyUs: round1(floor.verifyUs),
      /** CPU per request of the direct mode at max rps: the app and the client. */
      directCpuUs: round1(directUs),
      /** The highest share of the direct max rps a pair that signs and verifies once per call can reach. */
      maxRpsShareCeiling: round3(ceilingShare(floor, directUs)),
    },
  };
}

function renderBaseline(report: Report): string[] {
  const summary = baselineSummary(report);
  const depth1 = report.entries.find((entry) => entry.depth === 1);
  const directMaxRps = report.closed[0]?.perSecond ?? Number.NaN;
  const percent = (value: number) => `${(value * 100).toFixed(1)} %`;
  const { plainPair, custodyBeyondPlainPair: beyond, cryptoFloor } = summary;
  const table = markdownTable(
    ["depth 1, against the same direct call", "added p50", "added p99", "max rps", "of direct", "RSS"],
    [
      [
        "plain proxy pair: same HTTP, mutual TLS and relay, no authorization",
        `${ms(plainPair.addedP50Ms)} ms`,
        `${ms(plainPair.addedP99Ms)} ms`,
        String(plainPair.maxRps),
        percent(plainPair.maxRpsShareOfDirect),
        `${plainPair.rssMb.toFixed(1)} MB`,
      ],
      [
        "Custody sidecar pair",
        `${ms(depth1?.addedP50Ms ?? Number.NaN)} ms`,
        `${ms(depth1?.addedP99Ms ?? Number.NaN)} ms`,
        String(depth1?.maxRps ?? Number.NaN),
        percent((depth1?.maxRps ?? Number.NaN) / directMaxRps),
        `${(depth1?.sidecarRssMb ?? Number.NaN).toFixed(1)} MB`,
      ],
      [
        "Custody beyond the plain pair",
        `${ms(beyond.addedP50Ms)} ms`,
        `${ms(beyond.addedP99Ms)} ms`,
        `${percent(beyond.maxRpsShareOfPlainPair)} of the plain pair's`,
        "",
        "",
      ],
    ],
  );
  return [
    table,
    "",
    `Crypto floor: one ES256 link signature ${cryptoFloor.signUs} µs and one verification ` +
      `${cryptoFloor.verifyUs} µs (this run, this machine). The direct call costs ${cryptoFloor.directCpuUs} µs ` +
      "of CPU per request at max rps (app + client), so a pair that did nothing but sign and verify " +
      `could reach at most ${percent(cryptoFloor.maxRpsShareCeiling)} of the direct max rps ` +
      `(target ≥ ${TARGETS.maxRpsShare * 100} %).`,
  ];
}

/** One target: what is compared, at which depth (null: the whole run), and the verdict. */
export interface TargetRow {
  readonly target: "addedP50Ms" | "addedP99Ms" | "maxRpsShareOfDirect" | "sidecarRssMb" | "peakSidecarRssMb";
  readonly depth: number | null;
  readonly measured: number;
  readonly comparison: "≤" | "≥";
  readonly limit: number;
  readonly result: "PASS" | "MISS";
}

const TARGET_LABELS: Record<TargetRow["target"], string> = {
  addedP50Ms: "added p50 at 1,000 rps",
  addedP99Ms: "added p99 at 1,000 rps",
  maxRpsShareOfDirect: "max rps through the pair / direct",
  sidecarRssMb: "RSS per sidecar under load",
  peakSidecarRssMb: "peak RSS per sidecar (VmHWM)",
};

export function targetRows(report: Report): TargetRow[] {
  const directMaxRps = report.closed[0]?.perSecond ?? Number.NaN;
  const atMost = (target: TargetRow["target"], depth: number | null, measured: number, limit: number) =>
    ({ target, depth, measured, comparison: "≤", limit, result: verdict(measured <= limit) }) as const;
  const rows: TargetRow[] = [];
  const depth1 = report.entries.find((entry) => entry.depth === 1);
  if (depth1 !== undefined) {
    rows.push(atMost("addedP50Ms", 1, depth1.addedP50Ms, TARGETS.addedP50Ms));
    rows.push(atMost("addedP99Ms", 1, depth1.addedP99Ms, TARGETS.addedP99Ms));
  }
  for (const entry of report.entries) {
    const share = entry.maxRps / directMaxRps;
    rows.push({
      target: "maxRpsShareOfDirect",
      depth: entry.depth,
      measured: round3(share),
      comparison: "≥",
      limit: TARGETS.maxRpsShare,
      result: verdict(share >= TARGETS.maxRpsShare),
    });
  }
  for (const entry of report.entries)
    rows.push(atMost("sidecarRssMb", entry.depth, entry.sidecarRssMb, TARGETS.sidecarRssMb));
  const peak = round1(Math.max(report.peakRss.caller, report.peakRss.callee));
  rows.push(atMost("peakSidecarRssMb", null, peak, TARGETS.sidecarRssMb));
  return rows;
}

/** The measured value and the limit of a target, as the table shows them. */
function shownTarget(row: TargetRow, report: Report): { measured: string; limit: string } {
  const directMaxRps = report.closed[0]?.perSecond ?? Number.NaN;
  switch (row.target) {
    case "addedP50Ms":
    case "addedP99Ms":
      return { measured: `${ms(row.measured)} ms`, limit: `${row.comparison} ${row.limit} ms` };
    case "maxRpsShareOfDirect": {
      const maxRps = report.entries.find((entry) => entry.depth === row.depth)?.maxRps ?? Number.NaN;
      return {
        measured: `${(row.measured * 100).toFixed(1)} % (${maxRps.toFixed(0)} / ${directMaxRps.toFixed(0)})`,
        limit: `${row.comparison} ${row.limit * 100} %`,
      };
    }
    case "sidecarRssMb":
      return { measured: `${row.measured.toFixed(1)} MB`, limit: `${row.comparison} ${row.limit} MB` };
    case "peakSidecarRssMb":
      return {
        measured: `${report.peakRss.caller.toFixed(1)} / ${report.peakRss.callee.toFixed(1)} MB (outbound / inbound)`,
        limit: `${row.comparison} ${row.limit} MB`,
      };
  }
}

export function render(report: Report): string {
  const { ratePerSecond, openLoop, closedLoop } = report.settings;
  const directClosed = report.closed[0];
  const directMaxRps = directClosed?.perSecond ?? Number.NaN;
  const rows = targetRows(report);
  const results = markdownTable(
    [
      "depth",
      "direct p50",
      "direct p99",
      "mesh p50",
      "mesh p99",
      "added p50",
      "added p99",
      "direct max rps",
      "mesh max rps",
      "mesh/direct",
      "sidecar RSS",
    ],
    report.entries.map((entry) => [
      String(entry.depth),
      `${ms(entry.directP50Ms)} ms`,
      `${ms(entry.directP99Ms)} ms`,
      `${ms(entry.meshP50Ms)} ms`,
      `${ms(entry.meshP99Ms)} ms`,
      `${ms(entry.addedP50Ms)} ms`,
      `${ms(entry.addedP99Ms)} ms`,
      directMaxRps.toFixed(0),
      entry.maxRps.toFixed(0),
      `${((entry.maxRps / directMaxRps) * 100).toFixed(1)} %`,
      `${entry.sidecarRssMb.toFixed(1)} MB`,
    ]),
  );
  const targets = markdownTable(
    ["target", "depth", "measured", "limit", "result"],
    rows.map((row) => {
      const shown = shownTarget(row, report);
      return [
        TARGET_LABELS[row.target],
        row.depth === null ? "all" : String(row.depth),
        shown.measured,
        shown.limit,
        row.result,
      ];
    }),
  );
  const latency = markdownTable(
    ["at 1,000/s", "p50", "p99", "p99 per round", "pooled p50", "pooled p99", "pooled p99.9", "max"],
    report.open.map((result) => [
      result.name,
      ms(result.p50Ms),
      ms(result.p99Ms),
      `${ms(Math.min(...result.roundP99Ms))}–${ms(Math.max(...result.roundP99Ms))}`,
      ms(result.pooledP50Ms),
      ms(result.pooledP99Ms),
      ms(result.pooledP999Ms),
      ms(result.maxMs),
    ]),
  );
  const cpu = (value: number) => (Number.isFinite(value) ? value.toFixed(0) : "n/a");
  const share = (value: number) => (Number.isFinite(value) ? `${Math.round(value * 100)} %` : "n/a");
  const cpuTable = markdownTable(
    [
      "CPU µs per request",
      "app",
      "outbound",
      "inbound",
      "client",
      "other CPU",
      "max rps",
      "app",
      "outbound",
      "inbound",
      "client",
      "other CPU",
    ],
    report.specs.map((spec, index) => {
      const open = spec.openCpu.perRequestUs();
      const closed = spec.closedCpu.perRequestUs();
      const sidecar = (value: number) => (spec.proxied ? cpu(value) : "-");
      return [
        spec.name,
        cpu(open.app),
        sidecar(open.caller),
        sidecar(open.callee),
        cpu(open.client),
        share(spec.openCpu.otherShare()),
        (report.closed[index]?.perSecond ?? Number.NaN).toFixed(0),
        cpu(closed.app),
        sidecar(closed.caller),
        sidecar(closed.callee),
        cpu(closed.client),
        share(spec.closedCpu.otherShare()),
      ];
    }),
  );
  const busiest = Math.max(
    ...report.specs.flatMap((spec) => [spec.openCpu.otherShare(), spec.closedCpu.otherShare()]),
  );
  const noise =
    busiest > OTHER_CPU_WARNING
      ? [
          `WARNING: other processes took up to ${Math.round(busiest * 100)} % of a core during the rounds: ` +
            "on 2 cores that leaves the run short of CPU; latencies and rates are then worse than on a quiet machine.",
        ]
      : [];
  const [direct] = report.open;
  const lag = direct === undefined ? "" : `${ms(direct.lagP50Ms)}/${ms(direct.lagP99Ms)} ms`;
  const mb = (value: number) => value.toFixed(1);
  const memory = report.specs
    .filter((spec) => spec.depth > 0)
    .map(
      (spec) =>
        `depth ${spec.depth}: ${mb(spec.openRss.caller)} / ${mb(spec.openRss.callee)} at 1,000/s, ` +
        `${mb(spec.closedRss.caller)} / ${mb(spec.closedRss.callee)} at max rps`,
    );
  return [
    results,
    "",
    targets,
    "",
    ...renderBaseline(report),
    "",
    latency,
    "",
    `Latency in ms, GET /cart/items at a constant ${ratePerSecond.toLocaleString("en-US")}/s (open loop), ` +
      `from each request's due time to the end of its answer. p50/p99: the median over ${openLoop.rounds} ` +
      `interleaved rounds of ${openLoop.roundMs / 1000} s of each round's percentile; pooled: all ` +
      `${direct?.requests.toLocaleString("en-US") ?? "?"} requests of a mode together. Generator lag ` +
      `(sent − due, in every mode alike) p50/p99: ${lag}.`,
    "",
    cpuTable,
    "",
    `CPU time per request of each process: at 1,000/s (left) and at max rps (right: ${closedLoop.concurrency} ` +
      `in flight, closed loop, median of ${closedLoop.rounds} interleaved rounds of ${closedLoop.batchMs / 1000} s). ` +
      "other CPU: the share of one core the machine's other processes took during those rounds (the noise).",
    `Sidecar RSS (outbound / inbound, MB, highest VmRSS sampled after each round): after start ` +
      `${mb(report.idleRss.caller)} / ${mb(report.idleRss.callee)}; ${memory.join("; ")}; peak (VmHWM) ` +
      `${mb(report.peakRss.caller)} / ${mb(report.peakRss.callee)}. App peak ${mb(report.peakRss.app)} MB.`,
    `Sidecars ${report.runtime}, --log-level ${report.logLevel}. ` +
      `${report.requests.toLocaleString("en-US")} requests checked, ${report.failures} failed.`,
    ...noise,
  ].join("\n");
}
