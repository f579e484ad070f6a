// A service outside the mesh (no sidecar): plain HTTP on 8080 and HTTPS on 8443 with the
// certificate in /tls. It answers who it is and which port was called.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createSecureServer } from "node:https";

const answer = (what) => (_request, response) => {
  const body = `outside over ${what}`;
  response
    .writeHead(200, { "content-type": "text/plain", "content-length": Buffer.byteLength(body) })
    .end(body);
};
createServer(answer("http")).listen(8080, "0.0.0.0");
createSecureServer(
  { key: readFileSync("/tls/tls.key"), cert: readFileSync("/tls/tls.crt") },
  answer("https"),
).listen(8443, "0.0.0.0");
