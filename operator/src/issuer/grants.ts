/**
 * The token endpoint's decisions, free of HTTP: who the client is (its certificate, RFC 8705
 * tls_client_auth), which grant it asked for, and the token or the RFC 6749 §5.2 error it gets.
 */

import { CHAIN_LINK_TYPE } from "../../../crds/src/names.js";
import type { AuthenticatedPeer, TrustAnchors } from "../../../pki/src/anchors.js";
import { printable } from "../../../pki/src/dn.js";
import { CertificateVerificationError } from "../../../pki/src/errors.js";
import type { IssuerKeySet } from "../../../pki/src/jwks.js";
import { JwtError, verifyJwt } from "../../../pki/src/jwt.js";
import type { VerifiedCertificateCache } from "../../../pki/src/peer.js";
import type { VerifiedClientCertificate } from "../../../pki/src/verify.js";
import { OAuthError } from "./errors.js";
import { requireParameter } from "./form.js";
import type { IdentityIndex, IssuerIdentity } from "./identities.js";
import type { SigningKey } from "./signing-keys.js";
import { type IssuedToken, mintExchangeToken, mintIdentityToken, type TokenContext } from "./tokens.js";

export const GRANT_CLIENT_CREDENTIALS = "client_credentials";
export const GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
export const TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token";
export const TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt";
const SUBJECT_TOKEN_TYPES = [TOKEN_TYPE_JWT, TOKEN_TYPE_ACCESS_TOKEN];
/** Users' tokens from external IdPs: RSA is what most of them sign with. */
const USER_TOKEN_ALGORITHMS = ["ES256", "EdDSA", "RS256"] as const;
const USER_TOKEN_SKEW_SECONDS = 30;

/** Grant label for metrics and logs: a bounded set whatever the client sends. */
export type GrantLabel = "client_credentials" | "token_exchange" | "other";

export function grantLabel(grantType: string | undefined): GrantLabel {
  if (grantType === GRANT_CLIENT_CREDENTIALS) return "client_credentials";
  if (grantType === GRANT_TOKEN_EXCHANGE) return "token_exchange";
  return "other";
}

export interface GrantContext {
  readonly identities: IdentityIndex;
  readonly anchors: TrustAnchors;
  readonly signingKey: SigningKey;
  readonly trustedIssuers: IssuerKeySet;
  /** `iss` of issued tokens. */
  readonly issuer: string;
  /** `aud` of identity tokens: every workload of the trust domain. */
  readonly audience: string;
  readonly maxLifetimeSeconds: number;
  readonly nowMs: number;
  /** Client chains verified before: a refresh or a kept-alive client is verified once. */
  readonly certificates: VerifiedCertificateCache;
}

export interface GrantResult {
  readonly grant: GrantLabel;
  /** The identity the token was issued to (the actor, for token exchange). */
  readonly client: string;
  /** `sub` of the token. */
  readonly subject: string;
  readonly issued: IssuedToken;
  readonly body: Readonly<Record<string, unknown>>;
}

const CERTIFICATE_PROBLEMS: Record<string, string> = {
  unknown_issuer: "the client certificate was not issued by a CA this token service trusts.",
  expired: "the client certificate has expired.",
  not_yet_valid: "the client certificate is not valid yet.",
  bad_signature: "the client certificate's signature does not verify.",
  not_client_auth: "the client certificate is not for client authentication (extendedKeyUsage clientAuth).",
  is_ca: "a CA certificate cannot authenticate a client.",
  trust_domain_mismatch: "the client certificate's SPIFFE id is outside its CA's trust domain.",
  spiffe_id_not_mesh_issued:
    "the client certificate names a mesh identity but was not issued by Custody's CA; partner CAs vouch only for the subjects mapped to them.",
  ambiguous_issuer:
    "the client certificate's CA shares its name with another trusted CA, so no subject is mapped under it.",
  malformed: "the client certificate cannot be parsed.",
};

export interface AuthenticatedClient {
  readonly identity: IssuerIdentity;
  readonly certificate: VerifiedClientCertificate;
}

/**
 * The client's certificate judged on its own (presented, valid, chaining to an anchor in its role),
 * before anything else: what the token service checks before it reads a byte of the request.
 */
export function authenticateCertificate(
  context: GrantContext,
  chain: readonly Uint8Array[],
): AuthenticatedPeer {
  if (chain.length === 0) {
    throw new OAuthError(
      "invalid_client",
      "no_client_certificate",
      "a client certificate is required (tls_client_auth): connect with the workload's certificate and key.",
    );
  }
  try {
    return context.anchors.authenticate(chain, new Date(context.nowMs), context.certificates);
  } catch (error) {
    if (!(error instanceof CertificateVerificationError)) throw error;
    throw new OAuthError(
      "invalid_client",
      error.code,
      CERTIFICATE_PROBLEMS[error.code] ?? "the client certificate is not accepted.",
    );
  }
}

/** RFC 8705 §2.1: the certificate must be trusted, then name exactly one ServiceIdentity. */
export function authenticateClient(context: GrantContext, chain: readonly Uint8Array[]): AuthenticatedClient {
  const peer = authenticateCertificate(context, chain);
  const identity =
    peer.role === "mesh" ? context.identities.bySpiffeId(peer.spiffeId) : context.identities.bySubject(peer);
  if (identity === undefined) {
    const name =
      peer.role === "mesh"
        ? `SPIFFE id ${printable(peer.spiffeId)}`
        : `subject "${printable(peer.subject)}" issued by "${printable(peer.issuer)}"`;
    throw new OAuthError(
      "invalid_client",
      "unknown_identity",
      `the client certificate (${name}) maps to no ServiceIdentity; a third-party subject must be listed, with its issuing CA, in a ServiceIdentity's spec.externalSubjects.`,
    );
  }
  return { identity, certificate: peer.certificate };
}

function tokenContext(context: GrantContext): TokenContext {
  return {
    issuer: context.issuer,
    key: context.signingKey,
    nowSeconds: Math.floor(context.nowMs / 1000),
    maxLifetimeSeconds: context.maxLifetimeSeconds,
  };
}

/** RFC 6749 §3.3: a requested scope must be a subset of what may be granted; none asked means all. */
function grantedScopes(
  form: ReadonlyMap<string, string>,
  allowed: readonly string[],
  whose: string,
): string[] {
  const requested = form.get("scope");
  if (requested === undefined) return [...allowed];
  const scopes = [...new Set(requested.split(" ").filter((scope) => scope !== ""))];
  const refused = scopes.filter((scope) => !allowed.includes(scope));
  if (refused.length > 0) {
    throw new OAuthError(
      "invalid_scope",
      "scope_not_granted",
      `scope ${refused
        .slice(0, 5)
        .map((scope) => JSON.stringify(scope.slice(0, 64)))
        .join(", ")} is not granted to ${whose}.`,
    );
  }
  return scopes;
}

function assertClientId(form: ReadonlyMap<string, string>, identity: IssuerIdentity): void {
  const clientId = form.get("client_id");
  if (clientId !== undefined && clientId !== identity.id) {
    throw new OAuthError(
      "invalid_client",
      "client_id_mismatch",
      "client_id does not match the client certificate.",
    );
  }
}

function assertLifetime(issued: IssuedToken): void {
  if (issued.expiresIn < 1) {
    throw new OAuthError(
      "invalid_client",
      "certificate_expiring",
      "the client certificate expires now: renew it first.",
    );
  }
}

export function grantClientCredentials(
  context: GrantContext,
  form: ReadonlyMap<string, string>,
  chain: readonly Uint8Array[],
): GrantResult {
  const { identity, certificate } = authenticateClient(context, chain);
  assertClientId(form, identity);
  const scopes = grantedScopes(form, identity.scopes, identity.id);
  const issued = mintIdentityToken(
    tokenContext(context),
    identity,
    context.audience,
    scopes,
    certificate.leaf,
  );
  assertLifetime(issued);
  return {
    grant: "client_credentials",
    client: identity.id,
    subject: identity.id,
    issued,
    body: {
      access_token: issued.token,
      token_type: "Bearer",
      expires_in: issued.expiresIn,
      scope: scopes.join(" "),
    },
  };
}

export function grantTokenExchange(
  context: GrantContext,
  form: ReadonlyMap<string, string>,
  chain: readonly Uint8Array[],
): GrantResult {
  const { identity: actor, certificate } = authenticateClient(context, chain);
  assertClientId(form, actor);
  const subjectToken = requireParameter(form, "subject_token");
  const subjectTokenType = requireParameter(form, "subject_token_type");
  if (!SUBJECT_TOKEN_TYPES.includes(subjectTokenType)) {
    throw new OAuthError(
      "invalid_request",
      "unsupported_token_type",
      `subject_token_type must be ${SUBJECT_TOKEN_TYPES.join(" or ")}.`,
    );
  }
  if (form.has("actor_token")) {
    throw new OAuthError(
      "invalid_request",
      "actor_token_given",
      "the actor is the mTLS client; actor_token is not accepted.",
    );
  }
  const requestedType = form.get("requested_token_type");
  if (
    requestedType !== undefined &&
    requestedType !== TOKEN_TYPE_ACCESS_TOKEN &&
    requestedType !== TOKEN_TYPE_JWT
  ) {
    throw new OAuthError(
      "invalid_request",
      "unsupported_token_type",
      `requested_token_type must be ${TOKEN_TYPE_ACCESS_TOKEN}.`,
    );
  }
  const audience = requireParameter(form, "audience");
  if (context.identities.byId(audience) === undefined) {
    throw new OAuthError(
      "invalid_target",
      "unknown_audience",
      `audience ${JSON.stringify(audience.slice(0, 256))} is not a known service id.`,
    );
  }
  if (!actor.edge) {
    throw new OAuthError(
      "unauthorized_client",
      "actor_not_edge",
      `${actor.id} is not an edge identity: only identities with spec.edge: true may exchange users' tokens.`,
    );
  }
  const user = verifySubjectToken(context, subjectToken);
  // As at the edge's own door: a user's token acts only through the edge its audience names, so
  // one edge cannot exchange a token that was issued for another.
  if (!user.audiences.some((audience) => actor.edgeAudiences.includes(audience))) {
    throw new OAuthError(
      "invalid_grant",
      "subject_token_audience",
      `subject_token is not addressed to ${actor.id} (its audiences: ${actor.edgeAudiences.join(", ")}).`,
    );
  }
  const scopes = grantedScopes(form, user.scopes, "the subject token");
  const issued = mintExchangeToken(
    tokenContext(context),
    actor,
    { subject: user.subject, issuer: user.issuer, scopes, expiresAt: user.expiresAt },
    audience,
    scopes,
    certificate.leaf,
  );
  assertLifetime(issued);
  return {
    grant: "token_exchange",
    client: actor.id,
    subject: user.subject,
    issued,
    body: {
      access_token: issued.token,
      issued_token_type: TOKEN_TYPE_ACCESS_TOKEN,
      token_type: "Bearer",
      expires_in: issued.expiresIn,
      scope: scopes.join(" "),
    },
  };
}

function verifySubjectToken(context: GrantContext, token: string) {
  try {
    return verifyJwt(token, {
      keyFor: (issuer, kid) =>
        issuer === context.issuer ? undefined : context.trustedIssuers.keyFor(issuer, kid),
      algorithms: USER_TOKEN_ALGORITHMS,
      nowSeconds: Math.floor(context.nowMs / 1000),
      skewSeconds: USER_TOKEN_SKEW_SECONDS,
      refusedTypes: [CHAIN_LINK_TYPE],
    });
  } catch (error) {
    if (!(error instanceof JwtError)) throw error;
    throw new OAuthError(
      "invalid_grant",
      `subject_token_${error.code}`,
      `subject_token is not accepted: ${error.message}`,
    );
  }
}

/** Dispatches on grant_type. Unknown grants are refused before the client is authenticated. */
export function grantToken(
  context: GrantContext,
  form: ReadonlyMap<string, string>,
  chain: readonly Uint8Array[],
): GrantResult {
  const grantType = requireParameter(form, "grant_type");
  if (grantType === GRANT_CLIENT_CREDENTIALS) return grantClientCredentials(context, form, chain);
  if (grantType === GRANT_TOKEN_EXCHANGE) return grantTokenExchange(context, form, chain);
  throw new OAuthError(
    "unsupported_grant_type",
    "unsupported_grant_type",
    `grant_type must be ${GRANT_CLIENT_CREDENTIALS} or ${GRANT_TOKEN_EXCHANGE}.`,
  );
}
