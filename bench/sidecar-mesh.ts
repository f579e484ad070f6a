/**
 * The mesh of bench/sidecar.ts, written into a temp directory at run time (nothing is committed):
 * a CA made by the pki library, the identity Secrets of the two services that have a sidecar
 * (`shop.shop` calls, `cart.shop` is called: tls.crt, tls.key, ca.crt, as the operator writes them),
 * the signing keys of four more services that only sign the first links of a depth-5 chain, and the
 * registry document every sidecar loads, shaped as the operator publishes it (as e2e/support/mesh.ts
 * does). The depth-5 prefix (a → b → c → d → shop) is minted here with the library's own `mintLink`.
 */
import { createHash, generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdir, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  type CertificateAuthority,
  createCertificateAuthority,
  issueCertificate,
  privateKeyToPem,
} from "../pki/src/index.js";
import { CHAIN_SEPARATOR } from "../sidecar/src/chain/limits.js";
import { type LinkSigner, mintLink } from "../sidecar/src/chain/mint.js";
import { normalizeOperation } from "../sidecar/src/chain/normalize.js";

export const CALLER = "shop.shop";
export const CALLEE = "cart.shop";
/** They sign the four links before the caller's own: a → b → c → d → shop.shop. */
export const PREFIX_SERVICES = ["a.shop", "b.shop", "c.shop", "d.shop"] as const;
const TOKEN_SERVICE = "https://custody-issuer.custody-system.svc";
const DAY_MS = 86_400_000;

/** Registry kid of a public key: as e2e/support/mesh.ts derives it. */
function registryKey(publicKey: KeyObject) {
  const jwk = publicKey.export({ format: "jwk" });
  const kid = createHash("sha256")
    .update(JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }))
    .digest("base64url")
    .slice(0, 16);
  return { kid, jwk: { ...jwk, alg: "ES256", kid } };
}

export interface MeshFiles {
  readonly registryPath: string;
  /** Identity Secret directories of the two services with a sidecar. */
  readonly callerIdentity: string;
  readonly calleeIdentity: string;
  /** Signers of the depth-5 prefix, in PREFIX_SERVICES order. */
  readonly prefixSigners: readonly LinkSigner[];
}

async function writeIdentity(ca: CertificateAuthority, id: string, directory: string) {
  await mkdir(directory, { recursive: true });
  const issued = await issueCertificate(ca, { id, dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"] });
  await writeFile(join(directory, "ca.crt"), ca.certificate.pem);
  await writeFile(join(directory, "tls.key"), privateKeyToPem(issued.privateKey), { mode: 0o600 });
  await writeFile(join(directory, "tls.crt"), issued.certificate.pem);
  return issued.certificate.publicKey;
}

function serviceEntry(id: string, location: string, publicKey: KeyObject) {
  const { kid, jwk } = registryKey(publicKey);
  return {
    id,
    environment: "default",
    claims: {},
    scopes: [],
    edge: false,
    location,
    keys: [{ kid, status: "current", notAfter: new Date(Date.now() + DAY_MS).toISOString(), jwk }],
  };
}

/**
 * Writes everything the two sidecars read. `locations` are the inbound addresses the registry
 * publishes (host:port); only the callee's is ever called.
 */
export async function writeMesh(
  directory: string,
  locations: { readonly caller: string; readonly callee: string },
): Promise<MeshFiles> {
  const ca = await createCertificateAuthority();
  const callerIdentity = join(directory, "identities", CALLER);
  const calleeIdentity = join(directory, "identities", CALLEE);
  const callerKey = await writeIdentity(ca, CALLER, callerIdentity);
  const calleeKey = await writeIdentity(ca, CALLEE, calleeIdentity);
  const prefixSigners: LinkSigner[] = [];
  const prefixEntries = PREFIX_SERVICES.map((id) => {
    const pair = generateKeyPairSync("ec", { namedCurve: "P-256" });
    prefixSigners.push({ serviceId: id, kid: registryKey(pair.publicKey).kid, privateKey: pair.privateKey });
    // Never called: they only sign links.
    return serviceEntry(id, "127.0.0.1:9", pair.publicKey);
  });
  const tokenService = registryKey(generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey);
  const document = {
    apiVersion: "custody.dev/v1alpha1",
    kind: "Registry",
    generation: 1,
    shard: { index: 0, count: 1 },
    trustDomain: "custody.local",
    trustBundle: ca.certificate.pem,
    tokenService: { issuer: TOKEN_SERVICE, jwks: { keys: [tokenService.jwk] } },
    trustedIssuers: [],
    services: [
      serviceEntry(CALLER, locations.caller, callerKey),
      serviceEntry(CALLEE, locations.callee, calleeKey),
      ...prefixEntries,
    ],
    policies: [],
  };
  const registryPath = join(directory, "registry.json");
  await writeFile(`${registryPath}.tmp`, JSON.stringify(document));
  await rename(`${registryPath}.tmp`, registryPath);
  return { registryPath, callerIdentity, calleeIdentity, prefixSigners };
}

/**
 * The chain an app serving a depth-4 call would propagate: a → b → c → d → shop.shop, each link
 * continuing the one before (hash-linked, custody unbroken), its head addressed to the caller. The
 * caller's sidecar appends the fifth link. `corrupt` breaks the signature of the first link (for
 * the self-check: the callee must refuse it).
 */
export function mintPrefix(
  signers: readonly LinkSigner[],
  nowSeconds: number,
  options: { readonly corrupt?: boolean } = {},
): string {
  let elements: readonly string[] = [];
  signers.forEach((signer, index) => {
    const audience = signers[index + 1]?.serviceId ?? CALLER;
    elements = mintLink(signer, {
      audience,
      operation: normalizeOperation("GET", `/hop/${index + 1}`),
      previous: elements,
      nowSeconds,
    }).elements;
  });
  if (options.corrupt === true) {
    const [first = "", ...rest] = elements;
    // A character in the middle of the signature: still canonical base64url, another signature.
    const at = first.length - 20;
    const flipped = first.charAt(at) === "A" ? "B" : "A";
    // Link 1's prv no longer hashes it either, but the verifier checks element 0's signature before
    // that relation, so the refusal is bad_signature.
    elements = [first.slice(0, at) + flipped + first.slice(at + 1), ...rest];
  }
  return elements.join(CHAIN_SEPARATOR);
}
