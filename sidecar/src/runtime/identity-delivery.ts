/**
 * The sidecar's side of identity delivery: on Kubernetes the key of the workload's identity is
 * kept by the operator, in its own namespace, and handed to this pod alone. The sidecar proves
 * which pod it is with the pod's projected service-account token (audience "custody", renewed by
 * the kubelet, read fresh for every request) and checks the operator's certificate against the
 * mesh CA of its registry, so it needs nothing secret to start with. The answer is checked like
 * identity files are (key belongs to the certificate, one SPIFFE id), and a broken or refused
 * answer never replaces the identity in use.
 */
import { isIP } from "node:net";
import { checkServerIdentity, type PeerCertificate } from "node:tls";
import { Agent, request } from "undici";
import { CustodyError } from "../../../crds/src/errors.js";
import {
  deliveredIdentitySchema,
  MAX_DELIVERED_IDENTITY_BYTES,
  MAX_IDENTITY_TOKEN_BYTES,
} from "../../../crds/src/identity-delivery.js";
import { readBoundedFile } from "../../../pki/src/files.js";
import { privateKeyFromPem } from "../../../pki/src/keys.js";
import { identityFromPem, type WorkloadIdentity } from "./identity-files.js";
import { boundedText } from "./identity-token.js";

export type IdentityDeliveryErrorCode =
  | "identity_token_unreadable"
  | "identity_trust_missing"
  | "identity_delivery_unreachable"
  | "identity_delivery_refused"
  | "identity_delivery_invalid";

export class IdentityDeliveryError extends CustodyError {
  declare readonly code: IdentityDeliveryErrorCode;
  constructor(code: IdentityDeliveryErrorCode, message: string) {
    super(code, message);
  }
}

export interface IdentityDeliveryClientOptions {
  /** https://<operator webhook service>/v1/identity */
  readonly url: string;
  /** The projected service-account token file. */
  readonly tokenPath: string;
  /** The mesh CA the operator's certificate must chain to (the registry's trustBundle), if loaded. */
  readonly trustPem: () => string | undefined;
  readonly timeoutMs?: number;
}

export interface IdentityDeliveryClient {
  fetch(): Promise<WorkloadIdentity>;
  /** The shared Redis of the last answer (the operator sends it only to authenticated pods). */
  readonly redisUrl: string | undefined;
  close(): Promise<void>;
}

export function identityDeliveryClient(options: IdentityDeliveryClientOptions): IdentityDeliveryClient {
  const hostname = new URL(options.url).hostname.replace(/^\[|\]$/g, "");
  const timeoutMs = options.timeoutMs ?? 10_000;
  let pool: { agent: Agent; trust: string } | undefined;
  let redisUrl: string | undefined;
  const agentFor = (trust: string): Agent => {
    if (pool?.trust === trust) return pool.agent;
    void pool?.agent.close();
    const agent = new Agent({
      connect: {
        ca: trust,
        ...(isIP(hostname) === 0 ? { servername: hostname } : {}),
        timeout: timeoutMs,
        checkServerIdentity: operatorNameCheck,
      },
      connections: 1,
      keepAliveTimeout: 30_000,
    });
    pool = { agent, trust };
    return agent;
  };

  return {
    async fetch() {
      const trust = options.trustPem();
      if (trust === undefined) {
        throw new IdentityDeliveryError(
          "identity_trust_missing",
          "no registry yet: the operator's certificate cannot be checked without its trustBundle",
        );
      }
      let token: string | undefined;
      try {
        token = (await readBoundedFile(options.tokenPath, MAX_IDENTITY_TOKEN_BYTES))?.trim();
      } catch (error) {
        throw new IdentityDeliveryError(
          "identity_token_unreadable",
          `${options.tokenPath}: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
      if (!token) {
        throw new IdentityDeliveryError("identity_token_unreadable", `${options.tokenPath} holds no token`);
      }
      let statusCode: number;
      let text: string;
      try {
        const response = await request(options.url, {
          method: "POST",
          dispatcher: agentFor(trust),
          headers: { authorization: `Bearer ${token}` },
          // One request every half minute: a connection kept open per pod between them would
          // only count against the operator's connection limit.
          reset: true,
          headersTimeout: timeoutMs,
          bodyTimeout: timeoutMs,
        });
        statusCode = response.statusCode;
        text = await boundedText(response.body, MAX_DELIVERED_IDENTITY_BYTES);
      } catch (error) {
        throw new IdentityDeliveryError(
          "identity_delivery_unreachable",
          `identity delivery ${options.url} unreachable: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
      if (statusCode !== 200) {
        throw new IdentityDeliveryError(
          "identity_delivery_refused",
          `identity delivery ${options.url} answered ${statusCode} ${reasonOf(text)}`,
        );
      }
      const answer = readAnswer(text, options.url);
      redisUrl = answer.redisUrl;
      return answer.identity;
    },
    get redisUrl() {
      return redisUrl;
    },
    async close() {
      await pool?.agent.close();
    },
  };
}

/**
 * The operator's certificate must name the host in a subjectAltName (DNS or IP). A certificate
 * without one would be matched on its common name, and the mesh CA's workload certificates carry
 * `<name>.<namespace>` there: none may pass for the operator.
 */
export function operatorNameCheck(host: string, certificate: PeerCertificate): Error | undefined {
  if (!/(^|, )(DNS|IP Address):/.test(certificate.subjectaltname ?? "")) {
    return new Error("the server's certificate names no DNS name or address: it is not the operator's");
  }
  return checkServerIdentity(host, certificate);
}

/** The identity in a 200 answer; anything malformed is identity_delivery_invalid. */
export function identityOfAnswer(text: string, source: string): WorkloadIdentity {
  return readAnswer(text, source).identity;
}

function readAnswer(
  text: string,
  source: string,
): { identity: WorkloadIdentity; redisUrl: string | undefined } {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new IdentityDeliveryError(
      "identity_delivery_invalid",
      `${source} answered something other than JSON`,
    );
  }
  const parsed = deliveredIdentitySchema.safeParse(body);
  if (!parsed.success) {
    throw new IdentityDeliveryError("identity_delivery_invalid", `${source} answered an unexpected shape`);
  }
  const { certificate, key, ca, nextKey, redisUrl } = parsed.data;
  try {
    const identity = identityFromPem({
      certificatePem: certificate,
      keyPem: key,
      caPem: ca,
      nextPrivateKey: nextKeyOf(nextKey, source),
      source,
    });
    return { identity, redisUrl };
  } catch (error) {
    throw new IdentityDeliveryError(
      "identity_delivery_invalid",
      error instanceof Error ? error.message : String(error),
    );
  }
}

/** The next key is an extra (it opens messages sealed to it mid-rotation): unusable means none. */
function nextKeyOf(pem: string | undefined, source: string) {
  if (pem === undefined) return undefined;
  try {
    return privateKeyFromPem(pem, `${source} nextKey`);
  } catch {
    return undefined;
  }
}

function reasonOf(text: string): string {
  try {
    const reason = (JSON.parse(text) as { reason?: unknown }).reason;
    return typeof reason === "string" && /^[a-z_]{1,64}$/.test(reason) ? reason : "(no reason)";
  } catch {
    return "(no reason)";
  }
}
