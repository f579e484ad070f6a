/**
 * The serving certificate of an operator HTTPS server (token service, admission webhooks): issued
 * by Custody's own CA at start, then re-issued at half its life and swapped into the running
 * server, so a restart is never needed and a stolen key stays useful for days, not for the CA's
 * lifetime. Clients trust the CA, not the leaf, so a new leaf needs nothing from them.
 */
import type { SecureContextOptions } from "node:tls";
import type { Logger } from "pino";
import type { CertificateAuthority } from "../../../pki/src/ca.js";
import { issueCertificate } from "../../../pki/src/issue.js";
import { privateKeyToPem } from "../../../pki/src/keys.js";

/** A week: short enough that a leaked key expires soon, long enough to ride out a CA outage. */
export const SERVER_CERTIFICATE_SECONDS = 7 * 86_400;

export interface ServerCertificateRequest {
  /** Service id `<name>.<namespace>`: the certificate's CN and SPIFFE id. */
  readonly id: string;
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly lifetimeSeconds?: number;
}

export interface ServerTls {
  /** Leaf then CA: a client that only knows the CA from elsewhere still gets the whole chain. */
  readonly cert: string;
  readonly key: string;
}

export async function issueServerTls(
  ca: CertificateAuthority,
  request: ServerCertificateRequest,
): Promise<ServerTls> {
  const issued = await issueCertificate(ca, {
    id: request.id,
    usage: "server",
    dnsNames: [...new Set(request.dnsNames)],
    ipAddresses: [...new Set(request.ipAddresses)],
    lifetimeSeconds: request.lifetimeSeconds ?? SERVER_CERTIFICATE_SECONDS,
  });
  return { cert: `${issued.certificate.pem}${ca.certificate.pem}`, key: privateKeyToPem(issued.privateKey) };
}

export interface RenewalOptions {
  /** What the server presents next (certificate, key, and whatever else its context needs). */
  readonly issue: () => Promise<SecureContextOptions>;
  readonly lifetimeSeconds?: number;
  readonly logger: Logger;
}

/**
 * Re-issues at half the certificate's life and installs the result; a failure is logged and the
 * current certificate, still valid for the other half, keeps serving until the next attempt.
 */
export function renewServerCertificate(
  server: { setSecureContext(options: SecureContextOptions): void },
  options: RenewalOptions,
): { close(): void } {
  const lifetimeSeconds = options.lifetimeSeconds ?? SERVER_CERTIFICATE_SECONDS;
  const timer = setInterval(
    () => {
      void options
        .issue()
        .then((context) => {
          server.setSecureContext(context);
          options.logger.info({ event: "server_certificate_renewed" }, "server certificate renewed");
        })
        .catch((error: unknown) =>
          options.logger.error(
            {
              event: "server_certificate_renewal_failed",
              err: { message: error instanceof Error ? error.message : String(error) },
            },
            "renewal failed; the current certificate keeps serving",
          ),
        );
    },
    (lifetimeSeconds * 1000) / 2,
  );
  timer.unref();
  return { close: () => clearInterval(timer) };
}
