/**
 * The scenario both formats are measured on (bench/README.md, "Definitions"): the talk's checkout
 * (shop → cart → payments) continued by realistic downstream hops, every hop a call with a body.
 * Depth d = the first d hops, verified by the d-th callee. Shared by bench/chain.ts and
 * bench/breakdown.ts.
 */
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import type { VerifiedElementCache } from "../sidecar/src/chain/cache.js";
import { ChainError } from "../sidecar/src/chain/errors.js";
import { sha256Base64url } from "../sidecar/src/chain/jws.js";
import { CHAIN_SEPARATOR } from "../sidecar/src/chain/limits.js";
import { type LinkSigner, mintLink } from "../sidecar/src/chain/mint.js";
import { formatOperation, normalizeOperation, type Operation } from "../sidecar/src/chain/normalize.js";
import { type VerifiedChain, type VerifiedLink, verifyChain } from "../sidecar/src/chain/verify.js";
import type { ReplayGuard } from "../sidecar/src/replay/guard.js";
import { makeService, type TestService, TestTrust } from "../sidecar/test/support/mesh.js";
import {
  type NestedRegistry,
  type NestedSigner,
  NestedTokenError,
  signRs256Jwt,
  type VerifiedNested,
  verifyNested,
  wrapNested,
} from "./nested.js";

export interface Hop {
  readonly from: string;
  readonly to: string;
  readonly method: string;
  readonly target: string;
  readonly body: string;
}

export const HOPS: readonly Hop[] = [
  {
    from: "shop.shop",
    to: "cart.shop",
    method: "POST",
    target: "/cart/confirm",
    body: '{"cart":"c-8f2a91","items":3}',
  },
  {
    from: "cart.shop",
    to: "payments.shop",
    method: "POST",
    target: "/pay-for-order/12345",
    body: '{"order":12345,"amount":"59.90","currency":"EUR"}',
  },
  {
    from: "payments.shop",
    to: "fraud.risk",
    method: "POST",
    target: "/score/order/12345",
    body: '{"amount":"59.90"}',
  },
  {
    from: "fraud.risk",
    to: "ledger.finance",
    method: "POST",
    target: "/entries",
    body: '{"order":12345,"score":12}',
  },
  {
    from: "ledger.finance",
    to: "billing.finance",
    method: "POST",
    target: "/invoices?order=12345",
    body: '{"entry":"e-99812"}',
  },
  {
    from: "billing.finance",
    to: "tax.finance",
    method: "POST",
    target: "/quote/DE",
    body: '{"net":"50.34"}',
  },
  {
    from: "tax.finance",
    to: "notify.comms",
    method: "POST",
    target: "/messages/email",
    body: '{"to":"u-2938"}',
  },
  {
    from: "notify.comms",
    to: "templates.comms",
    method: "POST",
    target: "/render/receipt",
    body: '{"locale":"de-DE"}',
  },
  {
    from: "templates.comms",
    to: "audit.compliance",
    method: "POST",
    target: "/events",
    body: '{"type":"receipt.sent"}',
  },
  {
    from: "audit.compliance",
    to: "archive.compliance",
    method: "PUT",
    target: "/records/order-12345",
    body: '{"retain":"P10Y"}',
  },
];

export const MAX_DEPTH = HOPS.length;
/** Custody's default link lifetime (sidecar/src/chain/limits.ts), used for both formats. */
export const TTL_SECONDS = 10;
export const UAA_ISSUER = "https://uaa.shop.com/oauth/token";

export function must<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(`bench: missing ${what}`);
  return value;
}

export function hopAt(index: number): Hop {
  return must(HOPS[index], `hop ${index}`);
}

/** Keys and registries: ES256 (P-256) for Custody, RSA-2048 (RS256) for the talk's format. */
export interface Mesh {
  readonly custody: ReadonlyMap<string, TestService>;
  readonly trust: TestTrust;
  readonly nested: ReadonlyMap<string, NestedSigner>;
  readonly registry: NestedRegistry;
  readonly uaaKey: KeyObject;
}

export function buildMesh(): Mesh {
  const ids = [...new Set(HOPS.flatMap((hop) => [hop.from, hop.to]))];
  const custody = new Map<string, TestService>();
  const trust = new TestTrust();
  const nested = new Map<string, NestedSigner>();
  const nestedKeys = new Map<string, KeyObject>();
  for (const id of ids) {
    const service = makeService(id, { edge: id === "shop.shop" });
    custody.set(id, service);
    trust.addService(service);
    const pair = generateKeyPairSync("rsa", { modulusLength: 2048 });
    nested.set(id, { serviceId: id, privateKey: pair.privateKey });
    nestedKeys.set(id, pair.publicKey);
  }
  const uaa = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const registry: NestedRegistry = {
    serviceKey: (iss) => nestedKeys.get(iss),
    issuerKey: (iss) => (iss === UAA_ISSUER ? uaa.publicKey : undefined),
  };
  return { custody, trust, nested, registry, uaaKey: uaa.privateKey };
}

export function custodySigner(mesh: Mesh, id: string): LinkSigner {
  return must(mesh.custody.get(id), `service ${id}`).signer;
}

/** The same chain of depth d in both formats, and the call its last callee received. */
export interface Chains {
  readonly depth: number;
  readonly custodyHeader: string;
  readonly custodyElements: readonly string[];
  readonly nestedToken: string;
  readonly self: string;
  readonly operation: Operation;
  readonly bodyHash: string;
}

/** Signers to use for the first hop instead of the real ones (the self-check's forgery). */
export interface FirstHopOverride {
  readonly custody: LinkSigner;
  readonly nested: NestedSigner;
}

export function buildChains(
  mesh: Mesh,
  depth: number,
  now: number,
  options: { initialToken?: string; forgeFirst?: FirstHopOverride } = {},
): Chains {
  const { initialToken, forgeFirst } = options;
  let elements: readonly string[] = initialToken === undefined ? [] : [initialToken];
  let nested: string | undefined = initialToken;
  for (let index = 0; index < depth; index++) {
    const hop = hopAt(index);
    const operation = normalizeOperation(hop.method, hop.target);
    const forged = index === 0 ? forgeFirst : undefined;
    elements = mintLink(forged?.custody ?? custodySigner(mesh, hop.from), {
      audience: hop.to,
      operation,
      body: hop.body,
      previous: elements,
      nowSeconds: now,
      ttlSeconds: TTL_SECONDS,
    }).elements;
    nested = wrapNested(forged?.nested ?? must(mesh.nested.get(hop.from), `nested signer ${hop.from}`), {
      audience: hop.to,
      operation: formatOperation(operation),
      hasBody: hop.body.length > 0,
      incoming: nested === undefined ? undefined : { kind: index === 0 ? "ini" : "jwt", token: nested },
      nowSeconds: now,
      ttlSeconds: TTL_SECONDS,
    });
  }
  const last = hopAt(depth - 1);
  return {
    depth,
    custodyHeader: elements.join(CHAIN_SEPARATOR),
    custodyElements: elements,
    nestedToken: must(nested, "nested token"),
    self: last.to,
    operation: normalizeOperation(last.method, last.target),
    bodyHash: sha256Base64url(last.body),
  };
}

/**
 * Accepts every jti, for both formats: the benchmark verifies one chain per depth over and over, and
 * the replay store is not what is compared (its cost is in bench/breakdown.ts).
 */
export const noReplayGuard: ReplayGuard = { claim: async () => true };

export function verifyCustody(
  mesh: Mesh,
  chains: Chains,
  now: number,
  cache?: VerifiedElementCache<VerifiedLink>,
  replay: ReplayGuard = noReplayGuard,
): Promise<VerifiedChain> {
  return verifyChain(
    chains.custodyHeader,
    { self: chains.self, operation: chains.operation, bodyHash: chains.bodyHash, nowSeconds: now },
    mesh.trust,
    replay,
    cache === undefined ? {} : { cache },
  );
}

export function verifyTalk(mesh: Mesh, chains: Chains, now: number): Promise<VerifiedNested> {
  return verifyNested(
    chains.nestedToken,
    { self: chains.self, operation: formatOperation(chains.operation), hasBody: true, nowSeconds: now },
    mesh.registry,
    noReplayGuard,
  );
}

/** The user token of slide 71, as the auth server (UAA) issues it: RS256, no kid. */
export function uaaUserToken(mesh: Mesh, now: number): string {
  return signRs256Jwt(
    { alg: "RS256", typ: "JWT" },
    {
      jti: "b3d51a0c-6f7e-4c1e-9d2a-5a8f3e2c1b90",
      sub: "2938409238502935",
      scope: ["openid", "shop.customer"],
      cid: "shop",
      grant_type: "authorization_code",
      user_name: "marissa",
      iat: now - 100,
      exp: now + 43_200,
      iss: UAA_ISSUER,
      aud: ["openid", "shop"],
    },
    mesh.uaaKey,
  );
}

async function expectRefusal(what: string, attempt: () => Promise<unknown>, reason: string): Promise<void> {
  try {
    await attempt();
  } catch (error) {
    const code =
      error instanceof ChainError ? error.code : error instanceof NestedTokenError ? error.reason : undefined;
    if (code === reason) return;
    throw new Error(`bench self-check: ${what} was refused for ${String(code ?? error)}, expected ${reason}`);
  }
  throw new Error(`bench self-check: ${what} was accepted, expected ${reason}`);
}

/**
 * Before anything is timed: both verifiers accept the honest chains with the right shape, and both
 * really check inner signatures (a forged first hop under honest later hops is refused).
 */
export async function selfCheck(mesh: Mesh, now: number): Promise<void> {
  for (const depth of [1, 3, MAX_DEPTH]) {
    const chains = buildChains(mesh, depth, now);
    const custody = await verifyCustody(mesh, chains, now);
    if (custody.links.length !== depth || custody.head.aud !== chains.self) {
      throw new Error(`bench self-check: custody chain of depth ${depth} verified to the wrong shape`);
    }
    const nested = await verifyTalk(mesh, chains, now);
    if (nested.layers.length !== depth || nested.layers[0]?.aud !== chains.self) {
      throw new Error(`bench self-check: nested token of depth ${depth} verified to the wrong shape`);
    }
  }
  const withToken = buildChains(mesh, 3, now, { initialToken: uaaUserToken(mesh, now) });
  const nested = await verifyTalk(mesh, withToken, now);
  if (nested.layers.length !== 3 || nested.initial?.user_name !== "marissa") {
    throw new Error("bench self-check: nested token with ini verified to the wrong shape");
  }
  const forgeFirst: FirstHopOverride = {
    custody: {
      ...custodySigner(mesh, "shop.shop"),
      privateKey: makeService("mallory.evil").signer.privateKey,
    },
    nested: {
      serviceId: "shop.shop",
      privateKey: generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey,
    },
  };
  const forged = buildChains(mesh, 3, now, { forgeFirst });
  await expectRefusal(
    "custody chain with a forged first link",
    () => verifyCustody(mesh, forged, now),
    "bad_signature",
  );
  await expectRefusal(
    "nested token with a forged inner layer",
    () => verifyTalk(mesh, forged, now),
    "bad_signature",
  );
}
