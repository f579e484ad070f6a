// Sends COUNT calls at once to a mesh service through the pod's sidecar and prints one JSON line:
// {"statuses": {"200": n, "429": m, ...}, "answeredBy": [pods that answered 200], "ms": elapsed}.
// At once, so that the sidecar opens several connections and the Service spreads them over its
// Pods.
//
//   node burst.mjs http://limited.batch/reports 12
import { request } from "node:http";

const [url, countText] = process.argv.slice(2);
const count = Number(countText ?? 10);
const proxy = new URL(process.env.HTTP_PROXY ?? "http://127.0.0.1:15001");

function call() {
  return new Promise((resolve) => {
    const body = JSON.stringify({ from: process.env.HOSTNAME, what: "burst" });
    const outgoing = request(
      {
        host: proxy.hostname,
        port: proxy.port,
        method: "POST",
        path: url,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
        timeout: 10_000,
        agent: false,
      },
      (response) => {
        let text = "";
        response.setEncoding("utf8");
        response.on("data", (chunk) => {
          text += chunk;
        });
        response.on("end", () => resolve({ status: response.statusCode, text }));
      },
    );
    outgoing.on("timeout", () => outgoing.destroy(new Error("timed out")));
    outgoing.on("error", (error) => resolve({ status: 0, text: error.message }));
    outgoing.end(body);
  });
}

const started = Date.now();
const answers = await Promise.all(Array.from({ length: count }, call));
const statuses = {};
for (const { status } of answers) statuses[status] = (statuses[status] ?? 0) + 1;
const answeredBy = [
  ...new Set(
    answers
      .filter((answer) => answer.status === 200)
      .map((answer) => answer.text.replace("recorded by ", "")),
  ),
];
console.log(JSON.stringify({ statuses, answeredBy, ms: Date.now() - started }));
