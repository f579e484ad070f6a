/** The reconcile suite against the local store: manifests in a directory, state as files. */
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pino } from "pino";
import { stringify } from "yaml";
import { createCertificateAuthority, writeCertificateAuthority } from "../../pki/src/index.js";
import { temporaryDirectory } from "../../pki/test/support.js";
import type { RunningOperator } from "../src/operator.js";
import { LocalStore } from "../src/store/local.js";
import type { ResourceKind } from "../src/store/store.js";
import { startTestOperator } from "./support/operator.js";
import { describeReconcile } from "./support/reconcile-suite.js";

describeReconcile("local store", async () => {
  const directory = await temporaryDirectory();
  const manifests = join(directory.path, "manifests");
  const state = join(directory.path, "state");
  const caDirectory = join(directory.path, "ca");
  await mkdir(manifests);
  await writeCertificateAuthority(
    caDirectory,
    await createCertificateAuthority({ trustDomain: "custody.local" }),
    { force: false },
  );
  const fileOf = (kind: string, namespace: string, name: string) =>
    join(manifests, `${kind.toLowerCase()}-${namespace}-${name}.yaml`);
  const newStore = () =>
    new LocalStore({
      manifestsDirectory: manifests,
      stateDirectory: state,
      pollIntervalMs: 200,
      logger: pino({ level: "silent" }),
    });
  let store = newStore();
  let operator: RunningOperator = await startTestOperator(store, caDirectory);
  // What a second process would read: a fresh store over the same state.
  const reader = async () => {
    const fresh = newStore();
    await fresh.start();
    await fresh.close();
    return fresh;
  };
  return {
    operator: () => operator,
    async apply(manifest) {
      const metadata = manifest.metadata as { name: string; namespace: string };
      const target = fileOf(String(manifest.kind), metadata.namespace, metadata.name);
      // Written aside and renamed into place, as editors do: the watcher never sees half a file.
      await writeFile(`${directory.path}/pending.yaml`, stringify(manifest));
      await rename(`${directory.path}/pending.yaml`, target);
      await store.reload();
    },
    async remove(kind: ResourceKind, namespace, name) {
      await rm(fileOf(kind, namespace, name));
      await store.reload();
    },
    async secret(namespace, name) {
      return (await reader()).secret({ namespace, name });
    },
    async registryTexts(namespace) {
      const fresh = await reader();
      return fresh
        .configMaps()
        .filter(
          (configMap) => configMap.namespace === namespace && configMap.name.startsWith("custody-registry"),
        )
        .flatMap((configMap) => Object.values(configMap.data));
    },
    async status(kind, namespace, name) {
      const fresh = await reader();
      return fresh.resource(kind, { namespace, name })?.object.status as Record<string, unknown> | undefined;
    },
    async restart() {
      // No orderly shutdown of the controllers: whatever was in flight is simply abandoned.
      void operator.close(0);
      store = newStore();
      operator = await startTestOperator(store, caDirectory);
    },
    async close() {
      await operator.close(0);
      await directory.cleanup();
    },
  };
});
