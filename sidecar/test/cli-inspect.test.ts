import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { main } from "../../cli/src/main.js";
import type { Registry } from "../../crds/src/registry-schema.js";
import { createCertificateAuthority } from "../../pki/src/index.js";
import { captureIO, temporaryDirectory } from "../../pki/test/support.js";
import { sha256Base64url } from "../src/chain/jws.js";
import { mintLink } from "../src/chain/mint.js";
import { normalizeOperation } from "../src/chain/normalize.js";
import { type InspectedChain, inspectChain } from "../src/cli/inspect.js";
import type { InputIO } from "../src/cli/options.js";
import { renderChain, renderInspection } from "../src/cli/render.js";
import { makeService, TestIssuer, TOKEN_SERVICE, USER_IDP } from "./support/mesh.js";
import { registryDocument, testRegistry } from "./support/registry.js";
import { PAY_OPERATION, talkChain } from "./support/talk.js";

const shop = makeService("shop.shop", { edge: true });
const cart = makeService("cart.shop");
const payments = makeService("payments.shop");
const ledger = makeService("ledger.shop");
const idp = new TestIssuer(USER_IDP);
const tokenService = new TestIssuer(TOKEN_SERVICE);
const BODY = '{"amount":1200}';
const NOW = Math.floor(Date.now() / 1000);
const pay = PAY_OPERATION;

/** The talk's happy path: a user's token at the shop (edge), shop → cart → payments. */
function happyPath(ctx: Record<string, string> = {}) {
  return talkChain({ idp, shop, cart, payments }, { body: BODY, nowSeconds: NOW, ctx });
}

/** A chain of links only (no initial token): shop → cart → payments → ledger. */
function linksOnly() {
  let elements: readonly string[] = [];
  for (const [from, to] of [
    [shop, cart],
    [cart, payments],
    [payments, ledger],
  ] as const) {
    elements = mintLink(from.signer, {
      audience: to.info.id,
      operation: normalizeOperation("GET", "/x"),
      previous: elements,
      nowSeconds: NOW,
    }).elements;
  }
  return elements;
}

/** The element with `from` replaced by `to` in its claims, signature kept. */
function tamper(element: string, from: string, to: string): string {
  const [header, payload, signature] = element.split(".");
  const claims = Buffer.from(payload ?? "", "base64url")
    .toString("utf8")
    .replace(from, to);
  return `${header}.${Buffer.from(claims).toString("base64url")}.${signature}`;
}

const statuses = (chain: InspectedChain) =>
  chain.elements.map((element) =>
    element.verdict.status === "failed" ? element.verdict.reason : element.verdict.status,
  );

let registry: Registry;
let directory: { path: string; cleanup: () => Promise<void> };
let registryFile: string;

beforeAll(async () => {
  const trustBundle = (await createCertificateAuthority()).certificate.pem;
  const parts = {
    trustBundle,
    tokenService,
    trustedIssuers: [{ issuer: idp }],
    services: [shop, cart, payments, ledger],
  };
  registry = testRegistry(parts);
  directory = await temporaryDirectory();
  registryFile = join(directory.path, "registry.json");
  await writeFile(registryFile, JSON.stringify(registryDocument(parts)));
});
afterAll(() => directory.cleanup());

describe("inspectChain", () => {
  it("decodes without a registry: issuer → audience, operation, times, claims; nothing verified", async () => {
    const chain = happyPath({ order: "7" });
    const inspected = await inspectChain(chain.header, { nowSeconds: NOW });
    expect(inspected.verification).toBeUndefined();
    expect(inspected.elements.map((e) => [e.kind, e.issuer, e.audience, e.operation])).toEqual([
      ["token", USER_IDP, "shop.shop", undefined],
      ["link", "shop.shop", "cart.shop", "POST /cart/confirm"],
      ["link", "cart.shop", "payments.shop", "POST /pay-for-order/7"],
    ]);
    expect(statuses(inspected)).toEqual(["not_verified", "not_verified", "not_verified"]);
    expect(inspected.elements[0]?.claims).toMatchObject({ sub: "marissa", scope: "openid shop.customer" });
    expect(inspected.elements[1]?.claims["ctx.order"]).toBe("7");
    expect(inspected.elements[2]).toMatchObject({ issuedAt: NOW, expiresAt: NOW + 10 });
    expect(inspected.elements[2]?.claims.prv).toBe(inspected.elements[1]?.hash);
  });

  it("verifies every element against the registry, with the request the head came with", async () => {
    const chain = happyPath();
    const inspected = await inspectChain(chain.header, {
      registry,
      nowSeconds: NOW + 1,
      request: {
        receiver: payments.info.id,
        operation: pay,
        body: { sha256: sha256Base64url(BODY) },
      },
    });
    expect(inspected.verification).toMatchObject({ ok: true, generation: 7, reason: undefined });
    expect(statuses(inspected)).toEqual(["ok", "ok", "ok"]);
    expect(inspected.verification?.unchecked).toEqual([
      "replay (a dry run spends no jti)",
      "the TLS peer that presented the head",
    ]);
  });

  it("says what it could not check when no request is given", async () => {
    const inspected = await inspectChain(happyPath().header, { registry, nowSeconds: NOW });
    expect(inspected.verification?.ok).toBe(true);
    expect(inspected.verification?.unchecked.join("; ")).toMatch(/receiver.*request.*body/);
  });

  it("blames a tampered element with bad_signature and still judges the others", async () => {
    const chain = happyPath();
    const elements = [...chain.elements];
    elements[1] = tamper(elements[1] ?? "", "/cart/confirm", "/cart/cancel");
    const inspected = await inspectChain(elements.join("~"), {
      registry,
      nowSeconds: NOW,
      request: { receiver: payments.info.id, operation: pay, body: { sha256: sha256Base64url(BODY) } },
    });
    expect(inspected.verification).toMatchObject({ ok: false, reason: "bad_signature", element: 1 });
    expect(statuses(inspected)).toEqual(["ok", "bad_signature", "ok"]);
    expect(inspected.elements[1]?.operation).toBe("POST /cart/cancel");
    expect(inspected.elements[0]?.verdict).toMatchObject({
      status: "ok",
      note: expect.stringMatching(/alone/),
    });

    // Links before the tampered one are held against their own claims, not the head's request.
    const links = [...linksOnly()];
    links[1] = tamper(links[1] ?? "", '"GET /x"', '"GET /y"');
    const onlyLinks = await inspectChain(links.join("~"), {
      registry,
      nowSeconds: NOW,
      request: {
        receiver: ledger.info.id,
        operation: normalizeOperation("GET", "/x"),
        body: { sha256: undefined },
      },
    });
    expect(statuses(onlyLinks)).toEqual(["ok", "bad_signature", "ok"]);
  });

  it("reports an expired head as of --at, and verifies the rest as of when it was made", async () => {
    const inspected = await inspectChain(happyPath().header, { registry, nowSeconds: NOW + 120 });
    expect(inspected.verification).toMatchObject({ ok: false, reason: "expired", element: 2 });
    expect(statuses(inspected)).toEqual(["ok", "ok", "expired"]);
    expect(renderInspection(inspected)).toContain("expired 110 s ago");
    // The same chain, as of when it was sent:
    expect((await inspectChain(happyPath().header, { registry, nowSeconds: NOW })).verification?.ok).toBe(
      true,
    );
  });

  it("detects a removed link: custody broken, or the hash link to a missing or other element", async () => {
    const links = linksOnly();
    const withoutMiddle = [links[0], links[2]].join("~");
    const middle = await inspectChain(withoutMiddle, { registry, nowSeconds: NOW });
    expect(middle.verification).toMatchObject({ ok: false, reason: "custody_broken", element: 1 });
    expect(statuses(middle)).toEqual(["ok", "custody_broken"]);

    const chain = happyPath();
    const withoutToken = chain.elements.slice(1).join("~");
    const origin = await inspectChain(withoutToken, { registry, nowSeconds: NOW });
    expect(origin.verification).toMatchObject({ ok: false, reason: "hash_link_broken", element: 0 });
    expect(statuses(origin)).toEqual(["hash_link_broken", "ok"]);

    // Behind an initial token, the hash link is checked first.
    const skipped = [chain.elements[0], chain.elements[2]].join("~");
    expect(statuses(await inspectChain(skipped, { registry, nowSeconds: NOW }))).toEqual([
      "ok",
      "hash_link_broken",
    ]);
  });

  it("holds the head against the receiver and request given", async () => {
    const chain = happyPath();
    const elsewhere = await inspectChain(chain.header, {
      registry,
      nowSeconds: NOW,
      request: { receiver: ledger.info.id },
    });
    expect(elsewhere.verification).toMatchObject({ reason: "audience_mismatch", element: 2 });
    const other = await inspectChain(chain.header, {
      registry,
      nowSeconds: NOW,
      request: { operation: normalizeOperation("POST", "/pay-for-order/8"), body: { sha256: undefined } },
    });
    expect(other.verification?.reason).toBe("operation_mismatch");
  });

  it("reports an unreadable element without giving up on the rest", async () => {
    const links = linksOnly();
    const inspected = await inspectChain(["not-a-jws", ...links.slice(1)].join("~"), {
      registry,
      nowSeconds: NOW,
    });
    expect(inspected.elements[0]).toMatchObject({
      kind: "unreadable",
      problem: expect.stringMatching(/^malformed/),
    });
    expect(statuses(inspected)[0]).toBe("malformed");
  });

  it("says what a sealed initial token is (the chain as an app received it) and decodes the links", async () => {
    const [, ...links] = happyPath().elements;
    const inspected = await inspectChain([`sealed.v1.${"A".repeat(40)}`, ...links].join("~"));
    expect(inspected.elements[0]).toMatchObject({
      kind: "unreadable",
      problem: expect.stringMatching(/^sealed: .*Custody-Initial-\*/),
    });
    expect(inspected.elements[1]).toMatchObject({ kind: "link", issuer: shop.info.id });
  });

  it("refuses input beyond its bounds and an empty value", async () => {
    await expect(inspectChain("   ")).rejects.toMatchObject({ code: "empty_chain" });
    await expect(inspectChain("a.b.c~".repeat(70))).rejects.toMatchObject({ code: "chain_too_large" });
  });

  it("renders the tree with e0 at the root and each link under the previous one", async () => {
    const inspected = await inspectChain(`Custody-Chain: ${happyPath().header}\n`, {
      registry,
      nowSeconds: NOW,
    });
    const lines = renderChain(inspected.elements).split("\n");
    expect(lines[0]).toBe(`e0 initial token ${USER_IDP} → shop.shop  [ok]`);
    expect(lines).toContain("└─ e1 shop.shop → cart.shop  POST /cart/confirm  [ok]");
    expect(lines).toContain("   └─ e2 cart.shop → payments.shop  POST /pay-for-order/7  [ok]");
    expect(lines.filter((line) => line.startsWith("│  ")).length).toBeGreaterThan(2);
  });

  it("never prints a signature or a token, and escapes what could drive a terminal", async () => {
    const chain = happyPath({ note: `\u001b[2J\u202eevil${"x".repeat(250)}` });
    const inspected = await inspectChain(chain.header, { registry, nowSeconds: NOW });
    const text = renderInspection(inspected) + JSON.stringify(inspected);
    for (const element of chain.elements) {
      const signature = element.split(".")[2] ?? "";
      expect(text).not.toContain(signature);
      expect(text).not.toContain(element.split(".").slice(0, 2).join("."));
    }
    expect(text).not.toContain("\u001b");
    expect(text).not.toContain("\u202e");
    expect(inspected.elements[1]?.claims["ctx.note"]).toMatch(
      /^\\1b\[2J\\e2\\80\\aeevilx+… \(\d+ characters\)$/,
    );
  });
});

describe("custody token inspect", () => {
  it("prints the decoded tree and exits 0 without a registry", async () => {
    const out = captureIO();
    expect(await main(["token", "inspect", happyPath().header], out.io)).toBe(0);
    expect(out.stdout()).toContain("└─ e1 shop.shop → cart.shop  POST /cart/confirm  [not verified]");
    expect(out.stdout()).toContain("not verified: decoded only (give --registry to verify).");
  });

  it("verifies against a registry file with the request and body, and exits 0", async () => {
    const body = join(directory.path, "body.json");
    await writeFile(body, BODY);
    const out = captureIO();
    const code = await main(
      [
        "token",
        "inspect",
        happyPath().header,
        "--registry",
        registryFile,
        "--target",
        "payments.shop",
        "--request",
        "POST /pay-for-order/7",
        "--body-file",
        body,
      ],
      out.io,
    );
    expect(out.stderr()).toBe("");
    expect(code).toBe(0);
    expect(out.stdout()).toMatch(/verified against registry generation 7, as of .*: a receiver would accept/);
    expect(out.stdout()).toContain(
      "not checked: replay (a dry run spends no jti); the TLS peer that presented the head.",
    );
  });

  it("exits 1 and names the reason for an expired chain as of --at", async () => {
    const out = captureIO();
    const at = new Date((NOW + 3600) * 1000).toISOString();
    expect(
      await main(["token", "inspect", happyPath().header, "--registry", registryFile, "--at", at], out.io),
    ).toBe(1);
    expect(out.stdout()).toContain("[FAILED expired]");
    expect(out.stdout()).toMatch(/verification failed .*: expired at e2: head has expired\./);
  });

  it("reads the chain from stdin, and prints JSON", async () => {
    const out = captureIO();
    const io: InputIO = { ...out.io, stdin: Readable.from([`${happyPath().header}\n`]) };
    expect(await main(["token", "inspect", "--json", "--registry", registryFile], io)).toBe(0);
    const printed = JSON.parse(out.stdout()) as InspectedChain;
    expect(printed.verification?.ok).toBe(true);
    expect(printed.elements.map((element) => element.verdict.status)).toEqual(["ok", "ok", "ok"]);
  });

  it.each([
    [["token"], /Usage: custody token <command>/, "stdout"],
    [["token", "decode"], /unknown command "decode"/, "stderr"],
    [["token", "inspect", "a", "b"], /give one chain/, "stderr"],
    [
      ["token", "inspect", "x", "--at", "2025-06-01T10:00:05Z"],
      /--at is for verification: give --registry PATH too/,
      "stderr",
    ],
    [
      ["token", "inspect", "x", "--registry", "r", "--at", "yesterday"],
      /--at must be an instant such as/,
      "stderr",
    ],
    [
      ["token", "inspect", "x", "--registry", "r", "--request", "/pay"],
      /--request must be "METHOD \/path\?query"/,
      "stderr",
    ],
    [
      ["token", "inspect", "x", "--registry", "/nonexistent/registry.json"],
      /--registry \/nonexistent\/registry.json cannot be used/,
      "stderr",
    ],
    [["token", "inspect", "--frobnicate"], /See `custody token inspect --help`/, "stderr"],
  ])("%j exits 2 and says what to do", async (args, message, stream) => {
    const out = captureIO();
    const io: InputIO = { ...out.io, stdin: Readable.from([]) };
    expect(await main(args, io)).toBe(2);
    expect(stream === "stdout" ? out.stdout() : out.stderr()).toMatch(message);
  });

  it("prints its help", async () => {
    const out = captureIO();
    expect(await main(["token", "inspect", "--help"], out.io)).toBe(0);
    expect(out.stdout()).toContain("Usage: custody token inspect [CHAIN | -] [options]");
  });
});
