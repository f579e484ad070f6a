/**
 * `custody operator --local` as a real process, killed with SIGKILL in the middle of issuing
 * certificates and started again on the same state: it converges, every identity ends up with
 * exactly one certificate ever written (none replaced, none lost), the registry carries each
 * one's key, and the token service keeps its signing keys.
 */
import { X509Certificate } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { stringify } from "yaml";
import { mergeRegistryShards, parseRegistry } from "../../crds/src/registry.js";
import { LocalStore } from "../../operator/src/store/local.js";
import { IDENTITY } from "../../operator/src/store/store.js";
import { kidOfCertificate } from "../../operator/test/support/reconcile-suite.js";
import { createCertificateAuthority, writeCertificateAuthority } from "../../pki/src/index.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import { type CliProcess, killAll, parseLogLines, startCliProcess } from "../support/process.js";

const IDENTITIES = 40;
const NS = "shop";

describe("custody operator --local, killed mid-reconcile", () => {
  let directory: { path: string; cleanup: () => Promise<void> };
  let manifests: string;
  let state: string;
  let ca: string;
  const runs: CliProcess[] = [];

  const start = async () => {
    const run = await startCliProcess(
      [
        "operator",
        "--ca",
        ca,
        "--local",
        manifests,
        "--state",
        state,
        "--token-listen",
        "127.0.0.1:0",
        "--token-admin",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--propagation-delay",
        "1s",
        "--concurrency",
        "4",
      ],
      "operator_started",
      "operator",
    );
    runs.push(run);
    return run;
  };
  const snapshot = async () => {
    const store = new LocalStore({
      manifestsDirectory: manifests,
      stateDirectory: state,
      pollIntervalMs: 60_000,
      logger: pino({ level: "silent" }),
    });
    await store.start();
    await store.close();
    return store;
  };

  beforeAll(async () => {
    directory = await temporaryDirectory();
    manifests = join(directory.path, "manifests");
    state = join(directory.path, "state");
    ca = join(directory.path, "ca");
    await mkdir(manifests);
    await writeCertificateAuthority(ca, await createCertificateAuthority({ trustDomain: "custody.local" }), {
      force: false,
    });
    const documents = Array.from({ length: IDENTITIES }, (_, index) => ({
      apiVersion: "custody.dev/v1alpha1",
      kind: "ServiceIdentity",
      metadata: {
        name: `svc-${index}`,
        namespace: NS,
        annotations: { "custody.dev/location": `127.0.0.1:${20_000 + index}` },
      },
      // RSA keys take long enough to generate that the kills land mid-issuance.
      spec: { certificate: { keyAlgorithm: index % 2 === 0 ? "RSA-2048" : "ECDSA-P256" } },
    }));
    await writeFile(
      join(manifests, "identities.yaml"),
      documents.map((document) => stringify(document)).join("---\n"),
    );
  });
  afterAll(async () => {
    await killAll();
    await directory?.cleanup();
  });

  it("converges after three SIGKILLs without writing any certificate twice", async () => {
    for (let round = 0; round < 3; round++) {
      const run = await start();
      // Kill once it has written some certificates, but (with RSA keys) not all of them.
      await vi.waitFor(
        () => {
          const issued = parseLogLines(run.lines).filter((line) => line.reason === "CertificateIssued");
          expect(issued.length).toBeGreaterThan(round);
        },
        { timeout: 30_000, interval: 20 },
      );
      await run.kill();
    }
    const last = await start();
    await vi.waitFor(
      async () => {
        const store = await snapshot();
        const ready = store
          .resources(IDENTITY)
          .filter((resource) =>
            (
              (resource.object.status as { conditions?: { type: string; status: string }[] } | undefined)
                ?.conditions ?? []
            ).some((condition) => condition.type === "Ready" && condition.status === "True"),
          );
        expect(ready).toHaveLength(IDENTITIES);
      },
      { timeout: 60_000, interval: 250 },
    );

    const store = await snapshot();
    const registry = mergeRegistryShards(
      store
        .configMaps()
        .filter((configMap) => configMap.namespace === NS)
        .flatMap((configMap) => Object.values(configMap.data))
        .map(parseRegistry),
    );
    const writes = runs
      .flatMap((run) => parseLogLines(run.lines))
      .filter((line) => line.event === "kubernetes_event" && line.reason === "CertificateIssued");
    let logged = 0;
    for (let index = 0; index < IDENTITIES; index++) {
      const name = `svc-${index}`;
      const secret = store.secret({ namespace: "custody-system", name: `custody-identity.${NS}.${name}` });
      const certificate = secret?.data["tls.crt"] ?? "";
      // Issuance is logged only once the Secret holding it is written, so a second line would be a
      // second certificate written. (A SIGKILL can lose the last buffered log lines: zero is possible.)
      const mine = writes.filter((line) => line.object === `ServiceIdentity ${NS}/${name}`);
      expect(mine.length, name).toBeLessThanOrEqual(1);
      if (mine.length === 1) {
        logged++;
        expect(String(mine[0]?.msg)).toContain(new X509Certificate(certificate).serialNumber.toLowerCase());
      }
      const service = registry.services.find((entry) => entry.id === `${name}.${NS}`);
      expect(service?.keys.map((key) => key.kid)).toEqual([kidOfCertificate(certificate)]);
    }
    expect(logged).toBeGreaterThan(IDENTITIES / 2);
    // The token service kept one set of signing keys across all four runs.
    const kids = new Set(
      runs
        .flatMap((run) => parseLogLines(run.lines))
        .flatMap((line) => (line.event === "listening" ? [line.kid] : [])),
    );
    expect(kids.size).toBe(1);
    await last.kill();
  }, 180_000);
});
