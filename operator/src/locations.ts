/**
 * `--locations FILE`: where each service's sidecar listens, when neither the location template nor
 * a `custody.dev/location` annotation can know it — `custody local up` assigns loopback ports and
 * writes them here. A map of service id → host:port (YAML or JSON), re-read on change; a broken
 * file is reported and the last good map kept.
 */
import type { Logger } from "pino";
import { z } from "zod";
import { CustodyError, formatIssue } from "../../crds/src/errors.js";
import { toValidationIssues } from "../../crds/src/issues.js";
import { parseYamlDocuments } from "../../crds/src/manifest.js";
import { SERVICE_ID_PATTERN } from "../../crds/src/names.js";
import { locationSchema } from "../../crds/src/registry-schema.js";
import { readBoundedFile } from "../../pki/src/files.js";
import { ChangeWatcher } from "../../pki/src/watch.js";

const MAX_LOCATIONS = 10_000;
const locationsSchema = z
  .record(
    z.string().regex(new RegExp(SERVICE_ID_PATTERN), { error: "must be a service id <name>.<namespace>" }),
    locationSchema,
  )
  .refine((map) => Object.keys(map).length <= MAX_LOCATIONS, { error: `at most ${MAX_LOCATIONS} services` });

export class LocationsError extends CustodyError {
  declare readonly code: "invalid_locations";
  constructor(message: string) {
    super("invalid_locations", message);
  }
}

export async function readLocations(path: string): Promise<ReadonlyMap<string, string>> {
  const documents = parseYamlDocuments(await readBoundedFile(path, 1024 * 1024), path);
  if (documents.length > 1) throw new LocationsError(`${path} must hold one document.`);
  const parsed = locationsSchema.safeParse(documents[0] ?? {});
  if (!parsed.success) {
    const issues = toValidationIssues(parsed.error.issues).slice(0, 3).map(formatIssue).join("; ");
    throw new LocationsError(`${path}: ${issues}.`);
  }
  return new Map(Object.entries(parsed.data));
}

/** The current map, kept current; `changed` is called after each change that took effect. */
export class LocationFile {
  #locations: ReadonlyMap<string, string> = new Map();
  #watcher: ChangeWatcher | undefined;

  static async open(
    path: string,
    options: { readonly pollIntervalMs: number; readonly logger: Logger; readonly changed: () => void },
  ): Promise<LocationFile> {
    const file = new LocationFile();
    file.#locations = await readLocations(path);
    file.#watcher = new ChangeWatcher(
      [path],
      async () => {
        const next = await readLocations(path);
        if (JSON.stringify([...next]) === JSON.stringify([...file.#locations])) return;
        file.#locations = next;
        options.logger.info(
          { event: "locations_reloaded", services: next.size },
          "service locations reloaded",
        );
        options.changed();
      },
      {
        pollIntervalMs: options.pollIntervalMs,
        onError: (error) =>
          options.logger.error(
            { event: "locations_invalid", err: error instanceof Error ? error.message : String(error) },
            "the locations file is unreadable or invalid; keeping the last good one",
          ),
      },
    );
    return file;
  }

  locationOf(serviceId: string): string | undefined {
    return this.#locations.get(serviceId);
  }

  close(): void {
    this.#watcher?.close();
  }
}
