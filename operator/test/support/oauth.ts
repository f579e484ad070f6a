/** Runs `action` and returns the OAuthError it throws (fails the test if it throws nothing else). */
import { OAuthError } from "../../src/issuer/errors.js";

export function refusal(action: () => unknown): OAuthError {
  try {
    action();
  } catch (error) {
    if (error instanceof OAuthError) return error;
    throw error;
  }
  throw new Error("expected an OAuthError");
}
