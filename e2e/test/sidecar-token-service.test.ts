/**
 * The sidecar's identity bootstrap against the real token service, over real mTLS: the two
 * components meet here (and only here, in tests), through the token endpoint's wire contract.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type CertificateAuthority,
  createCertificateAuthority,
  writeCertificateAuthority,
} from "../../pki/src/index.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import { loadIdentityFiles } from "../../sidecar/src/runtime/identity-files.js";
import { tokenServiceFetcher } from "../../sidecar/src/runtime/identity-token.js";
import { writeIdentity } from "../../sidecar/test/support/identity.js";
import { startTestIssuer } from "../support/mesh.js";

describe("tokenServiceFetcher against a real token service", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let issuer: Awaited<ReturnType<typeof startTestIssuer>>;
  let ca: CertificateAuthority;

  beforeAll(async () => {
    directory = await temporaryDirectory();
    ca = await createCertificateAuthority();
    await writeCertificateAuthority(join(directory.path, "ca"), ca, { force: false });
    const manifests = join(directory.path, "manifests");
    await mkdir(manifests);
    await writeFile(
      join(manifests, "cart.yaml"),
      "apiVersion: custody.dev/v1alpha1\nkind: ServiceIdentity\nmetadata: {name: cart, namespace: shop}\nspec: {tokenTTL: 5m}\n",
    );
    issuer = await startTestIssuer(directory.path, manifests, pino({ level: "silent" }));
  });
  afterAll(async () => {
    await issuer?.close(100);
    await directory.cleanup();
  });

  it("exchanges the workload certificate for its identity token over mTLS", async () => {
    const identityDir = join(directory.path, "cart");
    await mkdir(identityDir);
    await writeIdentity(ca, identityDir, "cart.shop");
    const fetchToken = tokenServiceFetcher(issuer.tokenUrl);
    try {
      const token = await fetchToken(await loadIdentityFiles(identityDir));
      expect(token.expiresAtMs - token.issuedAtMs).toBeLessThanOrEqual(300_000);
      expect(token.token.split(".")).toHaveLength(3);
    } finally {
      await fetchToken.close();
    }
  });

  it("reports a refusal with the token service's reason", async () => {
    const identityDir = join(directory.path, "ghost");
    await mkdir(identityDir);
    await writeIdentity(ca, identityDir, "ghost.shop");
    const fetchToken = tokenServiceFetcher(issuer.tokenUrl);
    try {
      await expect(fetchToken(await loadIdentityFiles(identityDir))).rejects.toMatchObject({
        code: "token_refused",
        message: expect.stringContaining("invalid_client"),
      });
    } finally {
      await fetchToken.close();
    }
  });
});
