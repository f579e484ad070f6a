/**
 * The attack suite: every way we know to get a forged, stolen, replayed or rearranged chain past the
 * receiver, each asserting the exact reason it is refused with.
 */
import { createHmac, generateKeyPairSync, type KeyObject } from "node:crypto";
import { beforeEach, describe, expect, it } from "vitest";
import { sha256Base64url, signCompactJws } from "../src/chain/jws.js";
import { type ChainLimits, DEFAULT_LIMITS } from "../src/chain/limits.js";
import { type MintRequest, mintLink, newJti } from "../src/chain/mint.js";
import { normalizeOperation } from "../src/chain/normalize.js";
import { verifyChain } from "../src/chain/verify.js";
import { type ReplayGuard, ReplayStoreUnavailableError } from "../src/replay/guard.js";
import { MemoryReplayGuard } from "../src/replay/memory.js";
import { makeService, TestIssuer, TestTrust, TOKEN_SERVICE, USER_IDP } from "./support/mesh.js";

const shop = makeService("shop.shop", { edge: true });
const cart = makeService("cart.shop");
const payments = makeService("payments.shop");
const ledger = makeService("ledger.shop", { keyType: "ed25519" });
const idp = new TestIssuer(USER_IDP, "rsa");
const rogueIdp = new TestIssuer("https://evil.example");
const tokenService = new TestIssuer(TOKEN_SERVICE);
const trust = new TestTrust()
  .addService(shop)
  .addService(cart)
  .addService(payments)
  .addService(ledger)
  .addIssuer(idp)
  .addIssuer(tokenService);

const PAY = "/pay-for-order/12345";
const BODY = '{"amount":100}';
const now = () => Math.floor(Date.now() / 1000);
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");

function link(request: Partial<MintRequest> & { from?: typeof cart } = {}) {
  const { from = cart, ...rest } = request;
  return mintLink(from.signer, {
    audience: "payments.shop",
    operation: normalizeOperation("POST", PAY),
    body: BODY,
    ...rest,
  });
}

function claimsOf(element: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(element.split(".")[1] ?? "", "base64url").toString());
}

/** A link with arbitrary header and claims, signed with the given key (default: cart's). */
function forge(
  header: Record<string, unknown>,
  claims: Record<string, unknown>,
  key: KeyObject = cart.signer.privateKey,
) {
  return signCompactJws({ alg: "ES256", typ: "custody+jwt", kid: cart.signer.kid, ...header }, claims, key);
}

function baseClaims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const iat = now();
  return {
    iss: "cart.shop",
    aud: "payments.shop",
    op: `POST ${PAY}`,
    jti: newJti(),
    iat,
    exp: iat + 10,
    bdh: sha256Base64url(BODY),
    ...overrides,
  };
}

describe("attack suite: the receiver refuses", () => {
  let guard: ReplayGuard;
  beforeEach(() => {
    guard = new MemoryReplayGuard();
  });

  const at = (
    header: string | undefined,
    options: {
      method?: string;
      target?: string;
      body?: string | null;
      limits?: ChainLimits;
      self?: string;
      peer?: string;
    } = {},
  ) =>
    verifyChain(
      header,
      {
        self: options.self ?? "payments.shop",
        peer: options.peer,
        operation: normalizeOperation(options.method ?? "POST", options.target ?? PAY),
        bodyHash: options.body === null ? undefined : sha256Base64url(options.body ?? BODY),
        nowSeconds: now(),
      },
      trust,
      guard,
      options.limits === undefined ? {} : { limits: options.limits },
    );

  const refused = async (promise: Promise<unknown>, code: string) => {
    await expect(promise).rejects.toMatchObject({ code });
  };

  it("sanity: the unmodified link is accepted", async () => {
    await expect(at(link().header)).resolves.toBeDefined();
  });

  // --- algorithms and keys
  it("1. alg none with an empty signature", async () => {
    const element = `${b64({ alg: "none", typ: "custody+jwt", kid: cart.signer.kid })}.${b64(baseClaims())}.`;
    await refused(at(element), "alg_not_allowed");
  });

  it("2. alg none with a signature attached", async () => {
    const element = `${b64({ alg: "none", typ: "custody+jwt", kid: cart.signer.kid })}.${b64(baseClaims())}.AAAA`;
    await refused(at(element), "alg_not_allowed");
  });

  it("3. HS256 keyed with the caller's public key (key confusion)", async () => {
    const input = `${b64({ alg: "HS256", typ: "custody+jwt", kid: cart.signer.kid })}.${b64(baseClaims())}`;
    const secret = cart.publicKey.export({ type: "spki", format: "pem" });
    const mac = createHmac("sha256", secret).update(input).digest("base64url");
    await refused(at(`${input}.${mac}`), "alg_not_allowed");
  });

  it("4. RS256 link when only ES256/EdDSA are allowed", async () => {
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
    await refused(at(forge({ alg: "RS256" }, baseClaims(), rsa.privateKey)), "alg_not_allowed");
  });

  it("5. header alg that does not match the key type (ES256 header, Ed25519 key)", async () => {
    const element = forge({ alg: "ES256", kid: ledger.signer.kid }, baseClaims({ iss: "ledger.shop" }));
    await refused(at(element), "alg_not_allowed");
  });

  it("6. unknown kid", async () => {
    await refused(at(forge({ kid: "no-such-key" }, baseClaims())), "unknown_key");
  });

  it("7. another service's kid (cart claims to sign with shop's key)", async () => {
    await refused(at(forge({ kid: shop.signer.kid }, baseClaims())), "key_issuer_mismatch");
  });

  it("8. iss rewritten to another service with its kid (shop's key id, cart's signature)", async () => {
    await refused(at(forge({ kid: shop.signer.kid }, baseClaims({ iss: "shop.shop" }))), "bad_signature");
  });

  it("9. signed with a key that is not the published one", async () => {
    const stranger = generateKeyPairSync("ec", { namedCurve: "P-256" });
    await refused(at(forge({}, baseClaims(), stranger.privateKey)), "bad_signature");
  });

  it("10. an all-zero ECDSA signature", async () => {
    const [h, p] = link().header.split(".");
    await refused(at(`${h}.${p}.${Buffer.alloc(64).toString("base64url")}`), "bad_signature");
  });

  it("11. a truncated signature", async () => {
    const [h, p, s = ""] = link().header.split(".");
    await refused(at(`${h}.${p}.${s.slice(0, 40)}`), "bad_signature");
  });

  it("12. claims edited after signing (amount of the operation)", async () => {
    const [h, , s] = link().header.split(".");
    await refused(
      at(`${h}.${b64(baseClaims({ op: "POST /pay-for-order/99999" }))}.${s}`, {
        target: "/pay-for-order/99999",
      }),
      "bad_signature",
    );
  });

  // --- audience, operation, body
  it("13. wrong audience (a link for ledger presented to payments)", async () => {
    await refused(at(link({ audience: "ledger.shop" }).header), "audience_mismatch");
  });

  it("14. method mismatch", async () => {
    await refused(at(link().header, { method: "PUT" }), "operation_mismatch");
  });

  it("15. path mismatch", async () => {
    await refused(at(link().header, { target: "/pay-for-order/99999" }), "operation_mismatch");
  });

  it("16. query added to the request", async () => {
    await refused(at(link().header, { target: `${PAY}?amount=1000000` }), "operation_mismatch");
  });

  it("17. dot-segment trick: /pay-for-order/12345/../99999 is /pay-for-order/99999", async () => {
    await refused(at(link().header, { target: `${PAY}/../99999` }), "operation_mismatch");
  });

  it("18. a signed op that is not normalized", async () => {
    await refused(at(forge({}, baseClaims({ op: "POST //pay-for-order/12345" }))), "malformed");
  });

  it("19. encoded-slash trick never reaches verification: the request target is refused", () => {
    expect(() => normalizeOperation("POST", "/pay-for-order%2F12345")).toThrow(
      expect.objectContaining({ code: "ambiguous_encoding" }),
    );
  });

  it("20. body swapped in flight", async () => {
    await refused(at(link().header, { body: '{"amount":100000}' }), "body_mismatch");
  });

  it("21. body removed", async () => {
    await refused(at(link().header, { body: null }), "body_mismatch");
  });

  it("22. body added to a link signed without one", async () => {
    await refused(at(link({ body: undefined }).header), "body_mismatch");
  });

  // --- time
  it("23. expired head", async () => {
    await refused(at(forge({}, baseClaims({ iat: now() - 60, exp: now() - 30 }))), "expired");
  });

  it("24. iat in the future", async () => {
    await refused(at(forge({}, baseClaims({ iat: now() + 60, exp: now() + 65 }))), "issued_in_future");
  });

  it("25. lifetime over the limit", async () => {
    await refused(at(forge({}, baseClaims({ iat: now(), exp: now() + 3600 }))), "lifetime_too_long");
  });

  it("26. exp before iat", async () => {
    await refused(at(forge({}, baseClaims({ iat: now(), exp: now() - 1 }))), "lifetime_too_long");
  });

  // --- replay
  it("27. replay of a used link", async () => {
    const { header } = link();
    await at(header);
    await refused(at(header), "replayed");
  });

  it("27b. replay in the last second the head is still accepted (whole-second clock)", async () => {
    const iat = now() - 14;
    const element = forge({}, baseClaims({ iat, exp: iat + 10 }));
    // A head is fresh for `skew` seconds after its iat (it expires later, but is stale by then).
    const lastAcceptedSecond = iat + DEFAULT_LIMITS.clockSkewSeconds;
    const clock = new MemoryReplayGuard({ now: () => lastAcceptedSecond * 1000 + 900 });
    const call = {
      self: "payments.shop",
      operation: normalizeOperation("POST", PAY),
      bodyHash: sha256Base64url(BODY),
      nowSeconds: lastAcceptedSecond,
    };
    await verifyChain(element, call, trust, clock);
    await refused(verifyChain(element, call, trust, clock), "replayed");
  });

  it("28. replay store unreachable: fail closed", async () => {
    guard = {
      claim: async () => {
        throw new ReplayStoreUnavailableError("redis down");
      },
    };
    await refused(at(link().header), "replay_store_unavailable");
  });

  // --- chain structure
  const twoHops = () => {
    const first = mintLink(shop.signer, {
      audience: "cart.shop",
      operation: normalizeOperation("POST", "/cart/confirm"),
    });
    return { first, second: link({ previous: first.elements }) };
  };

  it("29. truncation: the origin's link removed", async () => {
    await refused(at(twoHops().second.elements.slice(1).join("~")), "hash_link_broken");
  });

  it("30. truncation in the middle of a three-hop chain", async () => {
    const a = mintLink(shop.signer, { audience: "cart.shop", operation: normalizeOperation("GET", "/a") });
    const b = mintLink(cart.signer, {
      audience: "ledger.shop",
      operation: normalizeOperation("GET", "/b"),
      previous: a.elements,
    });
    const c = mintLink(ledger.signer, {
      audience: "payments.shop",
      operation: normalizeOperation("GET", "/c"),
      previous: b.elements,
    });
    const [e0, , e2] = c.elements;
    await refused(at(`${e0}~${e2}`, { method: "GET", target: "/c", body: null }), "custody_broken");
  });

  it("31. reordering two elements", async () => {
    const [e0, e1] = twoHops().second.elements;
    await refused(at(`${e1}~${e0}`), "audience_mismatch");
  });

  it("32. splicing: a head from one chain on the origin of another", async () => {
    const one = twoHops();
    const other = twoHops();
    await refused(at(`${other.first.elements[0]}~${one.second.elements[1]}`), "hash_link_broken");
  });

  it("33. a duplicated element", async () => {
    const [e0, e1] = twoHops().second.elements;
    await refused(at(`${e0}~${e0}~${e1}`), "custody_broken");
  });

  it("34. wrapping a chain not addressed to the wrapper (cart continues shop→ledger)", async () => {
    const toLedger = mintLink(shop.signer, {
      audience: "ledger.shop",
      operation: normalizeOperation("GET", "/a"),
    });
    await refused(at(link({ previous: toLedger.elements }).header), "custody_broken");
  });

  it("35. an inner link that had expired before it was continued", async () => {
    const old = forge(
      { kid: shop.signer.kid },
      {
        ...baseClaims({ iss: "shop.shop", aud: "cart.shop", op: "GET /a", iat: now() - 50, exp: now() - 40 }),
        bdh: undefined,
      },
      shop.signer.privateKey,
    );
    await refused(at(link({ previous: [old] }).header), "expired");
  });

  it("36. an inner link with a forged signature", async () => {
    const { first } = twoHops();
    const [h, p] = (first.elements[0] ?? "").split(".");
    const forged = `${h}.${p}.${Buffer.alloc(64, 7).toString("base64url")}`;
    await refused(at(link({ previous: [forged] }).header), "bad_signature");
  });

  it("37. an inner link whose issuer is withdrawn from the registry", async () => {
    const gone = makeService("gone.shop");
    const first = mintLink(gone.signer, {
      audience: "cart.shop",
      operation: normalizeOperation("GET", "/a"),
    });
    await refused(at(link({ previous: first.elements }).header), "unknown_key");
  });

  // --- limits and parsing
  it("38. missing header", async () => {
    await refused(at(undefined), "missing_chain");
  });

  it("39. oversize header", async () => {
    await refused(at("a".repeat(DEFAULT_LIMITS.maxHeaderBytes + 1)), "header_too_large");
  });

  it("40. too deep", async () => {
    await refused(at(Array.from({ length: 17 }, () => "x").join("~")), "chain_too_deep");
  });

  it("41. an element over the element size limit", async () => {
    await refused(at(`${"a".repeat(5000)}~${link().header}`), "element_too_large");
  });

  it("42. malformed base64", async () => {
    await refused(at("!!!.???.***"), "malformed");
  });

  it("43. malformed JSON", async () => {
    await refused(
      at(`${Buffer.from("{not json").toString("base64url")}.${b64(baseClaims())}.AAAA`),
      "malformed",
    );
  });

  it("44. JSON that is not an object", async () => {
    await refused(at(`${b64([1, 2])}.${b64(baseClaims())}.AAAA`), "malformed");
  });

  it("45. non-canonical base64url (unused bits set in the signature)", async () => {
    const [h, p, s = ""] = link().header.split(".");
    const last = s.at(-1) ?? "A";
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const tweaked = alphabet[alphabet.indexOf(last) ^ 1] ?? "A";
    await refused(at(`${h}.${p}.${s.slice(0, -1)}${tweaked}`), "malformed");
  });

  it("46. wrong claim types (iat as a string)", async () => {
    await refused(at(forge({}, baseClaims({ iat: String(now()) }))), "malformed");
  });

  it("47. an unknown claim smuggled into a link", async () => {
    await refused(at(forge({}, baseClaims({ admin: true }))), "malformed");
  });

  it("48. an embedded key in the link header (jwk)", async () => {
    await refused(at(forge({ jwk: { kty: "EC" } }, baseClaims())), "malformed");
  });

  it("49. a short jti (not enough randomness)", async () => {
    await refused(at(forge({}, baseClaims({ jti: "1" }))), "malformed");
  });

  it("50. a head that is not a link (typ JWT)", async () => {
    await refused(at(forge({ typ: "JWT" }, baseClaims())), "wrong_type");
  });

  // --- initial tokens
  const withInitial = (token: string, from = shop) =>
    mintLink(from.signer, {
      audience: "payments.shop",
      operation: normalizeOperation("POST", PAY),
      body: BODY,
      previous: [token],
    }).header;

  it("51. a user token from an untrusted issuer", async () => {
    await refused(
      at(withInitial(rogueIdp.token({ sub: "mallory", scope: "shop.customer" }))),
      "initial_token_invalid",
    );
  });

  it("52. an expired user token", async () => {
    await refused(at(withInitial(idp.token({ sub: "marissa", exp: now() - 60 }))), "initial_token_invalid");
  });

  it("53. a user token carrying its own key (jwk header)", async () => {
    await refused(
      at(withInitial(idp.token({ sub: "marissa" }, { jwk: { kty: "RSA" } }))),
      "initial_token_invalid",
    );
  });

  it("54. a user token introduced by a service that is not an edge", async () => {
    await refused(at(withInitial(idp.token({ sub: "marissa" }), cart)), "initial_token_not_admitted");
  });

  it("55. another service's identity token as e0", async () => {
    await refused(
      at(withInitial(tokenService.token({ sub: "ledger.shop" }), cart)),
      "initial_token_not_admitted",
    );
  });

  it("56. a user token with its signature stripped", async () => {
    const [h, p] = idp.token({ sub: "marissa" }).split(".");
    await refused(
      at(withInitial(`${h}.${p}.${Buffer.alloc(256).toString("base64url")}`)),
      "initial_token_invalid",
    );
  });

  it("57. an initial token swapped after the first link was signed", async () => {
    const [, head] = withInitial(idp.token({ sub: "marissa" })).split("~");
    await refused(at(`${idp.token({ sub: "mallory", scope: "admin" })}~${head}`), "hash_link_broken");
  });

  it("58. an initial token alone, as if it were a link", async () => {
    await refused(at(idp.token({ sub: "marissa", aud: "payments.shop" })), "wrong_type");
  });

  it("59. an initial token anywhere but first", async () => {
    const token = idp.token({ sub: "marissa" });
    const first = mintLink(shop.signer, {
      audience: "cart.shop",
      operation: normalizeOperation("GET", "/a"),
    });
    await refused(at(link({ previous: [...first.elements, token] }).header), "wrong_type");
  });

  it("61. a token-exchange (act) token used by a service that is not its actor", async () => {
    const exchanged = tokenService.token({
      sub: "marissa",
      act: { sub: "cart.shop" },
      scope: "shop.customer",
    });
    await refused(at(withInitial(exchanged, shop)), "initial_token_not_admitted");
  });

  it("62. a token-exchange (act) token whose actor is not an edge service", async () => {
    const exchanged = tokenService.token({
      sub: "marissa",
      act: { sub: "cart.shop" },
      scope: "shop.customer",
    });
    await refused(at(withInitial(exchanged, cart)), "initial_token_not_admitted");
  });

  it("63. a captured chain played over another workload's connection, and its jti is not spent", async () => {
    const header = link().header;
    await refused(at(header, { peer: "shop.shop" }), "peer_mismatch");
    await expect(at(header, { peer: "cart.shop" })).resolves.toBeDefined();
  });

  // --- freshness: no link extends the life of the one before it
  it("69. a head backdated within its lifetime (issued 8 s ago, not expired) is stale", async () => {
    const iat = now() - 8;
    await refused(at(forge({}, baseClaims({ iat, exp: iat + 10 }))), "stale");
  });

  it("70. an intermediary continues an expired upstream link by backdating its own link", async () => {
    // shop's link to cart expired 30 s ago; cart signs its link as if issued back then.
    const old = forge(
      { kid: shop.signer.kid },
      {
        ...baseClaims({ iss: "shop.shop", aud: "cart.shop", op: "GET /a", iat: now() - 40, exp: now() - 30 }),
        bdh: undefined,
      },
      shop.signer.privateKey,
    );
    const backdated = forge({}, baseClaims({ iat: now() - 31, exp: now() + 20, prv: sha256Base64url(old) }));
    await refused(at(`${old}~${backdated}`), "stale");
    // Signed honestly (now), the same continuation shows the upstream link had expired.
    const honest = forge({}, baseClaims({ prv: sha256Base64url(old) }));
    await refused(at(`${old}~${honest}`), "expired");
  });

  // --- a user's token belongs to the edge its audience names
  it("71. a user token addressed to another edge, continued by shop", async () => {
    await refused(
      at(withInitial(idp.token({ sub: "marissa", aud: "admin-portal.corp" }))),
      "initial_token_audience",
    );
  });

  it("72. a user token with no audience at all", async () => {
    await refused(at(withInitial(idp.token({ sub: "marissa" }))), "initial_token_audience");
  });

  it("60. a configured tighter limit applies (depth 2)", async () => {
    const limits = { ...DEFAULT_LIMITS, maxDepth: 2 };
    const three = link({
      previous: twoHops()
        .second.elements.slice(0, 1)
        .concat([idp.token({})]),
    });
    await refused(at(three.header, { limits }), "chain_too_deep");
    expect(claimsOf(link().header).jti).toBeTypeOf("string");
  });
});
