/**
 * Go duration strings ("24h", "1h30m", "1.5h", "500ms"), the format Kubernetes users know from
 * cert-manager and Gateway API, and the one CEL's `duration()` parses. Custody accepts a subset of
 * Go's grammar: no sign, and only the units h, m, s and ms, because nothing Custody times is
 * shorter than a millisecond. Every string accepted here is therefore also a valid CEL duration,
 * which keeps the zod schema and the CRD's CEL rules in agreement.
 */
import { CustodyError } from "./errors.js";

export const MAX_DURATION_LENGTH = 32;

/** One or more `<number><unit>` terms; the JSON-Schema form of what parseDuration accepts. */
export const DURATION_PATTERN = "^([0-9]{1,9}(\\.[0-9]{1,9})?(ms|h|m|s))+$";

const durationRegex = new RegExp(DURATION_PATTERN);
const termRegex = /([0-9]{1,9})(?:\.([0-9]{1,9}))?(ms|h|m|s)/gy;

const NANOS_PER_UNIT: Readonly<Record<string, bigint>> = {
  ms: 1_000_000n,
  s: 1_000_000_000n,
  m: 60_000_000_000n,
  h: 3_600_000_000_000n,
};

/** 10^9: the finest fraction the grammar allows is 9 digits. */
const FRACTION_SCALE = 1_000_000_000n;
const SCALED_NANOS_PER_MILLISECOND = 1_000_000n * FRACTION_SCALE;

export class DurationError extends CustodyError {
  constructor(message: string) {
    super("invalid_duration", message);
  }
}

/** Milliseconds in `text`, or undefined with no explanation; for callers that report their own. */
export function tryParseDuration(text: string): number | undefined {
  return durationProblem(text) === undefined ? toMilliseconds(text) : undefined;
}

/**
 * Milliseconds in a Go duration string. Throws DurationError for anything else, including values
 * that are not a whole number of milliseconds (rather than silently rounding them).
 */
export function parseDuration(text: string): number {
  const problem = durationProblem(text);
  if (problem !== undefined) throw new DurationError(`"${clip(text)}" ${problem}`);
  return toMilliseconds(text);
}

/** Why `text` is not an acceptable duration, in words that fit after the value; or undefined. */
export function durationProblem(text: string): string | undefined {
  if (text.length > MAX_DURATION_LENGTH) {
    return `is not a duration: at most ${MAX_DURATION_LENGTH} characters`;
  }
  if (!durationRegex.test(text)) {
    return 'is not a duration: use a number and a unit (h, m, s, ms), e.g. "24h", "1h30m", "90s"';
  }
  const scaled = toScaledNanoseconds(text);
  if (scaled % SCALED_NANOS_PER_MILLISECOND !== 0n) {
    return "is not a whole number of milliseconds";
  }
  if (scaled / SCALED_NANOS_PER_MILLISECOND > BigInt(Number.MAX_SAFE_INTEGER)) {
    return "is too long a duration";
  }
  return undefined;
}

/** The shortest Go-style spelling of a millisecond count: 5400000 → "1h30m". */
export function formatDuration(milliseconds: number): string {
  if (!Number.isSafeInteger(milliseconds) || milliseconds < 0) {
    throw new DurationError(`${milliseconds} is not a whole, non-negative number of milliseconds`);
  }
  if (milliseconds === 0) return "0s";
  const parts: string[] = [];
  let rest = milliseconds;
  for (const [unit, size] of [
    ["h", 3_600_000],
    ["m", 60_000],
    ["s", 1_000],
    ["ms", 1],
  ] as const) {
    const count = Math.floor(rest / size);
    if (count > 0) parts.push(`${count}${unit}`);
    rest -= count * size;
  }
  return parts.join("");
}

function toMilliseconds(text: string): number {
  return Number(toScaledNanoseconds(text) / SCALED_NANOS_PER_MILLISECOND);
}

/**
 * Exact arithmetic: "0.1h" must be exactly 6 minutes, which binary floating point cannot promise.
 * Counted in billionths of a nanosecond so that every 9-digit fraction is a whole number.
 */
function toScaledNanoseconds(text: string): bigint {
  let total = 0n;
  for (const match of text.matchAll(termRegex)) {
    const [, whole = "0", fraction = "", unit = ""] = match;
    const perUnit = (NANOS_PER_UNIT[unit] ?? 0n) * FRACTION_SCALE;
    total += BigInt(whole) * perUnit;
    if (fraction !== "") total += (BigInt(fraction) * perUnit) / 10n ** BigInt(fraction.length);
  }
  return total;
}

function clip(text: string): string {
  return text.length > MAX_DURATION_LENGTH ? `${text.slice(0, MAX_DURATION_LENGTH)}…` : text;
}
