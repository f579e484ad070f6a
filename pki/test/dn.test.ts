import { describe, expect, it } from "vitest";
import { normalizeDistinguishedName } from "../../crds/src/distinguished-name.js";
import { buildName, nameToDer, normalizedDistinguishedName } from "../src/dn.js";

const der = (attributes: { type: string; value: string }[]) => nameToDer(buildName(attributes));

describe("normalizedDistinguishedName (certificate subject → externalSubjects spelling)", () => {
  it("reverses DER order into RFC 4514 order (most specific first)", () => {
    const subject = der([
      { type: "2.5.4.6", value: "US" },
      { type: "2.5.4.10", value: "Partner" },
      { type: "2.5.4.3", value: "client_alternative" },
    ]);
    expect(normalizedDistinguishedName(subject)).toBe("CN=client_alternative,O=Partner,C=US");
  });

  it("matches what a person writes in a manifest, spacing and case of types aside", () => {
    const subject = der([
      { type: "2.5.4.10", value: "Partner Ltd" },
      { type: "2.5.4.3", value: "partner-client" },
    ]);
    expect(normalizedDistinguishedName(subject)).toBe(
      normalizeDistinguishedName("cn=partner-client, o=Partner Ltd"),
    );
  });

  it("keeps escaped specials distinct from separators", () => {
    const subject = der([
      { type: "2.5.4.10", value: "Acme, Inc" },
      { type: "2.5.4.3", value: "a+b" },
    ]);
    expect(normalizedDistinguishedName(subject)).toBe("CN=a\\+b,O=Acme\\, Inc");
    expect(normalizedDistinguishedName(subject)).not.toBe(normalizeDistinguishedName("CN=a,O=Acme,O=Inc"));
  });

  it("spells attribute types without a short name as dotted OIDs", () => {
    const subject = der([{ type: "2.5.4.97", value: "VATGB-123" }]);
    expect(normalizedDistinguishedName(subject)).toBe("2.5.4.97=VATGB-123");
  });
});
