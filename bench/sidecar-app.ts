/**
 * The app behind the callee's sidecar in bench/sidecar.ts, run as its own process
 * (`node --import tsx bench/sidecar-app.ts PORT`) so that it does not share an event loop with the
 * load generator or a sidecar. It answers every request at once with 200 "ok", and says what it
 * received in two headers the benchmark checks on every answer: `x-bench-depth`, the number of
 * elements in the Custody-Chain (0 without one), and `x-bench-caller`, the Custody-Caller ("-").
 */
import { createServer } from "node:http";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65_535) {
  process.stderr.write("usage: sidecar-app.ts PORT\n");
  process.exit(2);
}

const server = createServer((request, response) => {
  const chain = request.headers["custody-chain"];
  let depth = 0;
  if (typeof chain === "string" && chain !== "") {
    depth = 1;
    for (let at = chain.indexOf("~"); at !== -1; at = chain.indexOf("~", at + 1)) depth++;
  }
  const caller = request.headers["custody-caller"];
  // Drain a body, if any, before answering (a GET has none).
  request.resume();
  request.on("end", () => {
    response.writeHead(200, {
      "content-type": "text/plain",
      "content-length": "2",
      "x-bench-depth": String(depth),
      "x-bench-caller": typeof caller === "string" ? caller : "-",
    });
    response.end("ok");
  });
});
// Longer than any pause between two rounds of the same mode, so kept-alive connections (the
// client's, and the inbound sidecar's pool) are never closed under the benchmark by the app.
server.keepAliveTimeout = 120_000;
server.listen(port, "127.0.0.1");

const stop = () => {
  server.close();
  server.closeAllConnections();
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
