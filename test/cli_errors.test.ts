import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { CliError, describeBounds, int, num, required } from "../src/cli/args.ts";
import { pcaComponents } from "../src/cli/pca.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import { lastLine, runCli, SAMPLE } from "./helpers/cli.ts";
import { fixtureDir } from "./helpers/fixtures.ts";

/**
 * How the command line fails: bad data found before any work, finished work kept when a later
 * step fails, non-finite results refused, and messages that speak in option values, not internals.
 */
const tmp = mkdtempSync(join(tmpdir(), "qalign-cli-"));
const TINY = await ensureTinyModel();
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const qalign = (args: string[]) => runCli(args);

/** A data folder in the release's layout holding `files` (relative path -> JSON value). */
function dataDir(name: string, files: Record<string, unknown>): string {
  const dir = join(tmp, name);
  for (const [path, value] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), JSON.stringify(value));
  }
  return dir;
}

describe("qalign eval", () => {
  it("checks every language's data before loading the model, and creates no --out", () => {
    const fr = structuredClone(SAMPLE["snli/snli_fr600_test.json"]!) as Record<string, string>[];
    delete fr[3]!["hypothesis"];
    const dir = dataDir("missingfield", { "snli/snli_en600_test.json": SAMPLE["snli/snli_en600_test.json"], "snli/snli_fr600_test.json": fr });
    const out = join(tmp, "eval-missing");
    const r = qalign(["eval", "--model", TINY, "--task", "snli", "--langs", "en,fr", "--protocol", "qalign", "--limit", "3", "--shots", "0", "--data", dir, "--out", out, "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toBe(`qalign: ${join(dir, "snli", "snli_fr600_test.json")}: item 3: field "hypothesis": missing field`);
    expect(r.stderr).not.toMatch(/^en: /m); // English was not evaluated first
    expect(existsSync(out)).toBe(false);
  });

  it("--out keeps the languages finished before a later one fails", () => {
    // Loglik labels: the English ones take at most 3 tokens, 矛盾 6, so --eval-max-length 4 fails in zh only.
    const out = join(tmp, "eval-partial");
    const r = qalign(["eval", "--model", TINY, "--task", "snli", "--langs", "en,zh", "--protocol", "qalign", "--limit", "3", "--shots", "0", "--mode", "loglik", "--eval-max-length", "4", "--data", "sample", "--out", out, "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toMatch(/^qalign: sample:snli\/snli_zh600_test\.json: maxLength 4 cannot hold a label of \d+ tokens/);
    const saved = JSON.parse(readFileSync(join(out, "results.json"), "utf8")) as { complete: boolean; pending: string[]; results: { lang: string; n: number }[] };
    expect(saved.complete).toBe(false);
    expect(saved.pending).toEqual(["zh"]);
    expect(saved.results.map((x) => [x.lang, x.n])).toEqual([["en", 3]]);
    const csv = readFileSync(join(out, "results.csv"), "utf8").trim().split("\n");
    expect(csv).toHaveLength(2);
    expect(csv[1]).toMatch(/^base,snli,en,false,loglik,0,3,/);
  });
});

describe("qalign align", () => {
  it("refuses an empty question file, naming it, before any evaluation", () => {
    const dir = dataDir("qempty", {
      "snli/snli_en600_test.json": SAMPLE["snli/snli_en600_test.json"],
      "snli/snli_zh10k_train_question.json": [],
      "snli/snli_es10k_train_question.json": SAMPLE["snli/snli_es10k_train_question.json"],
    });
    const out = join(tmp, "align-qempty");
    const r = qalign(["align", "--model", TINY, "--langs", "en", "--limit", "3", "--epochs", "1", "--data", dir, "--out", out, "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toBe(`qalign: ${join(dir, "snli", "snli_zh10k_train_question.json")}: no usable {input, answer} items (0 in the file)`);
    expect(r.stderr).not.toContain("base en");
    expect(existsSync(join(out, "run.json"))).toBe(false);
  });
});

describe("qalign train", () => {
  it.each([
    // Item 0 lacks both fields: two reasons; all three are listed.
    ['[{"inp":"a","ans":"b"},{"input":1,"answer":"x"}]', '(2 in the file): item 0: field "input": missing; item 0: field "answer": missing; item 1: field "input": not a string (number)'],
    // Seven reasons: the first three, then the count of the rest.
    ['[1,2,{"input":""},{"answer":3},5]', '(5 in the file): item 0: field "item": not an object; item 1: field "item": not an object; item 2: field "input": empty; and 4 more'],
  ])("a file of only malformed items %s names the first reasons", (text, reasons) => {
    const file = join(tmp, `malformed-${text.length}.json`);
    writeFileSync(file, text);
    const r = qalign(["train", "--model", TINY, "--data", file, "--device", "cpu", "--out", join(tmp, "train-malformed")]);
    expect(lastLine(r.stderr)).toBe(`qalign: ${file}: no usable {input, answer} items ${reasons}`);
    expect(r.status).toBe(1);
  });
});

/** A copy of the llama-untied fixture whose model.norm.weight (float32) is NaN: every logit is NaN. */
function nanModel(): string {
  const dir = join(tmp, "nan-model");
  if (existsSync(dir)) return dir;
  cpSync(fixtureDir("llama-untied"), dir, { recursive: true });
  const file = join(dir, "model.safetensors");
  const bytes = readFileSync(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString("utf8")) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  const norm = header["model.norm.weight"]!;
  expect(norm.dtype).toBe("F32");
  for (let o = norm.data_offsets[0]; o < norm.data_offsets[1]; o += 4) bytes.writeFloatLE(NaN, 8 + headerLen + o);
  writeFileSync(file, bytes);
  return dir;
}

describe("non-finite weights", () => {
  it("loss fails instead of printing {\"loss\":null}", () => {
    const dir = nanModel();
    const r = qalign(["loss", "--model", dir, "--ids", "5,17,42", "--prompt-len", "1", "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(lastLine(r.stderr)).toBe(`qalign: loss: the loss is not finite (NaN); the checkpoint ${dir} may hold non-finite (NaN or Inf) weights`);
  });

  it("logits fails instead of printing null logits", () => {
    const dir = nanModel();
    const r = qalign(["logits", "--model", dir, "--ids", "5,17,42", "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(lastLine(r.stderr)).toBe(`qalign: logits: logit [0][0] is not finite (NaN); the checkpoint ${dir} may hold non-finite (NaN or Inf) weights`);
  });
});

describe("qalign pca", () => {
  it("needs 2 items in all, checked before the model runs", () => {
    const r = qalign(["pca", "--model", TINY, "--task", "snli", "--langs", "en", "--limit", "1", "--data", "sample", "--out", join(tmp, "pca1"), "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(lastLine(r.stderr)).toBe("qalign: pca: PCA needs at least 2 items in all languages together, got 1 (en 1); raise --limit or add languages to --langs");
    expect(r.stderr).not.toContain("base model");
  });

  it("says when --components is more than the items allow", () => {
    const warnings: string[] = [];
    const sets = [
      { lang: "en" as const, prompts: [[1], [2], [3], [4], [5], [6]] },
      { lang: "zh" as const, prompts: [[1], [2], [3], [4], [5], [6]] },
    ];
    expect(pcaComponents(50, sets, 64, (l) => warnings.push(l))).toBe(11);
    expect(warnings).toEqual(["pca: --components 50 reduced to 11: PCA of 12 items (en 6, zh 6) has at most N - 1 = 11 components"]);
    expect(pcaComponents(50, sets, 8, (l) => warnings.push(l))).toBe(8);
    expect(warnings[1]).toBe("pca: --components 50 reduced to 8: the hidden size is 8");
    expect(pcaComponents(4, sets, 64, (l) => warnings.push(l))).toBe(4);
    expect(warnings).toHaveLength(2); // no warning when nothing is cut
    expect(() => pcaComponents(4, [{ lang: "en", prompts: [[1]] }], 64, () => {})).toThrow(CliError);
  });
});

describe("option messages", () => {
  const fail = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      expect(e).toBeInstanceOf(CliError);
      return (e as Error).message;
    }
    throw new Error("expected a CliError");
  };

  it("state bounds as people write them", () => {
    expect(describeBounds(1, Number.MAX_SAFE_INTEGER)).toBe(">= 1");
    expect(describeBounds(0, Infinity)).toBe(">= 0");
    expect(describeBounds(0, 1, true)).toBe("in (0, 1]");
    expect(describeBounds(0, 0.5)).toBe("in [0, 0.5]");
    expect(describeBounds(-Infinity, 1)).toBe("<= 1");
    expect(describeBounds(-Infinity, Infinity)).toBe("");
    expect(fail(() => int("eval", { limit: "0" }, "limit", 0, 1))).toBe('eval: --limit must be an integer >= 1, got "0"');
    expect(fail(() => int("loss", { "prompt-len": "3" }, "prompt-len", 0, 1, 2))).toBe('loss: --prompt-len must be an integer in [1, 2], got "3"');
    expect(fail(() => num("generate", { "top-p": "0" }, "top-p", 1, 0, 1, true))).toBe('generate: --top-p must be a number in (0, 1], got "0"');
    expect(fail(() => num("train", { lr: "-1" }, "lr", 1, 0))).toBe('train: --lr must be a number >= 0, got "-1"');
    expect(fail(() => num("x", { t: "abc" }, "t", 1))).toBe('x: --t must be a number, got "abc"');
    expect(num("generate", { "top-p": "1" }, "top-p", 0.5, 0, 1, true)).toBe(1);
    expect(num("generate", { "top-p": "1e-9" }, "top-p", 0.5, 0, 1, true)).toBe(1e-9);
  });

  it("say an empty required value must not be empty", () => {
    expect(fail(() => required("generate", { prompt: "" }, "prompt"))).toBe("generate: --prompt must not be empty");
    expect(fail(() => required("generate", {}, "prompt"))).toBe("generate: --prompt is required");
    expect(required("generate", { prompt: "Hi" }, "prompt")).toBe("Hi");
  });
});

describe("negative numbers", () => {
  // node:util parseArgs takes "-1" after an option for another option ("argument is ambiguous");
  // the value must reach the option's own range check, whose message names its bounds.
  const { vocab_size } = JSON.parse(readFileSync(join(TINY, "config.json"), "utf8")) as { vocab_size: number };
  it.each([
    [["logits", "--model", TINY, "--ids", "-1", "--device", "cpu"], `logits: --ids[0] = -1 is outside the vocabulary [0, ${vocab_size})`],
    [["prompt", "--task", "snli", "--lang", "en", "--index", "-1", "--data", "sample"], 'prompt: --index must be an integer >= 0, got "-1"'],
    [["train", "--model", TINY, "--data", "x.json", "--out", join(tmp, "neg-lr"), "--lr", "-1", "--device", "cpu"], 'train: --lr must be a number > 0, got "-1"'],
    [["generate", "--model", TINY, "--prompt", "Hi", "--temperature", "-0.5", "--device", "cpu"], 'generate: --temperature must be a number >= 0, got "-0.5"'],
  ])("%j gets the option's range message", (args, message) => {
    const r = qalign(args);
    expect(lastLine(r.stderr)).toBe(`qalign: ${message}`);
    expect(r.status).toBe(1);
  });
});

describe("conflicting options", () => {
  // An option that means something only beside another one's value is refused with both named,
  // before the model loads (no "plan:" line), rather than ignored.
  it.each([
    [["--threads", "2", "--device", "cpu"], "--threads applies only with --device wasm, got --device cpu"],
    [["--threads", "2"], "--threads applies only with --device wasm, got no --device"],
    [["--quantize-embeddings", "--device", "cpu"], "--quantize-embeddings applies only with --dtype nf4, got no --dtype"],
    [["--quantize-embeddings", "--dtype", "bf16", "--device", "cpu"], "--quantize-embeddings applies only with --dtype nf4, got --dtype bf16"],
  ])("logits %j is refused naming both options", (extra, message) => {
    const r = qalign(["logits", "--model", TINY, "--ids", "1,2", ...extra]);
    expect(r.stderr.trim()).toBe(`qalign: logits: ${message}`);
    expect(r.status).toBe(1);
  });

  it("train warns for an lr above 1, naming the value", () => {
    const r = qalign(["train", "--model", TINY, "--data", join(tmp, "absent.json"), "--out", join(tmp, "big-lr"), "--lr", "1e9", "--device", "cpu"]);
    expect(r.stderr).toContain("train: warning: --lr 1e9 is above 1");
    const quiet = qalign(["train", "--model", TINY, "--data", join(tmp, "absent.json"), "--out", join(tmp, "big-lr"), "--lr", "1", "--device", "cpu"]);
    expect(quiet.stderr).not.toContain("warning: --lr");
  });
});

describe("an option or list entry given twice", () => {
  // Every option takes one value: a second one is refused, not silently the winner; a list entry
  // given twice would count twice (the same pairs in training and validation).
  const pairs = join(tmp, "twice_pairs.json");
  writeFileSync(pairs, JSON.stringify(SAMPLE["snli/snli_zh10k_train_question.json"]));
  const dotted = `${tmp}/../${basename(tmp)}/twice_pairs.json`; // the same file by another path
  it.each([
    [["generate", "--model", TINY, "--prompt", "hi", "--prompt", "bye", "--device", "cpu"], "generate: --prompt is given 2 times; give it once"],
    [["generate", "--model", TINY, "--prompt=hi", "--quiet", "--prompt", "bye", "--quiet", "--device", "cpu"], "generate: --prompt is given 2 times; give it once"],
    [["eval", "--model", TINY, "--langs", "en", "--limit", "2", "--limit", "3", "--data", "sample"], "eval: --limit is given 2 times; give it once"],
    [["train", "--model", TINY, "--data", pairs, "--out", join(tmp, "twice-resume"), "--resume", "--overwrite"], "train: --resume and --overwrite contradict each other; give one of them"],
    [["train", "--model", TINY, "--data", `${pairs},${pairs}`, "--out", join(tmp, "twice-data")], `train: --data names "${pairs}" twice; give each once`],
    [["train", "--model", TINY, "--data", `${pairs},${dotted}`, "--out", join(tmp, "twice-data")], `train: --data names "${pairs}" twice (also as "${dotted}"); give each once`],
    [["train", "--model", TINY, "--data", pairs, "--target-modules", "q_proj,v_proj,q_proj", "--out", join(tmp, "twice-modules")], 'train: --target-modules names "q_proj" twice; give each once'],
    [["align", "--model", TINY, "--train", "zh,zh", "--out", join(tmp, "twice-train")], 'align: --train names "zh" twice; give each once'],
    [["eval", "--model", TINY, "--langs", "en, en", "--data", "sample"], 'eval: --langs names "en" twice; give each once'],
  ])("%j is refused before the model loads", (args, message) => {
    const r = qalign([...args]);
    expect(lastLine(r.stderr)).toBe(`qalign: ${message}`);
    expect(r.stderr).not.toContain("loading ");
    expect(r.status).toBe(1);
    expect(existsSync(join(tmp, "twice-resume"))).toBe(false);
  });
});

describe("--dtype", () => {
  it("an unknown weight dtype fails before loading, naming the choices", () => {
    const r = qalign(["logits", "--model", fixtureDir("qwen2-tied"), "--ids", "5,6", "--dtype", "int4", "--device", "cpu"]);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe("");
    expect(lastLine(r.stderr)).toBe('qalign: logits: --dtype must be f32, bf16, f16 or nf4, got "int4"');
  });

  it("nf4 logits of the bf16 fixture equal those of its committed 4-bit checkpoint (the same weights)", () => {
    const ids = ["--ids", "5,6,7", "--device", "cpu"];
    const atLoad = qalign(["logits", "--model", fixtureDir("qwen2-tied"), "--dtype", "nf4", ...ids]);
    const saved = qalign(["logits", "--model", fixtureDir("qwen2-nf4"), ...ids]);
    expect(atLoad.status).toBe(0);
    expect(atLoad.stdout).toBe(saved.stdout);
  });
});

describe("--protocol", () => {
  const evalArgs = ["eval", "--model", TINY, "--task", "snli", "--langs", "en", "--data", "sample", "--device", "cpu"];
  it("refuses settings the paper protocol does not have, and authors' scoring of words they never scripted", () => {
    const cases: [string[], RegExp][] = [
      [["--shots", "3"], /^qalign: eval: --shots 3: the paper protocol uses the authors' 6 fixed SNLI demonstrations; other shot counts need --protocol qalign$/],
      [["--mode", "loglik"], /^qalign: eval: --mode loglik: the paper protocol scores by the authors' token sets \(prefix\); loglik needs --protocol qalign$/],
      [["--labels", "native"], /^qalign: the authors' scripts have no native-label SNLI evaluation .*; use --labels english$/],
      [["--protocol", "qalign", "--scoring", "authors"], /^qalign: the authors' scripts never score SNLI with native answer words, so --scoring authors has no rule for them; use --labels english$/],
      [["--scoring", "best"], /^qalign: eval: --scoring must be index or authors, got "best"$/],
    ];
    for (const [extra, message] of cases) {
      const r = qalign([...evalArgs, ...extra]);
      expect(r.status, extra.join(" ")).toBe(1);
      expect(lastLine(r.stderr)).toMatch(message);
    }
  });
});
