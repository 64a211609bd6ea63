import type { Tokenizer } from "../model/tokenizer.ts";

/**
 * The vocabulary tokens that can begin each label word, for constrained decoding (Zhang et al.
 * 2024: the class whose label gets the most next-token probability wins; the authors' scripts,
 * e.g. snli_eval_6shot_enout.py in Shimao-Zhang/LLM-Multilingual-Learner, sum over every
 * vocabulary token that is a prefix of the label, with and without the space marker, plus the
 * byte token of its first UTF-8 byte).
 *
 * A label can begin with many tokens: "neutral" may come out as "neutral", "neut", "ne" or "n",
 * with or without the leading-space marker. For sentencepiece vocabularies ("▁", Llama 2 /
 * Mistral) the candidates are the character prefixes p and "▁" + p, plus, with byte fallback,
 * the token `<0xNN>` of the label's first UTF-8 byte (a script the vocabulary lacks starts with
 * a byte token). Byte-level BPE vocabularies ("Ġ", Qwen / Llama 3) store tokens as bytes mapped
 * to printable characters by GPT-2's table (openai/gpt-2 encoder.py, `bytes_to_unicode`), so
 * there the candidates are every byte prefix of the label's UTF-8 (which covers tokens that end
 * inside a character) and of " " + label, mapped through that table.
 */

/** The parts of a tokenizer that the label sets read. */
export type Vocabulary = Pick<Tokenizer, "spaceMarker" | "byteFallback" | "tokenToId">;

/**
 * GPT-2's byte-to-unicode table: printable Latin-1 bytes (! .. ~, ¡ .. ¬, ® .. ÿ) map to
 * themselves, the other 68 bytes in order to U+0100, U+0101, ... (so 0x20 -> "Ġ", 0x0A -> "Ċ").
 * @returns 256 one-character strings indexed by byte
 */
export function byteToUnicode(): string[] {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const table: string[] = [];
  let next = 256;
  for (let b = 0; b < 256; b++) table.push(String.fromCodePoint(printable(b) ? b : next++));
  return table;
}

const BYTE_TABLE = byteToUnicode();
const utf8 = new TextEncoder();

/** The byte-level BPE form of raw bytes. */
function byteLevel(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => BYTE_TABLE[b]!).join("");
}

/** The vocabulary strings that may begin `word`, before lookup (see the file comment). */
export function labelTokenCandidates(vocab: Pick<Vocabulary, "spaceMarker" | "byteFallback">, word: string): string[] {
  const out = new Set<string>();
  if (vocab.spaceMarker === "Ġ") {
    const bytes = utf8.encode(word);
    const spaced = utf8.encode(` ${word}`);
    for (let n = 1; n <= bytes.length; n++) out.add(byteLevel(bytes.subarray(0, n)));
    // Length >= 2: a bare "Ġ" begins every spaced word and tells the classes nothing.
    for (let n = 2; n <= spaced.length; n++) out.add(byteLevel(spaced.subarray(0, n)));
  } else {
    const chars = Array.from(word); // code points, so no prefix splits a surrogate pair
    for (let n = 1; n <= chars.length; n++) {
      const p = chars.slice(0, n).join("");
      out.add(p);
      if (vocab.spaceMarker === "▁") out.add(`▁${p}`);
    }
  }
  if (vocab.byteFallback) {
    const first = utf8.encode(word)[0];
    if (first !== undefined) out.add(`<0x${first.toString(16).toUpperCase().padStart(2, "0")}>`);
  }
  return [...out];
}

const memo = new WeakMap<Vocabulary, Map<string, number[]>>();

/**
 * The ids of the vocabulary tokens that may begin `word` (sorted, unique), computed once per
 * (tokenizer, word) and memoised.
 * @returns possibly empty, when no candidate is in the vocabulary
 */
export function labelTokenIds(vocab: Vocabulary, word: string): number[] {
  let byWord = memo.get(vocab);
  if (!byWord) memo.set(vocab, (byWord = new Map()));
  let ids = byWord.get(word);
  if (!ids) {
    const found = labelTokenCandidates(vocab, word).map((t) => vocab.tokenToId(t));
    ids = [...new Set(found.filter((id): id is number => id !== undefined))].sort((a, b) => a - b);
    byWord.set(word, ids);
  }
  return ids;
}

/**
 * Pairs of classes that prefix scoring cannot tell apart: class a's token set is contained in
 * class b's (equal sets included), so b's mass is always >= a's and a can never win (or they
 * always tie). Happens when label words share their first bytes, e.g. Thai เชิงบวก / เชิงลบ under
 * a byte-fallback vocabulary. Loglik mode scores whole words and has no such blind spot.
 * @param sets per class, sorted token ids (labelTokenIds)
 * @returns [a, b] pairs with set(a) ⊆ set(b), a != b
 */
export function shadowedClasses(sets: readonly (readonly number[])[]): [number, number][] {
  const pairs: [number, number][] = [];
  sets.forEach((a, i) =>
    sets.forEach((b, j) => {
      if (i !== j && a.length > 0 && a.every((id) => b.includes(id))) pairs.push([i, j]);
    }),
  );
  return pairs;
}

const BYTE_OF = new Map(BYTE_TABLE.map((ch, b) => [ch, b]));

/**
 * The bytes a vocabulary entry stands for: a byte-level entry ("Ġ" vocabularies) mapped back
 * through GPT-2's table, a sentencepiece byte token `<0xNN>` as its byte, any other entry as its
 * UTF-8 with "▁" read as a space.
 * @returns null for an id outside the vocabulary
 */
export function tokenBytes(vocab: Pick<Vocabulary, "spaceMarker"> & Pick<Tokenizer, "idToToken">, id: number): Uint8Array | null {
  const token = vocab.idToToken(id);
  if (token === undefined) return null;
  const byte = /^<0x([0-9A-F]{2})>$/.exec(token);
  if (byte) return Uint8Array.of(parseInt(byte[1]!, 16));
  if (vocab.spaceMarker === "Ġ" && Array.from(token).every((ch) => BYTE_OF.has(ch))) return Uint8Array.from(Array.from(token), (ch) => BYTE_OF.get(ch)!);
  return utf8.encode(vocab.spaceMarker === "▁" ? token.replaceAll("▁", " ") : token);
}

/**
 * A token as a person reads it: its text in JSON quotes when its bytes are whole UTF-8
 * characters, else its bytes in hex (`bytes e0 b8`: a token that ends inside a character).
 */
export function describeToken(vocab: Pick<Vocabulary, "spaceMarker"> & Pick<Tokenizer, "idToToken">, id: number): string {
  const bytes = tokenBytes(vocab, id);
  if (bytes === null) return "(no such token)";
  try {
    return JSON.stringify(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    return `bytes ${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ")}`;
  }
}
