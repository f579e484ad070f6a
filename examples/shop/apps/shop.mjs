// shop: the storefront. A customer's POST /checkout arrives through shop's sidecar, which has
// already checked the customer's token (Authorization: Bearer) against shop's AccessPolicy and
// hands it to us as the `custody-chain` header. We seal the card number so that only payments can
// read it, and ask cart to confirm the order, passing the chain on. A partner's system (a client
// certificate from the partner's own CA, exchanged for an identity JWT) orders the same way through
// POST /partner/checkout; shop's AccessPolicy says who may call which.
import { HttpError, keyService, postJson, readJson, sendJson, serve } from "./mesh.mjs";

const ORDER_ID = /^[A-Za-z0-9-]{1,64}$/;
const CARD = /^[0-9 ]{12,23}$/;

serve("shop", async (request, response) => {
  const paths = ["/checkout", "/partner/checkout"];
  if (request.method !== "POST" || !paths.includes(request.url ?? "")) throw new HttpError(404, "not_found");
  const { orderId, card } = await readJson(request);
  // orderId ends up in a URL path downstream: accept only plain ids.
  if (typeof orderId !== "string" || !ORDER_ID.test(orderId)) throw new HttpError(400, "invalid_order_id");
  if (typeof card !== "string" || !CARD.test(card)) throw new HttpError(400, "invalid_card");

  // JWE for payments.shop: cart carries it but cannot open it (end-to-end encryption, as in the talk).
  const sealed = await keyService("seal", { recipients: ["payments.shop"], plaintext: card });
  if (sealed.status !== 200) throw new HttpError(502, `seal_failed:${sealed.json.reason ?? sealed.status}`);

  const cart = await postJson(
    "http://cart.shop/cart/confirm",
    { orderId, sealedCard: sealed.json },
    { chain: request.headers["custody-chain"] },
  );
  sendJson(response, cart.status, { step: "shop", downstream: cart.json });
});
