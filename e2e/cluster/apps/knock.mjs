// Run in a pod of the mesh against a captured pod (e2e/cluster/captured.yaml): its app port
// called directly, in plain HTTP and over TLS without a client certificate; a port it does not
// exclude; the port it excludes; and the mesh service through this pod's own sidecar (HTTP_PROXY),
// which is the way in. Prints one JSON line: for each call {status, body}, or {error} for a
// connection that got no HTTP answer.
//
//   node knock.mjs POD_IP http://guarded.captured/reports
import { request as plainRequest } from "node:http";
import { request as tlsRequest } from "node:https";

const [podIp, meshUrl] = process.argv.slice(2);
const proxy = new URL(process.env.HTTP_PROXY ?? "http://127.0.0.1:15001");

function call(send, options, body) {
  return new Promise((resolve) => {
    const outgoing = send({ ...options, timeout: 10_000, agent: false }, (response) => {
      let text = "";
      response.setEncoding("utf8");
      response.on("data", (chunk) => {
        if (text.length < 4096) text += chunk;
      });
      response.on("end", () => resolve({ status: response.statusCode, body: text }));
      response.on("error", (error) => resolve({ error: error.code ?? error.message }));
    });
    outgoing.on("timeout", () =>
      outgoing.destroy(Object.assign(new Error("timed out"), { code: "timeout" })),
    );
    outgoing.on("error", (error) => resolve({ error: error.code ?? error.message }));
    outgoing.end(body);
  });
}

const report = JSON.stringify({ from: process.env.HOSTNAME, what: "knock" });
const post = {
  method: "POST",
  headers: { "content-type": "application/json", "content-length": Buffer.byteLength(report) },
};
const result = {
  direct: await call(plainRequest, { host: podIp, port: 8080, path: "/reports", ...post }, report),
  directTls: await call(
    tlsRequest,
    { host: podIp, port: 8080, path: "/reports", rejectUnauthorized: false, ...post },
    report,
  ),
  notExcluded: await call(plainRequest, { host: podIp, port: 9090, path: "/" }),
  excluded: await call(plainRequest, { host: podIp, port: 9091, path: "/metrics" }),
  mesh: await call(plainRequest, { host: proxy.hostname, port: proxy.port, path: meshUrl, ...post }, report),
};
console.log(JSON.stringify(result));
