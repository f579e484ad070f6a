/**
 * The demo's identity provider: the customer's side of the talk, where an OAuth2 server would sit.
 * Its ES256 key is generated at every run and lives only in memory (never committed, never
 * written): the sidecars learn the public half from the trusted-issuers file, as they would an
 * IdP's JWKS, and verify customers' tokens offline.
 */
import { generateKeyPairSync, type KeyObject, randomBytes } from "node:crypto";
import { signCompactJws } from "../../../pki/src/jws.js";

/** Must equal `initialToken.issuer` of shop's policy in examples/shop/policies.yaml (tested). */
export const DEMO_ISSUER = "https://login.shop.example";
/** The audience the IdP addresses customers' tokens to, and the only one shop's sidecar accepts. */
export const DEMO_AUDIENCE = "shop.shop";
export const CUSTOMER_SCOPE = "shop.customer";
/** A user token lives minutes, not seconds: it is reusable for its lifetime by design. */
const TOKEN_TTL_SECONDS = 300;

export interface DemoIdp {
  readonly issuer: string;
  readonly kid: string;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
}

export function createDemoIdp(issuer = DEMO_ISSUER): DemoIdp {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  return { issuer, kid: `demo-${randomBytes(6).toString("base64url")}`, privateKey, publicKey };
}

/** The `--trusted-issuers` document (operator/src/issuer/trusted-issuers.ts) naming this IdP. */
export function trustedIssuersDocument(idp: DemoIdp, audiences: readonly string[] = [DEMO_AUDIENCE]) {
  const { kty, crv, x, y } = idp.publicKey.export({ format: "jwk" });
  return {
    trustedIssuers: [
      {
        issuer: idp.issuer,
        audiences: [...audiences],
        jwks: { keys: [{ kty, crv, x, y, alg: "ES256", kid: idp.kid, use: "sig" }] },
      },
    ],
  };
}

export interface UserTokenRequest {
  readonly subject: string;
  readonly scopes: readonly string[];
  readonly audience?: string;
  readonly nowSeconds?: number;
  readonly ttlSeconds?: number;
}

/** A customer's access token (RFC 9068 shape), as the IdP would issue it after a login. */
export function mintUserToken(idp: DemoIdp, request: UserTokenRequest): string {
  const iat = request.nowSeconds ?? Math.floor(Date.now() / 1000);
  return signCompactJws(
    { alg: "ES256", typ: "JWT", kid: idp.kid },
    {
      iss: idp.issuer,
      sub: request.subject,
      aud: request.audience ?? DEMO_AUDIENCE,
      iat,
      exp: iat + (request.ttlSeconds ?? TOKEN_TTL_SECONDS),
      jti: randomBytes(16).toString("base64url"),
      scope: request.scopes.join(" "),
    },
    idp.privateKey,
  );
}
