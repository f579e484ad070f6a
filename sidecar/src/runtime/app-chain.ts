/**
 * What the app sees of its call chain, and how its sidecar takes it back.
 *
 * The app must carry the chain onto the calls it makes for a request (like a trace header), but an
 * app, its logs and anything between it and its sidecar must never hold a token with power of its
 * own. A chain's links have none: each is single-use, addressed to one service, bound to one
 * operation and body, and accepted only over the TLS connection of the service that signed it. Its
 * initial token e0 does: a user's token is a bearer credential, so an app that saw it could present
 * it at an edge and start a chain of its own.
 *
 * So the app receives e0 *sealed*: AES-256-GCM under a key that lives only in this sidecar process,
 * bound to this service and to the exact chain it arrived with (the hash of its head), with the last
 * moment the chain may still be continued. The links stay readable (`custody token inspect` can show
 * them). The outbound side opens the seal and accepts nothing else as e0: a raw token from the app is
 * refused, and so is a seal from another sidecar, a seal moved onto other links, or an expired one.
 * A sidecar restart changes the key, which ends the chains its app was still holding.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { CustodyError } from "../../../crds/src/errors.js";
import { CHAIN_SEPARATOR } from "../chain/limits.js";

export const SEALED_PREFIX = "sealed.v1.";
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** Far above any real chain (16 KiB by default); bounds the work a hostile value can cause. */
const MAX_SEALED_BYTES = 64 * 1024;

export class AppChainError extends CustodyError {
  declare readonly code: "chain_not_sealed" | "chain_not_ours" | "chain_altered" | "chain_expired";
  constructor(code: AppChainError["code"], message: string) {
    super(code, message);
  }
}

interface SealedContent {
  /** The original e0: an initial token or the first link. */
  readonly e0: string;
  /** base64url SHA-256 of the chain's last element; null when e0 was the whole chain. */
  readonly head: string | null;
  /** Unix seconds: the chain may be continued until then. */
  readonly until: number;
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("base64url");
}

export class AppChainSealer {
  readonly #key = randomBytes(32);
  readonly #aad: Buffer;

  constructor(self: string) {
    this.#aad = Buffer.from(`custody app chain v1 ${self}`, "utf8");
  }

  /** The chain as the app receives it: e0 sealed, the links as they are. */
  forApp(elements: readonly string[], untilSeconds: number): string {
    const [e0, ...links] = elements;
    if (e0 === undefined) throw new RangeError("a chain has at least one element");
    const last = links.at(-1);
    const content: SealedContent = {
      e0,
      head: last === undefined ? null : sha256(last),
      until: untilSeconds,
    };
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv("aes-256-gcm", this.#key, nonce).setAAD(this.#aad);
    const sealed = Buffer.concat([
      nonce,
      cipher.update(JSON.stringify(content), "utf8"),
      cipher.final(),
      cipher.getAuthTag(),
    ]);
    return [`${SEALED_PREFIX}${sealed.toString("base64url")}`, ...links].join(CHAIN_SEPARATOR);
  }

  /** The elements the app propagated, back as they were verified. Throws AppChainError. */
  fromApp(value: string, nowSeconds: number): string[] {
    const [first = "", ...links] = value.split(CHAIN_SEPARATOR);
    if (!first.startsWith(SEALED_PREFIX)) {
      throw new AppChainError(
        "chain_not_sealed",
        "the propagated Custody-Chain does not start with what this sidecar gave its app; pass on the header exactly as received.",
      );
    }
    const content = this.#open(first.slice(SEALED_PREFIX.length));
    if (content.until < nowSeconds) {
      throw new AppChainError(
        "chain_expired",
        "the propagated Custody-Chain can no longer be continued: its last link has expired.",
      );
    }
    const last = links.at(-1);
    if ((last === undefined ? null : sha256(last)) !== content.head) {
      throw new AppChainError(
        "chain_altered",
        "the links of the propagated Custody-Chain are not the ones it was received with.",
      );
    }
    return [content.e0, ...links];
  }

  #open(encoded: string): SealedContent {
    const refuse = () =>
      new AppChainError(
        "chain_not_ours",
        "the propagated Custody-Chain was not received by this service's sidecar (or it restarted since).",
      );
    if (encoded.length > MAX_SEALED_BYTES || !/^[A-Za-z0-9_-]+$/.test(encoded)) throw refuse();
    const bytes = Buffer.from(encoded, "base64url");
    if (bytes.length <= NONCE_BYTES + TAG_BYTES) throw refuse();
    let text: string;
    try {
      const decipher = createDecipheriv("aes-256-gcm", this.#key, bytes.subarray(0, NONCE_BYTES))
        .setAAD(this.#aad)
        .setAuthTag(bytes.subarray(bytes.length - TAG_BYTES));
      text = Buffer.concat([
        decipher.update(bytes.subarray(NONCE_BYTES, bytes.length - TAG_BYTES)),
        decipher.final(),
      ]).toString("utf8");
    } catch {
      throw refuse();
    }
    // Our own authenticated plaintext: its shape is ours, checked anyway.
    const content: unknown = JSON.parse(text);
    if (
      typeof content !== "object" ||
      content === null ||
      !("e0" in content) ||
      typeof content.e0 !== "string" ||
      !("until" in content) ||
      typeof content.until !== "number" ||
      !("head" in content) ||
      (content.head !== null && typeof content.head !== "string")
    ) {
      throw refuse();
    }
    return { e0: content.e0, head: content.head, until: content.until };
  }
}
