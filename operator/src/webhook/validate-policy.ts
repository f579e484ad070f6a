/**
 * AccessPolicy validation at `kubectl apply` time. The verdict and its words are the operator's:
 * `compilePolicy`, whose ValidationError message the operator also writes into the policy's status
 * condition, so a person sees the same sentence in both places. The webhook only saves the round
 * trip; the operator still refuses to publish an invalid policy that got in while it was down.
 */
import { isDeepStrictEqual } from "node:util";
import { compilePolicy } from "../../../crds/src/compiled-policy.js";
import { ValidationError } from "../../../crds/src/errors.js";
import { API_GROUP } from "../../../crds/src/names.js";
import { type AdmissionDecision, type AdmissionRequest, allowUnchanged } from "./review.js";

export const INVALID_ACCESS_POLICY = "invalid_access_policy";
export const ACCESS_POLICY_RESOURCE = "accesspolicies";

function field(value: unknown, key: string): unknown {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)[key]
    : undefined;
}

export function validatePolicyAdmission(request: AdmissionRequest): AdmissionDecision {
  if (request.operation === "DELETE" || request.operation === "CONNECT")
    return allowUnchanged("not_validated");
  if (request.resource.group !== API_GROUP || request.resource.resource !== ACCESS_POLICY_RESOURCE) {
    return allowUnchanged("not_an_access_policy");
  }
  // The operator's status writes go to /status; only the policy itself is judged here.
  if (request.subResource !== "") return allowUnchanged("not_validated");
  const { object } = request;
  // An object on its way out (finalizers being removed) must be able to leave, valid or not.
  if (field(field(object, "metadata"), "deletionTimestamp") !== undefined) return allowUnchanged("deleting");
  // A metadata-only update (labels, finalizers) of a policy that got in while this webhook was down
  // does not make it worse; refusing it would wedge whoever owns the metadata. Its status says
  // what is wrong.
  if (
    request.operation === "UPDATE" &&
    isDeepStrictEqual(field(object, "spec"), field(request.oldObject, "spec"))
  ) {
    return allowUnchanged("spec_unchanged");
  }
  try {
    compilePolicy(object, request.namespace === "" ? {} : { namespace: request.namespace });
  } catch (error) {
    if (error instanceof ValidationError) {
      return { allowed: false, code: 422, reason: INVALID_ACCESS_POLICY, message: error.message };
    }
    throw error;
  }
  return allowUnchanged("valid");
}
