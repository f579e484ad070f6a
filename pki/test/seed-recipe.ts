/**
 * The design seed's openssl recipe (seed 000), step by step and non-interactive, run in `cwd` with
 * the seed's layout: CAs in ./pki/CA/<name>.{crt,key} (key encrypted, as the interactive recipe
 * leaves it), clients in ./pki/<name>.{key,csr,crt}.
 */
import { run } from "./support.js";

export const SEED_PASSPHRASE = "pass:seed-secret";

export async function openssl(cwd: string, ...args: string[]): Promise<string> {
  const { stdout } = await run("openssl", args, { cwd });
  return stdout;
}

/** `openssl req -new -x509 …`: a self-signed CA. */
export async function seedCa(cwd: string, name: string, subject: string): Promise<void> {
  await openssl(
    cwd,
    "req",
    "-new",
    "-x509",
    "-days",
    "265",
    "-keyout",
    `./pki/CA/${name}.key`,
    "-out",
    `./pki/CA/${name}.crt`,
    "-subj",
    subject,
    "-passout",
    SEED_PASSPHRASE,
  );
}

/** `openssl genrsa` + `openssl req -new`: a client key and its CSR. */
export async function seedKeyAndCsr(cwd: string, name: string, subject: string): Promise<void> {
  await openssl(cwd, "genrsa", "-out", `./pki/${name}.key`, "2048");
  await openssl(
    cwd,
    "req",
    "-new",
    "-key",
    `./pki/${name}.key`,
    "-out",
    `./pki/${name}.csr`,
    "-subj",
    subject,
  );
}

/** `openssl x509 -req … -CAcreateserial -days 100 -sha256`: the CA signs the client's CSR. */
export async function seedSign(cwd: string, name: string, ca: string): Promise<void> {
  await openssl(
    cwd,
    "x509",
    "-req",
    "-in",
    `./pki/${name}.csr`,
    "-CA",
    `./pki/CA/${ca}.crt`,
    "-CAkey",
    `./pki/CA/${ca}.key`,
    "-CAcreateserial",
    "-out",
    `./pki/${name}.crt`,
    "-days",
    "100",
    "-sha256",
    "-passin",
    SEED_PASSPHRASE,
  );
}

/** The seed's whole client recipe: key, CSR, signed by `ca`. */
export async function seedClient(cwd: string, name: string, ca: string, subject: string): Promise<void> {
  await seedKeyAndCsr(cwd, name, subject);
  await seedSign(cwd, name, ca);
}
