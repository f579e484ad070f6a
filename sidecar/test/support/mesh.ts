/**
 * Test fixtures: real keys generated per run for a few services, an identity-token issuer and an
 * external IdP, exposed through a TrustView as the registry would expose them.
 */
import { createHash, generateKeyPairSync, type KeyObject } from "node:crypto";
import { algorithmForKey, signCompactJws } from "../../src/chain/jws.js";
import type { LinkSigner } from "../../src/chain/mint.js";
import type { IssuerKey, ServiceInfo, ServiceKey, TrustView } from "../../src/chain/trust.js";

export const TOKEN_SERVICE = "https://custody-issuer.custody-system.svc";
export const USER_IDP = "https://login.shop.example";

export interface TestService {
  readonly info: ServiceInfo;
  readonly signer: LinkSigner;
  readonly publicKey: KeyObject;
}

/** A test kid: a prefix of the key's SPKI hash, so kids of distinct keys never collide. */
export function kidOf(key: KeyObject): string {
  return createHash("sha256")
    .update(key.export({ type: "spki", format: "der" }))
    .digest("base64url")
    .slice(0, 16);
}

export function ecKeys() {
  return generateKeyPairSync("ec", { namedCurve: "P-256" });
}

export function makeService(
  id: string,
  options: { edge?: boolean; claims?: Record<string, string>; keyType?: "ec" | "ed25519" } = {},
): TestService {
  const pair = options.keyType === "ed25519" ? generateKeyPairSync("ed25519") : ecKeys();
  return {
    info: { id, environment: "prod", claims: options.claims ?? {}, edge: options.edge ?? false },
    signer: { serviceId: id, kid: kidOf(pair.publicKey), privateKey: pair.privateKey },
    publicKey: pair.publicKey,
  };
}

export class TestIssuer {
  readonly pair: { publicKey: KeyObject; privateKey: KeyObject };
  readonly kid: string;

  constructor(
    readonly issuer: string,
    type: "ec" | "rsa" = "ec",
  ) {
    this.pair = type === "rsa" ? generateKeyPairSync("rsa", { modulusLength: 2048 }) : ecKeys();
    this.kid = kidOf(this.pair.publicKey);
  }

  token(claims: Record<string, unknown>, header: Record<string, unknown> = {}): string {
    const now = Math.floor(Date.now() / 1000);
    const alg = algorithmForKey(this.pair.privateKey);
    return signCompactJws(
      { alg, typ: "JWT", kid: this.kid, ...header },
      { iss: this.issuer, iat: now, exp: now + 600, jti: `t-${now}`, ...claims },
      this.pair.privateKey,
    );
  }
}

export class TestTrust implements TrustView {
  readonly tokenServiceIssuer = TOKEN_SERVICE;
  readonly #keys = new Map<string, ServiceKey>();
  readonly #services = new Map<string, ServiceInfo>();
  readonly #issuers: TestIssuer[] = [];

  addService(service: TestService): this {
    const alg = algorithmForKey(service.publicKey);
    if (alg === undefined) throw new Error("unsupported key");
    this.#services.set(service.info.id, service.info);
    this.#keys.set(service.signer.kid, {
      kid: service.signer.kid,
      serviceId: service.info.id,
      alg,
      key: service.publicKey,
    });
    return this;
  }

  addIssuer(issuer: TestIssuer): this {
    this.#issuers.push(issuer);
    return this;
  }

  removeKey(kid: string): void {
    this.#keys.delete(kid);
  }

  serviceKey(kid: string): ServiceKey | undefined {
    return this.#keys.get(kid);
  }

  issuerKey(issuer: string, kid: string | undefined): IssuerKey | undefined {
    const match = this.#issuers.find(
      (candidate) => candidate.issuer === issuer && (kid === undefined || candidate.kid === kid),
    );
    if (match === undefined) return undefined;
    const alg = algorithmForKey(match.pair.publicKey);
    if (alg === undefined) return undefined;
    return { issuer, kid: match.kid, alg, key: match.pair.publicKey };
  }

  service(id: string): ServiceInfo | undefined {
    return this.#services.get(id);
  }
}
