/** Flag parsing shared by `custody issuer` and `custody operator`: each bad value says what was expected. */
import { LOG_LEVELS, type LogLevel } from "../../cli/src/log.js";
import { type ListenAddress, parseListenAddress } from "../../cli/src/serve.js";
import { parseDuration } from "../../crds/src/duration.js";
import { UsageError } from "../../crds/src/errors.js";

export function hostPortOption(command: string, name: string, value: string): ListenAddress {
  const parsed = parseListenAddress(value);
  if (parsed === undefined)
    throw new UsageError(`${command}: --${name} must be HOST:PORT (got ${JSON.stringify(value)}).`);
  return parsed;
}

export function durationOption(
  command: string,
  name: string,
  value: string,
  bounds: { minMs: number; maxMs: number },
): number {
  let ms: number;
  try {
    ms = parseDuration(value);
  } catch (error) {
    throw new UsageError(`${command}: --${name}: ${error instanceof Error ? error.message : String(error)}.`);
  }
  if (ms < bounds.minMs || ms > bounds.maxMs) {
    throw new UsageError(
      `${command}: --${name} must be from ${bounds.minMs / 1000}s to ${bounds.maxMs / 3_600_000}h.`,
    );
  }
  return ms;
}

export function logLevelOption(command: string, value: string | undefined): LogLevel {
  if (value === undefined) return "info";
  if (!(LOG_LEVELS as readonly string[]).includes(value)) {
    throw new UsageError(`${command}: --log-level must be one of ${LOG_LEVELS.join(", ")}.`);
  }
  return value as LogLevel;
}

/** An https:// URL without query or fragment (an OAuth issuer identifier, RFC 8414 §2). */
export function issuerUrlOption(command: string, value: string | undefined): string | undefined {
  if (value !== undefined && !/^https:\/\/[^\s/?#]+(\/[^\s?#]*)?$/.test(value)) {
    throw new UsageError(`${command}: --issuer must be an https:// URL without query or fragment.`);
  }
  return value;
}

/** A comma-separated list, blanks dropped. */
export function listOption(value: string | undefined): string[] {
  return (value ?? "")
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item !== "");
}
