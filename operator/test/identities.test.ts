import { describe, expect, it } from "vitest";
import { validateServiceIdentity } from "../../crds/src/manifest.js";
import { IdentityIndex } from "../src/issuer/identities.js";

function identity(name: string, namespace: string, spec: Record<string, unknown> = {}) {
  return validateServiceIdentity({
    apiVersion: "custody.dev/v1alpha1",
    kind: "ServiceIdentity",
    metadata: { name, namespace },
    spec,
  });
}

describe("IdentityIndex", () => {
  it("maps a SPIFFE id of its trust domain to the identity, with defaults applied", () => {
    const index = new IdentityIndex("custody.local", [
      {
        identity: identity("cart", "shop", { claims: { team: "checkout" }, tokenTTL: "10m" }),
        source: "a.yaml",
      },
    ]);
    const found = index.bySpiffeId("spiffe://custody.local/ns/shop/si/cart");
    expect(found).toMatchObject({
      id: "cart.shop",
      environment: "default",
      claims: { team: "checkout" },
      scopes: [],
      tokenTtlSeconds: 600,
      edge: false,
      source: "a.yaml",
    });
  });

  it("ignores SPIFFE ids of another trust domain and malformed ones", () => {
    const index = new IdentityIndex("custody.local", [
      { identity: identity("cart", "shop"), source: "a.yaml" },
    ]);
    expect(index.bySpiffeId("spiffe://partner.example/ns/shop/si/cart")).toBeUndefined();
    expect(index.bySpiffeId("spiffe://custody.local/ns/shop/sa/cart")).toBeUndefined();
    expect(index.bySpiffeId("https://custody.local/ns/shop/si/cart")).toBeUndefined();
  });

  it("maps external subjects with their issuer, both in their normalized spelling", () => {
    const index = new IdentityIndex("custody.local", [
      {
        identity: identity("partner", "shop", {
          externalSubjects: [
            { issuer: "cn=Partner Root , O=Partner Ltd", subject: "cn=partner-client, O=Partner Ltd ,C=GB" },
          ],
        }),
        source: "a.yaml",
      },
    ]);
    const issuer = "CN=Partner Root,O=Partner Ltd";
    expect(index.bySubject({ issuer, subject: "CN=partner-client,O=Partner Ltd,C=GB" })?.id).toBe(
      "partner.shop",
    );
    expect(index.bySubject({ issuer, subject: "CN=partner-client,O=Partner Ltd" })).toBeUndefined();
    expect(
      index.bySubject({
        issuer: "CN=Other Root,O=Other Ltd",
        subject: "CN=partner-client,O=Partner Ltd,C=GB",
      }),
    ).toBeUndefined();
  });

  it("keeps the first declaration of a service id and reports the second", () => {
    const index = new IdentityIndex("custody.local", [
      { identity: identity("cart", "shop", { environment: "prod" }), source: "a.yaml" },
      { identity: identity("cart", "shop", { environment: "dev" }), source: "b.yaml" },
    ]);
    expect(index.byId("cart.shop")?.environment).toBe("prod");
    expect(index.size).toBe(1);
    expect(index.problems).toEqual([
      { source: "b.yaml", message: expect.stringContaining("already declared in a.yaml") },
    ]);
  });

  it("maps a subject claimed by two identities to neither (fails closed) and reports both", () => {
    const subject = { issuer: "CN=Partner Root", subject: "CN=shared,O=Partner" };
    const index = new IdentityIndex("custody.local", [
      { identity: identity("one", "shop", { externalSubjects: [subject] }), source: "a.yaml" },
      { identity: identity("two", "shop", { externalSubjects: [subject] }), source: "b.yaml" },
    ]);
    expect(index.bySubject(subject)).toBeUndefined();
    expect(index.problems.map((problem) => problem.source)).toEqual(["a.yaml", "b.yaml"]);
    expect(index.problems[0]?.message).toContain("one.shop, two.shop");
  });
});
