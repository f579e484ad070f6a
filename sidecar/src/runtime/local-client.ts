/**
 * Who may use the outbound port and the key service on it. Both act as the workload — one signs its
 * calls, the other signs, seals and opens with its key — so they serve the workload and nobody else.
 *
 * - A credential, when one is configured (what `custody local up` does, where every process of the
 *   machine can reach 127.0.0.1): the app's HTTP_PROXY carries it as `http://custody:SECRET@host:port`,
 *   which common clients send as `Proxy-Authorization: Basic`; the key service also takes it as
 *   `Authorization: Basic` or `Bearer`. In a Kubernetes pod the loopback interface is the pod's own,
 *   and the credential is optional.
 * - Never a browser, credential or not: a web page on the same machine can reach loopback ports
 *   (directly, or through DNS rebinding with a name such as `payments.shop`). Browsers mark every
 *   request with `Sec-Fetch-Site` and `Sec-Fetch-Dest` (which scripts cannot set or remove; server
 *   runtimes' fetch sends only Sec-Fetch-Mode) and cross-origin ones with `Origin`; the key service,
 *   addressed by its loopback address, also requires a loopback `Host`. An app that relays a
 *   browser's request onwards must not copy those headers.
 */
import { timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { CustodyError } from "../../../crds/src/errors.js";

export class LocalClientRefusal extends CustodyError {
  declare readonly code:
    | "proxy_auth_required"
    | "credential_required"
    | "browser_request_refused"
    | "host_not_local";
  constructor(
    code: LocalClientRefusal["code"],
    readonly status: 401 | 403 | 407,
    message: string,
  ) {
    super(code, message);
  }
}

/** Loopback authorities a client names when it addresses the port itself: `Host` of the key service. */
const LOCAL_HOST = /^(127\.0\.0\.1|localhost|\[::1\])(:\d{1,5})?$/i;

export class LocalClientGuard {
  readonly #secret: Buffer | undefined;

  /** `secret`: the workload's credential; undefined when the port is only reachable from the workload. */
  constructor(secret: string | undefined) {
    this.#secret = secret === undefined ? undefined : Buffer.from(secret, "utf8");
  }

  get requiresCredential(): boolean {
    return this.#secret !== undefined;
  }

  /** Throws LocalClientRefusal unless `request` comes from the workload. */
  check(request: IncomingMessage, route: "proxy" | "key_service"): void {
    const headers = request.headers;
    if (
      headers.origin !== undefined ||
      headers["sec-fetch-site"] !== undefined ||
      headers["sec-fetch-dest"] !== undefined
    ) {
      throw new LocalClientRefusal(
        "browser_request_refused",
        403,
        "this port serves the workload next to it, never a browser (Origin or Sec-Fetch-Site/-Dest was sent).",
      );
    }
    if (route === "key_service" && !LOCAL_HOST.test(headers.host ?? "")) {
      throw new LocalClientRefusal(
        "host_not_local",
        403,
        "the key service answers requests addressed to its loopback address only (Host).",
      );
    }
    if (this.#secret === undefined) return;
    const presented =
      secretOf(headers["proxy-authorization"]) ??
      (route === "key_service" ? secretOf(headers.authorization) : undefined);
    if (presented !== undefined && this.#matches(presented)) return;
    // A proxy asks with 407 (Proxy-Authenticate); the key service is addressed directly, and fetch
    // clients turn a 407 from anything but their proxy into a network error, so it asks with 401.
    if (route === "proxy") {
      throw new LocalClientRefusal(
        "proxy_auth_required",
        407,
        "this port needs the workload's credential: use the HTTP_PROXY the workload was given.",
      );
    }
    throw new LocalClientRefusal(
      "credential_required",
      401,
      "the key service needs the workload's credential: use the CUSTODY_KEYS_URL the workload was given.",
    );
  }

  #matches(presented: string): boolean {
    const secret = this.#secret;
    if (secret === undefined) return true;
    const given = Buffer.from(presented, "utf8");
    return given.length === secret.length && timingSafeEqual(given, secret);
  }
}

/** The secret of `Basic base64(user:secret)` (any user name) or `Bearer secret`; undefined otherwise. */
function secretOf(header: string | undefined): string | undefined {
  if (header === undefined || header.length > 1024) return undefined;
  const basic = /^Basic +([A-Za-z0-9+/]+=*) *$/i.exec(header);
  if (basic !== null) {
    const decoded = Buffer.from(basic[1] ?? "", "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    return colon === -1 ? undefined : decoded.slice(colon + 1);
  }
  return /^Bearer +([\x21-\x7e]+) *$/i.exec(header)?.[1];
}
