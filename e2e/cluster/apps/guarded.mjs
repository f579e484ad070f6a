// captured's app (e2e/cluster/captured.yaml): it listens on every address, as most apps do, and on
// three ports: 8080, its app port (GET /healthz for its probes; POST /reports answers "reached
// the app" and records who called, from the Custody-Caller header its sidecar adds); 9091, which
// the pod excludes from capture ("metrics"); 9090, which it does not (capture resets it). One JSON
// log line per request, probes aside: a request that reached the app without the sidecar would
// show there without a caller.
import { createServer } from "node:http";

function serve(port, handle) {
  createServer((request, response) => {
    request.resume();
    request.on("end", () => {
      if (request.url !== "/healthz") {
        const caller = request.headers["custody-caller"] ?? null;
        console.log(
          JSON.stringify({ event: "request", port, method: request.method, path: request.url, caller }),
        );
      }
      handle(request, response);
    });
  }).listen(port, "0.0.0.0");
}

serve(8080, (request, response) => {
  if (request.method === "GET" && request.url === "/healthz") response.writeHead(200).end("healthy");
  else if (request.method === "POST" && request.url === "/reports")
    response.writeHead(200).end("reached the app");
  else response.writeHead(404).end("not found");
});
serve(9091, (_request, response) => response.writeHead(200).end("metrics"));
serve(9090, (_request, response) => response.writeHead(200).end("not excluded, yet reached"));
