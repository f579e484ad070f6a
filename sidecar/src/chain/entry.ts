/**
 * Edge entry (seed 000's "API proxy"): a request that reaches an `edge` service with no chain but
 * `Authorization: Bearer <JWT>`. The token is admitted as the initial element of a chain that starts
 * here: policies see it as the chain's initial token, and the calls this service makes carry it as
 * `e0`, which downstream services accept because an edge started the chain.
 *
 * Two kinds are admitted:
 * - an identity JWT from Custody's token service, for a workload calling in from outside the mesh:
 *   it is certificate-bound (RFC 8705), so the TLS client certificate must be the one it names;
 * - a user's token from a trusted external issuer, addressed to this edge (`aud` names one of its
 *   edge audiences, by default its service id): the TLS client certificate is then optional, as for
 *   browsers behind an ingress — unless the token itself carries `cnf`, which is honoured.
 * An exchanged (`act`) token is refused: it is its actor's own `e0`, never a credential to present.
 * Bearer tokens are reusable for their lifetime by design; there is no jti to spend here.
 */
import { certificateThumbprint } from "../../../pki/src/peer.js";
import { ChainError } from "./errors.js";
import { parseCompactJws, sha256Base64url } from "./jws.js";
import type { ChainLimits } from "./limits.js";
import { isLinkHeader } from "./link.js";
import type { ServiceInfo, TrustView } from "./trust.js";
import { checkUserAudience, type InitialToken, readInitialToken } from "./verify.js";

/**
 * Who the TLS client certificate authenticates as under the registry's trust anchors: a mesh
 * workload (by its SPIFFE id, Custody's CA only), or an external subject (externalSubjectKey of the
 * issuing anchor's DN and the certificate's subject DN).
 */
export type CertificateHolder = { readonly service: string } | { readonly externalSubject: string };

export interface BearerPresentation {
  /** The service being entered: it must be an edge. */
  readonly self: ServiceInfo;
  readonly token: string;
  /** DER of the TLS client certificate, already verified against the trust anchors; if presented. */
  readonly clientCertificate: Uint8Array | undefined;
  /** Whom that certificate authenticates as; undefined when none was presented. */
  readonly holder: CertificateHolder | undefined;
  readonly nowSeconds: number;
}

export interface AdmittedBearer {
  readonly initial: InitialToken;
  /** The workload an identity token names; undefined for a user. */
  readonly caller: string | undefined;
}

const BEARER = /^Bearer +([A-Za-z0-9_.~+/-]+=*) *$/i;

/** The token of an `Authorization: Bearer` header (RFC 6750 §2.1); undefined for any other scheme. */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined) return undefined;
  return BEARER.exec(authorization)?.[1];
}

/** RFC 8705 §3: a token with `cnf` is only good with the certificate it names. */
function checkBinding(token: InitialToken, clientCertificate: Uint8Array | undefined): void {
  const cnf = token.claims.cnf;
  if (cnf === undefined) {
    if (token.kind === "identity") {
      throw new ChainError("binding_mismatch", "identity tokens must be certificate-bound (cnf).", 0);
    }
    return;
  }
  const thumbprint =
    typeof cnf === "object" && cnf !== null && "x5t#S256" in cnf ? cnf["x5t#S256"] : undefined;
  if (typeof thumbprint !== "string") {
    throw new ChainError("binding_mismatch", "the token's cnf names no certificate (x5t#S256).", 0);
  }
  if (clientCertificate === undefined) {
    throw new ChainError(
      "binding_mismatch",
      "the token is bound to a client certificate; connect with that certificate.",
      0,
    );
  }
  if (certificateThumbprint(clientCertificate) !== thumbprint) {
    throw new ChainError(
      "binding_mismatch",
      "the token is bound to another client certificate than the one presented.",
      0,
    );
  }
}

/**
 * An identity token names a workload (`sub`); the certificate it is bound to must still authenticate
 * as that workload under the registry's anchors, so a sidecar decides as the token service did, offline:
 * a mesh workload by its SPIFFE id, an external one by an (issuer, subject) pair listed for it.
 */
function checkHolder(token: InitialToken, holder: CertificateHolder | undefined, trust: TrustView): void {
  const holds =
    holder !== undefined &&
    ("service" in holder
      ? holder.service === token.subject
      : trust.service(token.subject)?.externalSubjects?.has(holder.externalSubject) === true);
  if (!holds) {
    throw new ChainError(
      "binding_mismatch",
      `the client certificate does not authenticate as ${token.subject}, whom the identity token names.`,
      0,
    );
  }
}

export function admitBearer(
  presentation: BearerPresentation,
  trust: TrustView,
  limits: ChainLimits,
): AdmittedBearer {
  const { self, token: text } = presentation;
  if (!self.edge) {
    throw new ChainError(
      "initial_token_not_admitted",
      `${self.id} is not an edge service: calls to it need a Custody-Chain.`,
      0,
    );
  }
  if (text.length > limits.maxElementBytes) {
    throw new ChainError(
      "element_too_large",
      `bearer token is larger than ${limits.maxElementBytes} bytes.`,
      0,
    );
  }
  const jws = parseCompactJws(text, 0);
  if (isLinkHeader(jws.header)) {
    throw new ChainError("wrong_type", "a call link is not a bearer credential.", 0);
  }
  const initial = readInitialToken(jws, sha256Base64url(text), trust, limits, presentation.nowSeconds);
  if (initial.kind === "delegated") {
    throw new ChainError(
      "initial_token_not_admitted",
      "an exchanged token starts its actor's own chains; it is not a bearer credential.",
      0,
    );
  }
  if (initial.kind === "user") checkUserAudience(initial, self);
  checkBinding(initial, presentation.clientCertificate);
  if (initial.kind === "identity") checkHolder(initial, presentation.holder, trust);
  return { initial, caller: initial.kind === "identity" ? initial.subject : undefined };
}
