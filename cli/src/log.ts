/** pino JSON logs on stdout: one line per event, `event` names it, never a token, key or body. */
import { type Logger, pino } from "pino";

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function createLogger(component: string, level: LogLevel = "info"): Logger {
  return pino({
    level,
    base: { component },
    // Belt and braces: a field named like a credential is never printed, whatever logs it.
    redact: {
      paths: ["access_token", "token", "privateKey", "*.access_token", "*.token"],
      censor: "[redacted]",
    },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}
