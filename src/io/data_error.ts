/**
 * Typed errors for data files (question pairs, task test files, run folders): every message
 * names the file, and where it applies the item's 0-based index and the field at fault, so that
 * a bad file fails before any compute with a line that says where to look.
 */

/** A malformed item: `file`, item `index`, the `field` at fault ("item" for the item itself). */
export interface DataIssue {
  file: string;
  index: number;
  field: string;
  problem: string;
}

/** A file that cannot be used, or (with `strict`) a malformed item. The message names file, index and field. */
export class DataError extends Error {
  override name = "DataError";
  constructor(
    readonly file: string,
    message: string,
    readonly index?: number,
    readonly field?: string,
  ) {
    super(`${file}: ${located(message, index, field)}`);
  }
}

/** `item 3: field "input": missing`: a message with the item and field it is about, when known. */
function located(message: string, index?: number, field?: string): string {
  return `${index === undefined ? "" : `item ${index}: `}${field === undefined ? "" : `field "${field}": `}${message}`;
}

/** The line `DataError` would print for an issue. */
export function formatIssue(i: DataIssue): string {
  return new DataError(i.file, i.problem, i.index, i.field).message;
}

/** Reasons a "no usable items" message lists before it counts the rest. */
const SHOWN_ISSUES = 3;

/**
 * The error of a data file none of whose `items` items is usable: the count, then the first few
 * reasons (`item 0: field "input": missing; ...; and 4 more`), so that one line says what is wrong.
 * @param issues the file's malformed items, in file order (an empty file has none)
 */
export function noUsableItems(file: string, items: number, issues: readonly DataIssue[]): DataError {
  const shown = issues.slice(0, SHOWN_ISSUES).map((i) => located(i.problem, i.index, i.field));
  if (issues.length > SHOWN_ISSUES) shown.push(`and ${issues.length - SHOWN_ISSUES} more`);
  return new DataError(file, `no usable {input, answer} items (${items} in the file)${shown.length > 0 ? `: ${shown.join("; ")}` : ""}`);
}
