import { describe, expect, it } from "vitest";
import { validateServiceIdentity } from "../src/manifest.js";
import {
  certificateTimings,
  type ServiceIdentityInput,
  serviceAccountNameOf,
} from "../src/service-identity.js";
import { edited, expectIssue, issuesOf } from "./fixtures.js";

const minimal: ServiceIdentityInput = {
  apiVersion: "custody.dev/v1alpha1",
  kind: "ServiceIdentity",
  metadata: { name: "cart", namespace: "shop" },
  spec: {},
};

function rejects(
  edit: (identity: { spec: Record<string, unknown>; metadata: Record<string, unknown> }) => void,
) {
  const input = edited(
    minimal as unknown as { spec: Record<string, unknown>; metadata: Record<string, unknown> },
    edit,
  );
  return issuesOf(() => validateServiceIdentity(input));
}

describe("ServiceIdentity defaults", () => {
  it("fills in every default and documents serviceAccountName's", () => {
    const identity = validateServiceIdentity(minimal);
    expect(identity.spec).toEqual({
      environment: "default",
      certificate: { keyAlgorithm: "ECDSA-P256", duration: "24h" },
      tokenTTL: "15m",
      edge: false,
    });
    expect(serviceAccountNameOf(identity)).toBe("cart");
    expect(certificateTimings(identity)).toEqual({ durationMs: 86_400_000, renewBeforeMs: 28_800_000 });
  });

  it("accepts a spec-less manifest (spec defaults to {})", () => {
    const { spec: _spec, ...withoutSpec } = minimal;
    expect(validateServiceIdentity(withoutSpec).spec.environment).toBe("default");
  });

  it("honours an explicit renewBefore and service account", () => {
    const identity = validateServiceIdentity(
      edited(minimal, (copy) => {
        copy.spec = { serviceAccountName: "cart-sa", certificate: { duration: "1h30m", renewBefore: "30m" } };
      }),
    );
    expect(serviceAccountNameOf(identity)).toBe("cart-sa");
    expect(certificateTimings(identity)).toEqual({ durationMs: 5_400_000, renewBeforeMs: 1_800_000 });
  });
});

describe("ServiceIdentity rejections", () => {
  it("unknown keyAlgorithm", () => {
    const issues = rejects((copy) => {
      copy.spec.certificate = { keyAlgorithm: "DSA-1024" };
    });
    expectIssue(
      issues,
      "spec.certificate.keyAlgorithm",
      'must be one of ECDSA-P256, Ed25519, RSA-2048 (got "DSA-1024")',
    );
  });

  it("bad duration", () => {
    const issues = rejects((copy) => {
      copy.spec.certificate = { duration: "1d" };
    });
    expectIssue(issues, "spec.certificate.duration", /^must be a duration such as "24h"/);
  });

  it("duration out of bounds", () => {
    const issues = rejects((copy) => {
      copy.spec.certificate = { duration: "30m" };
      copy.spec.tokenTTL = "48h";
    });
    expectIssue(issues, "spec.certificate.duration", "must be between 1h and 2160h (got 30m)");
    expectIssue(issues, "spec.tokenTTL", "must be between 1m and 24h (got 48h)");
  });

  it("renewBefore ≥ duration", () => {
    const issues = rejects((copy) => {
      copy.spec.certificate = { duration: "2h", renewBefore: "2h" };
    });
    expectIssue(
      issues,
      "spec.certificate.renewBefore",
      "must be shorter than duration (2h is not less than 2h)",
    );
    const againstDefault = rejects((copy) => {
      copy.spec.certificate = { renewBefore: "25h" };
    });
    expectIssue(
      againstDefault,
      "spec.certificate.renewBefore",
      /must be shorter than duration \(25h is not less than 24h\)/,
    );
  });

  it("reserved claim names, in any case", () => {
    const issues = rejects((copy) => {
      copy.spec.claims = { sub: "admin", Scope: "all", team: "ok" };
    });
    expectIssue(issues, "spec.claims.sub", /^is a reserved claim name/);
    expectIssue(issues, "spec.claims.Scope", /^is a reserved claim name/);
    expect(issues.some((issue) => issue.path === "spec.claims.team")).toBe(false);
  });

  it("too many claims, and bad claim names and values", () => {
    const claims = Object.fromEntries(Array.from({ length: 33 }, (_, index) => [`claim${index}`, "x"]));
    expectIssue(
      rejects((copy) => {
        copy.spec.claims = claims;
      }),
      "spec.claims",
      "must have at most 32 claims (got 33)",
    );
    const issues = rejects((copy) => {
      copy.spec.claims = { "1st": "x", long: "v".repeat(257) };
    });
    expectIssue(issues, 'spec.claims["1st"]', /^is not an allowed key: claim names start with a letter/);
    expectIssue(issues, "spec.claims.long", "must be at most 256 characters");
  });

  it("scopes that are not RFC 6749 scope tokens, or repeated", () => {
    const issues = rejects((copy) => {
      copy.spec.scopes = ["shop customer", "a", "a"];
    });
    expectIssue(issues, "spec.scopes[0]", /^must be an OAuth scope token/);
    expectIssue(issues, "spec.scopes[2]", '"a" is listed twice');
  });

  it("external subjects without their issuer, that are not DNs, or the same pair twice", () => {
    const root = "CN=Partner Root,O=Partner Ltd";
    expectIssue(
      rejects((copy) => {
        copy.spec.externalSubjects = ["CN=partner,O=Partner Ltd"];
      }),
      "spec.externalSubjects[0]",
      /object/,
    );
    expectIssue(
      rejects((copy) => {
        copy.spec.externalSubjects = [{ subject: "CN=partner,O=Partner Ltd" }];
      }),
      "spec.externalSubjects[0].issuer",
      /./,
    );
    expectIssue(
      rejects((copy) => {
        copy.spec.externalSubjects = [{ issuer: root, subject: "partner-client" }];
      }),
      "spec.externalSubjects[0].subject",
      /^is not an RFC 4514 distinguished name/,
    );
    expectIssue(
      rejects((copy) => {
        copy.spec.externalSubjects = [
          { issuer: root, subject: "CN=partner,O=Partner Ltd" },
          { issuer: "cn=Partner Root, o=Partner Ltd", subject: "cn = partner , o=Partner Ltd" },
        ];
      }),
      "spec.externalSubjects[1]",
      "is the same issuer and subject as externalSubjects[0]",
    );
  });

  it("edge audiences on a service that is not an edge", () => {
    expectIssue(
      rejects((copy) => {
        copy.spec.edge = false;
        copy.spec.edgeAudiences = ["https://api.shop.example"];
      }),
      "spec.edgeAudiences",
      "applies only to an edge (edge: true)",
    );
  });

  it("a name that is not a DNS label (the service id would be ambiguous)", () => {
    const issues = rejects((copy) => {
      copy.metadata.name = "cart.v2";
    });
    expectIssue(issues, "metadata.name", /^must be a DNS label/);
  });

  it("unknown fields, wrong types, wrong apiVersion", () => {
    const issues = issuesOf(() =>
      validateServiceIdentity({
        ...minimal,
        apiVersion: "custody.dev/v1",
        spec: { edge: "yes", enviroment: "x" },
      }),
    );
    expectIssue(issues, "apiVersion", 'must be "custody.dev/v1alpha1" (got "custody.dev/v1")');
    expectIssue(issues, "spec.edge", 'must be a boolean (got "yes")');
    expectIssue(issues, "spec.enviroment", "unknown field");
  });

  it("names the manifest in the error message", () => {
    expect(() => validateServiceIdentity({ ...minimal, spec: { edge: 1 } })).toThrow(
      /^ServiceIdentity shop\/cart is invalid: spec\.edge: must be a boolean \(got 1\)$/,
    );
  });
});

describe("ServiceIdentity status (written by the operator)", () => {
  const status = {
    observedGeneration: 3,
    conditions: [
      {
        type: "Ready",
        status: "True",
        reason: "Issued",
        message: "certificate issued and published",
        lastTransitionTime: "2024-05-01T12:00:00Z",
        observedGeneration: 3,
      },
    ],
    certificate: {
      serialNumber: "5aff687751",
      notBefore: "2024-05-01T12:00:00Z",
      notAfter: "2024-05-02T12:00:00Z",
      fingerprintSHA256: "a".repeat(64),
    },
    keyId: "cart-shop-1",
  };

  it("accepts metav1.Condition-shaped conditions", () => {
    expect(validateServiceIdentity({ ...minimal, status }).status).toEqual(status);
  });

  it("refuses malformed conditions and certificate facts", () => {
    const issues = issuesOf(() =>
      validateServiceIdentity({
        ...minimal,
        status: {
          ...status,
          conditions: [
            { ...status.conditions[0], status: "Yes", lastTransitionTime: "2024-02-30T00:00:00Z" },
            { ...status.conditions[0], reason: "not a reason" },
          ],
          certificate: { ...status.certificate, fingerprintSHA256: "AB" },
        },
      }),
    );
    expectIssue(issues, "status.conditions[0].status", 'must be one of True, False, Unknown (got "Yes")');
    expectIssue(issues, "status.conditions[0].lastTransitionTime", "is not a valid date and time");
    expectIssue(issues, "status.conditions[1].reason", /^must be a CamelCase reason/);
    expect(issues.filter((issue) => issue.path === "status.certificate.fingerprintSHA256")).toEqual([
      { path: "status.certificate.fingerprintSHA256", message: "must be 64 lower-case hex digits" },
    ]);
  });

  it("refuses two conditions of one type", () => {
    const [ready] = status.conditions;
    const issues = issuesOf(() =>
      validateServiceIdentity({ ...minimal, status: { ...status, conditions: [ready, ready] } }),
    );
    expectIssue(issues, "status.conditions[1].type", "condition Ready is listed twice");
  });
});
