import type { Tokenizer } from "../../src/model/tokenizer.ts";

/**
 * The authors' `process_tokens` (every evaluation script of Shimao-Zhang/LLM-Multilingual-Learner),
 * transcribed line by line: prefixes `token_str[:i]`, `'▁' + t` and `t` looked up in the
 * vocabulary, `unicode_prefix_tokid(token_str[0])` (the first byte of a character whose UTF-8
 * repr starts with `\x`), and for Qwen `tokenizer(tok)['input_ids'][0][0]` per prefix.
 */
export function processTokens(tokenStr: string, tok: Tokenizer, isQwen: boolean): number[] {
  const chars = [...tokenStr];
  const withPrefixes = chars.map((_, i) => chars.slice(0, i + 1).join(""));
  const withSpaces = [...withPrefixes.map((t) => "▁" + t), ...withPrefixes];
  const final: number[] = [];
  for (const t of new Set(withSpaces)) {
    const id = tok.tokenToId(t);
    if (id !== undefined) final.push(id);
  }
  const firstBytes = Buffer.from(chars[0]!, "utf8");
  if (firstBytes[0]! >= 0x80) {
    const id = tok.tokenToId(`<0x${firstBytes.toString("hex").slice(0, 2).toUpperCase()}>`);
    if (id !== undefined) final.push(id);
  }
  if (isQwen) for (const t of new Set(withPrefixes)) final.push(tok.encode(t)[0]!);
  return [...new Set(final)].sort((a, b) => a - b);
}
