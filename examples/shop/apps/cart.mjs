// cart: confirms an order and asks payments to charge it. Its sidecar has verified that shop called
// us on behalf of a customer (cart's AccessPolicy). The card number is sealed for payments: we try
// to open it anyway, to show that we cannot.
import { HttpError, keyService, postJson, readJson, sendJson, serve } from "./mesh.mjs";

const ORDER_ID = /^[A-Za-z0-9-]{1,64}$/;

serve("cart", async (request, response) => {
  if (request.method !== "POST" || request.url !== "/cart/confirm") throw new HttpError(404, "not_found");
  const { orderId, sealedCard } = await readJson(request);
  if (typeof orderId !== "string" || !ORDER_ID.test(orderId)) throw new HttpError(400, "invalid_order_id");
  if (typeof sealedCard !== "object" || sealedCard === null) throw new HttpError(400, "invalid_sealed_card");

  // Expected to fail with not_a_recipient: only payments' key can open it.
  const attempt = await keyService("open", sealedCard);
  const cartCouldRead = attempt.status === 200;

  // Passing the chain on is what lets payments see "cart, called by shop via POST /cart/confirm".
  const payments = await postJson(
    `http://payments.shop/pay-for-order/${orderId}`,
    { sealedCard },
    { chain: request.headers["custody-chain"] },
  );
  sendJson(response, payments.status, { step: "cart", cartCouldRead, downstream: payments.json });
});
