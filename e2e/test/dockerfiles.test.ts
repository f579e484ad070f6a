/**
 * The container images and the kind suite, checked without Docker: no engine runs where `make test`
 * runs, so what `docker build` and `e2e/kind/run.sh` would find out late is checked here, statically.
 *
 * - Dockerfile.operator / Dockerfile.sidecar, read with a small parser of the instructions they use:
 *   pinned Node 24 bases, a numeric non-root user (the one the webhook runs the sidecar as), exec
 *   form, no HEALTHCHECK, node_modules only from a production-only install, no devDependency copied,
 *   the layout bin/custody.mjs expects, the sidecar's CMD equal to the args the webhook injects.
 * - Dockerfile.init, the traffic-capture init container: Debian 12's iptables and nothing else, no
 *   file of the build context, root (the webhook bounds it), the tools the webhook's script calls.
 * - .dockerignore, with Docker's matching rules: keys, .git, node_modules stay out; every file tsc
 *   needs for the build (resolved by the TypeScript compiler itself) gets in and is copied.
 * - e2e/kind: the example's Deployments go through the real injection code and come out admitted and
 *   within the restricted Pod Security Standard; Services, ports and names agree with the operator.
 */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { posix } from "node:path";
import { Ajv } from "ajv";
import { applyPatch, type Operation } from "fast-json-patch";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { parseManifests, parseYamlDocuments } from "../../crds/src/manifest.js";
import type { ServiceIdentity } from "../../crds/src/service-identity.js";
import { DEFAULT_LOCATION_TEMPLATE } from "../../operator/src/controllers/registry-publisher.js";
import { CAPTURE_SCRIPT, captureInitContainer } from "../../operator/src/webhook/capture.js";
import {
  DEFAULT_INJECTION_SETTINGS,
  INBOUND_PORT,
  injectionPatch,
  SIDECAR_CONTAINER_NAME,
  SIDECAR_USER,
  VOLUME_TMP,
} from "../../operator/src/webhook/inject.js";
import { ATTACKER_SCRIPT, forwardedPort, registryTextsOf, TRUSTED_ISSUERS_FILE } from "../kind/scenarios.js";

const ROOT = new URL("../../", import.meta.url);
const read = (path: string) => readFileSync(new URL(path, ROOT), "utf8");
const packageJson = JSON.parse(read("package.json")) as {
  license: string;
  scripts: Record<string, string>;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};
const DEV_DEPENDENCIES = Object.keys(packageJson.devDependencies);
const NODE_MAJOR = 24;
const DOCKERFILES = { operator: "Dockerfile.operator", sidecar: "Dockerfile.sidecar" } as const;

// --- a Dockerfile parser (the instructions these files use) -------------------------------------

interface Instruction {
  readonly keyword: string;
  /** Everything after the keyword, continuation lines joined. */
  readonly args: string;
  readonly line: number;
}

interface Stage {
  readonly index: number;
  readonly image: string;
  readonly name: string | undefined;
  readonly instructions: Instruction[];
}

function parseInstructions(text: string): Instruction[] {
  const instructions: Instruction[] = [];
  let pending: { text: string; line: number } | undefined;
  text.split("\n").forEach((raw, index) => {
    const line = raw.trim();
    // Comments (and parser directives) are whole lines; inside a continuation they are dropped.
    if (line.startsWith("#") || (line === "" && pending === undefined)) return;
    const continued = line.endsWith("\\");
    const part = continued ? line.slice(0, -1) : line;
    pending =
      pending === undefined
        ? { text: part, line: index + 1 }
        : { ...pending, text: `${pending.text} ${part}` };
    if (continued) return;
    const match = /^([A-Za-z]+)\s*(.*)$/s.exec(pending.text.trim());
    if (match === null) throw new Error(`line ${pending.line}: not an instruction: ${pending.text}`);
    instructions.push({
      keyword: (match[1] ?? "").toUpperCase(),
      args: (match[2] ?? "").trim(),
      line: pending.line,
    });
    pending = undefined;
  });
  if (pending !== undefined) throw new Error(`line ${pending.line}: continuation at end of file`);
  return instructions;
}

function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  for (const instruction of parseInstructions(text)) {
    if (instruction.keyword === "FROM") {
      const words = instruction.args.split(/\s+/).filter((word) => !word.startsWith("--"));
      const [image, as, name] = words;
      if (image === undefined || (as !== undefined && (as.toUpperCase() !== "AS" || name === undefined))) {
        throw new Error(`line ${instruction.line}: FROM image [AS name]`);
      }
      stages.push({ index: stages.length, image, name, instructions: [] });
      continue;
    }
    const stage = stages.at(-1);
    if (stage === undefined) {
      if (instruction.keyword === "ARG") continue;
      throw new Error(`line ${instruction.line}: ${instruction.keyword} before FROM`);
    }
    stage.instructions.push(instruction);
  }
  return stages;
}

/** Leading `--name=value` flags, then the remaining words. */
function flagsAndWords(args: string): { flags: Map<string, string>; words: string[] } {
  const flags = new Map<string, string>();
  const words = args.split(/\s+/).filter((word) => word !== "");
  while (words[0]?.startsWith("--")) {
    const [name, ...value] = (words.shift() ?? "").slice(2).split("=");
    flags.set(name ?? "", value.join("="));
  }
  return { flags, words };
}

/** KEY=value pairs (values optionally double-quoted), as in ENV and LABEL. */
function keyValues(args: string): Map<string, string> {
  const pairs = new Map<string, string>();
  const pattern = /([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|\S*)/g;
  for (const match of args.matchAll(pattern)) {
    const value = match[2] ?? "";
    pairs.set(match[1] ?? "", value.startsWith('"') ? (JSON.parse(value) as string) : value);
  }
  return pairs;
}

/** ENTRYPOINT / CMD in exec (JSON) form; undefined for the shell form. */
function execForm(args: string): string[] | undefined {
  if (!args.startsWith("[")) return undefined;
  const value: unknown = JSON.parse(args);
  return Array.isArray(value) && value.every((item) => typeof item === "string") ? value : undefined;
}

/** The major version of Node an image reference names: node:24-…, …/nodejs24-debian12. */
function nodeMajorOf(image: string): number | undefined {
  const [reference = ""] = image.split("@");
  const slash = reference.lastIndexOf("/");
  const last = reference.slice(slash + 1);
  const [repository = "", tag = ""] = last.split(":");
  if (repository === "node") return /^(\d+)/.test(tag) ? Number(/^(\d+)/.exec(tag)?.[1]) : undefined;
  const distroless = /^nodejs(\d+)(?:-|$)/.exec(repository);
  return distroless === null ? undefined : Number(distroless[1]);
}

/** A tag other than latest, and a major version in the tag or the image name. */
function pinsMajorVersion(image: string): boolean {
  const [reference = "", digest] = image.split("@");
  const last = reference.slice(reference.lastIndexOf("/") + 1);
  const tag = last.includes(":") ? last.slice(last.indexOf(":") + 1) : undefined;
  if (tag === undefined && digest === undefined) return false;
  if (tag === "latest") return false;
  return nodeMajorOf(image) !== undefined || /^v?\d+/.test(tag ?? "");
}

function all(stage: Stage, keyword: string): Instruction[] {
  return stage.instructions.filter((instruction) => instruction.keyword === keyword);
}

function lastOf(stage: Stage, keyword: string): Instruction | undefined {
  return all(stage, keyword).at(-1);
}

function workdirOf(stage: Stage): string {
  return lastOf(stage, "WORKDIR")?.args ?? "/";
}

function stageNamed(stages: readonly Stage[], reference: string): Stage | undefined {
  return stages.find((stage) => stage.name === reference || String(stage.index) === reference);
}

interface Copy {
  readonly from: string | undefined;
  readonly sources: string[];
  /** Absolute, against the stage's WORKDIR. */
  readonly destination: string;
  /** Written as a directory (trailing slash), or several sources: files land inside it. */
  readonly intoDirectory: boolean;
}

function copiesOf(stage: Stage): Copy[] {
  let workdir = "/";
  const copies: Copy[] = [];
  for (const instruction of stage.instructions) {
    if (instruction.keyword === "WORKDIR") workdir = posix.resolve(workdir, instruction.args);
    if (instruction.keyword !== "COPY") continue;
    const { flags, words } = flagsAndWords(instruction.args);
    const destination = words.at(-1) ?? "";
    const sources = words.slice(0, -1).map((source) => source.replace(/\/$/, ""));
    copies.push({
      from: flags.get("from"),
      sources,
      destination: posix.resolve(workdir, destination),
      intoDirectory: destination.endsWith("/") || sources.length > 1,
    });
  }
  return copies;
}

/** Where a repository file lands through the final stage's context COPYs, if it does. */
function landingOf(copies: readonly Copy[], file: string): string | undefined {
  for (const copy of copies.filter((entry) => entry.from === undefined)) {
    for (const source of copy.sources) {
      if (file === source) {
        return copy.intoDirectory ? posix.join(copy.destination, posix.basename(file)) : copy.destination;
      }
      if (file.startsWith(`${source}/`)) return posix.join(copy.destination, posix.relative(source, file));
    }
  }
  return undefined;
}

const dockerfiles = Object.fromEntries(
  Object.entries(DOCKERFILES).map(([role, path]) => [role, parseDockerfile(read(path))]),
) as Record<keyof typeof DOCKERFILES, Stage[]>;

// --- .dockerignore with Docker's rules ----------------------------------------------------------

interface IgnoreRule {
  readonly pattern: RegExp;
  readonly exclusion: boolean;
}

function globToRegExp(glob: string): RegExp {
  let out = "";
  for (let index = 0; index < glob.length; index++) {
    const char = glob[index] ?? "";
    if (char === "*" && glob[index + 1] === "*") {
      index++;
      if (glob[index + 1] === "/") {
        index++;
        out += "(?:.*/)?";
      } else out += ".*";
    } else if (char === "*") out += "[^/]*";
    else if (char === "?") out += "[^/]";
    else if (char === "[") {
      const end = glob.indexOf("]", index);
      out += glob.slice(index, end + 1);
      index = end;
    } else if (char === "\\") {
      index++;
      out += (glob[index] ?? "").replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    } else out += char.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  }
  return new RegExp(`^${out}$`);
}

function parseDockerignore(text: string): IgnoreRule[] {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => {
      const exclusion = line.startsWith("!");
      const glob = posix.normalize((exclusion ? line.slice(1) : line).trim()).replace(/^\/+/, "");
      return { pattern: globToRegExp(glob), exclusion };
    });
}

/** In the build context? A rule applies to a path or any folder above it; the last one that applies wins. */
function inContext(rules: readonly IgnoreRule[], path: string): boolean {
  const parts = path.split("/");
  const candidates = parts.map((_, index) => parts.slice(0, index + 1).join("/"));
  let excluded = false;
  for (const rule of rules) {
    if (candidates.some((candidate) => rule.pattern.test(candidate))) excluded = !rule.exclusion;
  }
  return !excluded;
}

const ignoreRules = parseDockerignore(read(".dockerignore"));

let filesCache: string[] | undefined;
/** Repository files, relative, without the folders that are excluded wholesale (checked on their own). */
function repositoryFiles(): string[] {
  filesCache ??= walk("");
  return filesCache;
}

function walk(directory: string): string[] {
  const entries = readdirSync(new URL(directory === "" ? "." : `${directory}/`, ROOT), {
    withFileTypes: true,
  });
  return entries.flatMap((entry) => {
    const path = directory === "" ? entry.name : `${directory}/${entry.name}`;
    if (entry.isDirectory()) {
      return ["node_modules", ".git", "dist"].includes(entry.name) ? [] : walk(path);
    }
    return entry.isFile() ? [path] : [];
  });
}

let programCache: ts.Program | undefined;
/** What `tsc -p tsconfig.build.json` reads, as the compiler resolves it (parsed, not type-checked). */
function buildProgram(): ts.Program {
  programCache ??= createBuildProgram();
  return programCache;
}

function createBuildProgram(): ts.Program {
  const configPath = new URL("tsconfig.build.json", ROOT).pathname;
  const config = ts.getParsedCommandLineOfConfigFile(configPath, undefined, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (diagnostic) => {
      throw new Error(ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n"));
    },
  });
  if (config === undefined) throw new Error("tsconfig.build.json could not be read");
  return ts.createProgram({ rootNames: config.fileNames, options: config.options });
}

const rootPath = new URL(".", ROOT).pathname;

// --- the images ---------------------------------------------------------------------------------

describe.each(Object.keys(DOCKERFILES) as (keyof typeof DOCKERFILES)[])("%s image", (role) => {
  const stages = dockerfiles[role];
  const final = stages.at(-1) as Stage;

  it("builds in stages from pinned Node 24 images", () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const stage of stages) {
      if (stageNamed(stages.slice(0, stage.index), stage.image) !== undefined) continue;
      expect(pinsMajorVersion(stage.image), `FROM ${stage.image}`).toBe(true);
      const major = nodeMajorOf(stage.image);
      expect(major, `FROM ${stage.image} is not a Node image`).toBeDefined();
      expect(major, `FROM ${stage.image}`).toBe(NODE_MAJOR);
    }
    expect(nodeMajorOf(final.image)).toBe(NODE_MAJOR);
  });

  it("runs as the numeric non-root user the webhook gives the sidecar", () => {
    const user = lastOf(final, "USER")?.args;
    expect(user, "the final stage sets USER").toMatch(/^[1-9][0-9]*(:[1-9][0-9]*)?$/);
    const [uid, gid] = (user ?? "").split(":");
    expect(Number(uid)).toBe(SIDECAR_USER);
    if (gid !== undefined) expect(Number(gid)).toBe(SIDECAR_USER);
  });

  it("has no HEALTHCHECK (Kubernetes probes the admin port)", () => {
    for (const stage of stages) expect(all(stage, "HEALTHCHECK")).toEqual([]);
  });

  it("copies node_modules only from a production-only install", () => {
    const copies = copiesOf(final).filter((copy) =>
      copy.sources.some((source) => /node_modules/.test(source)),
    );
    expect(copies.length, "the final stage copies node_modules").toBe(1);
    for (const copy of copies) {
      expect(copy.from, "node_modules come from another stage, never the build context").toBeDefined();
      const source = stageNamed(stages, copy.from ?? "");
      expect(source, `stage ${copy.from}`).toBeDefined();
      const runs = all(source as Stage, "RUN").map((run) => run.args);
      const installs = runs.filter((run) => /\bnpm (ci|install|i)\b/.test(run));
      const production = (run: string) =>
        /\bnpm (ci|install|i)\b[^&;|]*--(omit=dev|production)\b/.test(run) ||
        /\bnpm prune\b[^&;|]*--(omit=dev|production)\b/.test(run);
      expect(runs.some(production), `stage ${copy.from} installs --omit=dev or prunes`).toBe(true);
      const lastInstall = installs.at(-1);
      expect(lastInstall !== undefined && production(lastInstall), `last install of ${copy.from}`).toBe(true);
    }
  });

  it("installs without lifecycle scripts: `prepare` runs tsc, which is not there yet (or at all)", () => {
    expect(packageJson.scripts.prepare).toBeDefined();
    for (const stage of stages) {
      for (const run of all(stage, "RUN").filter((entry) => /\bnpm (ci|install|i)\b/.test(entry.args))) {
        expect(run.args, `line ${run.line}`).toMatch(/--ignore-scripts\b/);
      }
    }
  });

  it("needs no install script of a production dependency (they are skipped)", () => {
    const lock = JSON.parse(read("package-lock.json")) as {
      packages: Record<string, { dev?: boolean; hasInstallScript?: boolean }>;
    };
    const scripted = Object.entries(lock.packages)
      .filter(([path, entry]) => path !== "" && entry.dev !== true && entry.hasInstallScript === true)
      .map(([path]) => path);
    expect(scripted).toEqual([]);
  });

  it("copies no devDependency into the final stage", () => {
    for (const copy of copiesOf(final)) {
      for (const path of [...copy.sources, copy.destination]) {
        for (const name of DEV_DEPENDENCIES) expect(path, `COPY ${path}`).not.toContain(name);
      }
    }
  });

  it("starts the custody CLI in exec form, laid out as bin/custody.mjs expects", () => {
    const entrypoint = execForm(lastOf(final, "ENTRYPOINT")?.args ?? "");
    const cmd = execForm(lastOf(final, "CMD")?.args ?? "");
    expect(entrypoint, "ENTRYPOINT in exec form").toBeDefined();
    expect(cmd, "CMD in exec form").toBeDefined();
    const [node, script, ...rest] = entrypoint ?? [];
    expect(posix.basename(node ?? "")).toBe("node");
    expect(posix.isAbsolute(node ?? "")).toBe(true);
    expect(rest).toEqual([]);
    expect(script).toMatch(/^\/.*\/bin\/custody\.mjs$/);
    const app = posix.dirname(posix.dirname(script ?? ""));
    expect(cmd).toEqual([role]);

    // bin/custody.mjs loads ../dist/cli/src/main.js; dist/ is ESM, so package.json ("type":
    // "module") must sit above it; node_modules next to them.
    const copies = copiesOf(final);
    expect(landingOf(copies, "bin/custody.mjs"), "bin/custody.mjs is the ENTRYPOINT's script").toBe(script);
    expect(landingOf(copies, "package.json"), "package.json above dist/").toBe(
      posix.join(app, "package.json"),
    );

    const distCopy = copies.find(
      (copy) => copy.from !== undefined && copy.destination === posix.join(app, "dist"),
    );
    expect(distCopy, "dist/ copied from the build stage into the app directory").toBeDefined();
    const build = stageNamed(stages, distCopy?.from ?? "") as Stage;
    const outDir = (JSON.parse(read("tsconfig.build.json")) as { compilerOptions: { outDir: string } })
      .compilerOptions.outDir;
    expect(distCopy?.sources).toEqual([posix.join(workdirOf(build), outDir)]);
    expect(all(build, "RUN").some((run) => /\bnpm run build\b/.test(run.args))).toBe(true);

    const modules = copies.find((copy) => copy.sources.some((source) => source.endsWith("node_modules")));
    expect(modules?.destination).toBe(posix.join(app, "node_modules"));
  });

  it("runs in production mode, spooling to the /tmp the webhook mounts", () => {
    const env = new Map(all(final, "ENV").flatMap((instruction) => [...keyValues(instruction.args)]));
    expect(env.get("NODE_ENV")).toBe("production");
    expect(env.get("TMPDIR")).toBe(injectedTmpMount());
  });

  it("carries the OCI labels", () => {
    const labels = new Map(all(final, "LABEL").flatMap((instruction) => [...keyValues(instruction.args)]));
    expect(labels.get("org.opencontainers.image.licenses")).toBe(packageJson.license);
    expect(labels.get("org.opencontainers.image.licenses")).toBe("Apache-2.0");
    expect(labels.get("org.opencontainers.image.source")).toMatch(/^https:\/\//);
    expect(labels.get("org.opencontainers.image.title")).toBe(`custody-${role}`);
    expect(labels.get("org.opencontainers.image.description")?.length).toBeGreaterThan(10);
  });

  it("leaves the app directory to root: COPY creates it, WORKDIR only after", () => {
    // The base image's user is nonroot already; a WORKDIR that creates the directory makes it theirs.
    const keywords = final.instructions.map((instruction) => instruction.keyword);
    const lastCopy = keywords.lastIndexOf("COPY");
    expect(keywords.slice(0, lastCopy)).not.toContain("WORKDIR");
    for (const copy of all(final, "COPY")) expect(copy.args).not.toMatch(/--chown|--chmod/);
  });

  it("writes nothing at build time in the runtime stage (distroless: no shell)", () => {
    expect(all(final, "RUN")).toEqual([]);
    expect(all(final, "VOLUME")).toEqual([]);
  });

  it("copies every source file the TypeScript build reads into the build stage", () => {
    const build = stages.find((stage) => all(stage, "RUN").some((run) => /\bnpm run build\b/.test(run.args)));
    expect(build).toBeDefined();
    const sources = copiesOf(build as Stage)
      .filter((copy) => copy.from === undefined)
      .flatMap((copy) => copy.sources);
    for (const file of ["package.json", "package-lock.json", "tsconfig.json", "tsconfig.build.json"]) {
      expect(sources, file).toContain(file);
    }
    for (const file of programFiles()) {
      expect(
        sources.some((source) => file === source || file.startsWith(`${source.replace(/\/$/, "")}/`)),
        `${file} is compiled but not copied into the build stage`,
      ).toBe(true);
    }
  });
});

describe("the two images", () => {
  it("differ only in what they run and what they are called", () => {
    const significant = (stages: Stage[]) =>
      stages.map((stage) => ({
        image: stage.image,
        name: stage.name,
        instructions: stage.instructions
          .filter((instruction) => !["CMD", "LABEL"].includes(instruction.keyword))
          .map((instruction) => `${instruction.keyword} ${instruction.args}`),
      }));
    expect(significant(dockerfiles.sidecar)).toEqual(significant(dockerfiles.operator));
  });

  it("the sidecar's CMD is the args the injection webhook gives the container, with no command", () => {
    const container = injectedSidecar("cart");
    expect(container.command).toBeUndefined();
    const cmd = execForm(lastOf(dockerfiles.sidecar.at(-1) as Stage, "CMD")?.args ?? "");
    expect(container.args).toEqual(cmd);
  });

  it("are the images the operator's defaults name", () => {
    const repository = DEFAULT_INJECTION_SETTINGS.image.replace(/:[^/:]*$/, "");
    expect(posix.basename(repository)).toBe("custody-sidecar");
  });

  it("each command they run is a command of the CLI", async () => {
    const { main } = await import("../../cli/src/main.js");
    for (const role of Object.keys(DOCKERFILES) as (keyof typeof DOCKERFILES)[]) {
      const cmd = execForm(lastOf(dockerfiles[role].at(-1) as Stage, "CMD")?.args ?? "") ?? [];
      let out = "";
      const code = await main([...cmd, "--help"], {
        stdout: (text: string) => {
          out += text;
        },
        stderr: () => undefined,
      });
      expect(code, `custody ${cmd.join(" ")} --help`).toBe(0);
      expect(out).toContain(`custody ${role}`);
    }
  });
});

describe("the init image (Dockerfile.init)", () => {
  const stages = parseDockerfile(read("Dockerfile.init"));
  const [stage] = stages as [Stage];

  it("is one stage on Debian 12's slim image, as the other images' runtimes", () => {
    expect(stages).toHaveLength(1);
    // A named Debian release is pinned to that release (bookworm is Debian 12), never latest.
    expect(stage.image).toBe("debian:bookworm-slim");
  });

  it("installs iptables without recommends, and leaves no apt lists behind, in one layer", () => {
    const runs = all(stage, "RUN");
    expect(runs).toHaveLength(1);
    const run = runs[0]?.args ?? "";
    const steps = run.split("&&").map((step) => step.trim());
    expect(steps[0]).toBe("apt-get update");
    const install = steps.find((step) => /\bapt-get install\b/.test(step)) ?? "";
    expect(install).toMatch(/--no-install-recommends/);
    expect(install).toMatch(/(^|\s)-y(\s|$)/);
    // Nothing but iptables: no shell tools, no curl, nothing the rules do not need.
    const packages = install
      .split(/\s+/)
      .slice(install.split(/\s+/).indexOf("install") + 1)
      .filter((word) => !word.startsWith("-"));
    expect(packages).toEqual(["iptables"]);
    expect(steps.at(-1)).toBe("rm -rf /var/lib/apt/lists/*");
  });

  it("takes nothing from the build context and runs as root, bounded by the webhook instead", () => {
    expect(all(stage, "COPY")).toEqual([]);
    expect(all(stage, "ADD")).toEqual([]);
    expect(all(stage, "USER")).toEqual([]);
    expect(all(stage, "HEALTHCHECK")).toEqual([]);
    expect(all(stage, "VOLUME")).toEqual([]);
    const context = captureInitContainer("", { image: "x", imagePullPolicy: "IfNotPresent" })
      .securityContext as Record<string, unknown>;
    expect(context).toMatchObject({
      runAsUser: 0,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { add: ["NET_ADMIN", "NET_RAW"], drop: ["ALL"] },
    });
  });

  it("has what the webhook's command runs: /bin/sh, iptables-restore and ip6tables-restore (package iptables)", () => {
    const container = captureInitContainer("", { image: "x", imagePullPolicy: "IfNotPresent" });
    expect(container.command).toEqual(["/bin/sh", "-c", CAPTURE_SCRIPT]);
    const tools = [...CAPTURE_SCRIPT.matchAll(/\| (\S+)/g)].map((match) => match[1]);
    expect(tools).toEqual(["iptables-restore", "ip6tables-restore"]);
  });

  it("carries the OCI labels, and is the image the operator's default names", () => {
    const labels = new Map(all(stage, "LABEL").flatMap((instruction) => [...keyValues(instruction.args)]));
    expect(labels.get("org.opencontainers.image.title")).toBe("custody-init");
    expect(labels.get("org.opencontainers.image.licenses")).toBe(packageJson.license);
    expect(labels.get("org.opencontainers.image.source")).toMatch(/^https:\/\//);
    expect(labels.get("org.opencontainers.image.description")?.length).toBeGreaterThan(10);
    const repository = DEFAULT_INJECTION_SETTINGS.initImage.replace(/:[^/:]*$/, "");
    expect(posix.basename(repository)).toBe("custody-init");
  });
});

// --- the build context --------------------------------------------------------------------------

/** The repository's files in the build, relative. */
function programFiles(): string[] {
  return buildProgram()
    .getSourceFiles()
    .map((file) => file.fileName)
    .filter((file) => !file.includes("/node_modules/"))
    .map((file) => posix.relative(rootPath, file));
}

describe(".dockerignore", () => {
  it("keeps dependencies, build output, VCS data, state, keys and tests out", () => {
    for (const path of [
      "node_modules/typescript/package.json",
      "cli/node_modules/x/index.js",
      ".git/HEAD",
      "dist/cli/src/main.js",
      "bench/out/chain.json",
      "examples/shop/.custody/ca/ca.key",
      "operator/src/.custody/state.json",
      "pki/CA/ca.key",
      "operator/src/webhook/server.key",
      "sidecar/src/fixture.pem",
      "crds/src/leaf.crt",
      "cli/test/main.test.ts",
      "operator/src/webhook/inject.test.ts",
      "e2e/kind/run.sh",
      "charts/custody/values.yaml",
      "examples/shop/apps/shop.mjs",
      ".env",
    ]) {
      expect(inContext(ignoreRules, path), path).toBe(false);
    }
  });

  it("lets in what the Dockerfiles copy from the context", () => {
    for (const stages of Object.values(dockerfiles)) {
      for (const stage of stages) {
        for (const copy of copiesOf(stage).filter((entry) => entry.from === undefined)) {
          for (const source of copy.sources) {
            const files = repositoryFiles().filter(
              (file) => file === source || file.startsWith(`${source}/`),
            );
            expect(files.length, `COPY ${source}: nothing in the repository`).toBeGreaterThan(0);
            expect(
              files.filter((file) => inContext(ignoreRules, file)).length,
              `COPY ${source}: excluded by .dockerignore`,
            ).toBeGreaterThan(0);
          }
        }
      }
    }
  });

  it("lets in every file the TypeScript build reads", () => {
    const files = programFiles();
    expect(files.length).toBeGreaterThan(50);
    for (const file of files) expect(inContext(ignoreRules, file), file).toBe(true);
  });

  it("lets in nothing else", () => {
    const allowed =
      /^(package\.json|package-lock\.json|tsconfig(\.build)?\.json|bin\/[^/]+|(cli|crds|pki|operator|sidecar|local)\/src\/.+)$/;
    for (const file of repositoryFiles().filter((path) => inContext(ignoreRules, path))) {
      expect(file, `${file} is in the build context`).toMatch(allowed);
      expect(file).not.toMatch(/\.(key|pem|crt|csr)$|(^|\/)test\//);
    }
  });

  it("every package the built code imports at run time is a production dependency", () => {
    const production = new Set(Object.keys(packageJson.dependencies));
    const program = buildProgram();
    for (const file of program.getSourceFiles()) {
      if (file.fileName.includes("/node_modules/")) continue;
      const specifiers: string[] = [];
      const visit = (node: ts.Node) => {
        if (ts.isImportDeclaration(node) && !node.importClause?.isTypeOnly) {
          specifiers.push((node.moduleSpecifier as ts.StringLiteral).text);
        } else if (ts.isExportDeclaration(node) && node.moduleSpecifier !== undefined && !node.isTypeOnly) {
          specifiers.push((node.moduleSpecifier as ts.StringLiteral).text);
        } else if (
          ts.isCallExpression(node) &&
          node.expression.kind === ts.SyntaxKind.ImportKeyword &&
          node.arguments[0] !== undefined &&
          ts.isStringLiteral(node.arguments[0])
        ) {
          specifiers.push(node.arguments[0].text);
        }
        ts.forEachChild(node, visit);
      };
      visit(file);
      for (const specifier of specifiers) {
        if (specifier.startsWith(".") || specifier.startsWith("node:")) continue;
        const name = specifier.startsWith("@")
          ? specifier.split("/").slice(0, 2).join("/")
          : (specifier.split("/")[0] ?? "");
        expect(production.has(name), `${posix.relative(rootPath, file.fileName)} imports ${specifier}`).toBe(
          true,
        );
      }
    }
  });
});

// --- the kind suite -----------------------------------------------------------------------------

interface K8sObject {
  kind: string;
  metadata: { name: string; namespace?: string; annotations?: Record<string, string> };
  spec?: Record<string, unknown>;
  [key: string]: unknown;
}

const shopObjects = parseYamlDocuments(read("e2e/kind/shop.yaml"), "e2e/kind/shop.yaml") as K8sObject[];
const identities = parseManifests(read("examples/shop/identities.yaml")).filter(
  (manifest): manifest is ServiceIdentity => manifest.kind === "ServiceIdentity",
);

function ofKind(kind: string): K8sObject[] {
  return shopObjects.filter((object) => object.kind === kind);
}

interface PodTemplate {
  metadata: { labels: Record<string, string>; annotations: Record<string, string> };
  spec: {
    serviceAccountName: string;
    securityContext?: Record<string, unknown>;
    containers: Record<string, unknown>[];
    initContainers?: Record<string, unknown>[];
    volumes?: Record<string, unknown>[];
  };
}

function templateOf(name: string): PodTemplate {
  const deployment = ofKind("Deployment").find((object) => object.metadata.name === name);
  if (deployment === undefined) throw new Error(`no Deployment ${name} in shop.yaml`);
  return (deployment.spec as { template: PodTemplate }).template;
}

/** The pod the API server would store: the Deployment's template through the injection webhook's patch. */
function injectedPod(name: string): PodTemplate {
  const template = templateOf(name);
  const pod = {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { ...template.metadata, namespace: "shop" },
    spec: template.spec,
  };
  const decision = injectionPatch(
    structuredClone(pod),
    "shop",
    {
      identity: (namespace, identity) =>
        identities.find(
          (entry) => entry.metadata.namespace === namespace && entry.metadata.name === identity,
        ),
    },
    DEFAULT_INJECTION_SETTINGS,
  );
  if (!decision.allowed) throw new Error(`the webhook refuses ${name}: ${decision.message}`);
  expect(decision.reason).toBe("injected");
  return applyPatch(
    structuredClone(pod) as unknown as PodTemplate,
    JSON.parse(JSON.stringify(decision.patch)) as Operation[],
    true,
    false,
  ).newDocument;
}

function injectedSidecar(name: string): Record<string, unknown> {
  const pod = injectedPod(name);
  const container = [...(pod.spec.initContainers ?? []), ...pod.spec.containers].find(
    (entry) => entry.name === SIDECAR_CONTAINER_NAME,
  );
  if (container === undefined) throw new Error("no sidecar injected");
  return container;
}

function injectedTmpMount(): string | undefined {
  const mounts = injectedSidecar("cart").volumeMounts as { name: string; mountPath: string }[];
  return mounts.find((mount) => mount.name === VOLUME_TMP)?.mountPath;
}

/** The parts of the restricted Pod Security Standard an injected pod could get wrong. */
function restrictedViolations(pod: PodTemplate): string[] {
  const problems: string[] = [];
  const podContext = pod.spec.securityContext ?? {};
  const allowedVolumes = [
    "configMap",
    "secret",
    "projected",
    "emptyDir",
    "downwardAPI",
    "persistentVolumeClaim",
    "csi",
    "ephemeral",
  ];
  for (const volume of pod.spec.volumes ?? []) {
    const type = Object.keys(volume).find((key) => key !== "name");
    if (type === undefined || !allowedVolumes.includes(type))
      problems.push(`volume ${String(volume.name)}: ${type}`);
  }
  for (const container of pod.spec.containers) {
    const context = (container.securityContext ?? {}) as Record<string, unknown>;
    const name = String(container.name);
    if (context.privileged === true) problems.push(`${name}: privileged`);
    if (context.allowPrivilegeEscalation !== false) problems.push(`${name}: allowPrivilegeEscalation`);
    const drop = ((context.capabilities as { drop?: string[] } | undefined)?.drop ?? []) as string[];
    if (!drop.includes("ALL")) problems.push(`${name}: capabilities.drop ALL`);
    const add = ((context.capabilities as { add?: string[] } | undefined)?.add ?? []) as string[];
    if (add.some((capability) => capability !== "NET_BIND_SERVICE"))
      problems.push(`${name}: capabilities.add`);
    if ((context.runAsNonRoot ?? podContext.runAsNonRoot) !== true) problems.push(`${name}: runAsNonRoot`);
    if ((context.runAsUser ?? podContext.runAsUser) === 0) problems.push(`${name}: runAsUser 0`);
    const seccomp = (context.seccompProfile ?? podContext.seccompProfile) as { type?: string } | undefined;
    if (!["RuntimeDefault", "Localhost"].includes(seccomp?.type ?? ""))
      problems.push(`${name}: seccompProfile`);
    for (const port of (container.ports ?? []) as { hostPort?: number }[]) {
      if (port.hostPort !== undefined) problems.push(`${name}: hostPort`);
    }
  }
  return problems;
}

describe("e2e/kind", () => {
  const services = ["shop", "cart", "payments"];

  it("deploys one ServiceAccount, Service and Deployment per identity of examples/shop", () => {
    expect(identities.map((identity) => identity.metadata.name).sort()).toEqual([...services].sort());
    for (const kind of ["ServiceAccount", "Service", "Deployment"]) {
      expect(
        ofKind(kind)
          .map((object) => object.metadata.name)
          .sort(),
        kind,
      ).toEqual([...services].sort());
      for (const object of ofKind(kind)) expect(object.metadata.namespace).toBe("shop");
    }
  });

  it("points each Service at the sidecar's inbound port, where the registry locates the service", () => {
    const templatePort = Number(DEFAULT_LOCATION_TEMPLATE.split(":").at(-1));
    expect(templatePort).toBe(INBOUND_PORT);
    expect(DEFAULT_LOCATION_TEMPLATE.startsWith("{name}.{namespace}.svc:")).toBe(true);
    for (const service of ofKind("Service")) {
      const spec = service.spec as {
        selector: Record<string, string>;
        ports: { port: number; targetPort: number }[];
      };
      expect(spec.ports).toHaveLength(1);
      expect(spec.ports[0]?.port).toBe(INBOUND_PORT);
      expect(spec.ports[0]?.targetPort).toBe(INBOUND_PORT);
      expect(templateOf(service.metadata.name).metadata.labels).toMatchObject(spec.selector);
    }
  });

  it.each(["shop", "cart", "payments"])(
    "%s: admitted by the webhook, within the restricted Pod Security Standard",
    (name) => {
      const template = templateOf(name);
      expect(template.metadata.annotations["custody.dev/inject"]).toBe("true");
      expect(template.spec.serviceAccountName).toBe(name);
      const app = template.spec.containers[0] as {
        command: string[];
        env: { name: string; value: string }[];
        image: string;
      };
      expect(app.env.find((variable) => variable.name === "PORT")?.value).toBe(
        template.metadata.annotations["custody.dev/app-port"],
      );
      expect(nodeMajorOf(app.image)).toBe(NODE_MAJOR);
      expect(app.command).toEqual(["node", `/apps/${name}.mjs`]);
      expect(read(`examples/shop/apps/${name}.mjs`)).toContain("serve(");

      const pod = injectedPod(name);
      expect(pod.spec.containers.map((container) => container.name)).toEqual(["app"]);
      expect(pod.spec.initContainers?.map((container) => container.name)).toEqual([SIDECAR_CONTAINER_NAME]);
      const sidecar = injectedSidecar(name);
      expect((sidecar.ports as { containerPort: number }[]).map((port) => port.containerPort)).toContain(
        INBOUND_PORT,
      );
      expect(restrictedViolations(pod)).toEqual([]);
    },
  );

  it("mounts the apps where the attacker script is run from", () => {
    expect(ATTACKER_SCRIPT.startsWith("/apps/")).toBe(true);
    expect(read(`e2e/kind/apps/${posix.basename(ATTACKER_SCRIPT)}`)).toContain('from "./mesh.mjs"');
    const mounts = templateOf("cart").spec.containers[0]?.volumeMounts as { mountPath: string }[];
    expect(mounts.map((mount) => mount.mountPath)).toContain("/apps");
  });

  it("run.sh is valid bash that builds both images and always cleans up", () => {
    execFileSync("bash", ["-n", new URL("e2e/kind/run.sh", ROOT).pathname]);
    const script = read("e2e/kind/run.sh");
    expect(script).toContain("set -euo pipefail");
    expect(script).toMatch(/trap cleanup EXIT/);
    expect(script).toContain("docker build -f Dockerfile.operator");
    expect(script).toContain("docker build -f Dockerfile.sidecar");
    expect(script).toContain("KEEP_CLUSTER");
    expect(script).toContain("--config e2e/kind/kind-config.yaml");
  });

  it("run.sh's chart values are values the chart accepts (values.schema.json)", () => {
    const script = read("e2e/kind/run.sh");
    expect(script).toContain(`TAG="\${IMAGE_TAG:-e2e}"`);
    expect(script).toContain(`OPERATOR_IMAGE="custody-operator:\${TAG}"`);
    expect(script).toContain(`SIDECAR_IMAGE="custody-sidecar:\${TAG}"`);
    const expand = (text: string) =>
      text
        .replaceAll(`\${OPERATOR_IMAGE%%:*}`, "custody-operator")
        .replaceAll(`\${SIDECAR_IMAGE%%:*}`, "custody-sidecar")
        .replaceAll(`\${TAG}`, "e2e");
    const settings = [...script.matchAll(/--set "([^"=]+)=([^"]*)"/g)].map(
      (match) => [match[1] ?? "", expand(match[2] ?? "")] as const,
    );
    expect(settings.map(([key]) => key)).toEqual([
      "operator.image.repository",
      "operator.image.tag",
      "operator.image.pullPolicy",
      "sidecar.image.repository",
      "sidecar.image.tag",
      "operator.trustedIssuers.existingConfigMap",
    ]);
    const values = parseYamlDocuments(read("charts/custody/values.yaml"))[0] as Record<string, unknown>;
    for (const [key, value] of settings) {
      expect(value).not.toContain("$");
      const path = key.split(".");
      let target = values;
      for (const part of path.slice(0, -1)) {
        target[part] ??= {};
        target = target[part] as Record<string, unknown>;
      }
      target[path.at(-1) ?? ""] = value;
    }
    const ajv = new Ajv({ allErrors: true, strict: false });
    const validate = ajv.compile(JSON.parse(read("charts/custody/values.schema.json")) as object);
    expect(validate(values), JSON.stringify(validate.errors)).toBe(true);
    // The ConfigMap run.sh creates holds the document under the key the chart mounts by default.
    const issuersKey = ((values.operator as Record<string, unknown>).trustedIssuers as { key: string }).key;
    expect(script).toContain(`create configmap custody-trusted-issuers \\\n  --from-file=${issuersKey}=`);
    expect(TRUSTED_ISSUERS_FILE).toBe(issuersKey);
  });

  it("the README says Docker (an engine), kind, kubectl and helm are required, and CI does not run it", () => {
    const readme = read("e2e/kind/README.md");
    const needs = readme.slice(readme.indexOf("## What it needs"), readme.indexOf("## What it does"));
    for (const tool of ["`docker`", "`kind`", "`kubectl`", "`helm`"]) expect(needs, tool).toContain(tool);
    expect(readme).toMatch(/no Docker\s+engine/);
    expect(readme).toContain("KEEP_CLUSTER=1");
    expect(readme).toContain("make e2e-kind");
  });

  it("reads kubectl's answers: the forwarded port, the registry shards", () => {
    expect(
      forwardedPort("Forwarding from 127.0.0.1:40123 -> 15006\nForwarding from [::1]:40123 -> 15006\n"),
    ).toBe(40123);
    expect(forwardedPort("error: unable to forward")).toBeUndefined();
    const list = {
      items: [
        { metadata: { name: "custody-registry" }, data: { "registry-0.json": "zero" } },
        { metadata: { name: "custody-registry-1" }, data: { "registry-1.json": "one" } },
        { metadata: { name: "shop-apps" }, data: { "registry-0.json": "not a shard" } },
        { metadata: { name: "custody-registry-2" }, data: { "registry-0.json": "wrong key" } },
      ],
    };
    expect(registryTextsOf(list)).toEqual(["zero", "one"]);
  });
});

describe("the test's own readers", () => {
  it("parse instructions, continuations and forms as Docker does", () => {
    const stages = parseDockerfile(
      [
        "# syntax=docker/dockerfile:1",
        "ARG X=1",
        "FROM node:24-bookworm-slim AS build",
        "RUN --mount=type=cache,target=/root/.npm \\",
        "    # a comment inside",
        "    npm ci",
        'ENV A=1 B="two words" \\',
        "    C=3",
        "FROM build",
        'CMD ["x"]',
      ].join("\n"),
    );
    expect(stages.map((stage) => [stage.image, stage.name])).toEqual([
      ["node:24-bookworm-slim", "build"],
      ["build", undefined],
    ]);
    expect(stages[0]?.instructions[0]).toMatchObject({ keyword: "RUN", line: 4 });
    expect(stages[0]?.instructions[0]?.args).toMatch(/^--mount=type=cache,target=\/root\/\.npm\s+npm ci$/);
    expect([...keyValues(stages[0]?.instructions[1]?.args ?? "")]).toEqual([
      ["A", "1"],
      ["B", "two words"],
      ["C", "3"],
    ]);
    expect(execForm('["x"]')).toEqual(["x"]);
    expect(execForm("node x")).toBeUndefined();
  });

  it("tell pinned images from floating ones", () => {
    expect(pinsMajorVersion("node:24-bookworm-slim")).toBe(true);
    expect(pinsMajorVersion("gcr.io/distroless/nodejs24-debian12:nonroot")).toBe(true);
    expect(pinsMajorVersion("gcr.io/distroless/nodejs24-debian12")).toBe(false);
    expect(pinsMajorVersion("node")).toBe(false);
    expect(pinsMajorVersion("node:latest")).toBe(false);
    expect(pinsMajorVersion("node:lts-slim")).toBe(false);
    expect(pinsMajorVersion("localhost:5000/node:24")).toBe(true);
    expect(nodeMajorOf("node:22-alpine")).toBe(22);
    expect(nodeMajorOf("gcr.io/distroless/nodejs20-debian12:nonroot")).toBe(20);
    expect(nodeMajorOf("debian:12")).toBeUndefined();
  });

  it("match .dockerignore rules as Docker does", () => {
    const rules = parseDockerignore("*\n!src\n**/*.key\n!src/keep.key\n/docs/**/*.md\n");
    expect(inContext(rules, "README.md")).toBe(false);
    expect(inContext(rules, "src/a/b.ts")).toBe(true);
    expect(inContext(rules, "src/a/b.key")).toBe(false);
    expect(inContext(rules, "src/keep.key")).toBe(true);
    expect(inContext(parseDockerignore("/docs/**/*.md"), "docs/a/b/c.md")).toBe(false);
    expect(inContext(parseDockerignore("/docs/**/*.md"), "docs/c.md")).toBe(false);
    expect(inContext(parseDockerignore("/docs/**/*.md"), "docs/c.txt")).toBe(true);
  });
});
