/** A workload identity directory as the operator's Secret mounts it: tls.crt, tls.key, ca.crt. */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type CertificateAuthority, issueCertificate, privateKeyToPem } from "../../../pki/src/index.js";

/** With `keyFrom`, the key of another certificate: a rotation caught half-way. */
export async function writeIdentity(
  ca: CertificateAuthority,
  directory: string,
  id: string,
  keyFrom?: string,
) {
  const issued = await issueCertificate(ca, { id });
  const other = keyFrom === undefined ? undefined : await issueCertificate(ca, { id: keyFrom });
  await writeFile(join(directory, "tls.crt"), issued.certificate.pem);
  await writeFile(join(directory, "tls.key"), privateKeyToPem((other ?? issued).privateKey));
  await writeFile(join(directory, "ca.crt"), ca.certificate.pem);
}
