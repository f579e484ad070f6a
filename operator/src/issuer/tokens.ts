/**
 * The two tokens the token service signs, both RFC 9068 JWT access tokens (`typ: at+jwt`, so no
 * call-chain link and no user's ID token can pass for one): the identity token of a workload, and
 * the composite token of RFC 8693 token exchange (a user's subject with the workload as `act`).
 * Both are bound to the presented client certificate (RFC 8705 `cnf.x5t#S256`) and never outlive it.
 */
import { randomBytes } from "node:crypto";
import { signCompactJws } from "../../../pki/src/jws.js";
import { certificateThumbprint } from "../../../pki/src/peer.js";
import type { IssuerIdentity } from "./identities.js";
import type { SigningKey } from "./signing-keys.js";

export const ACCESS_TOKEN_TYPE = "at+jwt";

export interface TokenContext {
  /** `iss` of every token: the token service's URL. */
  readonly issuer: string;
  readonly key: SigningKey;
  readonly nowSeconds: number;
  /** Upper bound of any token's lifetime, whatever the identity asks. */
  readonly maxLifetimeSeconds: number;
}

export interface PresentedCertificate {
  readonly der: Uint8Array;
  readonly notAfter: Date;
}

export interface IssuedToken {
  readonly token: string;
  readonly jti: string;
  readonly expiresAt: number;
  readonly expiresIn: number;
}

/** The latest `exp` allowed: the identity's TTL, the service cap, the certificate, and any `limit`. */
export function tokenExpiry(
  context: TokenContext,
  ttlSeconds: number,
  certificate: PresentedCertificate,
  limit = Number.POSITIVE_INFINITY,
): number {
  const certificateEnd = Math.floor(certificate.notAfter.getTime() / 1000);
  return Math.min(
    context.nowSeconds + Math.min(ttlSeconds, context.maxLifetimeSeconds),
    certificateEnd,
    Math.floor(limit),
  );
}

function sign(context: TokenContext, claims: Record<string, unknown>, expiresAt: number): IssuedToken {
  const jti = randomBytes(16).toString("base64url");
  const token = signCompactJws(
    { alg: "ES256", typ: ACCESS_TOKEN_TYPE, kid: context.key.kid },
    { ...claims, jti },
    context.key.privateKey,
  );
  return { token, jti, expiresAt, expiresIn: expiresAt - context.nowSeconds };
}

/**
 * The identity JWT: registered claims, then the identity's extra claims (the schema refuses
 * reserved names there, so they can never override `sub` or `cnf`).
 */
export function mintIdentityToken(
  context: TokenContext,
  identity: IssuerIdentity,
  audience: string,
  scopes: readonly string[],
  certificate: PresentedCertificate,
): IssuedToken {
  const expiresAt = tokenExpiry(context, identity.tokenTtlSeconds, certificate);
  return sign(
    context,
    {
      iss: context.issuer,
      sub: identity.id,
      aud: audience,
      iat: context.nowSeconds,
      exp: expiresAt,
      client_id: identity.id,
      env: identity.environment,
      scope: scopes.join(" "),
      cnf: { "x5t#S256": certificateThumbprint(certificate.der) },
      ...identity.claims,
    },
    expiresAt,
  );
}

export interface ExchangeSubject {
  readonly subject: string;
  readonly issuer: string;
  readonly scopes: readonly string[];
  readonly expiresAt: number;
}

/**
 * RFC 8693 composite token: the user is the subject, the edge workload that presented the user's
 * token over mTLS is the actor (`act.sub`), and the token is held by (bound to) the actor.
 */
export function mintExchangeToken(
  context: TokenContext,
  actor: IssuerIdentity,
  user: ExchangeSubject,
  audience: string,
  scopes: readonly string[],
  certificate: PresentedCertificate,
): IssuedToken {
  const expiresAt = tokenExpiry(context, actor.tokenTtlSeconds, certificate, user.expiresAt);
  return sign(
    context,
    {
      iss: context.issuer,
      sub: user.subject,
      aud: audience,
      iat: context.nowSeconds,
      exp: expiresAt,
      client_id: actor.id,
      env: actor.environment,
      scope: scopes.join(" "),
      act: { sub: actor.id },
      subject_issuer: user.issuer,
      cnf: { "x5t#S256": certificateThumbprint(certificate.der) },
    },
    expiresAt,
  );
}
