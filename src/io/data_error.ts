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
    super(`${file}: ${index === undefined ? "" : `item ${index}: `}${field === undefined ? "" : `field "${field}": `}${message}`);
  }
}

/** The line `DataError` would print for an issue. */
export function formatIssue(i: DataIssue): string {
  return new DataError(i.file, i.problem, i.index, i.field).message;
}
