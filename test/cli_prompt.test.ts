import { readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { buildPrompts } from "../src/eval/protocol.ts";
import { FolderSource } from "../src/eval/source.ts";
import { TASKS } from "../src/eval/tasks.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { loadTokenizer, type Tokenizer } from "../src/model/tokenizer.ts";
import { processTokens } from "./helpers/authors_rule.ts";
import { runCli } from "./helpers/cli.ts";
import { sharedDataOrSkip } from "./helpers/shared_data.ts";

/** `qalign prompt`: the exact prompt of an item, its ids and its class token sets, for auditing a run. */
let tiny: string;
let tokenizer: Tokenizer;
beforeAll(async () => {
  tiny = await ensureTinyModel();
  tokenizer = (await loadTokenizer(tiny))!;
});

interface PromptJson {
  prompt: string;
  input_ids?: number[];
  label_token_ids?: Record<string, number[]>;
}
const promptJson = (args: string[]): PromptJson => {
  const r = runCli(["prompt", ...args, "--json"]);
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as PromptJson;
};

const shared = (dir: string, path: string) => JSON.parse(readFileSync(join(dir, path), "utf8")) as Record<string, unknown>[];

describe("qalign prompt", () => {
  it("prints the authors' prompt of an item, its ids and each English class's token set", (ctx) => {
    const dir = sharedDataOrSkip(ctx);
    const raw = JSON.parse(readFileSync(join(dir, "prompts", "paper_prompts.json"), "utf8")) as { tasks: Record<string, { languages: Record<string, { demonstrations: string }> }> };
    const item = shared(dir, "snli/snli_hi600_test.json")[42] as { premise: string; hypothesis: string };
    const out = promptJson(["--task", "snli", "--lang", "hi", "--index", "42", "--model", tiny, "--data", dir]);
    expect(out.prompt).toBe(`${raw.tasks["snli"]!.languages["hi"]!.demonstrations}\nआधार: ${item.premise}\nपरिकल्पना: ${item.hypothesis}\nउत्तर: "`);
    expect(out.input_ids).toEqual(tokenizer.encode(out.prompt)); // BOS first, as Mistral's tokenizer adds it
    expect(Object.keys(out.label_token_ids!)).toEqual(["entailment", "neutral", "contradiction"]);
    for (const [word, ids] of Object.entries(out.label_token_ids!)) expect(ids).toEqual(processTokens(word, tokenizer, false));
    // Without a model: the prompt alone, the same string.
    expect(promptJson(["--task", "snli", "--lang", "hi", "--index", "42", "--data", dir])).toEqual({ prompt: out.prompt });
  });

  it("native-label Thai emotion: the tokens of เชิง follow the prompt and the classes are บวก / ลบ", (ctx) => {
    const dir = sharedDataOrSkip(ctx);
    const item = shared(dir, "ap_emotion/emotion_th500_test.json")[7] as { input: string };
    const out = promptJson(["--task", "emotion", "--labels", "native", "--lang", "th", "--index", "7", "--model", tiny, "--data", dir]);
    expect(out.prompt.endsWith(`\n${item.input}\nอารมณ์: "`)).toBe(true);
    expect(out.input_ids).toEqual([...tokenizer.encode(out.prompt), ...tokenizer.encode("เชิง")]);
    expect(out.label_token_ids).toEqual({ positive: processTokens("บวก", tokenizer, false), negative: processTokens("ลบ", tokenizer, false) });
  });

  it("shows pieces in plain text, and partial-byte tokens as bytes", (ctx) => {
    const dir = sharedDataOrSkip(ctx);
    const r = runCli(["prompt", "--task", "emotion", "--lang", "zh", "--labels", "native", "--index", "0", "--model", tiny, "--data", dir]);
    expect(r.status, r.stderr).toBe(0);
    // 积极 / 消极: each set is the first UTF-8 byte's token (a partial character) and the first character.
    const e7 = tokenizer.tokenToId("<0xE7>")!;
    const e6 = tokenizer.tokenToId("<0xE6>")!;
    const [ji, xiao] = [tokenizer.tokenToId("积")!, tokenizer.tokenToId("消")!];
    expect(e7 < ji && e6 < xiao).toBe(true); // sets print in id order
    expect(r.stdout).toContain(`positive ("积极", 2 tokens): ${e7} bytes e7, ${ji} "积"`);
    expect(r.stdout).toContain(`negative ("消极", 2 tokens): ${e6} bytes e6, ${xiao} "消"`);
  });

  it("refuses an index outside the file and, under the qalign protocol, a demonstration", async (ctx) => {
    const dir = sharedDataOrSkip(ctx);
    const outside = runCli(["prompt", "--task", "paws", "--lang", "ja", "--index", "500", "--data", dir]);
    expect(outside.status).toBe(1);
    expect(outside.stderr).toMatch(/--index 500 is not an item of .*paws_ja500_test\.json \(0-based, 500 items\)/);
    const demo = (await buildPrompts(new FolderSource(dir), TASKS.snli, "zh", { protocol: "qalign" })).demos[0]!;
    const demoRun = runCli(["prompt", "--task", "snli", "--lang", "zh", "--index", String(demo), "--protocol", "qalign", "--data", dir]);
    expect(demoRun.status).toBe(1);
    expect(demoRun.stderr).toMatch(new RegExp(`item ${demo} of .*snli_zh600_test\\.json is a demonstration under --protocol qalign \\(seed 0\\)`));
    const bad = runCli(["prompt", "--task", "snli", "--lang", "zh", "--index", "1", "--protocol", "paperish", "--data", dir]);
    expect(bad.stderr).toMatch(/--protocol must be paper or qalign, got "paperish"/);
  });
});
