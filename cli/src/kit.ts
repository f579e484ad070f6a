import { type ParseArgsConfig, parseArgs } from "node:util";
import { CustodyError, UsageError } from "../../crds/src/errors.js";

/** Where a command writes. Injected so tests can run commands in-process and read what they print. */
export interface CommandIO {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
}

export const processIO: CommandIO = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

/** A subcommand: receives the arguments after its own name, returns the process exit status. */
export type Command = (args: readonly string[], io: CommandIO) => Promise<number>;

export const EXIT_OK = 0;
/** A check ran and said no (e.g. `pki verify` on an untrusted certificate). */
export const EXIT_REJECTED = 1;
export const EXIT_USAGE = 2;

type Options = NonNullable<ParseArgsConfig["options"]>;

/** `util.parseArgs` with strict checking, reported as a UsageError naming the command. */
export function parseCommandArgs<T extends Options>(
  command: string,
  args: readonly string[],
  options: T,
  allowPositionals = false,
) {
  try {
    return parseArgs({ args: [...args], options, allowPositionals, strict: true });
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new UsageError(`${command}: ${reason}. See \`custody ${command} --help\`.`);
  }
}

/** A required string option, or a UsageError that says which flag is missing. */
export function requireOption(command: string, name: string, value: string | undefined): string {
  if (value === undefined || value === "") {
    throw new UsageError(`${command}: --${name} is required. See \`custody ${command} --help\`.`);
  }
  return value;
}

/** A positive whole number option (days, counts), with its bounds checked. */
export function integerOption(
  command: string,
  name: string,
  value: string | undefined,
  fallback: number,
  bounds: { min: number; max: number },
): number {
  if (value === undefined) return fallback;
  const parsed = /^\d{1,9}$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isInteger(parsed) || parsed < bounds.min || parsed > bounds.max) {
    throw new UsageError(`${command}: --${name} must be a whole number from ${bounds.min} to ${bounds.max}.`);
  }
  return parsed;
}

/**
 * Runs a command and turns what it throws into an exit status and one line on stderr.
 * Known errors print `error[code]: message`; anything else is a bug, and says so without a stack
 * unless CUSTODY_DEBUG is set.
 */
export async function runCommand(command: Command, args: readonly string[], io: CommandIO): Promise<number> {
  try {
    return await command(args, io);
  } catch (error) {
    if (error instanceof UsageError) {
      io.stderr(`${error.message}\n`);
      return EXIT_USAGE;
    }
    if (error instanceof CustodyError) {
      io.stderr(`error[${error.code}]: ${error.message}\n`);
      return EXIT_REJECTED;
    }
    const detail = process.env.CUSTODY_DEBUG && error instanceof Error ? `\n${error.stack}` : "";
    io.stderr(`internal error: ${error instanceof Error ? error.message : String(error)}${detail}\n`);
    return EXIT_REJECTED;
  }
}
