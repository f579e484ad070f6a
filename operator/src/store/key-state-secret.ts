/**
 * The token service's signing-key state kept in a Secret, so every operator replica signs with the
 * same keys and a restart keeps them. Optimistic concurrency comes from the Secret's
 * resourceVersion: two replicas rotating at once cannot both win.
 */
import type { KeyStateStorage } from "../issuer/signing-keys.js";
import { MANAGED_BY, MANAGED_BY_LABEL, type ObjectKey, type Store } from "./store.js";

export const SIGNING_KEYS_SECRET = "custody-issuer-signing-keys";
const DATA_KEY = "signing-keys.json";

export function secretKeyStateStorage(store: Store, key: ObjectKey): KeyStateStorage {
  return {
    name: `Secret ${key.namespace}/${key.name}`,
    async load() {
      const secret = store.secret(key) ?? (await store.readSecret(key));
      const text = secret?.data[DATA_KEY];
      if (secret === undefined || text === undefined || secret.resourceVersion === undefined)
        return undefined;
      return { text, version: secret.resourceVersion };
    },
    async save(text, version) {
      const written = await store.writeSecret({
        namespace: key.namespace,
        name: key.name,
        ...(version === undefined ? {} : { resourceVersion: version }),
        type: "Opaque",
        labels: { [MANAGED_BY_LABEL]: MANAGED_BY, "app.kubernetes.io/component": "token-service" },
        annotations: {},
        data: { [DATA_KEY]: text },
      });
      return written.resourceVersion ?? "";
    },
  };
}
