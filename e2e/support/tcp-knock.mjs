// Test support for e2e/test/capture.test.ts, run inside a network namespace (`ip netns exec NS node
// tcp-knock.mjs …`): plain TCP servers that say who they are, and a client that says who answered.
// Plain TCP, so that what decides is the network namespace's rules, not a protocol.
//
//   node tcp-knock.mjs serve LABEL=PORT ...  one server per PORT on every address (:: dual-stack,
//                                            else 0.0.0.0); each connection is sent LABEL and
//                                            closed; prints "ready" once all listen; runs until
//                                            SIGTERM
//   node tcp-knock.mjs knock HOST:PORT ...   connects to each in turn (IPv6 as [ADDR]:PORT) and
//                                            prints one JSON line {"HOST:PORT": LABEL | error code}:
//                                            ECONNREFUSED for a reset, "timeout" after 3 s
import { connect, createServer } from "node:net";

const [mode, ...targets] = process.argv.slice(2);
const KNOCK_TIMEOUT_MS = 3_000;

function listen(label, port) {
  return new Promise((resolve, reject) => {
    const server = createServer((socket) => {
      socket.on("error", () => undefined);
      socket.end(label);
    });
    server.once("error", (error) => {
      // No IPv6 in this namespace: IPv4 alone.
      if (error.code === "EAFNOSUPPORT" || error.code === "EADDRNOTAVAIL") {
        server.listen(port, "0.0.0.0", () => resolve(server));
      } else reject(error);
    });
    server.listen({ port, host: "::", ipv6Only: false }, () => resolve(server));
  });
}

function knock(target) {
  const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(target);
  if (match === null) return Promise.resolve("bad target");
  return new Promise((resolve) => {
    let text = "";
    const socket = connect({ host: match[1], port: Number(match[2]) });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve("timeout");
    }, KNOCK_TIMEOUT_MS);
    socket.setEncoding("utf8");
    socket.on("data", (chunk) => {
      text += chunk;
    });
    socket.on("end", () => {
      clearTimeout(timer);
      resolve(text);
    });
    socket.on("error", (error) => {
      clearTimeout(timer);
      resolve(error.code ?? error.message);
    });
  });
}

if (mode === "serve") {
  const servers = await Promise.all(
    targets.map((target) => {
      const [label, port] = target.split("=");
      return listen(label, Number(port));
    }),
  );
  process.stdout.write("ready\n");
  process.once("SIGTERM", () => {
    for (const server of servers) server.close();
    process.exit(0);
  });
} else if (mode === "knock") {
  const answers = {};
  for (const target of targets) answers[target] = await knock(target);
  process.stdout.write(`${JSON.stringify(answers)}\n`);
} else {
  process.stderr.write("usage: tcp-knock.mjs serve LABEL=PORT ... | knock HOST:PORT ...\n");
  process.exit(2);
}
