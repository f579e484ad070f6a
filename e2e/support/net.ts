import { freeLoopbackPort } from "../../local/src/ports.js";

/**
 * A port on 127.0.0.1 that nothing listens on right now, chosen as `custody local up` chooses its
 * ports: below the kernel's ephemeral range, where no outgoing connection or listen(0) of the
 * suites running beside this one can take it before the test listens on it.
 */
export function freePort(): Promise<number> {
  return freeLoopbackPort();
}
