import { describe, expect, it } from "vitest";
import { compilePolicy } from "../../crds/src/compiled-policy.js";
import { ValidationError } from "../../crds/src/errors.js";
import { type AdmissionRequest, parseAdmissionReview, ReviewError } from "../src/webhook/review.js";
import { validatePolicyAdmission } from "../src/webhook/validate-policy.js";

function policy(spec: Record<string, unknown>, metadata: Record<string, unknown> = { name: "payments" }) {
  return { apiVersion: "custody.dev/v1alpha1", kind: "AccessPolicy", metadata, spec };
}

const VALID_SPEC = {
  target: "payments",
  rules: [
    {
      name: "pay-for-order",
      operation: { methods: ["POST"], path: "/pay-for-order/.*" },
      require: { comeFrom: [{ service: "cart" }] },
      action: "allow",
    },
  ],
};

function request(object: unknown, overrides: Partial<AdmissionRequest> = {}): AdmissionRequest {
  return {
    uid: "0f4b7a1c-1111-2222-3333-444455556666",
    kind: { group: "custody.dev", version: "v1alpha1", kind: "AccessPolicy" },
    resource: { group: "custody.dev", version: "v1alpha1", resource: "accesspolicies" },
    subResource: "",
    name: "payments",
    namespace: "shop",
    operation: "CREATE",
    object,
    oldObject: undefined,
    dryRun: false,
    ...overrides,
  };
}

/** What the operator writes into the status condition for `object`. */
function operatorMessage(object: unknown, namespace: string): string {
  try {
    compilePolicy(object, { namespace });
  } catch (error) {
    if (error instanceof ValidationError) return error.message;
    throw error;
  }
  throw new Error("the policy is valid");
}

describe("validatePolicyAdmission", () => {
  it("admits a valid policy, with its namespace from the request", () => {
    expect(validatePolicyAdmission(request(policy(VALID_SPEC)))).toEqual({
      allowed: true,
      patch: [],
      reason: "valid",
    });
  });

  it("refuses an invalid policy with exactly the operator's message", () => {
    const cases = [
      policy({ ...VALID_SPEC, target: "payments.elsewhere" }),
      policy({ ...VALID_SPEC, rules: [{ operation: { path: "/(a)\\1" }, action: "allow" }] }),
      policy({
        ...VALID_SPEC,
        rules: [{ operation: { path: "/x" }, action: "deny", quota: { requestsPerSecond: 1 } }],
      }),
      policy({ target: "payments", colour: "blue" }),
      policy(VALID_SPEC, { name: "Not A Name" }),
    ];
    for (const object of cases) {
      const decision = validatePolicyAdmission(request(object));
      expect(decision).toEqual({
        allowed: false,
        code: 422,
        reason: "invalid_access_policy",
        message: operatorMessage(object, "shop"),
      });
    }
    const foreign = validatePolicyAdmission(request(cases[0]));
    expect(foreign.allowed ? "" : foreign.message).toContain(
      "spec.target: must be a service of the policy's own namespace (shop)",
    );
    const backreference = validatePolicyAdmission(request(cases[1]));
    expect(backreference.allowed ? "" : backreference.message).toContain("backreferences");
  });

  it("prefers the object's own namespace, as the operator does", () => {
    const object = policy({ ...VALID_SPEC, target: "payments.billing" }, { name: "p", namespace: "billing" });
    expect(validatePolicyAdmission(request(object, { namespace: "billing" })).allowed).toBe(true);
  });

  it("always allows DELETE, objects being deleted, and metadata-only updates", () => {
    const invalid = policy({ ...VALID_SPEC, target: "payments.elsewhere" });
    expect(
      validatePolicyAdmission(request(undefined, { operation: "DELETE", oldObject: invalid })),
    ).toMatchObject({
      allowed: true,
    });
    const leaving = { ...invalid, metadata: { name: "payments", deletionTimestamp: "2025-01-01T00:00:00Z" } };
    expect(
      validatePolicyAdmission(request(leaving, { operation: "UPDATE", oldObject: invalid })),
    ).toMatchObject({
      allowed: true,
      reason: "deleting",
    });
    const labelled = { ...invalid, metadata: { name: "payments", labels: { team: "pay" } } };
    expect(
      validatePolicyAdmission(request(labelled, { operation: "UPDATE", oldObject: invalid })),
    ).toMatchObject({
      allowed: true,
      reason: "spec_unchanged",
    });
    // A spec change is judged, even on an update.
    const changed = policy({ ...VALID_SPEC, target: "payments.other" });
    expect(
      validatePolicyAdmission(request(changed, { operation: "UPDATE", oldObject: invalid })),
    ).toMatchObject({
      allowed: false,
    });
  });

  it("lets through what is not an AccessPolicy", () => {
    const pods = request({}, { resource: { group: "", version: "v1", resource: "pods" } });
    expect(validatePolicyAdmission(pods)).toMatchObject({ allowed: true, reason: "not_an_access_policy" });
    expect(validatePolicyAdmission(request({}, { subResource: "status" }))).toMatchObject({ allowed: true });
  });
});

describe("parseAdmissionReview", () => {
  const review = {
    apiVersion: "admission.k8s.io/v1",
    kind: "AdmissionReview",
    request: {
      uid: "705ab4f5-6393-11e8-b7cc-42010a800002",
      kind: { group: "custody.dev", version: "v1alpha1", kind: "AccessPolicy" },
      resource: { group: "custody.dev", version: "v1alpha1", resource: "accesspolicies" },
      requestKind: { group: "custody.dev", version: "v1alpha1", kind: "AccessPolicy" },
      namespace: "shop",
      operation: "DELETE",
      userInfo: { username: "admin" },
      object: null,
      oldObject: policy(VALID_SPEC),
      dryRun: false,
    },
  };

  it("reads the request, null objects as absent", () => {
    const parsed = parseAdmissionReview(JSON.stringify(review));
    expect(parsed).toMatchObject({
      uid: review.request.uid,
      operation: "DELETE",
      namespace: "shop",
      name: "",
      subResource: "",
      object: undefined,
      dryRun: false,
    });
    expect(parsed.oldObject).toEqual(review.request.oldObject);
  });

  it("refuses what is not an admission.k8s.io/v1 AdmissionReview, saying why", () => {
    const cases: [string, RegExp][] = [
      ["not json", /not JSON/],
      [JSON.stringify({ ...review, apiVersion: "admission.k8s.io/v1beta1" }), /apiVersion/],
      [JSON.stringify({ ...review, request: { ...review.request, uid: "a b" } }), /request\.uid/],
      [
        JSON.stringify({ ...review, request: { ...review.request, operation: "PATCH" } }),
        /request\.operation/,
      ],
      [JSON.stringify({ ...review, request: undefined }), /request: is required/],
      [JSON.stringify([]), /AdmissionReview is invalid/],
    ];
    for (const [body, message] of cases) {
      expect(() => parseAdmissionReview(body)).toThrow(ReviewError);
      expect(() => parseAdmissionReview(body)).toThrow(message);
    }
  });
});
