import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { checkFields, loadTaskData, readItems } from "../src/eval/data.ts";
import { FIELD_WORDS, fieldWords, parseQuestionLabels } from "../src/eval/fields.ts";
import { LANGUAGES, parseLangs } from "../src/eval/languages.ts";
import { formatItem, languagePrompts } from "../src/eval/prompt.ts";
import { questionLanguages, questionPairs } from "../src/eval/questions.ts";
import { FolderSource, MemorySource, sampleSource } from "../src/eval/source.ts";
import { TASKS } from "../src/eval/tasks.ts";
import { DataError, type DataIssue } from "../src/io/data_error.ts";
import { sharedDataOrSkip } from "./helpers/shared_data.ts";

const snli = TASKS.snli;
const en = (p: string, h: string, answer: string) => ({ premise: p, hypothesis: h, answer });
/** A small parallel SNLI set: 6 English items (2 per class) and their "Chinese" versions. */
function snliFiles(zhOverrides: Record<number, unknown> = {}): Record<string, unknown> {
  const classes = ["entailment", "neutral", "contradiction", "entailment", "neutral", "contradiction"];
  const zhWords: Record<string, string> = { entailment: "蕴含", neutral: "中立", contradiction: "矛盾" };
  const english = classes.map((c, i) => en(`premise ${i}`, `hypothesis ${i}`, c));
  const chinese = classes.map((c, i) => zhOverrides[i] ?? en(`前提 ${i}`, `假设 ${i}`, zhWords[c]!));
  return { "snli/snli_en600_test.json": english, "snli/snli_zh600_test.json": chinese };
}

describe("loading a task file against the parallel English file", () => {
  it("takes classes from English and label words from the language's own answers", async () => {
    const data = await loadTaskData(new MemorySource(snliFiles()), snli, "zh");
    expect(data.labelWords).toEqual(["蕴含", "中立", "矛盾"]);
    expect(data.items.map((it) => it.label)).toEqual([0, 1, 2, 0, 1, 2]);
    expect(data.items[1]!.fields).toEqual({ premise: "前提 1", hypothesis: "假设 1" });
    expect(data.skipped).toEqual([]);
  });

  it("reads task files that start with a UTF-8 byte-order mark", async () => {
    const dir = mkdtempSync(join(tmpdir(), "qalign-bom-"));
    try {
      for (const [path, items] of Object.entries(snliFiles())) {
        mkdirSync(dirname(join(dir, path)), { recursive: true });
        writeFileSync(join(dir, path), "\uFEFF" + JSON.stringify(items));
      }
      const data = await loadTaskData(new FolderSource(dir), snli, "zh");
      expect(data.labelWords).toEqual(["蕴含", "中立", "矛盾"]);
      expect(data.items).toHaveLength(6);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("reports a missing language file by name", async () => {
    const err = await loadTaskData(new MemorySource(snliFiles()), snli, "sw").catch((e) => e);
    expect(err).toBeInstanceOf(DataError);
    expect(err.name).toBe("DataError");
    expect(err.message).toContain("sample:snli/snli_sw600_test.json");
    expect(err.message).toContain("missing file");
  });

  it("reports an item with a missing field (file, index, field), or skips and lists it", async () => {
    const source = new MemorySource(snliFiles({ 4: { premise: "前提 4", answer: "中立" } }));
    const err = await loadTaskData(source, snli, "zh").catch((e) => e);
    expect(err).toBeInstanceOf(DataError);
    expect(err).toMatchObject({ file: "sample:snli/snli_zh600_test.json", index: 4, field: "hypothesis" });
    const data = await loadTaskData(source, snli, "zh", "skip");
    expect(data.items.map((it) => it.index)).toEqual([0, 1, 2, 3, 5]);
    expect(data.skipped).toEqual<DataIssue[]>([{ file: "sample:snli/snli_zh600_test.json", index: 4, field: "hypothesis", problem: "missing field" }]);
  });

  it("reports an answer word outside the label set, never scoring it as anything", async () => {
    const source = new MemorySource(snliFiles({ 3: en("前提 3", "假设 3", "蕴涵") }));
    const err = await loadTaskData(source, snli, "zh").catch((e) => e);
    expect(err).toMatchObject({ name: "DataError", index: 3, field: "answer" });
    expect(err.message).toContain('"蕴涵" is outside the label set');
    const data = await loadTaskData(source, snli, "zh", "skip");
    expect(data.items.map((it) => it.index)).not.toContain(3);
    expect(data.skipped[0]).toMatchObject({ index: 3, field: "answer" });
  });

  it("reports English answers outside the task's classes, files that are not parallel, shared label words", async () => {
    const files = snliFiles();
    const badEnglish = { ...files, "snli/snli_en600_test.json": [...(files["snli/snli_en600_test.json"] as object[]).slice(0, 5), en("p", "h", "maybe")] };
    await expect(loadTaskData(new MemorySource(badEnglish), snli, "zh")).rejects.toThrow(/snli_en600_test\.json.*\[?5.*"maybe" is outside the label set/);
    const short = { ...files, "snli/snli_zh600_test.json": (files["snli/snli_zh600_test.json"] as object[]).slice(0, 4) };
    await expect(loadTaskData(new MemorySource(short), snli, "zh")).rejects.toThrow(/has 4 items but .* has 6: the files must be parallel/);
    const same = snliFiles({ 1: en("前提 1", "假设 1", "蕴含"), 4: en("前提 4", "假设 4", "蕴含") });
    await expect(loadTaskData(new MemorySource(same), snli, "zh")).rejects.toThrow(/two classes share the answer word "蕴含"/);
  });
});

describe("k-shot prompts", () => {
  it("writes the paper's format in the item's language, ending with the open quote", async () => {
    const source = new MemorySource(snliFiles());
    const p = await languagePrompts(source, snli, "zh", { shots: 3, seed: 1 });
    expect(p.demos.map((d) => d.label)).toEqual([0, 1, 2]); // one per class, in class order
    const d = p.demos.map((x) => x.index);
    expect(p.prefix).toBe(d.map((i) => `前提: 前提 ${i}\n假设: 假设 ${i}\n答案: "${["蕴含", "中立", "矛盾"][i % 3]}"\n`).join(""));
    expect(p.items.every((it) => !d.includes(it.index))).toBe(true); // a demonstration is never scored
    expect(p.items).toHaveLength(3);
    expect(p.prompts[0]).toBe(`${p.prefix}前提: 前提 ${p.items[0]!.index}\n假设: 假设 ${p.items[0]!.index}\n答案: "`);
    const english = await languagePrompts(source, snli, "zh", { shots: 3, seed: 1, englishLabels: true });
    expect(english.prefix).toContain('答案: "entailment"');
  });

  it("chooses the same demonstrations and items in every language, class-balanced under a limit", async () => {
    const source = await sampleSource();
    const pick = async (lang: "en" | "bn", limit?: number) => {
      const p = await languagePrompts(source, TASKS.snli, lang, { seed: 3, limit });
      return { demos: p.demos.map((x) => x.index), items: p.items.map((x) => x.index), labels: p.items.map((x) => x.label) };
    };
    expect(await pick("bn")).toEqual(await pick("en"));
    const limited = await pick("en", 3);
    expect(limited).toEqual(await pick("bn", 3));
    expect([...limited.labels].sort()).toEqual([0, 1, 2]);
  });

  it("uses the field words of PAWS and reviews", () => {
    const item = { index: 0, label: 0, fields: { sentence1: "A", sentence2: "B", input: "R" } };
    expect(formatItem(TASKS.paws, FIELD_WORDS.de, item, "same")).toBe('Satz 1: A\nSatz 2: B\nAntwort: "same"');
    expect(formatItem(TASKS.emotion, FIELD_WORDS.sw, item)).toBe('Maoni: R\nHisia: "');
  });
});

describe("the built-in sample", () => {
  it("loads all three tasks in all 20 languages, parallel, with every class present", async () => {
    const source = await sampleSource();
    for (const task of Object.values(TASKS)) {
      for (const lang of LANGUAGES) {
        const data = await loadTaskData(source, task, lang);
        expect(data.items.length).toBeGreaterThan(task.shots);
        expect(new Set(data.items.map((it) => it.label)).size).toBe(task.classes.length);
      }
    }
    expect(await questionLanguages(source)).toEqual(["zh", "de", "es", "it", "sw"]);
    const { pairs } = await questionPairs(source, ["zh", "es"]);
    expect(pairs).toHaveLength(12);
    expect(pairs[0]!.input).toMatch(/^前提: .*\n假设: .*\n答案: "\nTranslate the input from Chinese to English:\n$/);
    expect(pairs[0]!.answer).toMatch(/^Premise: .*\nHypothesis: .*\nAnswer: "$/);
  });
});

describe("question pairs", () => {
  it("refuse a language whose question file has no usable item, naming the file", async () => {
    const sample = JSON.parse(readFileSync(new URL("../src/eval/sample_data.json", import.meta.url), "utf8")) as { files: Record<string, unknown> };
    const source = new MemorySource({ ...sample.files, "snli/snli_zh10k_train_question.json": [] });
    await expect(questionPairs(source, ["zh", "es"])).rejects.toThrow(new DataError("sample:snli/snli_zh10k_train_question.json", "no usable {input, answer} items (0 in the file)"));
    const skipAll = new MemorySource({ ...sample.files, "snli/snli_es10k_train_question.json": [{ input: "" }] });
    await expect(questionPairs(skipAll, ["zh", "es"], "en", "skip")).rejects.toThrow("sample:snli/snli_es10k_train_question.json: no usable {input, answer} items (1 in the file)");
    expect((await questionPairs(source, ["es"])).pairs).toHaveLength(6);
  });

  it("take English questions from the target file's answers (English as a source language)", async () => {
    const sample = JSON.parse(readFileSync(new URL("../src/eval/sample_data.json", import.meta.url), "utf8")) as { files: Record<string, unknown> };
    const source = new MemorySource(sample.files);
    const zh = sample.files["snli/snli_zh10k_train_question.json"] as { input: string; answer: string }[];
    const { pairs } = await questionPairs(source, ["en", "es"], "zh");
    expect(pairs).toHaveLength(2 * zh.length);
    zh.forEach((item, i) => {
      expect(pairs[i]!.input).toBe(`${item.answer}\nTranslate the input from English to Chinese:\n`);
      expect(pairs[i]!.answer).toBe(item.input.replace(/\nTranslate the input from .+ to .+:\n?$/, ""));
      expect(pairs[i]!.file).toBe("sample:snli/snli_zh10k_train_question.json");
    });
    expect(pairs[zh.length]!.input).toMatch(/\nTranslate the input from Spanish to Chinese:\n$/);
    await expect(questionPairs(source, ["en"], "en")).rejects.toThrow('the target language "en" is also a training language');
  });
});

describe("the release data (../shared/data/qalign)", () => {
  it("reports the 15 English training items without an answer, by file, index and field", async (ctx) => {
    const source = new FolderSource(sharedDataOrSkip(ctx));
    const path = "snli/snli_en10k_train.json";
    const items = await readItems(source, path);
    const issues: DataIssue[] = [];
    const fields = checkFields(source.describe(path), items, ["premise", "hypothesis", "answer"], "skip", issues);
    expect(issues).toHaveLength(15);
    expect(issues.every((i) => i.field === "answer" && i.problem === "missing field")).toBe(true);
    expect(issues[0]!.index).toBe(531);
    expect(fields.filter((f) => f === null)).toHaveLength(15);
    expect(() => checkFields(source.describe(path), items, ["answer"], "error", [])).toThrow(/snli_en10k_train\.json: item 531: field "answer": missing field/);
  });

  it("derives label words from the data, quirks included", async (ctx) => {
    const source = new FolderSource(sharedDataOrSkip(ctx));
    expect((await loadTaskData(source, TASKS.snli, "zh")).labelWords).toEqual(["蕴含", "中立", "矛盾"]);
    expect((await loadTaskData(source, TASKS.snli, "ja")).labelWords).toEqual(["含意", "中性", "矛盾"]);
    // In the Norwegian SNLI file the neutral items say "motsigelse" (contradiction) and the
    // contradiction items "nøytral": the words are used as the data has them.
    expect((await loadTaskData(source, TASKS.snli, "no")).labelWords).toEqual(["entailment", "motsigelse", "nøytral"]);
    expect((await loadTaskData(source, TASKS.emotion, "sw")).labelWords).toEqual(["chanya", "hasi"]);
    expect((await loadTaskData(source, TASKS.paws, "th")).labelWords).toEqual(["same", "different"]);
  });

  it("takes SNLI field words from the question files, which agree with the table", async (ctx) => {
    const source = new FolderSource(sharedDataOrSkip(ctx));
    expect(await questionLanguages(source)).toEqual(["zh", "de", "es", "it", "sw"]);
    for (const lang of await questionLanguages(source)) {
      const words = await fieldWords(source, lang);
      const table = FIELD_WORDS[lang];
      expect([words.premise, words.hypothesis, words.answer]).toEqual([table.premise, table.hypothesis, table.answer]);
    }
    expect(parseQuestionLabels('前提: a\n假设: b\n答案: "\nTranslate')).toEqual({ premise: "前提", hypothesis: "假设", answer: "答案" });
  });

  it("builds question pairs into English, and into another language by index", async (ctx) => {
    const source = new FolderSource(sharedDataOrSkip(ctx));
    const toEnglish = await questionPairs(source, ["zh"]);
    expect(toEnglish.pairs).toHaveLength(10000);
    const raw = (await readItems(source, "snli/snli_zh10k_train_question.json"))[7] as { input: string; answer: string };
    expect(toEnglish.pairs[7]).toMatchObject({ input: raw.input, answer: raw.answer, index: 7 });

    const toChinese = await questionPairs(source, ["de"], "zh");
    const de = (await readItems(source, "snli/snli_de10k_train_question.json"))[7] as { input: string };
    expect(toChinese.pairs[7]!.input).toBe(de.input.replace("to English:", "to Chinese:"));
    expect(toChinese.pairs[7]!.answer).toBe(raw.input.slice(0, raw.input.indexOf("\nTranslate the input")));
    expect(toChinese.pairs[7]!.answer.endsWith('答案: "')).toBe(true);

    await expect(questionPairs(source, ["fr"])).rejects.toThrow(/no question-translation file for "fr".*de es it sw zh|zh de es it sw/);
    await expect(questionPairs(source, ["zh"], "zh")).rejects.toThrow(/also a training language/);
  });
});

describe("language lists", () => {
  it("parses all, lists and unknown codes", () => {
    expect(parseLangs("all")).toHaveLength(20);
    expect(parseLangs("zh, sw,zh")).toEqual(["zh", "sw"]);
    expect(() => parseLangs("zh,xx")).toThrow(/unknown language "xx"/);
  });
});
