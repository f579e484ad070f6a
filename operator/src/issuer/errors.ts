/**
 * RFC 6749 §5.2 token endpoint errors. `code` is the OAuth `error` a client sees, `message` its
 * `error_description` (written for the client: never a stack, a path or a key), and `reason` a
 * stable, finer code for logs and metrics that says which check refused the request.
 */
import { CustodyError } from "../../../crds/src/errors.js";

export const OAUTH_ERROR_STATUS = {
  invalid_request: 400,
  invalid_client: 401,
  invalid_grant: 400,
  invalid_scope: 400,
  invalid_target: 400,
  unauthorized_client: 400,
  unsupported_grant_type: 400,
  temporarily_unavailable: 503,
} as const;

export type OAuthErrorCode = keyof typeof OAUTH_ERROR_STATUS;

export class OAuthError extends CustodyError {
  declare readonly code: OAuthErrorCode;
  readonly status: number;
  constructor(
    code: OAuthErrorCode,
    readonly reason: string,
    description: string,
  ) {
    super(code, description);
    this.status = OAUTH_ERROR_STATUS[code];
  }

  toJSON(): { error: OAuthErrorCode; error_description: string } {
    return { error: this.code, error_description: this.message };
  }
}
