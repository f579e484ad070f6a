// payments: charges an order. By the time a request reaches us, payments' sidecar has verified the
// whole call chain and applied the talk's policy (a customer's token with scope shop.customer, via
// cart, which shop called with POST /cart/confirm). We open the sealed card number, which only our
// key can do, and report what the sidecar told us about the call.
import { HttpError, keyService, parseJsonObject, readText, sendJson, serve } from "./mesh.mjs";

const PAY = /^\/pay-for-order\/([A-Za-z0-9-]{1,64})$/;

serve("payments", async (request, response) => {
  const match = request.method === "POST" ? PAY.exec(request.url ?? "") : null;
  if (match === null) throw new HttpError(404, "not_found");
  const body = await readText(request);
  const { sealedCard } = parseJsonObject(body);
  if (typeof sealedCard !== "object" || sealedCard === null) throw new HttpError(400, "invalid_sealed_card");

  const opened = await keyService("open", sealedCard);
  if (opened.status !== 200) {
    sendJson(response, 400, { step: "payments", paid: false, error: opened.json.reason ?? "cannot_open" });
    return;
  }
  const card = Buffer.from(opened.json.plaintextBase64url, "base64url").toString("utf8");
  sendJson(response, 200, {
    step: "payments",
    paid: true,
    orderId: match[1],
    last4: card.replace(/\D/g, "").slice(-4),
    // Set by the sidecar (a client cannot forge them: the sidecar drops any it receives):
    caller: request.headers["custody-caller"] ?? null, // the immediate caller's service id
    decision: request.headers["custody-decision"] ?? null, // which policy and rule allowed the call
    customer: request.headers["custody-initial-subject"] ?? null, // who the initial token is for
    // The verified chain, oldest element first: its links as signed, its initial token sealed (only
    // our sidecar can open it, so nobody who reads this can use the customer's token).
    chain: request.headers["custody-chain"] ?? null,
    // For the demo only, which replays this call byte for byte: the body as received (the card in it
    // is still sealed). A real service would not echo it.
    body,
  });
});
