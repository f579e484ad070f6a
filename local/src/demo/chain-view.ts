/**
 * The happy path's chain for people: exactly what `custody token inspect --registry … --target
 * payments.shop --request "POST /pay-for-order/<id>" --body-file …` prints, so a chain looks the
 * same in the demo and in the command (sidecar/src/cli/: inspectChain decodes and verifies,
 * renderInspection draws the tree). This module is the one place the demo depends on them.
 *
 * Verified as of the moment payments received it: links live seconds, and by the time the table is
 * printed the head has expired. A dry run spends no jti, so inspecting is not a replay.
 */
import type { Registry } from "../../../crds/src/registry-schema.js";
import { sha256Base64url } from "../../../pki/src/jws.js";
import { normalizeOperation } from "../../../sidecar/src/chain/normalize.js";
import { inspectChain } from "../../../sidecar/src/cli/inspect.js";
import { renderInspection } from "../../../sidecar/src/cli/render.js";
import type { CapturedCall } from "./outcomes.js";

export async function renderCapturedChain(
  captured: CapturedCall,
  receiver: string,
  registry: Registry | undefined,
): Promise<string> {
  const inspected = await inspectChain(captured.chain, {
    registry,
    nowSeconds: captured.receivedAt,
    request: {
      receiver,
      operation: normalizeOperation("POST", captured.path),
      body: { sha256: captured.body === "" ? undefined : sha256Base64url(captured.body) },
    },
  });
  return renderInspection(inspected);
}
