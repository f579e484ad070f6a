import { type Command, type CommandIO, EXIT_OK, EXIT_USAGE, processIO, runCommand } from "./kit.js";

interface Entry {
  readonly summary: string;
  /** Loaded on use, so `custody --help` and each command start without loading the others. */
  readonly load: () => Promise<Command>;
}

const commands: Record<string, Entry> = {
  pki: {
    summary: "certificate authority: init, issue, sign-csr, bundle, verify",
    load: async () => (await import("../../pki/src/cli.js")).pkiCommand,
  },
  issuer: {
    summary: "token service: client certificate → identity JWT (RFC 8705), token exchange (RFC 8693)",
    load: async () => (await import("../../operator/src/issuer/cli.js")).issuerCommand,
  },
  local: {
    summary: "the whole system on this machine: operator, token service, a sidecar per workload",
    load: async () => (await import("../../local/src/cli.js")).localCommand,
  },
  demo: {
    summary: "the talk's shop → cart → payments scenario, locally: what is allowed, what is denied, why",
    load: async () => (await import("../../local/src/demo/cli.js")).demoCommand,
  },
  operator: {
    summary: "controllers, registry publishing, token service and webhooks (Kubernetes, or --local)",
    load: async () => (await import("../../operator/src/cli.js")).operatorCommand,
  },
  sidecar: {
    summary: "the per-workload proxy: outbound links, inbound verification and policy, metrics",
    load: async () => (await import("../../sidecar/src/runtime/cli.js")).sidecarCommand,
  },
  token: {
    summary: "decode a Custody-Chain and verify it against a registry (token inspect)",
    load: async () => (await import("../../sidecar/src/cli/token-command.js")).tokenCommand,
  },
  policy: {
    summary: "decide a request as the target's sidecar would, offline (policy check)",
    load: async () => (await import("../../sidecar/src/cli/policy-command.js")).policyCommand,
  },
  validate: {
    summary: "check ServiceIdentity / AccessPolicy manifests against the API schema",
    load: async () => (await import("../../crds/src/cli.js")).validateCommand,
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(commands).map((name) => name.length));
  const lines = Object.entries(commands).map(([name, entry]) => `  ${name.padEnd(width)}  ${entry.summary}`);
  return [
    "custody — service identity and call-chain authorization",
    "",
    "Usage: custody <command> [options]",
    "",
    "Commands:",
    ...lines,
    "",
    "Run `custody <command> --help` for the options of a command.",
    "",
  ].join("\n");
}

export async function main(argv: readonly string[], io: CommandIO = processIO): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    io.stdout(usage());
    return name === undefined ? EXIT_USAGE : EXIT_OK;
  }
  if (name === "--version") {
    io.stdout(`${await readVersion()}\n`);
    return EXIT_OK;
  }
  const entry = commands[name];
  if (entry === undefined) {
    io.stderr(`custody: unknown command "${name}".\n\n${usage()}`);
    return EXIT_USAGE;
  }
  return runCommand(await entry.load(), rest, io);
}

/** The package version, found by walking up from this module (it runs from src/ in tests, dist/ when built). */
async function readVersion(): Promise<string> {
  const { readFile } = await import("node:fs/promises");
  for (let dir = new URL(".", import.meta.url), depth = 0; depth < 5; depth++, dir = new URL("..", dir)) {
    try {
      const manifest: unknown = JSON.parse(await readFile(new URL("package.json", dir), "utf8"));
      if (typeof manifest === "object" && manifest !== null && "version" in manifest) {
        return String(manifest.version);
      }
    } catch {
      // not at this level; keep walking up
    }
  }
  return "unknown";
}
