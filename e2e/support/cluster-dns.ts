/**
 * A stand-in for CoreDNS's `kubernetes` plugin in a test cluster, so that pods started by a real
 * kubelet can find Services by name without a CoreDNS image (no registry can be reached).
 * The kubelet writes the pods' /etc/resolv.conf as `nameserver <ip>`, `search <ns>.svc.cluster.local
 * svc.cluster.local cluster.local`, `options ndots:5`, and glibc's getaddrinfo then sends A and AAAA
 * queries over UDP (TCP when an answer comes back truncated). This server answers exactly those.
 *
 * What it answers, authoritatively (AA=1), for the one zone `<clusterDomain>`:
 * - `<service>.<namespace>.svc.<clusterDomain>` A: the Service's IPv4 addresses, one RR each.
 * - Any other type on a name that exists: NOERROR with no answers (NODATA), so AAAA lookups end
 *   at once instead of making glibc wait. The names that exist are the Services, their namespaces
 *   (`<namespace>.svc.<clusterDomain>`, while a Service is in them), `svc.<clusterDomain>` and the
 *   apex: empty non-terminals must not be NXDOMAIN (RFC 8020), or a caching resolver would deny
 *   the whole subtree.
 * - Any other name in the zone: NXDOMAIN, which is what sends glibc on to the next search suffix.
 * - A name outside the zone: REFUSED. This is no recursive resolver (RA=0); a test pod has nothing
 *   outside the cluster to look up.
 *
 * What it does not do: pod records, SRV records, ExternalName CNAMEs, PTR, SOA/NS answers, EDNS (an
 * OPT record in a query is ignored and none is sent back, so a UDP answer is at most 512 bytes and
 * a longer one is truncated with TC=1), DNSSEC, zone transfers, caching or forwarding.
 *
 * The answer set comes from a `records()` callback polled every `refreshMs`: the test decides
 * where Services come from (the Kubernetes API through serviceRecordsOf, or a fixed list). A
 * failing poll keeps the last good set, as CoreDNS keeps serving from its informer cache while the
 * API server is away.
 */
import { createSocket, type Socket as UdpSocket } from "node:dgram";
import { once } from "node:events";
import { createServer, isIP, isIPv4, isIPv6, type Server, type Socket } from "node:net";

const DEFAULT_PORT = 53;
const DEFAULT_CLUSTER_DOMAIN = "cluster.local";
const DEFAULT_REFRESH_MS = 1000;
const DEFAULT_TTL_SECONDS = 5;

/** start() waits this long for a first good answer set: a control plane can take seconds to come up. */
const START_DEADLINE_MS = 10_000;
const START_RETRY_MS = 200;

const TYPE_A = 1;
const TYPE_IXFR = 251;
const TYPE_AXFR = 252;
const TYPE_ANY = 255;
const CLASS_IN = 1;
const CLASS_ANY = 255;

const RCODE_NOERROR = 0;
const RCODE_FORMERR = 1;
const RCODE_NXDOMAIN = 3;
const RCODE_NOTIMP = 4;
const RCODE_REFUSED = 5;

const FLAG_QR = 0x8000;
const MASK_OPCODE = 0x7800;
const FLAG_AA = 0x0400;
const FLAG_TC = 0x0200;
const FLAG_RD = 0x0100;

const HEADER_BYTES = 12;
const MAX_NAME_BYTES = 255;
const MAX_LABEL_BYTES = 63;
/** An A RR whose owner is a pointer to the question's name: 2 + 2 + 2 + 4 + 2 + 4. */
const A_RECORD_BYTES = 16;
/** Points at offset 12, where the question's name always starts. */
const POINTER_TO_QUESTION_NAME = 0xc00c;

/** RFC 1035 4.2.1: without EDNS, a UDP message is at most 512 bytes. */
const UDP_MAX_RESPONSE = 512;
/** A query is one question (at most 12 + 259 + 4 bytes) plus whatever the client adds (EDNS, TSIG). */
const TCP_MAX_QUERY = 4096;
const TCP_MAX_RESPONSE = 0xffff;
const TCP_IDLE_MS = 10_000;
const TCP_MAX_CONNECTIONS = 64;
/** With port 0, TCP picks a free port and UDP must get the same one; another process may hold it. */
const BIND_ATTEMPTS = 20;

/** A Service as DNS sees it. */
export interface ServiceRecord {
  readonly name: string;
  readonly namespace: string;
  /** IPv4 addresses; empty when the Service has none (no ClusterIP yet, no ready endpoint). */
  readonly addresses: readonly string[];
}

export interface ClusterDnsOptions {
  /** Address to bind, e.g. "10.244.0.1" (tests use "127.0.0.1"). */
  readonly host: string;
  /** Default 53; 0 = any free port (the same for UDP and TCP). */
  readonly port?: number;
  /** Default "cluster.local". */
  readonly clusterDomain?: string;
  /** Returns the current services; called every `refreshMs` (default 1000). A failure keeps the last good answer set and is retried. */
  readonly records: () => Promise<readonly ServiceRecord[]>;
  readonly refreshMs?: number;
  /** Default 5: short, so a client that caches sees a changed Service soon. */
  readonly ttlSeconds?: number;
  readonly log?: (line: string) => void;
}

export type ClusterDnsErrorCode =
  /** An option is out of range. */
  | "EOPTIONS"
  /** records() failed (or, in start(), never succeeded within ~10 s). */
  | "ERECORDS"
  /** records() returned a record that cannot be served (a bad name, a non-IPv4 address). */
  | "EBADRECORD"
  /** serviceRecordsOf got something that is not a list of Services or EndpointSlices. */
  | "EBADOBJECT";

export class ClusterDnsError extends Error {
  readonly code: ClusterDnsErrorCode;

  constructor(code: ClusterDnsErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

interface Settings {
  readonly host: string;
  readonly port: number;
  readonly domainLabels: readonly string[];
  readonly records: () => Promise<readonly ServiceRecord[]>;
  readonly refreshMs: number;
  readonly ttlSeconds: number;
  readonly log: (line: string) => void;
}

/** Lower-case letters, digits and inner hyphens: what Kubernetes allows in Service and namespace names. */
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function isDnsLabel(text: string): boolean {
  return DNS_LABEL.test(text);
}

function optionError(message: string): ClusterDnsError {
  return new ClusterDnsError("EOPTIONS", `cluster-dns: ${message}`);
}

function integerIn(value: number, min: number, max: number): boolean {
  return Number.isInteger(value) && value >= min && value <= max;
}

function domainLabelsOf(clusterDomain: string): string[] {
  const labels = clusterDomain.toLowerCase().replace(/\.$/, "").split(".");
  if (!labels.every(isDnsLabel) || clusterDomain.length > 200) {
    throw optionError(`clusterDomain ${JSON.stringify(clusterDomain)} is not a domain name`);
  }
  return labels;
}

function settingsOf(options: ClusterDnsOptions): Settings {
  const port = options.port ?? DEFAULT_PORT;
  const refreshMs = options.refreshMs ?? DEFAULT_REFRESH_MS;
  const ttlSeconds = options.ttlSeconds ?? DEFAULT_TTL_SECONDS;
  if (isIP(options.host) === 0)
    throw optionError(`host ${JSON.stringify(options.host)} is not an IP address`);
  if (!integerIn(port, 0, 0xffff)) throw optionError(`port ${port} is not 0..65535`);
  if (!Number.isFinite(refreshMs) || refreshMs <= 0)
    throw optionError(`refreshMs ${refreshMs} is not positive`);
  if (!integerIn(ttlSeconds, 0, 0x7fffffff)) throw optionError(`ttlSeconds ${ttlSeconds} is not 0..2^31-1`);
  return {
    host: options.host,
    port,
    domainLabels: domainLabelsOf(options.clusterDomain ?? DEFAULT_CLUSTER_DOMAIN),
    records: options.records,
    refreshMs,
    ttlSeconds,
    log: options.log ?? (() => {}),
  };
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

// ---------------------------------------------------------------------------------------------
// The answer set

/** Namespace → Service → A RDATA. Immutable: a refresh swaps in a new one, so a query never sees half a set. */
class Zone {
  private constructor(
    private readonly namespaces: ReadonlyMap<string, ReadonlyMap<string, readonly Buffer[]>>,
  ) {}

  static of(records: readonly ServiceRecord[]): Zone {
    const namespaces = new Map<string, Map<string, Map<string, Buffer>>>();
    for (const record of records) {
      const namespace = recordLabel(record.namespace, "namespace", record);
      const name = recordLabel(record.name, "name", record);
      const services = namespaces.get(namespace) ?? new Map<string, Map<string, Buffer>>();
      namespaces.set(namespace, services);
      // Two records for one Service add up rather than the later one hiding the earlier.
      const addresses = services.get(name) ?? new Map<string, Buffer>();
      services.set(name, addresses);
      for (const address of record.addresses) addresses.set(address, ipv4Bytes(address, record));
    }
    const frozen = new Map<string, ReadonlyMap<string, readonly Buffer[]>>();
    for (const [namespace, services] of namespaces) {
      frozen.set(
        namespace,
        new Map([...services].map(([name, addresses]) => [name, [...addresses.values()]])),
      );
    }
    return new Zone(frozen);
  }

  get serviceCount(): number {
    let count = 0;
    for (const services of this.namespaces.values()) count += services.size;
    return count;
  }

  /**
   * The A RDATA of a name in the zone, given its labels left of the zone ([] for a name that exists
   * but has no A record), or undefined when no such name exists.
   */
  find(relative: readonly string[]): readonly Buffer[] | undefined {
    if (relative.length === 0) return [];
    if (relative[relative.length - 1] !== "svc") return undefined;
    const [first, second] = relative;
    if (relative.length === 1) return [];
    if (relative.length === 2 && first !== undefined) return this.namespaces.has(first) ? [] : undefined;
    if (relative.length === 3 && first !== undefined && second !== undefined) {
      return this.namespaces.get(second)?.get(first);
    }
    return undefined;
  }
}

function describeRecord(record: ServiceRecord): string {
  return `${JSON.stringify(record.namespace)}/${JSON.stringify(record.name)}`;
}

function recordLabel(text: unknown, field: string, record: ServiceRecord): string {
  const label = typeof text === "string" ? text.toLowerCase() : "";
  if (!isDnsLabel(label)) {
    throw new ClusterDnsError("EBADRECORD", `cluster-dns: record ${describeRecord(record)}: bad ${field}`);
  }
  return label;
}

function ipv4Bytes(address: unknown, record: ServiceRecord): Buffer {
  if (typeof address !== "string" || !isIPv4(address)) {
    throw new ClusterDnsError(
      "EBADRECORD",
      `cluster-dns: record ${describeRecord(record)}: ${JSON.stringify(address)} is not an IPv4 address`,
    );
  }
  return Buffer.from(address.split(".").map(Number));
}

async function loadZone(records: () => Promise<readonly ServiceRecord[]>): Promise<Zone> {
  let list: readonly ServiceRecord[];
  try {
    list = await records();
  } catch (error) {
    throw new ClusterDnsError("ERECORDS", `cluster-dns: records() failed: ${messageOf(error)}`, {
      cause: error,
    });
  }
  if (!Array.isArray(list))
    throw new ClusterDnsError("EBADRECORD", "cluster-dns: records() did not return an array");
  return Zone.of(list);
}

// ---------------------------------------------------------------------------------------------
// The wire format (RFC 1035 4.1)

interface Question {
  /** Lower-cased (ASCII only, as DNS compares names). */
  readonly labels: readonly string[];
  readonly type: number;
  readonly class: number;
  /** As received, name case included (a client using 0x20 randomisation checks it). */
  readonly wire: Buffer;
}

type Parsed =
  | { readonly kind: "drop" }
  | { readonly kind: "error"; readonly id: number; readonly flags: number; readonly rcode: number }
  | { readonly kind: "query"; readonly id: number; readonly flags: number; readonly question: Question };

const DROP: Parsed = { kind: "drop" };

function asciiLower(bytes: Uint8Array): string {
  let text = "";
  for (const byte of bytes) text += String.fromCharCode(byte >= 0x41 && byte <= 0x5a ? byte + 0x20 : byte);
  return text;
}

/** The question's name from offset 12: labels and where the name ends, or undefined if malformed. */
function parseName(message: Buffer): { labels: string[]; end: number } | undefined {
  const labels: string[] = [];
  let offset = HEADER_BYTES;
  let nameBytes = 1; // the root label's zero byte
  for (;;) {
    const length = message[offset];
    if (length === undefined) return undefined;
    if (length === 0) return { labels, end: offset + 1 };
    // The top two bits set is a compression pointer (nothing earlier to point at in a question);
    // either one alone is an obsolete or unassigned label type. Both cover "label > 63".
    if (length > MAX_LABEL_BYTES) return undefined;
    nameBytes += length + 1;
    if (nameBytes > MAX_NAME_BYTES) return undefined;
    const start = offset + 1;
    if (start + length > message.length) return undefined;
    labels.push(asciiLower(message.subarray(start, start + length)));
    offset = start + length;
  }
}

function parseQuery(message: Buffer): Parsed {
  if (message.length < HEADER_BYTES) return DROP;
  const id = message.readUInt16BE(0);
  const flags = message.readUInt16BE(2);
  // Answering a response could start a loop between two servers.
  if ((flags & FLAG_QR) !== 0) return DROP;
  if ((flags & MASK_OPCODE) !== 0) return { kind: "error", id, flags, rcode: RCODE_NOTIMP };
  if (message.readUInt16BE(4) !== 1) return { kind: "error", id, flags, rcode: RCODE_FORMERR };
  const name = parseName(message);
  if (name === undefined || name.end + 4 > message.length)
    return { kind: "error", id, flags, rcode: RCODE_FORMERR };
  // Answer, authority and additional records (an EDNS OPT) after the question are not read.
  const question: Question = {
    labels: name.labels,
    type: message.readUInt16BE(name.end),
    class: message.readUInt16BE(name.end + 2),
    wire: Buffer.from(message.subarray(HEADER_BYTES, name.end + 4)),
  };
  return { kind: "query", id, flags, question };
}

function responseFlags(
  queryFlags: number,
  rcode: number,
  authoritative: boolean,
  truncated: boolean,
): number {
  return (
    FLAG_QR |
    (queryFlags & MASK_OPCODE) |
    (authoritative ? FLAG_AA : 0) |
    (truncated ? FLAG_TC : 0) |
    (queryFlags & FLAG_RD) |
    rcode
  );
}

function header(id: number, flags: number, questions: number, answers: number): Buffer {
  const bytes = Buffer.alloc(HEADER_BYTES);
  bytes.writeUInt16BE(id, 0);
  bytes.writeUInt16BE(flags, 2);
  bytes.writeUInt16BE(questions, 4);
  bytes.writeUInt16BE(answers, 6);
  return bytes;
}

/** FORMERR and NOTIMP carry no question: the one received is not trusted enough to echo. */
function errorResponse(id: number, queryFlags: number, rcode: number): Buffer {
  return header(id, responseFlags(queryFlags, rcode, false, false), 0, 0);
}

function aRecord(rdata: Buffer, ttlSeconds: number): Buffer {
  const record = Buffer.alloc(A_RECORD_BYTES);
  record.writeUInt16BE(POINTER_TO_QUESTION_NAME, 0);
  record.writeUInt16BE(TYPE_A, 2);
  record.writeUInt16BE(CLASS_IN, 4);
  record.writeUInt32BE(ttlSeconds, 6);
  record.writeUInt16BE(rdata.length, 10);
  rdata.copy(record, 12);
  return record;
}

interface Outcome {
  readonly rcode: number;
  readonly authoritative: boolean;
  readonly addresses: readonly Buffer[];
}

const REFUSED: Outcome = { rcode: RCODE_REFUSED, authoritative: false, addresses: [] };
const NXDOMAIN: Outcome = { rcode: RCODE_NXDOMAIN, authoritative: true, addresses: [] };

/** The question's labels left of the zone, or undefined when the name is not in the zone. */
function relativeLabels(labels: readonly string[], domainLabels: readonly string[]): string[] | undefined {
  const split = labels.length - domainLabels.length;
  if (split < 0) return undefined;
  for (const [index, label] of domainLabels.entries()) {
    if (labels[split + index] !== label) return undefined;
  }
  return labels.slice(0, split);
}

function lookup(question: Question, zone: Zone, domainLabels: readonly string[]): Outcome {
  if (question.class !== CLASS_IN && question.class !== CLASS_ANY) return REFUSED;
  // Zone transfers are not offered to anyone.
  if (question.type === TYPE_AXFR || question.type === TYPE_IXFR) return REFUSED;
  const relative = relativeLabels(question.labels, domainLabels);
  if (relative === undefined) return REFUSED;
  const addresses = zone.find(relative);
  if (addresses === undefined) return NXDOMAIN;
  // ANY asks for every record of the name, and the A records are all there are.
  const wantsA = question.type === TYPE_A || question.type === TYPE_ANY;
  return { rcode: RCODE_NOERROR, authoritative: true, addresses: wantsA ? addresses : [] };
}

function encodeResponse(
  id: number,
  queryFlags: number,
  question: Question,
  outcome: Outcome,
  ttlSeconds: number,
  maxBytes: number,
): Buffer {
  const room = Math.floor((maxBytes - HEADER_BYTES - question.wire.length) / A_RECORD_BYTES);
  // As many whole records as fit; TC tells glibc to ask again over TCP for all of them.
  const fitting = outcome.addresses.slice(0, Math.max(0, room));
  const truncated = fitting.length < outcome.addresses.length;
  const flags = responseFlags(queryFlags, outcome.rcode, outcome.authoritative, truncated);
  return Buffer.concat([
    header(id, flags, 1, fitting.length),
    question.wire,
    ...fitting.map((rdata) => aRecord(rdata, ttlSeconds)),
  ]);
}

// ---------------------------------------------------------------------------------------------
// Sockets

type Answerer = (message: Buffer, maxBytes: number) => Buffer | undefined;

function lengthPrefixed(message: Buffer): Buffer {
  const prefix = Buffer.alloc(2);
  prefix.writeUInt16BE(message.length, 0);
  return Buffer.concat([prefix, message]);
}

/** RFC 1035 4.2.2 (and RFC 7766): any number of length-prefixed queries on one connection. */
function serveTcpConnection(socket: Socket, answer: Answerer): void {
  let pending = Buffer.alloc(0);
  socket.setTimeout(TCP_IDLE_MS, () => socket.destroy());
  socket.on("error", () => socket.destroy());
  socket.on("data", (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 2) {
      const length = pending.readUInt16BE(0);
      // No query is this long; a client that says so is not speaking DNS.
      if (length > TCP_MAX_QUERY) {
        socket.destroy();
        return;
      }
      if (pending.length < 2 + length) return;
      const message = pending.subarray(2, 2 + length);
      pending = pending.subarray(2 + length);
      const reply = answer(message, TCP_MAX_RESPONSE);
      // A client that sends queries without reading the answers is not buffered for without end.
      if (reply !== undefined && !socket.write(lengthPrefixed(reply))) {
        socket.pause();
        socket.once("drain", () => socket.resume());
      }
    }
  });
}

interface Listeners {
  readonly udp: UdpSocket;
  readonly tcp: Server;
  readonly port: number;
}

function tcpPortOf(server: Server): number {
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("cluster-dns: no TCP address");
  return address.port;
}

function closeQuietly(udp: UdpSocket | undefined, tcp: Server): void {
  try {
    udp?.close();
  } catch {
    // Never bound, or closed already: nothing to release.
  }
  tcp.close();
}

function isAddressInUse(error: unknown): boolean {
  return error instanceof Error && (error as NodeJS.ErrnoException).code === "EADDRINUSE";
}

async function bindOnce(host: string, port: number): Promise<Listeners> {
  const tcp = createServer();
  tcp.maxConnections = TCP_MAX_CONNECTIONS;
  tcp.listen(port, host);
  await once(tcp, "listening");
  const bound = tcpPortOf(tcp);
  const udp = createSocket(isIPv6(host) ? "udp6" : "udp4");
  try {
    udp.bind(bound, host);
    await once(udp, "listening");
  } catch (error) {
    closeQuietly(udp, tcp);
    throw error;
  }
  return { udp, tcp, port: bound };
}

async function bindListeners(host: string, port: number): Promise<Listeners> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await bindOnce(host, port);
    } catch (error) {
      // Only a port TCP chose for us is worth another try; a port asked for stays taken.
      if (port !== 0 || !isAddressInUse(error) || attempt >= BIND_ATTEMPTS) throw error;
    }
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The first answer set: retried, because the API server behind records() may still be starting. */
async function firstZone(settings: Settings): Promise<Zone> {
  const deadline = Date.now() + START_DEADLINE_MS;
  for (;;) {
    try {
      return await loadZone(settings.records);
    } catch (error) {
      if (Date.now() + START_RETRY_MS > deadline) {
        throw new ClusterDnsError(
          "ERECORDS",
          `cluster-dns: no records within ${START_DEADLINE_MS / 1000} s: ${messageOf(error)}`,
          { cause: error },
        );
      }
      await delay(START_RETRY_MS);
    }
  }
}

export class ClusterDns {
  private listeners: Listeners | undefined;
  private readonly connections = new Set<Socket>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private stopping: Promise<void> | undefined;
  /** Refreshes may overlap (the timer's and a test's); only a newer one may replace the answer set. */
  private requested = 0;
  private applied = 0;
  /** The reason of the failing run of refreshes, if one is under way. */
  private failure: string | undefined;

  private constructor(
    private readonly settings: Settings,
    private zone: Zone,
  ) {}

  static async start(options: ClusterDnsOptions): Promise<ClusterDns> {
    const settings = settingsOf(options);
    // Records first: a query must never get NXDOMAIN only because the set is not loaded yet.
    const dns = new ClusterDns(settings, await firstZone(settings));
    await dns.listen();
    dns.schedule();
    const domain = settings.domainLabels.join(".");
    settings.log(
      `cluster-dns: serving ${domain} on ${settings.host}:${dns.port} (udp+tcp), ${dns.zone.serviceCount} services`,
    );
    return dns;
  }

  get port(): number {
    if (this.listeners === undefined) throw new Error("cluster-dns: not listening");
    return this.listeners.port;
  }

  /**
   * Re-reads records now (tests call it instead of waiting for the next refresh). Rejects with a
   * ClusterDnsError when records() fails or returns a bad record; the last good set stays served.
   */
  async refresh(): Promise<void> {
    if (this.stopped) return;
    const generation = ++this.requested;
    let zone: Zone;
    try {
      zone = await loadZone(this.settings.records);
    } catch (error) {
      this.reportFailure(error);
      throw error;
    }
    if (this.stopped || generation <= this.applied) return;
    this.applied = generation;
    this.zone = zone;
    if (this.failure !== undefined) {
      this.settings.log(`cluster-dns: records() works again, ${zone.serviceCount} services`);
    }
    this.failure = undefined;
  }

  /** Idempotent: a second call waits for the first. */
  stop(): Promise<void> {
    this.stopping ??= this.close();
    return this.stopping;
  }

  private async close(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    const listeners = this.listeners;
    if (listeners === undefined) return;
    // server.close() waits for open connections; a client's idle one would hold stop() for 10 s.
    for (const socket of this.connections) socket.destroy();
    const tcpClosed = new Promise<void>((resolve) => listeners.tcp.close(() => resolve()));
    const udpClosed = new Promise<void>((resolve) => listeners.udp.close(() => resolve()));
    await Promise.all([tcpClosed, udpClosed]);
    this.settings.log(`cluster-dns: stopped on ${this.settings.host}:${listeners.port}`);
  }

  private async listen(): Promise<void> {
    const listeners = await bindListeners(this.settings.host, this.settings.port);
    this.listeners = listeners;
    const answer: Answerer = (message, maxBytes) => this.answer(message, maxBytes);
    listeners.udp.on("message", (message, remote) => {
      const reply = answer(message, UDP_MAX_RESPONSE);
      // A send error (the client's port gone) is the client's loss; the server carries on.
      if (reply !== undefined) listeners.udp.send(reply, remote.port, remote.address, () => {});
    });
    listeners.udp.on("error", (error) => this.settings.log(`cluster-dns: UDP socket: ${error.message}`));
    listeners.tcp.on("error", (error) => this.settings.log(`cluster-dns: TCP server: ${error.message}`));
    listeners.tcp.on("connection", (socket) => {
      this.connections.add(socket);
      socket.on("close", () => this.connections.delete(socket));
      serveTcpConnection(socket, answer);
    });
  }

  /** Never throws: whatever a client sends, the socket handlers go on serving the next query. */
  private answer(message: Buffer, maxBytes: number): Buffer | undefined {
    try {
      const parsed = parseQuery(message);
      if (parsed.kind === "drop") return undefined;
      if (parsed.kind === "error") return errorResponse(parsed.id, parsed.flags, parsed.rcode);
      const outcome = lookup(parsed.question, this.zone, this.settings.domainLabels);
      return encodeResponse(
        parsed.id,
        parsed.flags,
        parsed.question,
        outcome,
        this.settings.ttlSeconds,
        maxBytes,
      );
    } catch (error) {
      this.settings.log(`cluster-dns: dropped a query: ${messageOf(error)}`);
      return undefined;
    }
  }

  /** A chain of timeouts rather than an interval, so a slow records() never overlaps itself. */
  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.refresh()
        .catch(() => {
          // Reported by refresh(); the last good set stays and the next tick tries again.
        })
        .finally(() => this.schedule());
    }, this.settings.refreshMs);
    // The sockets keep the process alive while it serves; the timer alone should not.
    this.timer.unref();
  }

  /** Logs the first failure of a run and any change of reason, not every poll of a long outage. */
  private reportFailure(error: unknown): void {
    const reason = messageOf(error);
    if (reason === this.failure) return;
    this.failure = reason;
    this.settings.log(`${reason}; keeping the last ${this.zone.serviceCount} services`);
  }
}

// ---------------------------------------------------------------------------------------------
// From the Kubernetes API

type Json = Readonly<Record<string, unknown>>;

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function field(value: unknown, key: string): unknown {
  return isObject(value) ? value[key] : undefined;
}

function stringField(value: unknown, key: string): string | undefined {
  const found = field(value, key);
  return typeof found === "string" ? found : undefined;
}

function arrayField(value: unknown, key: string): readonly unknown[] {
  const found = field(value, key);
  return Array.isArray(found) ? found : [];
}

/** A list object (`{ items: [...] }`, as the API and the client library return it) or a bare array. */
function itemsOf(list: unknown, what: string): readonly unknown[] {
  if (Array.isArray(list)) return list;
  const items = field(list, "items");
  if (Array.isArray(items)) return items;
  throw new ClusterDnsError("EBADOBJECT", `cluster-dns: ${what} is neither a list object nor an array`);
}

function nameAndNamespace(object: unknown, what: string): { name: string; namespace: string } {
  const metadata = field(object, "metadata");
  const name = stringField(metadata, "name");
  const namespace = stringField(metadata, "namespace");
  if (name === undefined || namespace === undefined) {
    throw new ClusterDnsError(
      "EBADOBJECT",
      `cluster-dns: ${what} without metadata.name and metadata.namespace`,
    );
  }
  return { name, namespace };
}

function endpointSliceKey(namespace: string, service: string): string {
  return `${namespace}/${service}`;
}

/** The ready IPv4 addresses of every EndpointSlice, by the Service it is labelled for. */
function readyAddressesByService(endpointSlices: unknown): Map<string, string[]> {
  const byService = new Map<string, string[]>();
  for (const slice of itemsOf(endpointSlices, "endpointSlices")) {
    if (field(slice, "addressType") !== "IPv4") continue;
    const service = stringField(field(field(slice, "metadata"), "labels"), "kubernetes.io/service-name");
    if (service === undefined) continue;
    const { namespace } = nameAndNamespace(slice, "an EndpointSlice");
    const key = endpointSliceKey(namespace, service);
    const addresses = byService.get(key) ?? [];
    byService.set(key, addresses);
    for (const endpoint of arrayField(slice, "endpoints")) {
      // Unset means unknown, which Kubernetes tells consumers to treat as ready.
      if (field(field(endpoint, "conditions"), "ready") === false) continue;
      for (const address of arrayField(endpoint, "addresses")) {
        if (typeof address === "string" && isIPv4(address)) addresses.push(address);
      }
    }
  }
  return byService;
}

function isHeadless(spec: unknown): boolean {
  return field(spec, "clusterIP") === "None" || arrayField(spec, "clusterIPs")[0] === "None";
}

/** The IPv4 ClusterIPs (a dual-stack Service lists both families in clusterIPs). */
function clusterIpv4Addresses(spec: unknown): string[] {
  const clusterIPs = arrayField(spec, "clusterIPs");
  const candidates = clusterIPs.length > 0 ? clusterIPs : [field(spec, "clusterIP")];
  return candidates.filter((address): address is string => typeof address === "string" && isIPv4(address));
}

/**
 * Services and EndpointSlices from the Kubernetes API as ServiceRecords: a Service with a ClusterIP
 * answers that IP; a headless one (clusterIP "None") answers the addresses of its ready endpoints
 * (EndpointSlices labelled kubernetes.io/service-name=<name>, addressType IPv4,
 * conditions.ready !== false). Either argument may be a list object or an array of items.
 *
 * A Service with no address yet (no ClusterIP, an ExternalName, a headless one with no ready
 * endpoint) is still a record, with no addresses: the Service exists, so its name does too, and A
 * gets NODATA rather than NXDOMAIN.
 */
export function serviceRecordsOf(services: unknown, endpointSlices: unknown): ServiceRecord[] {
  const ready = readyAddressesByService(endpointSlices);
  return itemsOf(services, "services").map((service) => {
    const { name, namespace } = nameAndNamespace(service, "a Service");
    const spec = field(service, "spec");
    const addresses = isHeadless(spec)
      ? [...new Set(ready.get(endpointSliceKey(namespace, name)) ?? [])]
      : clusterIpv4Addresses(spec);
    return { name, namespace, addresses };
  });
}
