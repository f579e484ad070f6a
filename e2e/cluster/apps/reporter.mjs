// batch's calling workload. It calls sink through its sidecar (HTTP_PROXY) at its very first
// instant, with no retry: with a native sidecar the kubelet starts this container only once the
// sidecar is up with its identity and token, so the call must succeed.
//
//   node reporter.mjs once    call, then exit (the Job: it completes only if its sidecar stops too)
//   node reporter.mjs daemon  call, then stay up; on SIGTERM wait a second and call again (on
//                             deletion the kubelet stops this container before its sidecar)
import { createServer, request } from "node:http";

const proxy = new URL(process.env.HTTP_PROXY ?? "http://127.0.0.1:15001");

function report(what) {
  const body = JSON.stringify({ from: process.env.HOSTNAME, what });
  return new Promise((resolve, reject) => {
    const call = request(
      {
        host: proxy.hostname,
        port: proxy.port,
        method: "POST",
        // Absolute form: the sidecar's outbound port reads the mesh service from it.
        path: "http://sink.batch/reports",
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
        timeout: 10_000,
      },
      (response) => {
        let text = "";
        response.setEncoding("utf8");
        response.on("data", (chunk) => {
          text += chunk;
        });
        response.on("end", () =>
          response.statusCode === 200 ? resolve(text) : reject(new Error(`${response.statusCode}: ${text}`)),
        );
      },
    );
    call.on("timeout", () => call.destroy(new Error("timed out")));
    call.on("error", reject);
    call.end(body);
  });
}

function fail(what) {
  return (error) => {
    console.error(`reporter: ${what} failed: ${error.message}`);
    process.exit(1);
  };
}

const mode = process.argv[2] ?? "once";
await report(mode === "once" ? "first-instant" : "started").catch(fail("the first call"));
console.log("reporter: the first call went through");
if (mode === "daemon") {
  createServer((_request, response) => response.end("reporter")).listen(
    Number(process.env.PORT ?? 8080),
    "127.0.0.1",
  );
  process.once("SIGTERM", () => {
    setTimeout(() => {
      report("stopping")
        .then(() => process.exit(0))
        .catch(fail("the call while stopping"));
    }, 1_000);
  });
}
