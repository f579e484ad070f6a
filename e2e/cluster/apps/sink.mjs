// batch's receiving workload: records each report (one JSON log line) and answers 200 naming the
// Pod that answered. It listens
// on loopback only: everything reaches it through its sidecar, which verified the caller's chain.
import { createServer } from "node:http";

const port = Number(process.env.PORT ?? 8080);
createServer((request, response) => {
  let body = "";
  request.setEncoding("utf8");
  request.on("data", (chunk) => {
    if (body.length < 4096) body += chunk;
  });
  request.on("end", () => {
    if (request.method !== "POST" || request.url !== "/reports") {
      response.writeHead(404).end("not found");
      return;
    }
    console.log(JSON.stringify({ event: "report", body }));
    response.writeHead(200, { "content-type": "text/plain" }).end(`recorded by ${process.env.HOSTNAME}`);
  });
}).listen(port, "127.0.0.1");
