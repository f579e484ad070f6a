/**
 * The sidecar's identity delivery client against a real HTTPS server with a certificate of the
 * mesh CA: what it sends (the token file's content as a bearer token, nothing else), and each way
 * an answer is refused with its reason code, so no bad answer becomes the identity in use.
 */
import { writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { PeerCertificate } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type CertificateAuthority,
  createCertificateAuthority,
  issueCertificate,
  privateKeyToPem,
} from "../../pki/src/index.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import {
  identityDeliveryClient,
  identityOfAnswer,
  operatorNameCheck,
} from "../src/runtime/identity-delivery.js";

describe("identity delivery client", () => {
  let ca: CertificateAuthority;
  let otherCa: CertificateAuthority;
  let server: Server;
  let url: string;
  let directory: { path: string; cleanup: () => Promise<void> };
  let answer: { status: number; body: string } = { status: 200, body: "{}" };
  const seen: { authorization?: string; method?: string }[] = [];
  let cart: { certificate: string; key: string };

  beforeAll(async () => {
    ca = await createCertificateAuthority();
    otherCa = await createCertificateAuthority();
    directory = await temporaryDirectory();
    const issued = await issueCertificate(ca, { id: "cart.shop" });
    cart = { certificate: issued.certificate.pem, key: privateKeyToPem(issued.privateKey) };
    const tls = await issueCertificate(ca, {
      id: "custody-webhook.custody-system",
      usage: "server",
      dnsNames: ["localhost"],
    });
    server = createServer(
      { cert: tls.certificate.pem, key: privateKeyToPem(tls.privateKey) },
      (request, response) => {
        seen.push({ authorization: request.headers.authorization, method: request.method });
        response.writeHead(answer.status, { "content-type": "application/json" });
        response.end(answer.body);
      },
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `https://localhost:${(server.address() as AddressInfo).port}/v1/identity`;
    await writeFile(join(directory.path, "token"), "eyJ.pod-token.sig\n");
  });
  afterAll(async () => {
    server.close();
    await directory.cleanup();
  });

  const client = (
    trust: string | undefined = ca.certificate.pem,
    tokenPath = join(directory.path, "token"),
  ) => identityDeliveryClient({ url, tokenPath, trustPem: () => trust, timeoutMs: 5_000 });
  const fetchWith = async (status: number, body: unknown, trust?: string) => {
    answer = { status, body: typeof body === "string" ? body : JSON.stringify(body) };
    const delivery = client(trust);
    try {
      return await delivery.fetch();
    } finally {
      await delivery.close();
    }
  };

  it("POSTs the pod's token as a bearer token and returns the checked identity", async () => {
    const next = await issueCertificate(ca, { id: "cart.shop" });
    const identity = await fetchWith(200, {
      certificate: cart.certificate,
      key: cart.key,
      ca: ca.certificate.pem,
      nextKey: privateKeyToPem(next.privateKey),
    });
    expect(identity.serviceId).toBe("cart.shop");
    expect(identity.nextPrivateKey?.equals(next.privateKey)).toBe(true);
    expect(seen.at(-1)).toEqual({ authorization: "Bearer eyJ.pod-token.sig", method: "POST" });

    // The shared Redis comes with the identity, not in the pod's spec.
    answer = {
      status: 200,
      body: JSON.stringify({
        certificate: cart.certificate,
        key: cart.key,
        ca: ca.certificate.pem,
        redisUrl: "redis://:pw@redis:6379",
      }),
    };
    const delivery = client();
    try {
      await delivery.fetch();
      expect(delivery.redisUrl).toBe("redis://:pw@redis:6379");
    } finally {
      await delivery.close();
    }
  });

  it("refuses: a refusal (with the operator's reason), a server the mesh CA did not certify, no registry yet, no token", async () => {
    await expect(
      fetchWith(403, { error: "forbidden", reason: "service_account_mismatch" }),
    ).rejects.toMatchObject({
      code: "identity_delivery_refused",
      message: expect.stringContaining("403 service_account_mismatch"),
    });
    await expect(fetchWith(200, {}, otherCa.certificate.pem)).rejects.toMatchObject({
      code: "identity_delivery_unreachable",
    });
    const noRegistry = identityDeliveryClient({
      url,
      tokenPath: join(directory.path, "token"),
      trustPem: () => undefined,
    });
    await expect(noRegistry.fetch()).rejects.toMatchObject({ code: "identity_trust_missing" });
    await expect(client(ca.certificate.pem, join(directory.path, "absent")).fetch()).rejects.toMatchObject({
      code: "identity_token_unreadable",
    });
  });

  it("refuses answers that are not an identity: garbage, extra fields, a key of another certificate", async () => {
    const other = await issueCertificate(ca, { id: "payments.shop" });
    for (const body of [
      "<html>",
      { certificate: cart.certificate, key: cart.key },
      { certificate: cart.certificate, key: cart.key, ca: ca.certificate.pem, extra: "x" },
      { certificate: cart.certificate, key: privateKeyToPem(other.privateKey), ca: ca.certificate.pem },
      { certificate: "not a certificate", key: cart.key, ca: ca.certificate.pem },
    ]) {
      expect(() => identityOfAnswer(typeof body === "string" ? body : JSON.stringify(body), "test")).toThrow(
        expect.objectContaining({ code: "identity_delivery_invalid" }),
      );
    }
    // A broken next key is dropped, not fatal: it only ever opens messages sealed to it.
    const identity = identityOfAnswer(
      JSON.stringify({
        certificate: cart.certificate,
        key: cart.key,
        ca: ca.certificate.pem,
        nextKey: "junk",
      }),
      "test",
    );
    expect(identity.nextPrivateKey).toBeUndefined();
  });

  it("takes the operator only by a subjectAltName: a mesh certificate's common name is not enough", () => {
    const host = "custody-webhook.custody-system";
    const workload = {
      subject: { CN: host },
      subjectaltname: `URI:spiffe://custody.local/ns/custody-system/si/custody-webhook`,
    };
    expect(operatorNameCheck(host, workload as unknown as PeerCertificate)).toBeInstanceOf(Error);
    const operator = { subject: { CN: host }, subjectaltname: `DNS:${host}.svc, DNS:${host}` };
    expect(operatorNameCheck(host, operator as unknown as PeerCertificate)).toBeUndefined();
    expect(operatorNameCheck("elsewhere.example", operator as unknown as PeerCertificate)).toBeInstanceOf(
      Error,
    );
  });
});
