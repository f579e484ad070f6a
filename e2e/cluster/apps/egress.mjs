// Calls two hosts outside the mesh through the pod's sidecar, as an app with HTTP_PROXY and
// HTTPS_PROXY does: a plain HTTP URL (absolute form to the proxy) and an HTTPS one (CONNECT, then
// TLS end to end, the server's certificate checked against the CA file given). Prints one JSON
// line: {"http": {status, body}, "https": {status, body}}; a refusal is the sidecar's answer.
//
//   node egress.mjs http://outside.outside.svc:8080/ https://outside.outside.svc:8443/ /ca/ca.crt
import { readFileSync } from "node:fs";
import { request } from "node:http";
import { connect } from "node:tls";

const [httpUrl, httpsUrl, caFile] = process.argv.slice(2);
const proxy = new URL(process.env.HTTPS_PROXY ?? process.env.HTTP_PROXY ?? "http://127.0.0.1:15001");

function collect(stream) {
  return new Promise((resolve, reject) => {
    let text = "";
    stream.setEncoding("utf8");
    stream.on("data", (chunk) => {
      text += chunk;
    });
    stream.on("end", () => resolve(text));
    stream.on("error", reject);
  });
}

function plain(url) {
  return new Promise((resolve, reject) => {
    const call = request({ host: proxy.hostname, port: proxy.port, path: url, timeout: 10_000 }, (response) =>
      collect(response).then((body) => resolve({ status: response.statusCode, body }), reject),
    );
    call.on("timeout", () => call.destroy(new Error("timed out")));
    call.on("error", reject);
    call.end();
  });
}

function secure(url, ca) {
  const target = new URL(url);
  return new Promise((resolve, reject) => {
    const tunnel = request({
      host: proxy.hostname,
      port: proxy.port,
      method: "CONNECT",
      path: `${target.hostname}:${target.port || 443}`,
      timeout: 10_000,
    });
    tunnel.on("timeout", () => tunnel.destroy(new Error("timed out")));
    tunnel.on("error", reject);
    tunnel.on("connect", (answer, socket, head) => {
      if (answer.statusCode !== 200) {
        collect(socket).then(
          (rest) => resolve({ status: answer.statusCode, body: head.toString("utf8") + rest }),
          reject,
        );
        return;
      }
      const tls = connect({ socket, servername: target.hostname, ca });
      tls.on("error", reject);
      tls.on("secureConnect", () => {
        tls.end(`GET ${target.pathname} HTTP/1.1\r\nHost: ${target.host}\r\nConnection: close\r\n\r\n`);
      });
      collect(tls).then((raw) => {
        const [head, ...body] = raw.split("\r\n\r\n");
        resolve({ status: Number(head.split(" ")[1]), body: body.join("\r\n\r\n") });
      }, reject);
    });
    tunnel.end();
  });
}

const settle = (promise) => promise.catch((error) => ({ status: 0, body: error.message }));
const result = {
  http: await settle(plain(httpUrl)),
  https: await settle(secure(httpsUrl, readFileSync(caFile))),
};
console.log(JSON.stringify(result));
