/**
 * JSON as qalign reads every file: a leading UTF-8 byte-order mark is dropped, and a key given
 * twice in one object is an error rather than "the last one wins" (what `JSON.parse` does),
 * because a duplicate tensor name or config key means the file says two things.
 *
 * RFC 8259 §8.1 forbids writing a byte-order mark but lets parsers ignore one; Windows editors
 * and Python's `utf-8-sig` write it. Syntax is checked by `JSON.parse` (strict); duplicates by
 * the jsonc-parser visitor over the same text.
 */
import { visit } from "jsonc-parser";

const BOM = "\uFEFF";

/** A file whose text is not one JSON value, or names a key twice in one object. */
export class JsonError extends Error {
  override name = "JsonError";
}

/**
 * Parses JSON text.
 * @returns the value, `JSON.parse` minus a leading byte-order mark
 * @throws JsonError with JSON.parse's message for a syntax error, or naming the key and its
 *   object's path (`"weight_map"."lm_head.weight"`) for a key that appears twice in one object
 */
export function parseJson(text: string): unknown {
  const body = text.startsWith(BOM) ? text.slice(BOM.length) : text;
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch (e) {
    throw new JsonError((e as Error).message);
  }
  // One set of keys per open object; arrays of objects open and close one set each.
  const open: Set<string>[] = [];
  visit(body, {
    onObjectBegin: () => void open.push(new Set()),
    onObjectEnd: () => void open.pop(),
    onObjectProperty: (key, _offset, _length, _line, _column, path) => {
      const keys = open.at(-1)!;
      if (keys.has(key)) {
        const where = [...path(), key].map((k) => JSON.stringify(k)).join(".");
        throw new JsonError(`key ${where} appears twice (JSON.parse would keep the last and drop the first)`);
      }
      keys.add(key);
    },
  });
  return value;
}
