import type { Tokenizer } from "../model/tokenizer.ts";

/**
 * The authors' token set of an answer word (Zhang et al. 2024, `process_tokens` in every
 * evaluation script of github.com/Shimao-Zhang/LLM-Multilingual-Learner): the class's score is
 * the next-token probability summed over
 *
 *   1. every character prefix p of the word (Python slices: code points), looked up as a
 *      vocabulary string both as "▁" + p and as p;
 *   2. `<0xNN>`, NN the first UTF-8 byte of the word's first character, when that character is
 *      not ASCII and the vocabulary has such a byte token (`unicode_prefix_tokid`);
 *   3. for Qwen only, the first token id of tokenizing each prefix p.
 *
 * The scripts key rule 3 on the model's name (`"Qwen" in model_size`); here it is keyed on the
 * tokenizer: it applies to byte-level BPE vocabularies (space marker "Ġ", Qwen's), whose
 * entries are GPT-2 byte-mapped strings, so that lookup 1 finds no prefix outside ASCII and
 * rule 3 is what finds them. The first id is taken without special tokens: Qwen's tokenizer
 * adds none, so on Qwen this is the scripts' `tokenizer(p)['input_ids'][0][0]`, and on a
 * byte-level tokenizer that prepends BOS (Llama 3) it stays the prefix's own token rather
 * than BOS in every class.
 *
 * This differs from qalign's own rule (label_tokens.ts): under Qwen that one adds the "Ġ"
 * variants and tokens that end inside a character; under Mistral it adds `<0x65>`-style byte
 * tokens for ASCII words.
 */

/** The parts of a tokenizer the rule reads. */
export type AuthorsVocabulary = Pick<Tokenizer, "spaceMarker" | "tokenToId" | "encode">;

const utf8 = new TextEncoder();

/**
 * The ids of the authors' token set of `word` under `tokenizer`, sorted and unique.
 * @returns possibly empty, when no candidate is in the vocabulary
 */
export function authorsTokenIds(tokenizer: AuthorsVocabulary, word: string): number[] {
  const chars = Array.from(word);
  const prefixes = chars.map((_, n) => chars.slice(0, n + 1).join(""));
  const ids = new Set<number>();
  const add = (id: number | undefined) => {
    if (id !== undefined) ids.add(id);
  };
  for (const p of prefixes) {
    add(tokenizer.tokenToId(`▁${p}`));
    add(tokenizer.tokenToId(p));
  }
  const first = chars[0];
  if (first !== undefined && first.codePointAt(0)! >= 0x80) {
    add(tokenizer.tokenToId(`<0x${utf8.encode(first)[0]!.toString(16).toUpperCase().padStart(2, "0")}>`));
  }
  if (tokenizer.spaceMarker === "Ġ") for (const p of prefixes) add(tokenizer.encode(p, { addSpecialTokens: false })[0]);
  return [...ids].sort((a, b) => a - b);
}
