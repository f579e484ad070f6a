/**
 * Loopback ports of a local mesh, kept in the state directory so that a re-run listens where the
 * last one did (the registry and the apps' configuration stay valid). A remembered port that is
 * taken by something else now is replaced by a free one.
 *
 * A port is chosen some moments before the process that listens on it starts, so it is chosen
 * below the kernel's ephemeral range (ip_local_port_range): the kernel hands ports of that range
 * to every outgoing connection and every listen(0) on the machine, and one of those could take a
 * chosen port in the meantime (seen: EADDRINUSE while a test suite ran beside `custody local up`).
 */
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { z } from "zod";
import { MODE_PRIVATE, readBoundedFile, writeFilesAtomically } from "../../pki/src/files.js";

export const PORTS_FILE = "ports.json";
const port = z.int().min(1).max(65_535);
const workloadPortsSchema = z.strictObject({ app: port, inbound: port, outbound: port, admin: port });
const portsSchema = z.strictObject({
  token: port,
  tokenAdmin: port,
  operatorAdmin: port,
  workloads: z.record(z.string().max(200), workloadPortsSchema),
});

export type WorkloadPorts = z.output<typeof workloadPortsSchema>;
export type Ports = z.output<typeof portsSchema>;

export class PortBook {
  private constructor(
    private readonly path: string,
    private ports: Ports,
  ) {}

  static async open(stateDirectory: string): Promise<PortBook> {
    const path = join(stateDirectory, PORTS_FILE);
    let remembered: Ports | undefined;
    try {
      remembered = portsSchema.parse(JSON.parse(await readBoundedFile(path, 256 * 1024)));
    } catch {
      // Absent or unreadable: allocate afresh (it is only a cache of choices).
    }
    const taken = new Set<number>();
    const keep = async (wanted: number | undefined) => {
      const chosen =
        wanted !== undefined && !taken.has(wanted) && (await isFree(wanted))
          ? wanted
          : await freeLoopbackPort(taken);
      taken.add(chosen);
      return chosen;
    };
    const book = new PortBook(path, {
      token: await keep(remembered?.token),
      tokenAdmin: await keep(remembered?.tokenAdmin),
      operatorAdmin: await keep(remembered?.operatorAdmin),
      workloads: {},
    });
    for (const [key, ports] of Object.entries(remembered?.workloads ?? {})) {
      book.ports.workloads[key] = {
        app: await keep(ports.app),
        inbound: await keep(ports.inbound),
        outbound: await keep(ports.outbound),
        admin: await keep(ports.admin),
      };
    }
    await book.save();
    return book;
  }

  get token(): number {
    return this.ports.token;
  }

  get tokenAdmin(): number {
    return this.ports.tokenAdmin;
  }

  get operatorAdmin(): number {
    return this.ports.operatorAdmin;
  }

  /** The ports of a workload (`namespace/name`), chosen now if it has none yet. */
  async workload(key: string): Promise<WorkloadPorts> {
    const known = this.ports.workloads[key];
    if (known !== undefined) return known;
    const taken = this.#taken();
    const pick = async () => {
      const chosen = await freeLoopbackPort(taken);
      taken.add(chosen);
      return chosen;
    };
    const ports = { app: await pick(), inbound: await pick(), outbound: await pick(), admin: await pick() };
    this.ports.workloads[key] = ports;
    await this.save();
    return ports;
  }

  #taken(): Set<number> {
    const { token, tokenAdmin, operatorAdmin, workloads } = this.ports;
    return new Set([
      token,
      tokenAdmin,
      operatorAdmin,
      ...Object.values(workloads).flatMap((ports) => Object.values(ports)),
    ]);
  }

  private async save(): Promise<void> {
    await writeFilesAtomically(
      [{ path: this.path, data: `${JSON.stringify(this.ports, null, 2)}\n`, mode: MODE_PRIVATE }],
      {
        overwrite: true,
      },
    );
  }
}

function isFree(candidate: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(candidate, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** Where chosen ports come from: [LOWEST_PORT, the start of the ephemeral range). */
const LOWEST_PORT = 10_000;
const ATTEMPTS = 64;

/** The first port of the kernel's ephemeral range (Linux's default when it cannot be read). */
function ephemeralStart(): number {
  try {
    const [low] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/);
    const parsed = Number(low);
    return Number.isInteger(parsed) && parsed > LOWEST_PORT + 1_000 && parsed <= 65_535 ? parsed : 32_768;
  } catch {
    return 32_768;
  }
}

/** A port free now, not in `avoid`, outside the ephemeral range; random, so that runs do not collide. */
export async function freeLoopbackPort(avoid: ReadonlySet<number> = new Set()): Promise<number> {
  const end = ephemeralStart();
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    const candidate = LOWEST_PORT + Math.floor(Math.random() * (end - LOWEST_PORT));
    if (!avoid.has(candidate) && (await isFree(candidate))) return candidate;
  }
  throw new Error(`no free loopback port found from ${LOWEST_PORT} to ${end - 1}`);
}
