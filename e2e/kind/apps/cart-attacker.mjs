// A compromised cart app, for the kind suite (e2e/kind/scenarios.ts runs it with
// `kubectl exec deploy/cart -c app -- node /apps/cart-attacker.mjs [seal]`). It uses only what
// cart's app has: its sidecar's outbound port ($HTTP_PROXY, set by the injection webhook) and key
// service, no key, no chain. It seals a card of its own choosing to payments (anyone may) and then:
//   (no argument)  POSTs it to payments directly, as cart, with no chain: prints {status, json}
//   seal           prints the request body only (for the "body changed in flight" scenario)
// Mounted next to examples/shop/apps/mesh.mjs, from the same ConfigMap.
import { keyService, postJson } from "./mesh.mjs";

const ATTACKER_CARD = "4000 0000 0000 0002";

const sealed = await keyService("seal", { recipients: ["payments.shop"], plaintext: ATTACKER_CARD });
if (sealed.status !== 200) {
  process.stdout.write(
    `${JSON.stringify({ error: "seal_failed", status: sealed.status, json: sealed.json })}\n`,
  );
  process.exit(2);
}
const body = { sealedCard: sealed.json };
if (process.argv[2] === "seal") {
  process.stdout.write(`${JSON.stringify(body)}\n`);
} else {
  const answer = await postJson("http://payments.shop/pay-for-order/1", body);
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
