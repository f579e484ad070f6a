/**
 * Text renderings of an inspected chain, shared by `custody token inspect` and the demo: the chain
 * as a tree (e0 at the root, each element under the one it continues, as custody passed from
 * service to service), and a summary of what verification found. Pure: strings in, string out.
 * Every value was made printable and bounded by inspect.ts; nothing here prints element texts.
 */
import type { ElementVerdict, InspectedChain, InspectedElement } from "./inspect.js";

export interface RenderOptions {
  /** "Now" for relative times ("expired 2 min ago"), in seconds since the epoch; none without it. */
  readonly at?: number | undefined;
}

/** `2025-06-01T10:00:00Z`: whole seconds, as the claims carry them. */
export function formatInstant(seconds: number): string {
  const date = new Date(seconds * 1000);
  return Number.isNaN(date.getTime()) ? String(seconds) : date.toISOString().replace(".000Z", "Z");
}

export function formatSpan(seconds: number): string {
  const span = Math.abs(seconds);
  if (span < 120) return `${span} s`;
  if (span < 7_200) return `${Math.round(span / 60)} min`;
  if (span < 172_800) return `${Math.round(span / 3_600)} h`;
  return `${Math.round(span / 86_400)} days`;
}

function verdictTag(verdict: ElementVerdict): string {
  switch (verdict.status) {
    case "ok":
      return "ok";
    case "failed":
      return `FAILED ${verdict.reason}`;
    case "not_verified":
      return "not verified";
  }
}

function label(element: InspectedElement): string {
  const name = `e${element.index}`;
  const tag = `[${verdictTag(element.verdict)}]`;
  const route = `${element.issuer ?? "?"} → ${element.audience ?? "?"}`;
  switch (element.kind) {
    case "link":
      return `${name} ${route}  ${element.operation ?? "(no op)"}  ${tag}`;
    case "token":
      return `${name} initial token ${route}  ${tag}`;
    case "unreadable":
      return `${name} unreadable element (${element.bytes} bytes)  ${tag}`;
  }
}

function timeLine(element: InspectedElement, at: number | undefined): string | undefined {
  const { issuedAt, expiresAt } = element;
  if (issuedAt === undefined && expiresAt === undefined) return undefined;
  const parts = [
    issuedAt === undefined ? "no iat" : `issued ${formatInstant(issuedAt)}`,
    expiresAt === undefined ? "no exp" : `expires ${formatInstant(expiresAt)}`,
  ];
  const notes: string[] = [];
  if (issuedAt !== undefined && expiresAt !== undefined)
    notes.push(`lives ${formatSpan(expiresAt - issuedAt)}`);
  if (at !== undefined && expiresAt !== undefined) {
    notes.push(
      expiresAt < at ? `expired ${formatSpan(at - expiresAt)} ago` : `${formatSpan(expiresAt - at)} left`,
    );
  }
  return `${parts.join(", ")}${notes.length === 0 ? "" : ` (${notes.join("; ")})`}`;
}

function detailLines(element: InspectedElement, at: number | undefined): string[] {
  const lines: string[] = [];
  const { verdict } = element;
  if (verdict.status === "failed") lines.push(`✗ ${verdict.reason}: ${verdict.message}`);
  if (verdict.status === "ok" && verdict.note !== undefined) lines.push(`note: ${verdict.note}`);
  if (verdict.status === "not_verified" && verdict.message !== "no registry given") {
    lines.push(`not verified: ${verdict.message}`);
  }
  const times = timeLine(element, at);
  if (times !== undefined) lines.push(times);
  if (element.alg !== undefined || element.kid !== undefined) {
    lines.push(`alg ${element.alg ?? "?"}, kid ${element.kid ?? "?"}`);
  }
  for (const [name, value] of Object.entries(element.claims)) lines.push(`${name}: ${value}`);
  if (element.problem !== undefined) lines.push(`problem: ${element.problem}`);
  return lines;
}

/**
 * The chain as a tree, oldest first: e0 at the root, each element indented under the one it
 * continues, then its times, key and claims. Lines end with "\n".
 *
 *     e0 initial token https://issuer → custody  [ok]
 *     │  sub: shop.shop
 *     └─ e1 shop.shop → cart.shop  POST /cart/confirm  [ok]
 *        └─ e2 cart.shop → payments.shop  POST /pay-for-order/7  [ok]
 */
export function renderChain(elements: readonly InspectedElement[], options: RenderOptions = {}): string {
  const lines: string[] = [];
  for (const [depth, element] of elements.entries()) {
    const indent = "   ".repeat(depth);
    const branch = depth === 0 ? "" : `${"   ".repeat(depth - 1)}└─ `;
    lines.push(`${branch}${label(element)}`);
    const rail = depth < elements.length - 1 ? "│  " : "   ";
    for (const detail of detailLines(element, options.at)) lines.push(`${indent}${rail}${detail}`.trimEnd());
  }
  return lines.length === 0 ? "" : `${lines.join("\n")}\n`;
}

/** One line on the whole chain: what a receiver would decide, or that it was only decoded. */
export function summarizeVerification(chain: InspectedChain): string {
  const { verification } = chain;
  if (verification === undefined) return "not verified: decoded only (give --registry to verify).";
  const against = `registry generation ${verification.generation}, as of ${formatInstant(chain.at)}`;
  if (verification.ok) return `verified against ${against}: a receiver would accept this chain.`;
  const where = verification.element === undefined ? "" : ` at e${verification.element}`;
  return `verification failed against ${against}: ${verification.reason}${where}: ${verification.message}`;
}

/** Everything `custody token inspect` prints: a heading, the tree, the verdict, what was not checked. */
export function renderInspection(chain: InspectedChain): string {
  const count = chain.elements.length;
  const heading = `Custody-Chain: ${count} element${count === 1 ? "" : "s"}, ${chain.bytes} bytes`;
  const unchecked = chain.verification?.unchecked ?? [];
  return [
    `${heading}\n`,
    renderChain(chain.elements, { at: chain.at }),
    `${summarizeVerification(chain)}\n`,
    unchecked.length === 0 ? "" : `not checked: ${unchecked.join("; ")}.\n`,
  ].join("");
}
