import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { loadModel } from "../src/model/load.ts";
import { loadTokenizer } from "../src/model/tokenizer.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { fixtureDir } from "./helpers/fixtures.ts";
import { sharedDataOrSkip } from "./helpers/shared_data.ts";

/**
 * Question-translation data (reading, malformed items, split, tokenisation, truncation) and the
 * masked loss of a padded batch.
 */
const cpu = qa.cpuDevice();
const tmp = mkdtempSync(join(tmpdir(), "qalign-data-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function jsonFile(name: string, value: unknown): string {
  const file = join(tmp, name);
  writeFileSync(file, typeof value === "string" ? value : JSON.stringify(value));
  return file;
}

describe("readQuestionPairs", () => {
  const ok = (i: number) => ({ input: `q${i}\nTranslate the input from Chinese to English:\n`, answer: `Q${i}`, extra: 1 });
  const items = [ok(0), { answer: "x" }, { input: "x", answer: 5 }, "text", { input: " ", answer: "x" }, ok(5), { input: null }];

  test("reads a file that starts with a UTF-8 byte-order mark (Windows editors, Python's utf-8-sig)", async () => {
    const file = join(tmp, "bom.json");
    writeFileSync(file, "\uFEFF" + JSON.stringify([ok(0), ok(1)]));
    const { pairs, issues } = await qa.readQuestionPairs([file], { strict: true });
    expect(pairs.map((p) => p.answer)).toEqual(["Q0", "Q1"]);
    expect(issues).toEqual([]);
  });

  test("reports each malformed item with file, index and field, and skips it", async () => {
    const file = jsonFile("mixed.json", items);
    const { pairs, issues } = await qa.readQuestionPairs([file]);
    expect(pairs.map((p) => [p.index, p.answer])).toEqual([
      [0, "Q0"],
      [5, "Q5"],
    ]);
    expect(issues).toEqual([
      { file, index: 1, field: "input", problem: "missing" },
      { file, index: 2, field: "answer", problem: "not a string (number)" },
      { file, index: 3, field: "item", problem: "not an object" },
      { file, index: 4, field: "input", problem: "empty" },
      { file, index: 6, field: "input", problem: "not a string (null)" },
      { file, index: 6, field: "answer", problem: "missing" },
    ]);
    expect(qa.formatIssue(issues[0]!)).toBe(`${file}: item 1: field "input": missing`);
  });

  test("with strict, the first malformed item throws a DataError naming file, index and field", async () => {
    const file = jsonFile("strict.json", items);
    const err = await qa.readQuestionPairs([file], { strict: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(qa.DataError);
    expect(err).toMatchObject({ file, index: 1, field: "input", message: `${file}: item 1: field "input": missing` });
  });

  test("unusable files throw a DataError naming the file", async () => {
    const cases: [string, RegExp][] = [
      [jsonFile("object.json", { input: "a", answer: "b" }), /must hold a JSON array/],
      [jsonFile("broken.json", "[{"), /cannot read as JSON/],
      [join(tmp, "absent.json"), /cannot read as JSON: ENOENT/],
      [jsonFile("empty.json", []), /no usable/],
    ];
    for (const [file, pattern] of cases) {
      const err = await qa.readQuestionPairs([file]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(qa.DataError);
      expect((err as Error).message).toContain(file);
      expect((err as Error).message).toMatch(pattern);
    }
  });

  test("a file without a usable item fails, named, even when another file has pairs", async () => {
    const good = jsonFile("good.json", [items[0]]);
    const empty = jsonFile("none.json", []);
    const bad = jsonFile("allbad.json", [{ answer: "x" }]);
    await expect(qa.readQuestionPairs([good, empty])).rejects.toThrow(`${empty}: no usable {input, answer} items (0 in the file)`);
    await expect(qa.readQuestionPairs([bad, good])).rejects.toThrow(`${bad}: no usable {input, answer} items (1 in the file)`);
    expect((await qa.readQuestionPairs([good, good])).pairs).toHaveLength(2);
  });

  test("mixes files in order (the shared zh and es question files, when present)", async (ctx) => {
    const snli = join(sharedDataOrSkip(ctx), "snli");
    const files = ["zh", "es"].map((l) => join(snli, `snli_${l}10k_train_question.json`));
    const { pairs, issues } = await qa.readQuestionPairs(files);
    expect(issues).toEqual([]);
    expect(pairs).toHaveLength(20000);
    expect(pairs[10000]!.file).toBe(files[1]);
    // The files are parallel: item i of each has the same English question.
    expect(pairs[10000]!.answer).toBe(pairs[0]!.answer);
    expect(pairs[0]!.input.endsWith("Translate the input from Chinese to English:\n")).toBe(true);
  });
});

describe("splitPairs", () => {
  const pool = Array.from({ length: 100 }, (_, i) => i);

  test("caps after a seeded shuffle and holds out ceil(valSize * n) for validation", () => {
    const a = qa.splitPairs(pool, { maxSamples: 64, valSize: 0.05, seed: 1 });
    expect([a.train.length, a.val.length]).toEqual([60, 4]);
    expect(new Set([...a.train, ...a.val]).size).toBe(64);
    expect(qa.splitPairs(pool, { maxSamples: 64, valSize: 0.05, seed: 1 })).toEqual(a);
    expect(qa.splitPairs(pool, { maxSamples: 64, valSize: 0.05, seed: 2 }).val).not.toEqual(a.val);
    expect(qa.splitPairs(pool, { valSize: 0 })).toMatchObject({ val: [] });
    expect(qa.splitPairs([7], { valSize: 0.5 })).toEqual({ train: [7], val: [] }); // one is left to train on
    expect(() => qa.splitPairs(pool, { valSize: 1 })).toThrow(RangeError);
  });
});

describe("tokenisation", () => {
  test("truncation follows LLaMA-Factory's infer_seqlen", () => {
    expect(qa.truncatedLengths(10, 5, 512)).toEqual({ source: 10, target: 5 });
    expect(qa.truncatedLengths(600, 10, 512)).toEqual({ source: 502, target: 10 }); // short target kept
    expect(qa.truncatedLengths(100, 600, 512)).toEqual({ source: 100, target: 412 }); // short source kept
    expect(qa.truncatedLengths(400, 300, 512)).toEqual({ source: 293, target: 219 }); // both, in proportion
  });

  test("prompt = input with <s>, target = answer without special tokens, then eos; long pairs truncated and counted", async () => {
    const tokenizer = (await loadTokenizer(await ensureTinyModel()))!;
    const pair = { input: "前提: 一个\nTranslate the input from Chinese to English:\n", answer: "Premise: A" };
    const source = tokenizer.encode(pair.input);
    const target = tokenizer.encode(pair.answer, { addSpecialTokens: false });
    expect(source[0]).toBe(tokenizer.bosId);
    const full = qa.encodePairs([pair], tokenizer, { eosId: 2, maxLength: 512 });
    expect(full).toEqual({ examples: [{ ids: [...source, ...target, 2], promptLen: source.length }], truncated: 0 });
    const cut = qa.encodePairs([pair, pair], tokenizer, { eosId: 2, maxLength: 10 });
    expect(cut.truncated).toBe(2);
    const len = qa.truncatedLengths(source.length, target.length + 1, 10);
    expect(cut.examples[0]).toEqual({ ids: [...source.slice(0, len.source), ...target.slice(0, len.target)], promptLen: len.source });
  });
});

describe("masked loss of a padded batch", () => {
  test("equals the token-weighted mean of the examples' own losses", async () => {
    const model = await loadModel(fixtureDir("llama-untied"), { device: cpu });
    const example = fc
      .array(fc.integer({ min: 0, max: 319 }), { minLength: 2, maxLength: 12 })
      .chain((ids) => fc.record({ ids: fc.constant(ids), promptLen: fc.integer({ min: 1, max: ids.length - 1 }) }));
    await fc.assert(
      fc.asyncProperty(fc.array(example, { minLength: 1, maxLength: 4 }), async (examples) => {
        const batch = await qa.meanTargetLoss(model, examples, examples.length);
        let sum = 0;
        let tokens = 0;
        for (const e of examples) {
          const one = await qa.meanTargetLoss(model, [e], 1);
          sum += one.loss * one.tokens;
          tokens += one.tokens;
          expect(one.tokens).toBe(e.ids.length - e.promptLen);
        }
        expect(batch.tokens).toBe(tokens);
        // Padding changes no value a real token sees; only the order of the f32 sum differs.
        expect(Math.abs(batch.loss - sum / tokens)).toBeLessThanOrEqual(1e-6 * (sum / tokens));
      }),
      { numRuns: 15, seed: 20240520 },
    );
  });

  test("collate right-pads, drops each last token from the input and indexes the predicting positions", () => {
    const batch = qa.collate(
      [
        { ids: [1, 2, 3, 4], promptLen: 2 },
        { ids: [5, 6], promptLen: 1 },
      ],
      cpu,
    );
    expect(batch.inputIds.shape).toEqual([2, 3]);
    return Promise.all([batch.inputIds.toArray(), batch.rows.toArray(), batch.targets.toArray()]).then(([ids, rows, targets]) => {
      expect(ids).toEqual([
        [1, 2, 3],
        [5, 0, 0],
      ]);
      expect(rows).toEqual([1, 2, 3]); // row 0 positions 1, 2; row 1 position 0 (= 1 * 3 + 0)
      expect(targets).toEqual([3, 4, 6]);
      expect([batch.targetCount, batch.tokenCount]).toEqual([3, 4]);
      expect(() => qa.collate([{ ids: [1, 2], promptLen: 2 }], cpu)).toThrow(/promptLen 2/);
    });
  });
});
