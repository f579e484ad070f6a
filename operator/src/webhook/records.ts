/**
 * Reading objects the webhooks and identity delivery get from outside (admission requests, pods
 * from the API server) without trusting their shape: one definition of "a JSON object".
 */

/** `value` as a JSON object, or undefined when it is anything else (arrays included). */
export function recordOf(value: unknown): Record<string, unknown> | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}
