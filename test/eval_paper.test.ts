import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { Lang } from "../src/eval/languages.ts";
import { PAPER_PROMPTS_FILE } from "../src/eval/default_data.ts";
import { paperPrompts, parsePaperPrompts, type LabelLanguage } from "../src/eval/paper.ts";
import { buildPrompts } from "../src/eval/protocol.ts";
import { FolderSource, MemorySource } from "../src/eval/source.ts";
import { TASKS, type TaskId } from "../src/eval/tasks.ts";
import { DataError } from "../src/io/data_error.ts";
import { sharedDataOrSkip } from "./helpers/shared_data.ts";

/** The shared copy of the authors' prompts, parsed here without the code under test. */
interface RawPrompts {
  source: string;
  tasks: Record<string, { languages: Record<string, { demonstrations: string; template: string }>; label_dicts: Record<string, Record<string, string>> }>;
}
const readShared = (dir: string): RawPrompts => JSON.parse(readFileSync(join(dir, "prompts", "paper_prompts.json"), "utf8")) as RawPrompts;
const readItems = (dir: string, path: string): Record<string, string>[] => JSON.parse(readFileSync(join(dir, path), "utf8")) as Record<string, string>[];

/**
 * The authors' prompt of an item, built from the shared data alone: the template with each
 * placeholder replaced in turn, as the scripts concatenate `prompt_prefix[lang] + '\n' + ...`.
 */
function sharedPrompt(raw: RawPrompts, key: string, lang: string, item: Record<string, string>): string {
  const { demonstrations, template } = raw.tasks[key]!.languages[lang]!;
  let out = template.split("{demonstrations}").join(demonstrations);
  for (const field of ["premise", "hypothesis", "input", "sentence1", "sentence2"]) if (field in item) out = out.split(`{${field}}`).join(item[field]!);
  return out;
}

const CASES: { task: TaskId; labels: LabelLanguage; key: string }[] = [
  { task: "snli", labels: "english", key: "snli" },
  { task: "emotion", labels: "english", key: "emotion" },
  { task: "paws", labels: "english", key: "paws" },
  { task: "emotion", labels: "native", key: "emotion_native" },
];
const LANGS: Lang[] = ["en", "zh", "ja", "hi", "th", "bn", "fr", "ru", "sw", "is"];

describe("the authors' prompt asset", () => {
  it("is a byte-exact copy of the shared file, naming its source repository and commit", async (ctx) => {
    const dir = sharedDataOrSkip(ctx);
    expect(readFileSync(PAPER_PROMPTS_FILE).equals(readFileSync(join(dir, "prompts", "paper_prompts.json")))).toBe(true);
    const prompts = await paperPrompts();
    expect(prompts.source).toMatch(/^github\.com\/Shimao-Zhang\/LLM-Multilingual-Learner @ [0-9a-f]{40}$/);
    expect(Object.keys(prompts.scripts).sort()).toEqual(["emotion", "emotion_native", "paws", "snli"]);
  });

  it("rejects a malformed asset, naming the file and the field", () => {
    const bad = { source: "x", tasks: { snli: { script: "s.py", languages: { en: { demonstrations: "d", template: "t" } }, label_dicts: {} } } };
    expect(() => parsePaperPrompts(bad, "p.json")).toThrow(DataError);
    expect(() => parsePaperPrompts(bad, "p.json")).toThrow(/p\.json: field "tasks\.snli\.languages\.zh"/);
    expect(() => parsePaperPrompts({ tasks: {} }, "p.json")).toThrow(/field "source"/);
  });
});

describe("paper protocol prompts", () => {
  it("equal the authors' byte for byte, for every task, in 10 languages, and score every item", async (ctx) => {
    const dir = sharedDataOrSkip(ctx);
    const raw = readShared(dir);
    const source = new FolderSource(dir);
    for (const { task, labels, key } of CASES) {
      const spec = TASKS[task];
      for (const lang of LANGS) {
        const items = readItems(dir, spec.testFile(lang));
        const built = await buildPrompts(source, spec, lang, { protocol: "paper", labels });
        expect(built.items.map((it) => it.index)).toEqual(items.map((_, i) => i)); // 600 / 500 / 500, none held out
        expect(built.demos).toEqual([]);
        expect(built.shots).toBe(spec.shots);
        for (const i of [0, 1, 137, items.length - 1]) expect(built.prompts[i]).toBe(sharedPrompt(raw, key, lang, items[i]!));
        for (const p of built.prompts.slice(0, 5)) expect(p.startsWith(built.prefix)).toBe(true);
      }
    }
  });

  it("use the field headers and answer lines of the authors' scripts", async (ctx) => {
    // Transcribed from the scripts' `input = [prompt_prefix[lang] + '\n' + ...]` lines.
    const heads: { task: TaskId; lang: Lang; lines: (f: Record<string, string>) => string }[] = [
      { task: "snli", lang: "th", lines: (f) => `ฐาน: ${f["premise"]}\nสมมติฐาน: ${f["hypothesis"]}\nคำตอบ: "` },
      { task: "snli", lang: "fr", lines: (f) => `Prémisse: ${f["premise"]}\nHypothèse: ${f["hypothesis"]}\nRépondre: "` },
      { task: "snli", lang: "ru", lines: (f) => `Предпосылка: ${f["premise"]}\nГипотеза: ${f["hypothesis"]}\nОтвечать: "` },
      { task: "emotion", lang: "zh", lines: (f) => `${f["input"]}\n情感: "` },
      { task: "emotion", lang: "bn", lines: (f) => `${f["input"]}\nআবেগ: "` },
      { task: "emotion", lang: "sw", lines: (f) => `${f["input"]}\nHisia: "` },
      { task: "paws", lang: "ja", lines: (f) => `文 1: ${f["sentence1"]}\n文 2: ${f["sentence2"]}\n答え: "` },
      { task: "paws", lang: "hi", lines: (f) => `वाक्य 1: ${f["sentence1"]}\nवाक्य 2: ${f["sentence2"]}\nउत्तर: "` },
      { task: "paws", lang: "es", lines: (f) => `Sentencia 1: ${f["sentence1"]}\nSentencia 2: ${f["sentence2"]}\nRespuesta: "` },
    ];
    const dir = sharedDataOrSkip(ctx);
    const raw = readShared(dir);
    for (const { task, lang, lines } of heads) {
      const built = await buildPrompts(new FolderSource(dir), TASKS[task], lang, { protocol: "paper", limit: 3 });
      built.items.forEach((it, k) => expect(built.prompts[k]).toBe(`${raw.tasks[task]!.languages[lang]!.demonstrations}\n${lines(it.fields)}`));
    }
  });

  it("native-label emotion: the table's words, and in Thai only the shared start เชิง follows the prompt", async (ctx) => {
    const dir = sharedDataOrSkip(ctx);
    const raw = readShared(dir);
    for (const lang of LANGS) {
      const built = await buildPrompts(new FolderSource(dir), TASKS.emotion, lang, { protocol: "paper", labels: "native", limit: 2 });
      const table = raw.tasks["emotion_native"]!.label_dicts;
      expect(built.labelWords).toEqual([table["positive_answers"]![lang], table["negative_answers"]![lang]]);
      if (lang === "th") {
        expect(built.continuation).toBe("เชิง");
        expect(built.scoredWords).toEqual(["บวก", "ลบ"]);
      } else {
        expect(built.continuation).toBe("");
        expect(built.scoredWords).toEqual(built.labelWords);
      }
    }
  });

  it("refuses native-label SNLI and PAWS, which the authors never scripted", async () => {
    const source = new MemorySource({});
    await expect(buildPrompts(source, TASKS.snli, "zh", { protocol: "paper", labels: "native" })).rejects.toThrow(/no native-label SNLI evaluation.*--labels english/);
    await expect(buildPrompts(source, TASKS.paws, "zh", { protocol: "paper", labels: "native" })).rejects.toThrow(RangeError);
  });

  it("keep braces inside an item's text as they are", async () => {
    const en = [{ input: "a {premise} b", answer: "positive" }, { input: "{demonstrations}", answer: "negative" }];
    const source = new MemorySource({ "ap_emotion/emotion_en500_test.json": en });
    const built = await buildPrompts(source, TASKS.emotion, "en", { protocol: "paper" });
    const demos = (JSON.parse(readFileSync(PAPER_PROMPTS_FILE, "utf8")) as RawPrompts).tasks["emotion"]!.languages["en"]!.demonstrations;
    expect(built.prompts).toEqual([`${demos}\na {premise} b\nEmotion: "`, `${demos}\n{demonstrations}\nEmotion: "`]);
  });
});
