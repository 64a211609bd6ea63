import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkLabelSets, evaluateLanguage, prepareRows, type EvalContext, type LanguageResult } from "../src/eval/evaluate.ts";
import { languagePrompts } from "../src/eval/prompt.ts";
import { sampleSource } from "../src/eval/source.ts";
import { TASKS } from "../src/eval/tasks.ts";
import { cpuDevice } from "../src/kernels/devices.ts";
import type { LlamaModel } from "../src/model/llama.ts";
import { loadModel } from "../src/model/load.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { loadTokenizer } from "../src/model/tokenizer.ts";
import { expectClose } from "./helpers/close.ts";

/** evaluateLanguage end to end on the built-in sample with the tiny model (chance-level accuracy). */
let ctx: Omit<EvalContext, "task" | "options">;
let model: LlamaModel;
beforeAll(async () => {
  const dir = await ensureTinyModel();
  model = await loadModel(dir, { device: cpuDevice() });
  ctx = { model, tokenizer: (await loadTokenizer(dir))!, source: await sampleSource() };
});
afterAll(() => model.dispose());

/**
 * Scores of the same prompts through another batching (cache or none, other padding) agree to
 * f32 rounding: the logits do to an ulp or two (eval_cache.test.ts), and a score sums a few
 * softmax probabilities (prefix mode, masses below 1e-3 for the tiny model) or log-softmax
 * values (loglik mode, 20-60 nats), so its relative error is ~1e-6. 1e-5 relative leaves a 10x
 * margin, and the 5e-9 floor covers masses near zero; a misaligned window or cache offset
 * changes scores by O(1) relative.
 */
const SAME_SCORES = { atol: 5e-9, rtol: 1e-5 };

/** Scores of two runs agree item by item (SAME_SCORES). */
function expectSameScores(a: LanguageResult, b: LanguageResult): void {
  expect(b.items.map((r) => r.index)).toEqual(a.items.map((r) => r.index));
  a.items.forEach((r, i) => expectClose(b.items[i]!.scores, r.scores, SAME_SCORES, `item ${r.index} scores`));
}

describe("evaluateLanguage", () => {
  it("gives the same scores with and without the prefix cache, in both scoring modes", async () => {
    for (const mode of ["prefix", "loglik"] as const) {
      const withCache = await evaluateLanguage({ ...ctx, task: TASKS.snli, options: { protocol: "qalign", mode, batchSize: 4 } }, "zh");
      const without = await evaluateLanguage({ ...ctx, task: TASKS.snli, options: { protocol: "qalign", mode, batchSize: 3, prefixCache: false } }, "zh");
      expect(withCache.prefixTokens).toBeGreaterThan(50);
      expect(without.prefixTokens).toBe(0);
      expectSameScores(withCache, without);
      expect(withCache.n).toBe(12 - 6);
      expect(withCache.demos).toHaveLength(6);
      expect(withCache.confusion.flat().reduce((s, x) => s + x, 0)).toBe(withCache.n);
      if (mode === "prefix") expect(withCache.items[0]!.scores.every((p) => p > 0 && p < 1)).toBe(true);
      else expect(withCache.items[0]!.scores.every((l) => l < 0)).toBe(true);
    }
  });

  it("truncates prompts longer than the context from the left and reports them", async () => {
    const full = await evaluateLanguage({ ...ctx, task: TASKS.emotion, options: { protocol: "qalign" } }, "de");
    const cut = await evaluateLanguage({ ...ctx, task: TASKS.emotion, options: { protocol: "qalign", maxLength: 48 } }, "de");
    expect(cut.n).toBe(full.n); // still scored, each one reported
    expect(cut.truncated.length).toBeGreaterThan(0);
    for (const t of cut.truncated) {
      expect(full.items.map((r) => r.index)).toContain(t.index);
      expect(t.dropped).toBeGreaterThan(0);
    }
    expect(cut.file).toBe("sample:ap_emotion/emotion_de500_test.json");
    expect(cut.prefixTokens).toBe(0); // every prompt was cut, so none could share the cached prefix

    // A limit between the prompt lengths: the short prompts keep the cache and their scores.
    const prompts = await languagePrompts(ctx.source, TASKS.emotion, "de");
    const lengths = prompts.prompts.map((p) => ctx.tokenizer.encode(p).length).sort((a, b) => a - b);
    const mixed = await evaluateLanguage({ ...ctx, task: TASKS.emotion, options: { protocol: "qalign", maxLength: lengths[1]! } }, "de");
    expect(mixed.truncated.length).toBeGreaterThan(0);
    expect(mixed.truncated.length).toBeLessThan(mixed.n);
    expect(mixed.prefixTokens).toBeGreaterThan(0);
    const cutIndices = mixed.truncated.map((t) => t.index);
    mixed.items.forEach((r, i) => {
      if (!cutIndices.includes(r.index)) expectClose(r.scores, full.items[i]!.scores, SAME_SCORES, `item ${r.index} scores`);
    });
  });

  it("computes accuracy from the predictions", async () => {
    const r = await evaluateLanguage({ ...ctx, task: TASKS.paws, options: { protocol: "qalign", shots: 2 } }, "sw");
    const correct = r.items.filter((it) => it.pred === it.label).length;
    expect(r).toMatchObject({ n: 4, correct, shots: 2, labelWords: ["same", "different"], classes: ["same", "different"] });
    expect(r.accuracy).toBe(correct / 4);
    expect(r.labelTokenCounts.every((n) => n > 0)).toBe(true);
  });
});

/**
 * A character tokenizer (one id per UTF-16 unit, BOS = 1 first) and a three-item language: every
 * row's ids can be read off its text.
 */
const chars = { bosId: 1, encode: (text: string) => [1, ...Array.from(text, (c) => c.charCodeAt(0))] };
const ids = (text: string) => chars.encode(text).slice(1);
const lang = {
  data: { file: "toy.json" },
  labelWords: ["p", "qq"],
  prefix: "ab|",
  prompts: ["ab|x", "ab|yz", "ab|wxyz"],
  items: [0, 1, 2].map((index) => ({ index: 10 + index, fields: {}, label: 0 })),
  continuation: "",
};

describe("prepareRows", () => {
  it("prefix mode: one row per item, the demonstrations' tokens shared", () => {
    const r = prepareRows(chars, lang, { mode: "prefix", maxLength: 64, prefixCache: true });
    expect(r.rows).toEqual(lang.prompts.map((p) => [{ ids: chars.encode(p), scored: 0 }]));
    expect(r.prefixIds).toEqual(chars.encode("ab|"));
    expect(r.truncated).toEqual([]);
    expect(prepareRows(chars, lang, { mode: "prefix", maxLength: 64, prefixCache: false }).prefixIds).toEqual([]);
  });

  it("a continuation (the authors' Thai rule): its own tokens, BOS included, follow every prompt's", () => {
    const r = prepareRows(chars, { ...lang, continuation: "cd" }, { mode: "prefix", maxLength: 64, prefixCache: true });
    expect(r.rows).toEqual(lang.prompts.map((p) => [{ ids: [...chars.encode(p), ...chars.encode("cd")], scored: 0 }]));
    expect(r.prefixIds).toEqual(chars.encode("ab|"));
  });

  it("loglik mode: a row per class, scoring the tokens the label adds, one more token kept after the prefix", () => {
    const r = prepareRows(chars, { ...lang, prefix: "ab|x" }, { mode: "loglik", maxLength: 64, prefixCache: true });
    expect(r.rows[0]).toEqual([
      { ids: chars.encode("ab|xp"), scored: 1 },
      { ids: chars.encode("ab|xqq"), scored: 2 },
    ]);
    // "ab|x" is a prefix of item 0's prompt, but its row must keep "x" to predict the label from:
    // the shared prefix stops one token before the first scored token of every row.
    expect(r.prefixIds).toEqual(chars.encode("ab|"));
  });

  it("cuts rows longer than maxLength on the left, keeping BOS, and shares no prefix with them", () => {
    const r = prepareRows(chars, lang, { mode: "prefix", maxLength: 6, prefixCache: true });
    // "ab|wxyz" is 8 ids with BOS: "a" and "b" dropped, BOS kept; the others fit.
    expect(r.rows[2]).toEqual([{ ids: [1, ...ids("|wxyz")], scored: 0 }]);
    expect(r.truncated).toEqual([{ index: 12, dropped: 2 }]);
    expect([...r.cut]).toEqual([2]);
    expect(r.prefixIds).toEqual(chars.encode("ab|"));
    expect(() => prepareRows(chars, lang, { mode: "loglik", maxLength: 2, prefixCache: true })).toThrow(/toy.json: maxLength 2 cannot hold a label of 2 tokens/);
  });
});

describe("checkLabelSets", () => {
  // A sentencepiece-style vocabulary: "no" begins with n, no, ▁no; "not" with those and not.
  const table: Record<string, number> = { n: 3, no: 4, "▁no": 5, not: 6, y: 7 };
  // encode: read only by the authors' rule on byte-level vocabularies, never here.
  const vocab = { spaceMarker: "▁", byteFallback: false, tokenToId: (t: string) => table[t], encode: () => [] } as const;
  const qalign = (...scoredWords: string[]) => ({ scoredWords, tokenRule: "qalign" as const });

  it("gives each word's prefix tokens and warns when one word's set lies inside another's", () => {
    const r = checkLabelSets(vocab, qalign("no", "not", "yes"), 8, "prefix");
    expect(r.sets).toEqual([[3, 4, 5], [3, 4, 5, 6], [7]]);
    expect(r.warnings).toEqual(['label word "no" begins only with tokens that also begin "not": prefix scoring cannot predict it (use --mode loglik)']);
    expect(checkLabelSets(vocab, qalign("no", "not"), 8, "loglik").warnings).toEqual([]); // whole words: no shadowing
  });

  it("refuses ids outside the model's vocabulary, and (prefix mode) a word no token begins", () => {
    expect(() => checkLabelSets(vocab, qalign("yes"), 7, "prefix")).toThrow("label token id 7 is outside the model's vocabulary (7): tokenizer and model disagree");
    expect(() => checkLabelSets(vocab, qalign("maybe"), 8, "prefix")).toThrow('no vocabulary token begins the label word "maybe": use --mode loglik');
    expect(checkLabelSets(vocab, qalign("maybe"), 8, "loglik").sets).toEqual([[]]);
  });
});
