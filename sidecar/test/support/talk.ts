/**
 * The talk's chain for the CLI tests: a user's token at the shop (edge), shop → cart, then cart →
 * payments with a body, each link minted at a fixed time.
 */
import { type MintedChain, mintLink } from "../../src/chain/mint.js";
import { normalizeOperation } from "../../src/chain/normalize.js";
import type { TestIssuer, TestService } from "./mesh.js";

/** The operation of the chain's last link: cart → payments. */
export const PAY_OPERATION = normalizeOperation("POST", "/pay-for-order/7");

export interface TalkParties {
  readonly idp: TestIssuer;
  readonly shop: TestService;
  readonly cart: TestService;
  readonly payments: TestService;
}

export interface TalkChainOptions {
  readonly body: string;
  readonly nowSeconds: number;
  /** The user's scope in the initial token. */
  readonly scope?: string;
  /** The path of shop's call to cart. */
  readonly cartPath?: string;
  /** Shop's link's ctx. */
  readonly ctx?: Readonly<Record<string, string>>;
}

export function talkChain(parties: TalkParties, options: TalkChainOptions): MintedChain {
  const { idp, shop, cart, payments } = parties;
  const e0 = idp.token({
    sub: "marissa",
    aud: ["shop.shop"],
    scope: options.scope ?? "openid shop.customer",
  });
  const e1 = mintLink(shop.signer, {
    audience: cart.info.id,
    operation: normalizeOperation("POST", options.cartPath ?? "/cart/confirm"),
    previous: [e0],
    ctx: options.ctx,
    nowSeconds: options.nowSeconds,
  });
  return mintLink(cart.signer, {
    audience: payments.info.id,
    operation: PAY_OPERATION,
    previous: e1.elements,
    body: options.body,
    nowSeconds: options.nowSeconds,
  });
}
