/**
 * `custody pki init|issue|sign-csr|bundle|verify`: the openssl recipe of the design seed, as
 * commands with safe defaults. Each subcommand parses its flags, calls the library, and prints a
 * summary; private keys only ever go to files (mode 0600), never to stdout or stderr.
 */
import { join } from "node:path";
import {
  type Command,
  type CommandIO,
  EXIT_OK,
  EXIT_USAGE,
  integerOption,
  parseCommandArgs,
  requireOption,
  runCommand,
} from "../../cli/src/kit.js";
import { UsageError } from "../../crds/src/errors.js";
import { DEFAULT_TRUST_DOMAIN, isTrustDomain } from "../../crds/src/names.js";
import { TrustBundle } from "./bundle.js";
import {
  caPaths,
  createCertificateAuthority,
  loadCertificateAuthority,
  writeCertificateAuthority,
} from "./ca.js";
import type { ParsedCertificate } from "./certificate.js";
import { parseCsrPem } from "./csr.js";
import { printable } from "./dn.js";
import {
  ensureDirectory,
  MODE_PRIVATE,
  MODE_PUBLIC,
  readBoundedFile,
  writeFilesAtomically,
} from "./files.js";
import {
  type CertificateUsage,
  type IssuedCertificate,
  isCertificateUsage,
  issueCertificate,
  signCertificateRequest,
} from "./issue.js";
import {
  DEFAULT_KEY_ALGORITHM,
  describeKey,
  isKeyAlgorithm,
  KEY_ALGORITHMS,
  type KeyAlgorithm,
  privateKeyToPem,
} from "./keys.js";
import { type VerifiedClientCertificate, verifyClientCertificate } from "./verify.js";

const DAY_SECONDS = 86_400;
const CA_DAYS = { fallback: 365, min: 1, max: 3650 };
const LEAF_DAYS = { fallback: 30, min: 1, max: 398 };

interface Subcommand {
  readonly summary: string;
  readonly help: string;
  readonly run: Command;
}

const subcommands: Readonly<Record<string, Subcommand>> = {
  init: {
    summary: "create a self-signed CA (ca.crt, ca.key)",
    help: `Usage: custody pki init --out DIR [options]

Creates a self-signed CA for a SPIFFE trust domain: DIR/ca.crt and DIR/ca.key (mode 0600).
An existing CA in DIR is never replaced unless --force: a lost CA key is unrecoverable.

Options:
  --out DIR               directory to write to (created with mode 0700 if missing)
  --trust-domain D        SPIFFE trust domain (default ${DEFAULT_TRUST_DOMAIN})
  --key-algorithm A       ${KEY_ALGORITHMS.join(" | ")} (default ${DEFAULT_KEY_ALGORITHM})
  --days N                validity in days, ${CA_DAYS.min}..${CA_DAYS.max} (default ${CA_DAYS.fallback})
  --force                 replace an existing CA in DIR
  -h, --help              show this help

Example:
  custody pki init --out ./pki/CA --trust-domain shop.example
`,
    run: initCommand,
  },
  issue: {
    summary: "issue a workload certificate and key for a service id",
    help: `Usage: custody pki issue --ca DIR --id NAME.NAMESPACE --out DIR [options]

Issues a key pair and certificate for a service: CN=<id>, URI SAN spiffe://<trust-domain>/ns/<namespace>/si/<name>.
Writes DIR/tls.crt, DIR/tls.key (mode 0600) and DIR/ca.crt, the shape of a Kubernetes tls Secret.
Existing files there are replaced (rotation). notAfter never exceeds the CA's: it is cut to it, with a warning.

Options:
  --ca DIR                CA directory (ca.crt, ca.key)
  --id NAME.NAMESPACE     service id, e.g. cart.shop
  --out DIR               directory to write to (created with mode 0700 if missing)
  --dns NAME              DNS SAN, repeatable (e.g. --dns cart.shop.svc --dns localhost)
  --ip ADDR               IP SAN, repeatable
  --usage U               client | server | both (default both)
  --days N                validity in days, ${LEAF_DAYS.min}..${LEAF_DAYS.max} (default ${LEAF_DAYS.fallback})
  --key-algorithm A       ${KEY_ALGORITHMS.join(" | ")} (default ${DEFAULT_KEY_ALGORITHM})
  -h, --help              show this help

Example:
  custody pki issue --ca ./pki/CA --id cart.shop --out ./pki/cart --dns cart.shop.svc
`,
    run: issueCommand,
  },
  "sign-csr": {
    summary: "sign a PKCS#10 request (e.g. from openssl req -new)",
    help: `Usage: custody pki sign-csr --ca DIR --csr FILE --out FILE [options]

Signs a certificate request after checking its self-signature. Nothing the request asks for beyond
its subject and key is copied (no extensions: a request for CA:true gets an end-entity certificate).
Without --id the subject DN is kept as is (partner identities mapped by DN) and no SAN is added;
with --id the subject becomes CN=<id> with its SPIFFE id.

Options:
  --ca DIR                CA directory (ca.crt, ca.key)
  --csr FILE              PEM certificate request
  --out FILE              certificate to write
  --id NAME.NAMESPACE     issue for this service id instead of the requested subject
  --usage U               client | server | both (default client)
  --days N                validity in days, ${LEAF_DAYS.min}..${LEAF_DAYS.max} (default ${LEAF_DAYS.fallback})
  -h, --help              show this help

Example:
  custody pki sign-csr --ca ./pki/CA --csr ./pki/client.csr --out ./pki/client.crt
`,
    run: signCsrCommand,
  },
  bundle: {
    summary: "concatenate CA certificates into one trust bundle",
    help: `Usage: custody pki bundle FILE... [--out FILE]

Concatenates the CA certificates of every FILE (each may hold several) into one PEM bundle, to
stdout or --out. Refuses certificates that are not CAs and duplicates, naming the file and subject.

Options:
  --out FILE              write the bundle here instead of stdout
  -h, --help              show this help

Example:
  custody pki bundle ./pki/CA/ca.crt ./pki/CA/ca_alternative.crt --out ./pki/CA/ca_certs.pem
`,
    run: bundleCommand,
  },
  verify: {
    summary: "check that a client certificate chains to a bundle CA",
    help: `Usage: custody pki verify --bundle FILE CERT

Checks that CERT (a client certificate, optionally followed by intermediates) chains to a CA of the
bundle, is valid now and is usable for TLS client authentication. Prints one summary line and exits 0,
or prints error[<code>] and exits 1, with code one of: unknown_issuer, expired, not_yet_valid,
bad_signature, not_client_auth, is_ca, malformed, trust_domain_mismatch.

Options:
  --bundle FILE           PEM file of trusted CA certificates
  -h, --help              show this help

Example:
  custody pki verify --bundle ./pki/CA/ca_certs.pem ./pki/client.crt
`,
    run: verifyCommand,
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(subcommands).map((name) => name.length));
  const lines = Object.entries(subcommands).map(
    ([name, entry]) => `  ${name.padEnd(width)}  ${entry.summary}`,
  );
  return [
    "Usage: custody pki <command> [options]",
    "",
    "Certificate authority for service identities (SPIFFE X.509).",
    "",
    "Commands:",
    ...lines,
    "",
    "Run `custody pki <command> --help` for the options of a command.",
    "",
  ].join("\n");
}

/** Entry point for `custody pki ...`: receives the arguments after "pki". */
export const pkiCommand: Command = (args, io) => runCommand(dispatch, args, io);

async function dispatch(args: readonly string[], io: CommandIO): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    io.stdout(usage());
    return name === undefined ? EXIT_USAGE : EXIT_OK;
  }
  const subcommand = subcommands[name];
  if (subcommand === undefined) {
    throw new UsageError(`custody pki: unknown command "${name}". See \`custody pki --help\`.`);
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    io.stdout(subcommand.help);
    return EXIT_OK;
  }
  return subcommand.run(rest, io);
}

async function initCommand(args: readonly string[], io: CommandIO): Promise<number> {
  const command = "pki init";
  const { values } = parseCommandArgs(command, args, {
    out: { type: "string" },
    "trust-domain": { type: "string" },
    "key-algorithm": { type: "string" },
    days: { type: "string" },
    force: { type: "boolean" },
  });
  const out = requireOption(command, "out", values.out);
  const trustDomain = values["trust-domain"] ?? DEFAULT_TRUST_DOMAIN;
  if (!isTrustDomain(trustDomain)) {
    throw new UsageError(
      `${command}: --trust-domain "${trustDomain}" is not a trust domain: use lower-case letters, digits, '.', '-' and '_'.`,
    );
  }
  const days = integerOption(command, "days", values.days, CA_DAYS.fallback, CA_DAYS);
  const ca = await createCertificateAuthority({
    trustDomain,
    keyAlgorithm: keyAlgorithmOption(command, values["key-algorithm"]),
    lifetimeSeconds: days * DAY_SECONDS,
  });
  await writeCertificateAuthority(out, ca, { force: values.force === true });
  const paths = caPaths(out);
  io.stdout(
    `Created CA "${ca.certificate.subject}" for trust domain ${trustDomain} ` +
      `(${describeKey(ca.privateKey)}, valid until ${isoSeconds(ca.certificate.notAfter)}).\n` +
      `  ${paths.certificate}\n  ${paths.key}  (private key, mode 0600: keep it secret and backed up)\n`,
  );
  return EXIT_OK;
}

async function issueCommand(args: readonly string[], io: CommandIO): Promise<number> {
  const command = "pki issue";
  const { values } = parseCommandArgs(command, args, {
    ca: { type: "string" },
    id: { type: "string" },
    out: { type: "string" },
    dns: { type: "string", multiple: true },
    ip: { type: "string", multiple: true },
    usage: { type: "string" },
    days: { type: "string" },
    "key-algorithm": { type: "string" },
  });
  const caDirectory = requireOption(command, "ca", values.ca);
  const id = requireOption(command, "id", values.id);
  const out = requireOption(command, "out", values.out);
  const days = integerOption(command, "days", values.days, LEAF_DAYS.fallback, LEAF_DAYS);
  const usage = usageOption(command, values.usage, "both");
  const keyAlgorithm = keyAlgorithmOption(command, values["key-algorithm"]);
  const ca = await loadCertificateAuthority(caDirectory);
  const issued = await issueCertificate(ca, {
    id,
    dnsNames: values.dns ?? [],
    ipAddresses: values.ip ?? [],
    usage,
    lifetimeSeconds: days * DAY_SECONDS,
    keyAlgorithm,
  });
  await ensureDirectory(out, 0o700);
  const files = { certificate: join(out, "tls.crt"), key: join(out, "tls.key"), ca: join(out, "ca.crt") };
  await writeFilesAtomically(
    [
      { path: files.key, data: privateKeyToPem(issued.privateKey), mode: MODE_PRIVATE },
      { path: files.certificate, data: issued.certificate.pem, mode: MODE_PUBLIC },
      { path: files.ca, data: ca.certificate.pem, mode: MODE_PUBLIC },
    ],
    { overwrite: true },
  );
  warnIfClamped(issued, io);
  io.stdout(
    `${describeIssued(issued.certificate, usage)}\n  ${files.certificate}\n  ${files.key}  (private key, mode 0600)\n  ${files.ca}\n`,
  );
  return EXIT_OK;
}

async function signCsrCommand(args: readonly string[], io: CommandIO): Promise<number> {
  const command = "pki sign-csr";
  const { values } = parseCommandArgs(command, args, {
    ca: { type: "string" },
    csr: { type: "string" },
    out: { type: "string" },
    id: { type: "string" },
    usage: { type: "string" },
    days: { type: "string" },
  });
  const caDirectory = requireOption(command, "ca", values.ca);
  const csrPath = requireOption(command, "csr", values.csr);
  const out = requireOption(command, "out", values.out);
  const days = integerOption(command, "days", values.days, LEAF_DAYS.fallback, LEAF_DAYS);
  const usage = usageOption(command, values.usage, "client");
  const csr = parseCsrPem(await readBoundedFile(csrPath), csrPath);
  const ca = await loadCertificateAuthority(caDirectory);
  const issued = signCertificateRequest(ca, csr, {
    id: values.id,
    usage,
    lifetimeSeconds: days * DAY_SECONDS,
  });
  await writeFilesAtomically([{ path: out, data: issued.certificate.pem, mode: MODE_PUBLIC }], {
    overwrite: true,
  });
  warnIfClamped(issued, io);
  io.stdout(`${describeIssued(issued.certificate, usage)}\n  ${out}\n`);
  return EXIT_OK;
}

async function bundleCommand(args: readonly string[], io: CommandIO): Promise<number> {
  const command = "pki bundle";
  const { values, positionals } = parseCommandArgs(command, args, { out: { type: "string" } }, true);
  if (positionals.length === 0) {
    throw new UsageError(
      `${command}: name at least one CA certificate file. See \`custody ${command} --help\`.`,
    );
  }
  const sources = [];
  for (const name of positionals) sources.push({ name, pem: await readBoundedFile(name) });
  const bundle = TrustBundle.fromPem(sources);
  if (values.out === undefined) {
    io.stdout(bundle.toPem());
    return EXIT_OK;
  }
  await writeFilesAtomically([{ path: values.out, data: bundle.toPem(), mode: MODE_PUBLIC }], {
    overwrite: true,
  });
  io.stdout(`Wrote ${bundle.certificates.length} CA certificate(s) to ${values.out}.\n`);
  return EXIT_OK;
}

async function verifyCommand(args: readonly string[], io: CommandIO): Promise<number> {
  const command = "pki verify";
  const { values, positionals } = parseCommandArgs(command, args, { bundle: { type: "string" } }, true);
  const bundlePath = requireOption(command, "bundle", values.bundle);
  const [certificatePath, ...extra] = positionals;
  if (certificatePath === undefined || extra.length > 0) {
    throw new UsageError(`${command}: name exactly one certificate file. See \`custody ${command} --help\`.`);
  }
  const bundle = TrustBundle.fromPem([{ name: bundlePath, pem: await readBoundedFile(bundlePath) }]);
  const result = verifyClientCertificate(bundle, await readBoundedFile(certificatePath));
  io.stdout(`${summarizeVerified(result)}\n`);
  return EXIT_OK;
}

/** One line, `key=value` fields; values with spaces are JSON-quoted, and certificate text is escaped. */
export function summarizeVerified(result: VerifiedClientCertificate): string {
  const fields = [
    `subject=${JSON.stringify(result.subject)}`,
    ...(result.spiffeId === undefined ? [] : [`spiffe_id=${printable(result.spiffeId)}`]),
    `issuer=${JSON.stringify(result.issuer)}`,
    `not_after=${isoSeconds(result.notAfter)}`,
    `sha256=${result.fingerprint256}`,
  ];
  return `verified: ${fields.join(" ")}`;
}

function describeIssued(certificate: ParsedCertificate, usage: CertificateUsage): string {
  const names = [...certificate.uris, ...certificate.dnsNames, ...certificate.ipAddresses].map(printable);
  const san = names.length === 0 ? "" : ` [${names.join(", ")}]`;
  return (
    `Issued "${certificate.subject}"${san} for ${usage} use, ` +
    `valid until ${isoSeconds(certificate.notAfter)} (serial ${certificate.serialNumber}).`
  );
}

function warnIfClamped(issued: IssuedCertificate, io: CommandIO): void {
  if (issued.notAfterClamped) {
    io.stderr(
      `warning: notAfter cut to the CA's expiry, ${isoSeconds(issued.certificate.notAfter)}; rotate the CA soon.\n`,
    );
  }
}

function keyAlgorithmOption(command: string, value: string | undefined): KeyAlgorithm {
  if (value === undefined) return DEFAULT_KEY_ALGORITHM;
  if (!isKeyAlgorithm(value)) {
    throw new UsageError(`${command}: --key-algorithm must be one of ${KEY_ALGORITHMS.join(", ")}.`);
  }
  return value;
}

function usageOption(
  command: string,
  value: string | undefined,
  fallback: CertificateUsage,
): CertificateUsage {
  if (value === undefined) return fallback;
  if (!isCertificateUsage(value)) throw new UsageError(`${command}: --usage must be client, server or both.`);
  return value;
}

function isoSeconds(date: Date): string {
  return date.toISOString().replace(".000Z", "Z");
}
