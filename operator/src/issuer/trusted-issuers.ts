/**
 * External issuers whose users' tokens may be exchanged (RFC 8693), with inline JWKS so that
 * verification never fetches anything. The file is YAML or JSON:
 *
 *   trustedIssuers:
 *     - issuer: https://login.shop.example
 *       audiences: [shop]          # optional: the user's token must be addressed to one of these
 *       jwks: { keys: [ { kty: EC, crv: P-256, alg: ES256, kid: k1, x: …, y: … } ] }
 */
import { z } from "zod";
import { CustodyError } from "../../../crds/src/errors.js";
import { parseYamlDocuments } from "../../../crds/src/manifest.js";
import { MAX_TRUSTED_ISSUERS, trustedIssuerSchema } from "../../../crds/src/registry-schema.js";
import { reportDuplicates } from "../../../crds/src/schema-kit.js";
import { readBoundedFile } from "../../../pki/src/files.js";
import { IssuerKeySet } from "../../../pki/src/jwks.js";

const trustedIssuersFileSchema = z.strictObject({
  trustedIssuers: z
    .array(trustedIssuerSchema)
    .max(MAX_TRUSTED_ISSUERS)
    .superRefine((issuers, ctx) =>
      reportDuplicates(
        ctx,
        issuers,
        (entry) => entry.issuer,
        (issuer, first, index) => ({
          path: [index, "issuer"],
          message: `"${issuer}" is already listed at [${first}]`,
        }),
      ),
    ),
});

export type TrustedIssuers = z.output<typeof trustedIssuersFileSchema>["trustedIssuers"];

export class TrustedIssuersError extends CustodyError {
  declare readonly code: "invalid_trusted_issuers";
  constructor(message: string) {
    super("invalid_trusted_issuers", message);
  }
}

export async function loadTrustedIssuers(path: string): Promise<TrustedIssuers> {
  const [document, ...more] = parseYamlDocuments(await readBoundedFile(path, 1024 * 1024), path);
  if (more.length > 0) throw new TrustedIssuersError(`${path} must hold one document.`);
  const parsed = trustedIssuersFileSchema.safeParse(document);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue === undefined ? "" : `${issue.path.join(".")}: `;
    throw new TrustedIssuersError(`${path}: ${where}${issue?.message ?? "invalid"}.`);
  }
  return parsed.data.trustedIssuers;
}

export function issuerKeySetOf(issuers: TrustedIssuers): IssuerKeySet {
  const set = new IssuerKeySet();
  for (const entry of issuers) set.add(entry.issuer, entry.jwks.keys, entry.audiences);
  return set;
}
