// Tries to obtain an identity's key from the operator's identity delivery with each token file
// given, and prints what it was answered: {"<file>": {"status": 403, "reason": "...", "key": false}}.
// The operator's certificate is not checked here (rejectUnauthorized: false): what is on trial is
// who is handed a key, not TLS.
//
//   node steal.mjs https://custody-webhook.custody-system.svc/v1/identity TOKEN_FILE...
import { readFileSync } from "node:fs";
import { request } from "node:https";

const [url, ...files] = process.argv.slice(2);

function post(token) {
  return new Promise((resolve) => {
    const call = request(
      url,
      {
        method: "POST",
        headers: { authorization: `Bearer ${token}` },
        rejectUnauthorized: false,
        timeout: 10_000,
      },
      (response) => {
        let body = "";
        response.setEncoding("utf8");
        response.on("data", (chunk) => {
          body += chunk;
        });
        response.on("end", () => {
          let parsed = {};
          try {
            parsed = JSON.parse(body);
          } catch {}
          resolve({
            status: response.statusCode,
            reason: parsed.reason ?? null,
            key: typeof parsed.key === "string",
          });
        });
      },
    );
    call.on("timeout", () => call.destroy(new Error("timeout")));
    call.on("error", (error) => resolve({ status: 0, reason: error.message, key: false }));
    call.end();
  });
}

const results = {};
for (const file of files) results[file] = await post(readFileSync(file, "utf8").trim());
console.log(JSON.stringify(results));
