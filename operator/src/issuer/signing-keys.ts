/**
 * The token service's ES256 signing keys, rotated with overlap (the contract's "signing keys rotate
 * with overlap"): there is always a `next` key, published in the JWKS a whole rotation period
 * before it signs anything, so relying parties that cache the JWKS have it in time; a retired key
 * stays published until every token it signed has expired (its retirement plus the longest token
 * lifetime the service issues). State is one JSON document (a file, mode 0600, replaced
 * atomically; or a Secret), so a crash mid-rotation leaves the old state or the new one and never
 * a key that signed but is unpublished. Several replicas may share one state: each adopts what the
 * storage holds before rotating, and a replica that loses the race to write adopts the winner's.
 */
import { createHash, createPublicKey, type KeyObject } from "node:crypto";
import { join } from "node:path";
import { z } from "zod";
import { CustodyError } from "../../../crds/src/errors.js";
import type { PublicJwk } from "../../../crds/src/jwk.js";
import {
  ensureDirectory,
  MODE_PRIVATE,
  readBoundedFile,
  writeFilesAtomically,
} from "../../../pki/src/files.js";
import { generateKeyPair, privateKeyFromPem, privateKeyToPem } from "../../../pki/src/keys.js";

export const SIGNING_KEYS_FILE = "signing-keys.json";
/** A JWKS in the registry holds at most 8 keys: current + next + at most 6 retired ones. */
export const MAX_RETIRED_KEYS = 6;

const storedKeySchema = z.strictObject({
  kid: z.string().min(1).max(64),
  privateKeyPem: z.string().min(1).max(8192),
  createdAt: z.int().min(0),
  /** When it started signing; absent while it is the next key. */
  activatedAt: z.int().min(0).optional(),
  /** When it stopped signing. */
  retiredAt: z.int().min(0).optional(),
  /** Published until then: no token it signed lives longer. */
  publishUntil: z.int().min(0).optional(),
});

const stateSchema = z.strictObject({
  version: z.literal(1),
  keys: z
    .array(storedKeySchema)
    .min(2)
    .max(MAX_RETIRED_KEYS + 2),
});

type StoredKey = z.output<typeof storedKeySchema>;

export class SigningKeyError extends CustodyError {
  declare readonly code: "signing_keys_invalid";
  constructor(message: string) {
    super("signing_keys_invalid", message);
  }
}

export interface SigningKey {
  readonly kid: string;
  readonly privateKey: KeyObject;
  readonly jwk: PublicJwk;
}

interface KeyState {
  readonly current: StoredKey;
  readonly next: StoredKey;
  readonly retired: readonly StoredKey[];
}

/** RFC 7638 JWK thumbprint: the kid is derived from the key, so it can never name two keys. */
function publicJwkOf(privateKey: KeyObject): PublicJwk {
  const jwk = createPublicKey(privateKey).export({ format: "jwk" });
  const { crv, x, y } = jwk;
  if (jwk.kty !== "EC" || crv !== "P-256" || typeof x !== "string" || typeof y !== "string") {
    throw new SigningKeyError("a signing key is not an ECDSA P-256 key.");
  }
  const kid = createHash("sha256")
    .update(JSON.stringify({ crv, kty: "EC", x, y }))
    .digest("base64url");
  return { kty: "EC", crv: "P-256", alg: "ES256", use: "sig", kid, x, y };
}

async function newStoredKey(nowMs: number): Promise<StoredKey> {
  const { privateKey } = await generateKeyPair("ecdsa-p256");
  const kid = publicJwkOf(privateKey).kid ?? "";
  return { kid, privateKeyPem: privateKeyToPem(privateKey), createdAt: nowMs };
}

function splitState(keys: readonly StoredKey[], source: string): KeyState {
  const pending = keys.filter((key) => key.activatedAt === undefined);
  const active = keys.filter((key) => key.activatedAt !== undefined && key.retiredAt === undefined);
  const retired = keys.filter((key) => key.retiredAt !== undefined);
  const [next] = pending;
  const [current] = active;
  if (next === undefined || current === undefined || pending.length > 1 || active.length > 1) {
    throw new SigningKeyError(
      `${source} must hold exactly one current and one next key; restore it from backup or remove it to start with new keys.`,
    );
  }
  return { current, next, retired };
}

/** Where the key state document lives, with optimistic concurrency. */
export interface KeyStateStorage {
  /** Names the storage in messages (a path, a Secret). */
  readonly name: string;
  load(): Promise<{ readonly text: string; readonly version: string } | undefined>;
  /**
   * Writes `text` if the stored version is still `version` (undefined: nothing stored yet) and
   * returns the new version; throws a CustodyError with code "store_conflict" otherwise.
   */
  save(text: string, version: string | undefined): Promise<string>;
}

/** The state as one file in `directory`, mode 0600, replaced atomically. */
export function fileKeyStateStorage(directory: string): KeyStateStorage {
  const path = join(directory, SIGNING_KEYS_FILE);
  const digest = (text: string) => createHash("sha256").update(text).digest("hex");
  return {
    name: path,
    async load() {
      try {
        const text = await readBoundedFile(path, 256 * 1024);
        return { text, version: digest(text) };
      } catch (error) {
        if (error instanceof CustodyError && error.code === "file_not_found") return undefined;
        throw error;
      }
    },
    async save(text) {
      await ensureDirectory(directory, 0o700);
      await writeFilesAtomically([{ path, data: text, mode: MODE_PRIVATE }], { overwrite: true });
      return digest(text);
    },
  };
}

export interface SigningKeyRingOptions {
  /** A directory for the state file, or any other storage. */
  readonly directory?: string;
  readonly storage?: KeyStateStorage;
  /** How long a key signs before the next one takes over. */
  readonly rotationPeriodMs: number;
  /** The longest lifetime of any token this service issues: how long a retired key stays published. */
  readonly maxTokenLifetimeMs: number;
  readonly now?: () => number;
}

export class SigningKeyRing {
  #state: KeyState;
  #version: string;
  readonly #storage: KeyStateStorage;
  #signing: SigningKey;
  #jwks: { keys: PublicJwk[] };
  readonly #now: () => number;

  private constructor(
    private readonly options: SigningKeyRingOptions,
    storage: KeyStateStorage,
    state: KeyState,
    version: string,
  ) {
    this.#now = options.now ?? Date.now;
    this.#storage = storage;
    this.#version = version;
    this.#state = state;
    this.#signing = this.#materialize(state.current);
    this.#jwks = this.#publish(state);
  }

  get path(): string {
    return this.#storage.name;
  }

  /** Loads the key state, creating it (current + next) on first start. */
  static async open(options: SigningKeyRingOptions): Promise<SigningKeyRing> {
    const storage = options.storage ?? fileKeyStateStorage(options.directory ?? ".");
    const nowMs = (options.now ?? Date.now)();
    const loaded = await storage.load();
    if (loaded !== undefined) {
      return new SigningKeyRing(options, storage, parseState(loaded.text, storage.name), loaded.version);
    }
    const current = { ...(await newStoredKey(nowMs)), activatedAt: nowMs };
    const state: KeyState = { current, next: await newStoredKey(nowMs), retired: [] };
    try {
      const version = await storage.save(serializeState(state), undefined);
      return new SigningKeyRing(options, storage, state, version);
    } catch (error) {
      if (!isConflict(error)) throw error;
      // Another replica created the state first: use theirs.
      const theirs = await storage.load();
      if (theirs === undefined) throw error;
      return new SigningKeyRing(options, storage, parseState(theirs.text, storage.name), theirs.version);
    }
  }

  /** The key that signs now. */
  get signingKey(): SigningKey {
    return this.#signing;
  }

  /** Every key a relying party must accept now: current, next, and retired keys still in use. */
  get jwks(): { readonly keys: readonly PublicJwk[] } {
    return this.#jwks;
  }

  get nextRotationAt(): number {
    return (this.#state.current.activatedAt ?? 0) + this.options.rotationPeriodMs;
  }

  /**
   * Rotates if the current key's period is over, and drops retired keys whose tokens have all
   * expired. Returns what happened. Rotation waits (and says so) while MAX_RETIRED_KEYS retired keys
   * are still published: the JWKS never grows past its bound.
   */
  async maintain(): Promise<"rotated" | "pruned" | "postponed" | "unchanged" | "reloaded"> {
    const stored = await this.#storage.load();
    if (stored !== undefined && stored.version !== this.#version) {
      this.#adopt(parseState(stored.text, this.#storage.name), stored.version);
      return "reloaded";
    }
    const nowMs = this.#now();
    const live = this.#state.retired.filter((key) => (key.publishUntil ?? 0) > nowMs);
    const pruned = live.length !== this.#state.retired.length;
    if (nowMs < this.nextRotationAt || live.length >= MAX_RETIRED_KEYS) {
      if (!pruned) return nowMs < this.nextRotationAt ? "unchanged" : "postponed";
      await this.#commit({ ...this.#state, retired: live });
      return nowMs < this.nextRotationAt ? "pruned" : "postponed";
    }
    const retiring: StoredKey = {
      ...this.#state.current,
      retiredAt: nowMs,
      publishUntil: nowMs + this.options.maxTokenLifetimeMs,
    };
    await this.#commit({
      current: { ...this.#state.next, activatedAt: nowMs },
      next: await newStoredKey(nowMs),
      retired: [retiring, ...live],
    });
    return "rotated";
  }

  async #commit(state: KeyState): Promise<void> {
    let version: string;
    try {
      version = await this.#storage.save(serializeState(state), this.#version);
    } catch (error) {
      if (!isConflict(error)) throw error;
      // Another replica rotated first: its state wins, and our freshly made key is discarded unused.
      const theirs = await this.#storage.load();
      if (theirs === undefined) throw error;
      this.#adopt(parseState(theirs.text, this.#storage.name), theirs.version);
      return;
    }
    this.#adopt(state, version);
  }

  #adopt(state: KeyState, version: string): void {
    this.#signing = this.#materialize(state.current);
    this.#jwks = this.#publish(state);
    this.#state = state;
    this.#version = version;
  }

  #materialize(stored: StoredKey): SigningKey {
    const privateKey = privateKeyFromPem(stored.privateKeyPem, this.path);
    return { kid: stored.kid, privateKey, jwk: publicJwkOf(privateKey) };
  }

  #publish(state: KeyState): { keys: PublicJwk[] } {
    const keys = [state.current, state.next, ...state.retired].map((stored) =>
      publicJwkOf(privateKeyFromPem(stored.privateKeyPem, this.path)),
    );
    return { keys };
  }
}

function parseState(text: string, source: string): KeyState {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new SigningKeyError(
      `${source} is not JSON; restore it from backup or remove it to start with new keys.`,
    );
  }
  const parsed = stateSchema.safeParse(value);
  if (!parsed.success) {
    throw new SigningKeyError(
      `${source} is not a signing key state file: ${parsed.error.issues[0]?.message ?? ""}.`,
    );
  }
  for (const key of parsed.data.keys) {
    const derived = publicJwkOf(privateKeyFromPem(key.privateKeyPem, source)).kid;
    if (derived !== key.kid) throw new SigningKeyError(`${source}: kid ${key.kid} does not match its key.`);
  }
  return splitState(parsed.data.keys, source);
}

function serializeState(state: KeyState): string {
  const document = { version: 1, keys: [state.current, state.next, ...state.retired] };
  return `${JSON.stringify(document, null, 2)}\n`;
}

function isConflict(error: unknown): boolean {
  return error instanceof CustodyError && error.code === "store_conflict";
}
