/**
 * The test cluster's DNS stand-in, asked by Node's own resolver (c-ares, a real DNS client) and by
 * hand-made packets for what no well-behaved client sends.
 */
import { createSocket } from "node:dgram";
import { promises as dnsPromises } from "node:dns";
import { once } from "node:events";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ClusterDns, ClusterDnsError, type ServiceRecord, serviceRecordsOf } from "../support/cluster-dns.js";

const HOST = "127.0.0.1";
const PAYMENTS = "payments.shop.svc.cluster.local";
/** Long enough that a periodic refresh never lands inside a test that expects none. */
const NO_PERIODIC_REFRESH_MS = 3_600_000;

const RCODE_NOERROR = 0;
const RCODE_FORMERR = 1;
const RCODE_NXDOMAIN = 3;
const RCODE_REFUSED = 5;

interface Records {
  current: ServiceRecord[];
  failWith: Error | undefined;
  calls: number;
}

function recordsSource(
  initial: ServiceRecord[],
): Records & { read: () => Promise<readonly ServiceRecord[]> } {
  const state: Records = { current: initial, failWith: undefined, calls: 0 };
  return Object.assign(state, {
    read: async (): Promise<readonly ServiceRecord[]> => {
      state.calls++;
      if (state.failWith !== undefined) throw state.failWith;
      return state.current;
    },
  });
}

function resolverFor(port: number): dnsPromises.Resolver {
  // One try and a generous timeout: a lost answer fails the test rather than hiding behind retries.
  const resolver = new dnsPromises.Resolver({ timeout: 5000, tries: 1 });
  resolver.setServers([`${HOST}:${port}`]);
  return resolver;
}

async function errorCodeOf(lookup: Promise<unknown>): Promise<string | undefined> {
  try {
    await lookup;
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code;
  }
}

// ---------------------------------------------------------------------------------------------
// Packets by hand

function encodeName(name: string): Buffer {
  const labels = name.split(".").filter((label) => label.length > 0);
  return Buffer.concat([
    ...labels.map((label) => Buffer.concat([Buffer.from([label.length]), Buffer.from(label, "ascii")])),
    Buffer.from([0]),
  ]);
}

function question(name: string, type: number): Buffer {
  const fixed = Buffer.alloc(4);
  fixed.writeUInt16BE(type, 0);
  fixed.writeUInt16BE(1, 2); // class IN
  return Buffer.concat([encodeName(name), fixed]);
}

/** A query with RD set, as a stub resolver sends it; `questions` may be more than one on purpose. */
function query(id: number, questions: readonly Buffer[]): Buffer {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(0x0100, 2);
  header.writeUInt16BE(questions.length, 4);
  return Buffer.concat([header, ...questions]);
}

interface Response {
  readonly id: number;
  readonly qr: boolean;
  readonly aa: boolean;
  readonly rd: boolean;
  readonly ra: boolean;
  readonly rcode: number;
  readonly questions: number;
  readonly answers: number;
  readonly raw: Buffer;
}

function parseResponse(raw: Buffer): Response {
  const flags = raw.readUInt16BE(2);
  return {
    id: raw.readUInt16BE(0),
    qr: (flags & 0x8000) !== 0,
    aa: (flags & 0x0400) !== 0,
    rd: (flags & 0x0100) !== 0,
    ra: (flags & 0x0080) !== 0,
    rcode: flags & 0x000f,
    questions: raw.readUInt16BE(4),
    answers: raw.readUInt16BE(6),
    raw,
  };
}

/** The IPv4 addresses in a response to one A question whose answers point back at its name. */
function answerAddresses(response: Response, questionBytes: number): string[] {
  const addresses: string[] = [];
  let offset = 12 + questionBytes;
  for (let index = 0; index < response.answers; index++) {
    const rdata = response.raw.subarray(offset + 12, offset + 16);
    addresses.push([...rdata].join("."));
    offset += 16;
  }
  return addresses;
}

/** Sends each packet in turn from one UDP socket and resolves with the first answer that comes back. */
async function udpExchange(port: number, packets: readonly Buffer[]): Promise<Response> {
  const socket = createSocket("udp4");
  try {
    const answered = once(socket, "message", { signal: AbortSignal.timeout(5000) });
    for (const packet of packets) socket.send(packet, port, HOST);
    const [message] = (await answered) as [Buffer];
    return parseResponse(message);
  } finally {
    socket.close();
  }
}

/** One length-prefixed query over TCP (RFC 1035 4.2.2); resolves with the one answer. */
async function tcpExchange(port: number, packet: Buffer): Promise<Response> {
  const socket = connect(port, HOST);
  try {
    await once(socket, "connect");
    const prefix = Buffer.alloc(2);
    prefix.writeUInt16BE(packet.length, 0);
    socket.write(Buffer.concat([prefix, packet]));
    let received = Buffer.alloc(0);
    const timeout = AbortSignal.timeout(5000);
    while (received.length < 2 || received.length < 2 + received.readUInt16BE(0)) {
      const [chunk] = (await once(socket, "data", { signal: timeout })) as [Buffer];
      received = Buffer.concat([received, chunk]);
    }
    expect(received.length).toBe(2 + received.readUInt16BE(0));
    return parseResponse(received.subarray(2));
  } finally {
    socket.destroy();
  }
}

// ---------------------------------------------------------------------------------------------

describe("ClusterDns", () => {
  const records = recordsSource([]);
  let server: ClusterDns;
  let resolver: dnsPromises.Resolver;
  const logged: string[] = [];

  beforeAll(async () => {
    records.current = [
      { name: "payments", namespace: "shop", addresses: ["10.96.0.10"] },
      { name: "db", namespace: "shop", addresses: ["10.244.1.5", "10.244.2.7"] },
      { name: "pending", namespace: "shop", addresses: [] },
    ];
    server = await ClusterDns.start({
      host: HOST,
      port: 0,
      records: records.read,
      refreshMs: NO_PERIODIC_REFRESH_MS,
      log: (line) => logged.push(line),
    });
    resolver = resolverFor(server.port);
  });

  afterAll(async () => {
    await server?.stop();
  });

  it("answers a Service's A query with its address and the configured TTL", async () => {
    expect(server.port).toBeGreaterThan(0);
    await expect(resolver.resolve4(PAYMENTS, { ttl: true })).resolves.toEqual([
      { address: "10.96.0.10", ttl: 5 },
    ]);
  });

  it("answers every address of a Service, case-insensitively, with or without the trailing dot", async () => {
    expect((await resolver.resolve4("DB.Shop.SVC.cluster.local.")).sort()).toEqual([
      "10.244.1.5",
      "10.244.2.7",
    ]);
  });

  it("gives NODATA (ENODATA) for AAAA of an existing Service", async () => {
    expect(await errorCodeOf(resolver.resolve6(PAYMENTS))).toBe("ENODATA");
  });

  it("gives NODATA for a Service without addresses and for the namespace's own name", async () => {
    expect(await errorCodeOf(resolver.resolve4("pending.shop.svc.cluster.local"))).toBe("ENODATA");
    expect(await errorCodeOf(resolver.resolve4("shop.svc.cluster.local"))).toBe("ENODATA");
    expect(await errorCodeOf(resolver.resolve4("svc.cluster.local"))).toBe("ENODATA");
  });

  it("gives NXDOMAIN (ENOTFOUND) for a name in the zone that does not exist, as a search suffix makes", async () => {
    expect(await errorCodeOf(resolver.resolve4("nope.shop.svc.cluster.local"))).toBe("ENOTFOUND");
    expect(await errorCodeOf(resolver.resolve4(`${PAYMENTS}.shop.svc.cluster.local`))).toBe("ENOTFOUND");
    expect(await errorCodeOf(resolver.resolve4("payments.other.svc.cluster.local"))).toBe("ENOTFOUND");
  });

  it("refuses (EREFUSED) a name outside the cluster domain: it does not recurse", async () => {
    expect(await errorCodeOf(resolver.resolve4("example.com"))).toBe("EREFUSED");
    expect(await errorCodeOf(resolver.resolve4("cluster.localhost"))).toBe("EREFUSED");
  });

  it("sets the header as an authoritative, non-recursive server does", async () => {
    const found = await udpExchange(server.port, [query(0x1234, [question(PAYMENTS, 1)])]);
    expect(found).toMatchObject({
      id: 0x1234,
      qr: true,
      aa: true,
      rd: true,
      ra: false,
      rcode: RCODE_NOERROR,
    });
    expect(found.questions).toBe(1);
    expect(answerAddresses(found, question(PAYMENTS, 1).length)).toEqual(["10.96.0.10"]);

    const missing = await udpExchange(server.port, [
      query(0x1235, [question("x.shop.svc.cluster.local", 1)]),
    ]);
    expect(missing).toMatchObject({ id: 0x1235, qr: true, aa: true, rcode: RCODE_NXDOMAIN, answers: 0 });

    const outside = await udpExchange(server.port, [query(0x1236, [question("example.com", 1)])]);
    expect(outside).toMatchObject({ id: 0x1236, qr: true, aa: false, ra: false, rcode: RCODE_REFUSED });
  });

  it("serves the new answer after the records change and refresh()", async () => {
    const before = records.current;
    records.current = [
      { name: "payments", namespace: "shop", addresses: ["10.96.0.99"] },
      { name: "orders", namespace: "shop", addresses: ["10.96.0.20"] },
    ];
    try {
      await server.refresh();
      expect(await resolver.resolve4(PAYMENTS)).toEqual(["10.96.0.99"]);
      expect(await resolver.resolve4("orders.shop.svc.cluster.local")).toEqual(["10.96.0.20"]);
      expect(await errorCodeOf(resolver.resolve4("db.shop.svc.cluster.local"))).toBe("ENOTFOUND");
    } finally {
      records.current = before;
      await server.refresh();
    }
    expect(await resolver.resolve4(PAYMENTS)).toEqual(["10.96.0.10"]);
  });

  it("keeps the last good answers when records() fails, and reports the failure", async () => {
    const before = records.current;
    records.current = [{ name: "payments", namespace: "shop", addresses: ["10.96.0.77"] }];
    records.failWith = new Error("the API server is away");
    try {
      const failure = await server.refresh().then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(failure).toBeInstanceOf(ClusterDnsError);
      expect(failure).toMatchObject({ code: "ERECORDS" });
      expect(await resolver.resolve4(PAYMENTS)).toEqual(["10.96.0.10"]);
      expect(logged.some((line) => line.includes("the API server is away"))).toBe(true);
    } finally {
      records.failWith = undefined;
      records.current = before;
    }
    await server.refresh();
    expect(await resolver.resolve4(PAYMENTS)).toEqual(["10.96.0.10"]);
  });

  it("keeps the last good answers when records() returns a record it cannot serve", async () => {
    const before = records.current;
    records.current = [{ name: "payments", namespace: "shop", addresses: ["fd00::1"] }];
    try {
      await expect(server.refresh()).rejects.toMatchObject({ code: "EBADRECORD" });
      expect(await resolver.resolve4(PAYMENTS)).toEqual(["10.96.0.10"]);
    } finally {
      records.current = before;
    }
  });

  it("survives a truncated packet and answers the next query", async () => {
    // Too short for a header, so nothing to answer to; and a response, which must never be answered.
    const response = query(0x5151, [question(PAYMENTS, 1)]);
    response.writeUInt16BE(0x8180, 2);
    const junk = [Buffer.from([0x12, 0x34, 0x01]), Buffer.alloc(0), Buffer.from("not dns"), response];
    const next = query(0x4242, [question(PAYMENTS, 1)]);
    // Over one socket in order: had the junk stopped the server, this answer would not come.
    const answer = await udpExchange(server.port, [...junk, next]);
    expect(answer).toMatchObject({ id: 0x4242, rcode: RCODE_NOERROR, answers: 1 });
    expect(await resolver.resolve4(PAYMENTS)).toEqual(["10.96.0.10"]);
  });

  it("answers FORMERR to a query with two questions", async () => {
    const twoQuestions = query(0x0bad, [question(PAYMENTS, 1), question(PAYMENTS, 28)]);
    const answer = await udpExchange(server.port, [twoQuestions]);
    expect(answer).toMatchObject({ id: 0x0bad, qr: true, rd: true, rcode: RCODE_FORMERR, answers: 0 });
  });

  it("answers FORMERR to a question cut short and to a compression pointer in the question", async () => {
    const full = query(0x0c01, [question(PAYMENTS, 1)]);
    const cut = await udpExchange(server.port, [full.subarray(0, full.length - 3)]);
    expect(cut).toMatchObject({ id: 0x0c01, rcode: RCODE_FORMERR });

    const pointer = query(0x0c02, [Buffer.from([0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01])]);
    const pointed = await udpExchange(server.port, [pointer]);
    expect(pointed).toMatchObject({ id: 0x0c02, rcode: RCODE_FORMERR });
  });

  it("ignores an EDNS OPT record in the query and answers without one", async () => {
    // OPT: root name, type 41, UDP size 1232, extended rcode/flags 0, no options.
    const opt = Buffer.from([0x00, 0x00, 0x29, 0x04, 0xd0, 0, 0, 0, 0, 0x00, 0x00]);
    const packet = query(0x0e05, [question(PAYMENTS, 1)]);
    packet.writeUInt16BE(1, 10); // ARCOUNT
    const answer = await udpExchange(server.port, [Buffer.concat([packet, opt])]);
    expect(answer).toMatchObject({ id: 0x0e05, rcode: RCODE_NOERROR, answers: 1 });
    expect(answer.raw.readUInt16BE(10)).toBe(0);
  });

  it("gives the same answer over TCP, with the length prefix, as over UDP", async () => {
    const packet = query(0x7cd9, [question("DB.shop.svc.cluster.local", 1)]);
    const overUdp = await udpExchange(server.port, [packet]);
    const overTcp = await tcpExchange(server.port, packet);
    expect(overTcp.raw.equals(overUdp.raw)).toBe(true);
    expect(answerAddresses(overTcp, question("DB.shop.svc.cluster.local", 1).length).sort()).toEqual([
      "10.244.1.5",
      "10.244.2.7",
    ]);
  });
});

describe("ClusterDns with more addresses than fit in 512 bytes", () => {
  it("truncates over UDP (TC=1) and gives all of them over TCP", async () => {
    const many = Array.from({ length: 40 }, (_, index) => `10.244.7.${index + 1}`);
    const server = await ClusterDns.start({
      host: HOST,
      port: 0,
      refreshMs: NO_PERIODIC_REFRESH_MS,
      records: async () => [{ name: "big", namespace: "shop", addresses: many }],
    });
    try {
      const name = "big.shop.svc.cluster.local";
      const packet = query(0x0b16, [question(name, 1)]);
      const overUdp = await udpExchange(server.port, [packet]);
      expect(overUdp.raw.length).toBeLessThanOrEqual(512);
      expect(overUdp.raw.readUInt16BE(2) & 0x0200).toBe(0x0200);
      expect(overUdp.answers).toBeLessThan(40);
      const overTcp = await tcpExchange(server.port, packet);
      expect(overTcp.raw.readUInt16BE(2) & 0x0200).toBe(0);
      expect(answerAddresses(overTcp, question(name, 1).length)).toEqual(many);
      // c-ares, like glibc, asks again over TCP when it sees TC.
      expect((await resolverFor(server.port).resolve4(name)).sort()).toEqual([...many].sort());
    } finally {
      await server.stop();
    }
  });
});

describe("ClusterDns lifecycle", () => {
  it("retries a failing first records() call before start() resolves", async () => {
    const records = recordsSource([{ name: "payments", namespace: "shop", addresses: ["10.96.0.10"] }]);
    records.failWith = new Error("not yet");
    const read = records.read;
    const started = ClusterDns.start({
      host: HOST,
      port: 0,
      refreshMs: NO_PERIODIC_REFRESH_MS,
      records: async () => {
        const list = read();
        records.failWith = undefined;
        return list;
      },
    });
    const server = await started;
    try {
      expect(records.calls).toBeGreaterThanOrEqual(2);
      expect(await resolverFor(server.port).resolve4(PAYMENTS)).toEqual(["10.96.0.10"]);
    } finally {
      await server.stop();
    }
  });

  it("picks up a change on its own at the next periodic refresh", async () => {
    const records = recordsSource([{ name: "payments", namespace: "shop", addresses: ["10.96.0.10"] }]);
    const server = await ClusterDns.start({ host: HOST, port: 0, refreshMs: 50, records: records.read });
    try {
      const resolver = resolverFor(server.port);
      records.current = [{ name: "payments", namespace: "shop", addresses: ["10.96.0.11"] }];
      await expect
        .poll(() => resolver.resolve4(PAYMENTS), { timeout: 10_000, interval: 50 })
        .toEqual(["10.96.0.11"]);
    } finally {
      await server.stop();
    }
  });

  it("answers for another cluster domain only", async () => {
    const server = await ClusterDns.start({
      host: HOST,
      port: 0,
      clusterDomain: "Example.Test.",
      refreshMs: NO_PERIODIC_REFRESH_MS,
      records: async () => [{ name: "payments", namespace: "shop", addresses: ["10.96.0.10"] }],
    });
    try {
      const resolver = resolverFor(server.port);
      expect(await resolver.resolve4("payments.shop.svc.example.test")).toEqual(["10.96.0.10"]);
      expect(await errorCodeOf(resolver.resolve4(PAYMENTS))).toBe("EREFUSED");
    } finally {
      await server.stop();
    }
  });

  it("stops idempotently and closes its sockets", async () => {
    const server = await ClusterDns.start({
      host: HOST,
      port: 0,
      refreshMs: 50,
      records: async () => [],
    });
    const port = server.port;
    const idle = connect(port, HOST);
    await once(idle, "connect");
    const idleClosed = once(idle, "close");
    await Promise.all([server.stop(), server.stop()]);
    await server.stop();
    await idleClosed;
    const refused = connect(port, HOST);
    const [error] = (await once(refused, "error")) as [NodeJS.ErrnoException];
    expect(error.code).toBe("ECONNREFUSED");
    await expect(server.refresh()).resolves.toBeUndefined();
  });

  it("rejects options it cannot serve", async () => {
    const records = async (): Promise<readonly ServiceRecord[]> => [];
    await expect(ClusterDns.start({ host: "localhost", records })).rejects.toMatchObject({
      code: "EOPTIONS",
    });
    await expect(ClusterDns.start({ host: HOST, port: 70_000, records })).rejects.toMatchObject({
      code: "EOPTIONS",
    });
    await expect(
      ClusterDns.start({ host: HOST, port: 0, clusterDomain: "a..b", records }),
    ).rejects.toMatchObject({
      code: "EOPTIONS",
    });
  });
});

describe("serviceRecordsOf", () => {
  const service = (name: string, spec: Record<string, unknown>) => ({
    metadata: { name, namespace: "shop" },
    spec,
  });
  const slice = (name: string, service: string, endpoints: unknown[], addressType = "IPv4") => ({
    metadata: { name, namespace: "shop", labels: { "kubernetes.io/service-name": service } },
    addressType,
    endpoints,
  });

  it("answers a ClusterIP Service with its ClusterIP (the IPv4 one of a dual-stack Service)", () => {
    const services = {
      items: [
        service("payments", { clusterIP: "10.96.0.10", clusterIPs: ["10.96.0.10"] }),
        service("dual", { clusterIP: "fd00::10", clusterIPs: ["fd00::10", "10.96.0.11"] }),
      ],
    };
    expect(serviceRecordsOf(services, { items: [] })).toEqual([
      { name: "payments", namespace: "shop", addresses: ["10.96.0.10"] },
      { name: "dual", namespace: "shop", addresses: ["10.96.0.11"] },
    ]);
  });

  it("answers a headless Service with the ready IPv4 endpoints of all its EndpointSlices", () => {
    const services = { items: [service("db", { clusterIP: "None", clusterIPs: ["None"] })] };
    const slices = {
      items: [
        slice("db-abc", "db", [
          { addresses: ["10.244.1.5"], conditions: { ready: true } },
          { addresses: ["10.244.1.6"], conditions: { ready: false } },
        ]),
        slice("db-def", "db", [{ addresses: ["10.244.2.7"] }, { addresses: ["10.244.1.5"], conditions: {} }]),
        slice("db-v6", "db", [{ addresses: ["fd00::5"], conditions: { ready: true } }], "IPv6"),
        slice("other-xyz", "other", [{ addresses: ["10.244.3.1"], conditions: { ready: true } }]),
        {
          ...slice("db-elsewhere", "db", [{ addresses: ["10.244.4.1"] }]),
          metadata: {
            name: "db-elsewhere",
            namespace: "prod",
            labels: { "kubernetes.io/service-name": "db" },
          },
        },
      ],
    };
    expect(serviceRecordsOf(services, slices)).toEqual([
      { name: "db", namespace: "shop", addresses: ["10.244.1.5", "10.244.2.7"] },
    ]);
  });

  it("keeps a Service without a ClusterIP yet, with no addresses (NODATA, not NXDOMAIN)", () => {
    expect(serviceRecordsOf([service("new", {}), service("ext", { type: "ExternalName" })], [])).toEqual([
      { name: "new", namespace: "shop", addresses: [] },
      { name: "ext", namespace: "shop", addresses: [] },
    ]);
    expect(serviceRecordsOf([service("lonely", { clusterIP: "None" })], [])).toEqual([
      { name: "lonely", namespace: "shop", addresses: [] },
    ]);
  });

  it("rejects what is not a list of Kubernetes objects", () => {
    expect(() => serviceRecordsOf("services", [])).toThrow(ClusterDnsError);
    expect(() => serviceRecordsOf([{ spec: {} }], [])).toThrow(/metadata\.name/);
  });
});
