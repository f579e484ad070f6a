/**
 * Test support: find a system tool (openssl, redis-server, promtool, …) or explain why a test is
 * skipped. With CUSTODY_REQUIRE_ALL=1 (set by .ci/run) a missing tool is a failure, not a skip, so
 * CI can never go green by silently testing less.
 */
import { execFileSync } from "node:child_process";

export interface ToolCheck {
  readonly available: boolean;
  /** Absolute path when available; the reason it is not, otherwise. */
  readonly detail: string;
}

export function findTool(name: string): ToolCheck {
  try {
    const path = execFileSync("sh", ["-c", `command -v ${JSON.stringify(name)}`], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
    return path === "" ? missing(name) : { available: true, detail: path };
  } catch {
    return missing(name);
  }
}

function missing(name: string): ToolCheck {
  return { available: false, detail: `${name} is not installed (apt-get install -y ${name})` };
}

/**
 * Returns true when the tool is there. When it is not: throws if CUSTODY_REQUIRE_ALL=1, otherwise
 * prints one visible line so a skipped suite is never mistaken for a passing one.
 */
export function requireTool(name: string): boolean {
  const check = findTool(name);
  if (check.available) return true;
  if (process.env.CUSTODY_REQUIRE_ALL === "1") {
    throw new Error(`CUSTODY_REQUIRE_ALL=1 but ${check.detail}`);
  }
  process.stderr.write(`SKIP: ${check.detail}; tests that need it are skipped.\n`);
  return false;
}

/**
 * Like `requireTool`, for tests that need root (network namespaces, iptables): true when this
 * process is root; otherwise throws under CUSTODY_REQUIRE_ALL=1, or prints a visible `SKIP:` line.
 */
export function requireRoot(why: string): boolean {
  if (process.getuid?.() === 0) return true;
  const detail = `not running as root, which ${why}`;
  if (process.env.CUSTODY_REQUIRE_ALL === "1") throw new Error(`CUSTODY_REQUIRE_ALL=1 but ${detail}`);
  process.stderr.write(`SKIP: ${detail}; tests that need it are skipped.\n`);
  return false;
}

/**
 * What `promtool check metrics` says about an exposition: "" when it passes. promtool reads the
 * exposition on stdin and exits non-zero on any lint problem, printing the problems.
 */
export function promtoolProblems(exposition: string): string {
  try {
    execFileSync("promtool", ["check", "metrics"], { input: exposition, stdio: "pipe" });
    return "";
  } catch (error) {
    const failed = error as { stdout?: Buffer; stderr?: Buffer; message: string };
    return `${failed.stdout?.toString() ?? ""}${failed.stderr?.toString() ?? ""}` || failed.message;
  }
}

/**
 * The environment without libfaketime, for processes that must run on the real clock while
 * `make test-clock-shift` preloads it into the test run: servers whose clock the code under test
 * never compares with its own (redis-server, whose allocator deadlocks under libfaketime), and the
 * tools making certificates that Go binaries check on the real clock (Go ignores LD_PRELOAD).
 */
export function realClockEnv(): NodeJS.ProcessEnv {
  const preload = (process.env.LD_PRELOAD ?? "")
    .split(/[:\s]+/)
    .filter((library) => library !== "" && !library.includes("libfaketime"));
  return { ...process.env, LD_PRELOAD: preload.join(":") };
}
