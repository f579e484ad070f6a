/**
 * A small aligned text table for terminals: columns padded to their widest cell, two spaces apart,
 * the header underlined. Cells are bounded (a reason string from a peer could be anything) and
 * flattened to one line so a row stays one line.
 */

export const MAX_CELL_WIDTH = 72;

/** One line, control characters removed, at most `max` characters (ellipsis when cut). */
export function cell(text: string, max = MAX_CELL_WIDTH): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: removing them is the point.
  const flat = text.replace(/[\u0000-\u001f\u007f]+/g, " ").trim();
  return flat.length <= max ? flat : `${flat.slice(0, max - 1)}…`;
}

export function renderTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const table = [header, ...rows].map((row) => header.map((_, column) => cell(row[column] ?? "")));
  const widths = header.map((_, column) => Math.max(...table.map((row) => (row[column] ?? "").length)));
  const line = (row: readonly string[]) =>
    row
      .map((text, column) => (column === row.length - 1 ? text : text.padEnd(widths[column] ?? 0)))
      .join("  ")
      .trimEnd();
  const [head, ...body] = table;
  return [line(head ?? []), widths.map((width) => "-".repeat(width)).join("  "), ...body.map(line)].join(
    "\n",
  );
}
