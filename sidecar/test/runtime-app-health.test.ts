/**
 * The sidecar's /app-health route (traffic capture's rewritten probes), through a real admin server
 * and real apps on 127.0.0.1: HTTP and HTTPS status codes as the kubelet judges them, TCP connects,
 * the time bound, names that are not configured, and what a caller can and cannot make it do. The
 * sidecar's reading of CUSTODY_APP_PROBES is checked strictly at start.
 */
import { once } from "node:events";
import { createServer as createHttpServer, type IncomingMessage, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { createServer as createTcpServer } from "node:net";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createAdminServer } from "../../cli/src/admin.js";
import { EXIT_REJECTED, runCommand } from "../../cli/src/kit.js";
import { type AppProbes, parseAppProbes } from "../../crds/src/app-probes.js";
import { ValidationError } from "../../crds/src/errors.js";
import { createCertificateAuthority } from "../../pki/src/ca.js";
import { issueCertificate } from "../../pki/src/issue.js";
import { privateKeyToPem } from "../../pki/src/keys.js";
import { captureIO } from "../../pki/test/support.js";
import { createAppHealthRoute } from "../src/runtime/app-health.js";
import { sidecarCommand } from "../src/runtime/cli.js";

interface Seen {
  readonly path: string;
  readonly headers: IncomingMessage["headers"];
}

const seen: Seen[] = [];
let app: Server;
let secureApp: Server;
let silent: Server;
let admin: Server;
let adminUrl: string;
let appPort: number;
let securePort: number;
let silentPort: number;
let closedPort: number;
let slowRelease: (() => void) | undefined;
/** What the silent server accepted: never read, so they see no FIN and must be destroyed. */
const silentSockets = new Set<Socket>();

const portOf = (server: { address(): AddressInfo | string | null }) => (server.address() as AddressInfo).port;

/** The app: /ok 200, /moved 302, /bad 500, /slow answers once released; records what it was sent. */
function answer(request: IncomingMessage, response: import("node:http").ServerResponse): void {
  seen.push({ path: request.url ?? "", headers: request.headers });
  if (request.url?.startsWith("/ok")) response.writeHead(200).end("fine");
  else if (request.url === "/moved") response.writeHead(302, { location: "http://198.51.100.7/" }).end();
  else if (request.url === "/slow") {
    slowRelease = () => response.writeHead(200).end("late");
  } else response.writeHead(500).end("broken");
}

beforeAll(async () => {
  app = createHttpServer(answer);
  app.listen(0, "127.0.0.1");
  await once(app, "listening");
  appPort = portOf(app);
  const ca = await createCertificateAuthority();
  const leaf = await issueCertificate(ca, { id: "app.shop" });
  secureApp = createHttpsServer(
    { cert: leaf.certificate.pem, key: privateKeyToPem(leaf.privateKey) },
    answer,
  );
  secureApp.listen(0, "127.0.0.1");
  await once(secureApp, "listening");
  securePort = portOf(secureApp);
  // Accepts connections and never answers: a TCP probe passes, an HTTP one times out.
  silent = createTcpServer((socket) => silentSockets.add(socket)) as unknown as Server;
  silent.listen(0, "127.0.0.1");
  await once(silent, "listening");
  silentPort = portOf(silent);
  const probe = createTcpServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  closedPort = portOf(probe);
  await new Promise<void>((resolve) => probe.close(() => resolve()));

  const http = (
    port: number,
    path: string,
    extra: Partial<{ scheme: "HTTP" | "HTTPS"; headers: { name: string; value: string }[] }> = {},
  ) => ({
    http: { port, path, scheme: extra.scheme ?? "HTTP", httpHeaders: extra.headers ?? [] },
    timeoutSeconds: 1,
  });
  const probes: AppProbes = {
    app: {
      readiness: http(appPort, "/ok?full=1", {
        headers: [
          { name: "X-Probe", value: "one" },
          { name: "x-probe", value: "two" },
          { name: "User-Agent", value: "custom" },
        ],
      }),
      liveness: { tcp: { port: appPort }, timeoutSeconds: 1 },
      startup: http(appPort, "/moved"),
    },
    broken: { readiness: http(appPort, "/bad"), liveness: { tcp: { port: closedPort }, timeoutSeconds: 1 } },
    secure: { readiness: http(securePort, "/ok", { scheme: "HTTPS" }) },
    hung: { readiness: http(silentPort, "/ok"), liveness: { tcp: { port: silentPort }, timeoutSeconds: 1 } },
    slow: { readiness: { ...http(appPort, "/slow"), timeoutSeconds: 2 } },
  };
  admin = createAdminServer(new Registry(), () => ({ status: 200, body: {} }), [
    createAppHealthRoute(probes),
  ]);
  admin.listen(0, "127.0.0.1");
  await once(admin, "listening");
  adminUrl = `http://127.0.0.1:${portOf(admin)}`;
});

afterAll(async () => {
  for (const socket of silentSockets) socket.destroy();
  for (const server of [app, secureApp, silent, admin]) {
    server?.closeAllConnections?.();
    await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
  }
});

async function get(path: string, method = "GET"): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${adminUrl}${path}`, { method });
  const text = await response.text();
  return { status: response.status, body: text === "" ? {} : (JSON.parse(text) as Record<string, unknown>) };
}

describe("/app-health/<container>/<kind>", () => {
  it("answers 200 for an HTTP probe the app passes, sending the probe's path and headers to 127.0.0.1", async () => {
    seen.length = 0;
    expect(await get("/app-health/app/readiness")).toEqual({
      status: 200,
      body: { status: "ok", probe: "app/readiness", detail: "status 200" },
    });
    expect(seen).toHaveLength(1);
    expect(seen[0]?.path).toBe("/ok?full=1");
    expect(seen[0]?.headers["x-probe"]).toBe("one, two");
    expect(seen[0]?.headers["user-agent"]).toBe("custom");
    expect(seen[0]?.headers.host).toBe(`127.0.0.1:${appPort}`);
  });

  it("counts 3xx as passing without following it, and 500 as failing (503)", async () => {
    seen.length = 0;
    expect((await get("/app-health/app/startup")).status).toBe(200);
    // The redirect pointed at another host: it was not followed.
    expect(seen.map((entry) => entry.path)).toEqual(["/moved"]);
    expect(await get("/app-health/broken/readiness")).toEqual({
      status: 503,
      body: { status: "failed", reason: "probe_failed", probe: "broken/readiness", detail: "status 500" },
    });
  });

  it("checks HTTPS without verifying the app's certificate, as the kubelet does", async () => {
    expect((await get("/app-health/secure/readiness")).body).toMatchObject({
      status: "ok",
      detail: "status 200",
    });
  });

  it("passes a TCP probe when the port accepts, fails it when refused", async () => {
    expect((await get("/app-health/app/liveness")).body).toMatchObject({ status: "ok", detail: "connected" });
    expect((await get("/app-health/hung/liveness")).status).toBe(200);
    expect(await get("/app-health/broken/liveness")).toMatchObject({
      status: 503,
      body: { reason: "probe_failed", detail: "ECONNREFUSED" },
    });
  });

  it("gives up after the probe's timeout", async () => {
    const started = Date.now();
    expect(await get("/app-health/hung/readiness")).toMatchObject({
      status: 503,
      body: { reason: "probe_failed", detail: "no answer within 1 s" },
    });
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("makes one attempt for concurrent requests of one probe", async () => {
    seen.length = 0;
    const answers = Promise.all(Array.from({ length: 20 }, () => get("/app-health/slow/readiness")));
    for (let waited = 0; slowRelease === undefined && waited < 100; waited++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
    slowRelease?.();
    const results = await answers;
    expect(results.every((result) => result.status === 200)).toBe(true);
    expect(seen.filter((entry) => entry.path === "/slow")).toHaveLength(1);
  });

  it("knows only the configured probes: anything else is 404, and nothing reaches the app", async () => {
    seen.length = 0;
    for (const path of [
      "/app-health/app/unknown",
      "/app-health/nobody/readiness",
      "/app-health/app",
      "/app-health/",
      "/app-health/app/readiness/extra",
      "/app-health/app/readiness%2F..",
      "/app-health/constructor/readiness",
      "/app-health/__proto__/liveness",
      "/app-health/127.0.0.1:22/readiness",
    ]) {
      expect(await get(path), path).toEqual({
        status: 404,
        body: { error: "not_found", reason: "unknown_probe" },
      });
    }
    // A query is not part of the name, and changes nothing of what is probed.
    await get("/app-health/app/readiness?host=198.51.100.7&port=22&path=/etc");
    expect(seen.map((entry) => entry.path)).toEqual(["/ok?full=1"]);
    expect((await get("/app-health/app/readiness", "POST")).status).toBe(405);
    // The admin port's own routes are unchanged.
    expect((await get("/healthz")).status).toBe(200);
  });
});

describe("CUSTODY_APP_PROBES", () => {
  const valid = {
    app: {
      readiness: { http: { port: 8080, path: "/ready", scheme: "HTTP", httpHeaders: [] }, timeoutSeconds: 1 },
    },
  };

  it("reads what the webhook writes", () => {
    expect(parseAppProbes(JSON.stringify(valid))).toEqual(valid);
    expect(
      parseAppProbes(JSON.stringify({ app: { liveness: { tcp: { port: 1 }, timeoutSeconds: 60 } } })),
    ).toEqual({
      app: { liveness: { tcp: { port: 1 }, timeoutSeconds: 60 } },
    });
  });

  it.each([
    ["not JSON", "{", /is not JSON/],
    [
      "an unknown kind",
      JSON.stringify({ app: { warmup: valid.app.readiness } }),
      /app.warmup: unknown field/,
    ],
    [
      "a host",
      JSON.stringify({
        app: {
          readiness: { ...valid.app.readiness, http: { ...valid.app.readiness.http, host: "10.0.0.1" } },
        },
      }),
      /http.host: unknown field/,
    ],
    [
      "both actions",
      JSON.stringify({ app: { readiness: { ...valid.app.readiness, tcp: { port: 1 } } } }),
      /exactly one of http and tcp/,
    ],
    [
      "neither action",
      JSON.stringify({ app: { readiness: { timeoutSeconds: 1 } } }),
      /exactly one of http and tcp/,
    ],
    [
      "port 0",
      JSON.stringify({ app: { liveness: { tcp: { port: 0 }, timeoutSeconds: 1 } } }),
      /tcp.port: must be at least 1/,
    ],
    [
      "a long timeout",
      JSON.stringify({ app: { liveness: { tcp: { port: 1 }, timeoutSeconds: 61 } } }),
      /timeoutSeconds: must be at most 60/,
    ],
    [
      "a relative path",
      JSON.stringify({
        app: { readiness: { ...valid.app.readiness, http: { ...valid.app.readiness.http, path: "ready" } } },
      }),
      /path: must be a path/,
    ],
    [
      "a header with CR LF",
      JSON.stringify({
        app: {
          readiness: {
            ...valid.app.readiness,
            http: { ...valid.app.readiness.http, httpHeaders: [{ name: "X", value: "a\r\nB: c" }] },
          },
        },
      }),
      /must not contain CR, LF or NUL/,
    ],
    ["a container name that is not one", JSON.stringify({ "App!": valid.app }), /must be a container name/],
    ["too large", JSON.stringify({ app: valid.app, padding: "x".repeat(70_000) }), /larger than 65536 bytes/],
  ])("refuses %s with invalid_app_probes", (_what, text, message) => {
    let error: unknown;
    try {
      parseAppProbes(text);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ValidationError);
    expect((error as ValidationError).code).toBe("invalid_app_probes");
    expect((error as ValidationError).message).toMatch(message);
  });

  it("keeps a sidecar with a bad one from starting, with the reason code", async () => {
    const captured = captureIO();
    const code = await runCommand(
      sidecarCommand,
      [
        "--identity",
        "/nonexistent",
        "--registry",
        "/nonexistent",
        "--app-port",
        "8080",
        "--app-probes",
        '{"app":{}}x',
      ],
      captured.io,
    );
    expect(code).toBe(EXIT_REJECTED);
    expect(captured.stderr()).toMatch(
      /^error\[invalid_app_probes\]: CUSTODY_APP_PROBES is invalid: is not JSON/,
    );
  });
});
