/**
 * Base class for every error Custody reports on purpose. `code` is stable and machine-readable
 * (tests and scripts match on it); `message` is for people and says what to do next.
 */
export class CustodyError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Wrong command-line usage: exit status 2, like most Unix tools. */
export class UsageError extends CustodyError {
  constructor(message: string) {
    super("usage", message);
  }
}

/** One problem found in a document: where (`spec.rules[0].operation.path`) and what, in plain words. */
export interface ValidationIssue {
  readonly path: string;
  readonly message: string;
}

/** How many issues the message repeats; `issues` always carries all of them. */
const ISSUES_IN_MESSAGE = 5;

/**
 * A document (manifest, registry shard) that does not conform to the API. Every issue names the
 * field, so a person (or an operator status condition) can say exactly what to fix.
 */
export class ValidationError extends CustodyError {
  readonly issues: readonly ValidationIssue[];

  constructor(code: string, subject: string, issues: readonly ValidationIssue[]) {
    super(code, `${subject} is invalid: ${summarizeIssues(issues)}`);
    this.issues = issues;
  }
}

export function formatIssue(issue: ValidationIssue): string {
  return issue.path === "" ? issue.message : `${issue.path}: ${issue.message}`;
}

function summarizeIssues(issues: readonly ValidationIssue[]): string {
  const shown = issues.slice(0, ISSUES_IN_MESSAGE).map(formatIssue).join("; ");
  const more = issues.length - ISSUES_IN_MESSAGE;
  return more > 0 ? `${shown}; and ${more} more` : shown;
}
