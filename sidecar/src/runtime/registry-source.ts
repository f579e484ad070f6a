/**
 * The registry as the sidecar sees it: the mounted ConfigMap (one file, or a directory of shards
 * `registry-<i>.json`), turned into one immutable snapshot — trust view, compiled policies and
 * their patterns, the verified-link cache — that requests read and a reload swaps atomically.
 * A malformed update, a registry that cannot be trusted as a whole, or an older generation never
 * replaces the snapshot in use: it is refused, logged and counted, and the last good one stays.
 */
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { CustodyError } from "../../../crds/src/errors.js";
import { loadRegistry } from "../../../crds/src/registry.js";
import type { Registry } from "../../../crds/src/registry-schema.js";
import { TrustAnchors } from "../../../pki/src/anchors.js";
import { readBoundedFile } from "../../../pki/src/files.js";
import { VerifiedElementCache } from "../chain/cache.js";
import { RegistryTrustView } from "../chain/registry-view.js";
import type { VerifiedLink } from "../chain/verify.js";
import { PatternCache } from "../policy/operation.js";

const SHARD_FILE = /^registry-(\d{1,2})\.json$/;
const MAX_SHARD_BYTES = 1024 * 1024;

export interface RegistrySnapshot {
  readonly generation: number;
  readonly registry: Registry;
  readonly trust: RegistryTrustView;
  readonly patterns: PatternCache;
  readonly cache: VerifiedElementCache<VerifiedLink>;
  /**
   * The CAs whose client certificates the inbound side accepts, with their roles: Custody's CA alone
   * for services, partner CAs only for the external subjects mapped to them.
   */
  readonly anchors: TrustAnchors;
}

export type RegistryUpdate =
  | { readonly result: "loaded"; readonly snapshot: RegistrySnapshot }
  | { readonly result: "unchanged" }
  | { readonly result: "refused"; readonly code: string; readonly message: string };

export class StaleRegistryError extends CustodyError {
  declare readonly code: "registry_stale" | "registry_generation_reused";
  constructor(code: StaleRegistryError["code"], message: string) {
    super(code, message);
  }
}

/** The shard texts at `path`: the file itself, or every `registry-<i>.json` in the directory. */
export async function readRegistryTexts(path: string): Promise<string[]> {
  if (!(await stat(path)).isDirectory()) return [await readBoundedFile(path, MAX_SHARD_BYTES)];
  const names = (await readdir(path)).filter((name) => SHARD_FILE.test(name)).sort();
  return Promise.all(names.map((name) => readBoundedFile(join(path, name), MAX_SHARD_BYTES)));
}

export function snapshotOf(
  registry: Registry,
  options: { now?: () => number; cacheSize?: number } = {},
): RegistrySnapshot {
  const trust = new RegistryTrustView(registry, { now: options.now });
  const patterns = new PatternCache();
  // Compile every path regex now: a bad one refuses the registry here, not a request later.
  for (const policy of registry.policies) {
    for (const rule of policy.rules) {
      const operations = [
        rule.operation,
        ...(rule.require.comeFrom ?? []).map((hop) => ("via" in hop ? hop.via : undefined)),
      ];
      for (const operation of operations) if (operation?.path !== undefined) patterns.matcher(operation.path);
    }
  }
  return {
    generation: registry.generation,
    registry,
    trust,
    patterns,
    cache: new VerifiedElementCache<VerifiedLink>(options.cacheSize ?? 10_000),
    anchors: TrustAnchors.fromPem({
      trustDomain: registry.trustDomain,
      mesh: [{ name: "registry trustBundle", pem: registry.trustBundle }],
      partners:
        registry.partnerBundle === undefined
          ? []
          : [{ name: "registry partnerBundle", pem: registry.partnerBundle }],
    }),
  };
}

export class RegistrySource {
  #snapshot: RegistrySnapshot | undefined;
  #fingerprint = "";

  constructor(
    readonly path: string,
    private readonly options: { now?: () => number; cacheSize?: number } = {},
  ) {}

  /** The registry in use, or undefined before the first good one. */
  get snapshot(): RegistrySnapshot | undefined {
    return this.#snapshot;
  }

  /** Reads the registry and swaps it in if it is valid and newer. Never throws for bad content. */
  async reload(): Promise<RegistryUpdate> {
    let texts: string[];
    try {
      texts = await readRegistryTexts(this.path);
    } catch (error) {
      return refused(error);
    }
    const fingerprint = texts.join("\u0000");
    if (fingerprint === this.#fingerprint) return { result: "unchanged" };
    try {
      const registry = loadRegistry(texts);
      const current = this.#snapshot;
      if (current !== undefined && registry.generation < current.generation) {
        throw new StaleRegistryError(
          "registry_stale",
          `generation ${registry.generation} is older than generation ${current.generation} in use.`,
        );
      }
      if (current !== undefined && registry.generation === current.generation) {
        throw new StaleRegistryError(
          "registry_generation_reused",
          `generation ${registry.generation} is in use with other content; a changed registry needs a new generation.`,
        );
      }
      const snapshot = snapshotOf(registry, this.options);
      this.#snapshot = snapshot;
      this.#fingerprint = fingerprint;
      return { result: "loaded", snapshot };
    } catch (error) {
      return refused(error);
    }
  }
}

function refused(error: unknown): RegistryUpdate {
  if (error instanceof CustodyError) return { result: "refused", code: error.code, message: error.message };
  const code = error instanceof Error && "code" in error ? String(error.code) : "registry_unreadable";
  return { result: "refused", code, message: error instanceof Error ? error.message : String(error) };
}
