/**
 * Trust anchors with roles: Custody's CA alone vouches for mesh identities, and every other anchor
 * only for subjects named together with it — whatever a partner's CA claims about itself.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { TrustAnchors } from "../src/anchors.js";
import { type CertificateAuthority, createCertificateAuthority } from "../src/ca.js";
import { createCertificateRequest, parseCsrPem } from "../src/csr.js";
import { CertificateVerificationError } from "../src/errors.js";
import { issueCertificate, signCertificateRequest } from "../src/issue.js";
import { generateKeyPair } from "../src/keys.js";

const TRUST_DOMAIN = "custody.local";

let mesh: CertificateAuthority;
let partner: CertificateAuthority;
let otherPartner: CertificateAuthority;
/** A partner CA made with `custody pki init`'s defaults: same trust domain, same subject DN as ours. */
let lookalike: CertificateAuthority;

beforeAll(async () => {
  [mesh, partner, otherPartner, lookalike] = await Promise.all([
    createCertificateAuthority({ trustDomain: TRUST_DOMAIN }),
    createCertificateAuthority({ trustDomain: "partner.example" }),
    createCertificateAuthority({ trustDomain: "other.example" }),
    createCertificateAuthority({ trustDomain: TRUST_DOMAIN }),
  ]);
});

function anchors(...partners: CertificateAuthority[]): TrustAnchors {
  return TrustAnchors.fromPem({
    trustDomain: TRUST_DOMAIN,
    mesh: [{ name: "mesh", pem: mesh.certificate.pem }],
    partners: partners.map((ca, index) => ({ name: `partner ${index}`, pem: ca.certificate.pem })),
  });
}

async function subjectCertificate(ca: CertificateAuthority, commonName: string): Promise<Uint8Array> {
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const csr = parseCsrPem(createCertificateRequest(privateKey, commonName), "test CSR");
  return signCertificateRequest(ca, csr).certificate.der;
}

async function meshCertificate(ca: CertificateAuthority, id: string): Promise<Uint8Array> {
  return (await issueCertificate(ca, { id, usage: "client" })).certificate.der;
}

function refusal(action: () => unknown): string | undefined {
  try {
    action();
  } catch (error) {
    if (error instanceof CertificateVerificationError) return error.code;
    throw error;
  }
  return undefined;
}

describe("TrustAnchors.authenticate", () => {
  it("knows a mesh workload by its SPIFFE id, from Custody's CA", async () => {
    const peer = anchors(partner).authenticate([await meshCertificate(mesh, "cart.shop")], new Date());
    expect(peer).toMatchObject({
      role: "mesh",
      spiffeId: "spiffe://custody.local/ns/shop/si/cart",
      serviceId: "cart.shop",
    });
  });

  it("refuses a mesh identity from a partner CA, even one that claims the trust domain", async () => {
    const forged = await meshCertificate(lookalike, "payments.shop");
    expect(refusal(() => anchors(lookalike).authenticate([forged], new Date()))).toBe(
      "spiffe_id_not_mesh_issued",
    );
  });

  it("knows anyone else as (issuing anchor, subject), the issuer being the anchor that signed", async () => {
    const peer = anchors(partner, otherPartner).authenticate(
      [await subjectCertificate(partner, "partner-client")],
      new Date(),
    );
    expect(peer).toMatchObject({
      role: "external",
      issuer: "CN=Custody CA partner.example,O=Custody",
      subject: "CN=partner-client",
    });
    const copied = anchors(partner, otherPartner).authenticate(
      [await subjectCertificate(otherPartner, "partner-client")],
      new Date(),
    );
    expect(copied).toMatchObject({ role: "external", issuer: "CN=Custody CA other.example,O=Custody" });
  });

  it("lets Custody's CA vouch for the partner CSRs it signed, as an external subject", async () => {
    const peer = anchors().authenticate([await subjectCertificate(mesh, "partner-client")], new Date());
    expect(peer).toMatchObject({ role: "external", issuer: "CN=Custody CA custody.local,O=Custody" });
  });

  it("maps nothing under an issuer name two anchors with different keys share", async () => {
    const both = anchors(lookalike);
    expect(both.ambiguousIssuers).toEqual(["CN=Custody CA custody.local,O=Custody"]);
    const fromLookalike = await subjectCertificate(lookalike, "partner-client");
    expect(refusal(() => both.authenticate([fromLookalike], new Date()))).toBe("ambiguous_issuer");
    const fromMesh = await subjectCertificate(mesh, "partner-client");
    expect(refusal(() => both.authenticate([fromMesh], new Date()))).toBe("ambiguous_issuer");
    // Mesh identities are known by Custody's CA itself, not by its name: unaffected.
    const workload = both.authenticate([await meshCertificate(mesh, "cart.shop")], new Date());
    expect(workload.role).toBe("mesh");
  });

  it("keeps Custody's CA in its one role when a bundle lists it among the partners", () => {
    const seedStyle = TrustAnchors.fromPem({
      trustDomain: TRUST_DOMAIN,
      mesh: [{ name: "mesh", pem: mesh.certificate.pem }],
      partners: [{ name: "ca_certs.pem", pem: mesh.certificate.pem + partner.certificate.pem }],
    });
    expect(seedStyle.partners?.certificates.map((certificate) => certificate.subject)).toEqual([
      partner.certificate.subject,
    ]);
    expect(seedStyle.mesh.certificates).toHaveLength(1);
  });

  it("refuses a certificate no anchor issued", async () => {
    const stranger = await createCertificateAuthority({ trustDomain: "stranger.example" });
    const certificate = await subjectCertificate(stranger, "x");
    expect(refusal(() => anchors(partner).authenticate([certificate], new Date()))).toBe("unknown_issuer");
  });
});
