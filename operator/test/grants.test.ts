import { createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import type { PublicJwk } from "../../crds/src/jwk.js";
import { validateServiceIdentity } from "../../crds/src/manifest.js";
import { TrustAnchors } from "../../pki/src/anchors.js";
import type { CertificateAuthority } from "../../pki/src/ca.js";
import { IssuerKeySet } from "../../pki/src/jwks.js";
import { parseCompactJws, sha256Base64url, signCompactJws, verifySignature } from "../../pki/src/jws.js";
import { VerifiedCertificateCache } from "../../pki/src/peer.js";
import { type GrantContext, grantToken } from "../src/issuer/grants.js";
import { IdentityIndex } from "../src/issuer/identities.js";
import type { SigningKey } from "../src/issuer/signing-keys.js";
import { refusal } from "./support/oauth.js";
import { type ClientCertificate, createCa, custodyClient, partnerClient } from "./support/pki.js";

const ISSUER = "https://issuer.custody.test";
const USER_IDP = "https://login.shop.example";
const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt";

function ecKey(kid: string): { privateKey: KeyObject; jwk: PublicJwk } {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const { x = "", y = "" } = publicKey.export({ format: "jwk" });
  return { privateKey, jwk: { kty: "EC", crv: "P-256", alg: "ES256", kid, x, y } };
}

function identity(name: string, spec: Record<string, unknown>) {
  return validateServiceIdentity({
    apiVersion: "custody.dev/v1alpha1",
    kind: "ServiceIdentity",
    metadata: { name, namespace: "shop" },
    spec,
  });
}

const form = (entries: Record<string, string>) => new Map(Object.entries(entries));
const chainOf = (client: ClientCertificate) => [client.certificate.der];

function claimsOf(token: string): Record<string, unknown> {
  return parseCompactJws(token).payload as Record<string, unknown>;
}

describe("token grants", () => {
  let ca: CertificateAuthority;
  let partnerCa: CertificateAuthority;
  let strangerCa: CertificateAuthority;
  /** Another partner, trusted too: it must not become the first partner, nor any mesh service. */
  let otherPartnerCa: CertificateAuthority;
  /** A partner CA made with `custody pki init`'s defaults: it claims Custody's own trust domain. */
  let lookalikeCa: CertificateAuthority;
  let cart: ClientCertificate;
  let shop: ClientCertificate;
  let partner: ClientCertificate;
  let signingKey: SigningKey;
  let idp: ReturnType<typeof ecKey>;
  let context: GrantContext;
  const nowMs = Date.now();

  beforeAll(async () => {
    [ca, partnerCa, strangerCa, otherPartnerCa, lookalikeCa] = await Promise.all([
      createCa(),
      createCa("partner.example"),
      createCa("stranger.example"),
      createCa("other-partner.example"),
      createCa("custody.local"),
    ]);
    [cart, shop, partner] = await Promise.all([
      custodyClient(ca, "cart.shop"),
      custodyClient(ca, "shop.shop"),
      partnerClient(partnerCa, "partner-client"),
    ]);
    const key = ecKey("issuer-key");
    signingKey = { kid: "issuer-key", privateKey: key.privateKey, jwk: key.jwk };
    idp = ecKey("idp-1");
    context = {
      identities: new IdentityIndex("custody.local", [
        {
          identity: identity("cart", {
            claims: { team: "checkout" },
            scopes: ["cart.read", "cart.write"],
            tokenTTL: "10m",
            environment: "prod",
          }),
          source: "cart.yaml",
        },
        { identity: identity("shop", { edge: true, tokenTTL: "1h" }), source: "shop.yaml" },
        {
          identity: identity("partner", {
            externalSubjects: [
              { issuer: "CN=Custody CA partner.example,O=Custody", subject: "CN=partner-client" },
            ],
          }),
          source: "partner.yaml",
        },
      ]),
      anchors: TrustAnchors.fromPem({
        trustDomain: "custody.local",
        mesh: [{ name: "ca", pem: ca.certificate.pem }],
        partners: [
          { name: "partner", pem: partnerCa.certificate.pem },
          { name: "other partner", pem: otherPartnerCa.certificate.pem },
          { name: "look-alike", pem: lookalikeCa.certificate.pem },
        ],
      }),
      signingKey,
      trustedIssuers: new IssuerKeySet().add(USER_IDP, [idp.jwk], ["shop.shop", "echo.shop"]),
      issuer: ISSUER,
      audience: "spiffe://custody.local",
      maxLifetimeSeconds: 86_400,
      nowMs,
      certificates: new VerifiedCertificateCache(),
    };
  });

  const userToken = (claims: Record<string, unknown>, key = idp) =>
    signCompactJws(
      { alg: "ES256", typ: "JWT", kid: key.jwk.kid },
      {
        iss: USER_IDP,
        sub: "marissa",
        aud: "shop.shop",
        scope: "shop.customer profile",
        iat: Math.floor(nowMs / 1000),
        exp: Math.floor(nowMs / 1000) + 300,
        ...claims,
      },
      key.privateKey,
    );

  describe("client_credentials", () => {
    it("issues a certificate-bound identity token with the identity's claims and scopes", () => {
      const result = grantToken(context, form({ grant_type: "client_credentials" }), chainOf(cart));
      expect(result.body).toMatchObject({
        token_type: "Bearer",
        expires_in: 600,
        scope: "cart.read cart.write",
      });
      const jws = parseCompactJws(result.issued.token);
      expect(jws.header).toEqual({ alg: "ES256", typ: "at+jwt", kid: "issuer-key" });
      expect(
        verifySignature("ES256", createPublicKey(signingKey.privateKey), jws.signingInput, jws.signature),
      ).toBe(true);
      expect(jws.payload).toMatchObject({
        iss: ISSUER,
        sub: "cart.shop",
        aud: "spiffe://custody.local",
        client_id: "cart.shop",
        env: "prod",
        team: "checkout",
        cnf: { "x5t#S256": sha256Base64url(cart.certificate.der) },
      });
      expect(jws.payload.jti).toMatch(/^[A-Za-z0-9_-]{22}$/);
    });

    it("grants a requested subset of scopes and refuses a scope the identity does not have", () => {
      const subset = grantToken(
        context,
        form({ grant_type: "client_credentials", scope: "cart.read" }),
        chainOf(cart),
      );
      expect(claimsOf(subset.issued.token).scope).toBe("cart.read");
      const error = refusal(() =>
        grantToken(
          context,
          form({ grant_type: "client_credentials", scope: "cart.read admin" }),
          chainOf(cart),
        ),
      );
      expect([error.code, error.reason]).toEqual(["invalid_scope", "scope_not_granted"]);
      expect(error.message).toContain('"admin"');
    });

    it("never issues a token that outlives the certificate", async () => {
      const shortLived = await custodyClient(ca, "cart.shop", {
        lifetimeSeconds: 120,
        notBefore: new Date(nowMs - 1000),
      });
      const result = grantToken(context, form({ grant_type: "client_credentials" }), chainOf(shortLived));
      expect(result.issued.expiresAt).toBe(Math.floor(shortLived.certificate.notAfter.getTime() / 1000));
      expect(result.issued.expiresIn).toBeLessThanOrEqual(120);
    });

    it("maps a third-party certificate through externalSubjects", () => {
      const result = grantToken(context, form({ grant_type: "client_credentials" }), chainOf(partner));
      expect(result.subject).toBe("partner.shop");
    });

    it.each([
      ["no certificate", () => [], "no_client_certificate"],
      [
        "a certificate from an untrusted CA",
        async () => chainOf(await custodyClient(strangerCa, "cart.shop")),
        "unknown_issuer",
      ],
      [
        "an expired certificate",
        async () =>
          chainOf(
            await custodyClient(ca, "cart.shop", { now: new Date(nowMs - 7_200_000), lifetimeSeconds: 600 }),
          ),
        "expired",
      ],
      [
        "a server-only certificate",
        async () => chainOf(await custodyClient(ca, "cart.shop", { usage: "server" })),
        "not_client_auth",
      ],
      [
        "an identity no manifest declares",
        async () => chainOf(await custodyClient(ca, "ghost.shop")),
        "unknown_identity",
      ],
      [
        "a partner subject no identity lists",
        async () => chainOf(await partnerClient(partnerCa, "someone-else")),
        "unknown_identity",
      ],
      [
        "a partner subject issued by another trusted partner's CA (subjects are bound to their issuer)",
        async () => chainOf(await partnerClient(otherPartnerCa, "partner-client")),
        "unknown_identity",
      ],
      [
        "a mesh identity (SPIFFE id of this trust domain) issued by a partner CA that claims the domain",
        async () => chainOf(await custodyClient(lookalikeCa, "cart.shop")),
        "spiffe_id_not_mesh_issued",
      ],
    ])("refuses %s with invalid_client (401)", async (_what, chain, reason) => {
      const presented = await chain();
      const error = refusal(() => grantToken(context, form({ grant_type: "client_credentials" }), presented));
      expect([error.code, error.status, error.reason]).toEqual(["invalid_client", 401, reason]);
    });

    it("refuses a client_id that is not the certificate's identity", () => {
      const error = refusal(() =>
        grantToken(
          context,
          form({ grant_type: "client_credentials", client_id: "shop.shop" }),
          chainOf(cart),
        ),
      );
      expect([error.code, error.reason]).toEqual(["invalid_client", "client_id_mismatch"]);
    });

    it("refuses unknown grant types before authenticating anyone", () => {
      const error = refusal(() => grantToken(context, form({ grant_type: "password" }), []));
      expect([error.code, error.status]).toEqual(["unsupported_grant_type", 400]);
    });
  });

  describe("token exchange (RFC 8693)", () => {
    const exchange = (extra: Record<string, string>) =>
      form({ grant_type: EXCHANGE, subject_token_type: JWT_TYPE, audience: "cart.shop", ...extra });

    it("gives an edge actor a composite token: the user as subject, the actor in act", () => {
      const result = grantToken(
        context,
        exchange({ subject_token: userToken({}), scope: "shop.customer" }),
        chainOf(shop),
      );
      expect(result.body).toMatchObject({
        token_type: "Bearer",
        issued_token_type: "urn:ietf:params:oauth:token-type:access_token",
        scope: "shop.customer",
      });
      expect(claimsOf(result.issued.token)).toMatchObject({
        iss: ISSUER,
        sub: "marissa",
        aud: "cart.shop",
        act: { sub: "shop.shop" },
        subject_issuer: USER_IDP,
        cnf: { "x5t#S256": sha256Base64url(shop.certificate.der) },
      });
    });

    it("never outlives the user's token", () => {
      const exp = Math.floor(nowMs / 1000) + 42;
      const result = grantToken(context, exchange({ subject_token: userToken({ exp }) }), chainOf(shop));
      expect(result.issued.expiresAt).toBe(exp);
    });

    it.each([
      [
        "a non-edge actor",
        () => [exchange({ subject_token: userToken({}) }), "cart"] as const,
        "unauthorized_client",
        "actor_not_edge",
      ],
      [
        "an expired user token",
        () =>
          [exchange({ subject_token: userToken({ exp: Math.floor(nowMs / 1000) - 120 }) }), "shop"] as const,
        "invalid_grant",
        "subject_token_expired",
      ],
      [
        "a user token from a foreign issuer",
        () => [exchange({ subject_token: userToken({ iss: "https://evil.example" }) }), "shop"] as const,
        "invalid_grant",
        "subject_token_untrusted_issuer",
      ],
      [
        "a user token signed by another key",
        () => [exchange({ subject_token: userToken({}, ecKey("idp-1")) }), "shop"] as const,
        "invalid_grant",
        "subject_token_bad_signature",
      ],
      [
        "a user token for another audience",
        () => [exchange({ subject_token: userToken({ aud: "elsewhere" }) }), "shop"] as const,
        "invalid_grant",
        "subject_token_wrong_audience",
      ],
      [
        "a user token for another edge (its issuer trusts both audiences)",
        () => [exchange({ subject_token: userToken({ aud: "echo.shop" }) }), "shop"] as const,
        "invalid_grant",
        "subject_token_audience",
      ],
      [
        "a call-chain link as subject token",
        () =>
          [
            exchange({
              subject_token: signCompactJws(
                { alg: "ES256", typ: "custody+jwt", kid: "idp-1" },
                { iss: USER_IDP, sub: "x", exp: Math.floor(nowMs / 1000) + 60 },
                idp.privateKey,
              ),
            }),
            "shop",
          ] as const,
        "invalid_grant",
        "subject_token_wrong_type",
      ],
      [
        "an unknown audience",
        () => [exchange({ subject_token: userToken({}), audience: "nobody.shop" }), "shop"] as const,
        "invalid_target",
        "unknown_audience",
      ],
      [
        "an actor_token",
        () => [exchange({ subject_token: userToken({}), actor_token: "x" }), "shop"] as const,
        "invalid_request",
        "actor_token_given",
      ],
      [
        "an unsupported subject_token_type",
        () =>
          [
            exchange({
              subject_token: userToken({}),
              subject_token_type: "urn:ietf:params:oauth:token-type:saml2",
            }),
            "shop",
          ] as const,
        "invalid_request",
        "unsupported_token_type",
      ],
      [
        "a missing subject_token",
        () => [exchange({}), "shop"] as const,
        "invalid_request",
        "missing_parameter",
      ],
      [
        "a scope the user does not have",
        () => [exchange({ subject_token: userToken({}), scope: "admin" }), "shop"] as const,
        "invalid_scope",
        "scope_not_granted",
      ],
    ])("refuses %s", (_what, request, code, reason) => {
      const [body, who] = request();
      const error = refusal(() => grantToken(context, body, chainOf(who === "cart" ? cart : shop)));
      expect([error.code, error.reason]).toEqual([code, reason]);
    });

    it("refuses to exchange a token this service issued itself", () => {
      const own = grantToken(context, form({ grant_type: "client_credentials" }), chainOf(shop)).issued.token;
      const error = refusal(() => grantToken(context, exchange({ subject_token: own }), chainOf(shop)));
      expect(error.reason).toBe("subject_token_untrusted_issuer");
    });
  });
});
