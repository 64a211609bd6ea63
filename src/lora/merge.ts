import type { LlamaModel } from "../model/llama.ts";
import { CheckpointError, SINGLE_FILE, writeSafetensors, type TensorToWrite } from "../model/safetensors.ts";
import { noGrad } from "../tensor/autograd.ts";
import { arange } from "../tensor/ops/create.ts";
import { embedding } from "../tensor/ops/embedding.ts";
import { keep, tidy } from "../tensor/scope.ts";
import { PackedWeight } from "../tensor/weight.ts";
import { copyFile, hostFiles, type Files } from "../io/files.ts";
import { parseJson } from "../io/json.ts";
import { loraModules, moduleSlots, LoraLinear } from "./layer.ts";

/**
 * Merging ("fusing", in mlx-lm) folds each low-rank update into its base weight, as PEFT's
 * `merge_and_unload` (`peft/tuners/lora/layer.py`, `Linear.merge`): W <- W + scaling B A. The
 * merged model computes x W'^T = x W^T + scaling (x A^T) B^T, the LoRA forward without dropout,
 * at the cost of a plain Linear.
 */

/**
 * Merges every LoRA module of `model` into its base weight, in place on the device, and puts the
 * plain Linear back in its slot. The LoRA tensors are disposed (an adapter object that held them
 * is spent). A packed base (bf16, f16, NF4) cannot hold the sum exactly: it is decoded (an
 * embedding gather of all its rows), the update added in f32, and the module's weight becomes
 * that f32 tensor; saveMergedModel then writes the model in 16 bits.
 * @returns the number of modules merged
 */
export function mergeLora(model: LlamaModel): number {
  let merged = 0;
  for (const slot of moduleSlots(model)) {
    const m = slot.get();
    if (!(m instanceof LoraLinear)) continue;
    const w = m.base.weight;
    if (w instanceof PackedWeight) {
      m.base.weight = noGrad(() => tidy(() => keep(embedding(w, arange(0, w.shape[0], 1, { device: w.backend })).add(m.deltaWeight()))));
      w.dispose();
    } else {
      noGrad(() => tidy(() => w.backend.assign(w, w.add(m.deltaWeight()))));
    }
    slot.set(m.base);
    m.lora_A.dispose();
    m.lora_B.dispose();
    merged++;
  }
  return merged;
}

/**
 * What both merge writers (saveMergedModel, merge_checkpoint.ts's mergeCheckpoint) check and
 * read before writing: `outDir` must be absent or empty, and `<sourceDir>/config.json` is read
 * as a JSON object (io/json.ts) whose fields the merged copy keeps.
 * @returns the source config.json, unvalidated (loadConfig validates it)
 * @throws CheckpointError naming `outDir` when it holds files, or config.json when it cannot be
 *   read or is not JSON
 */
export async function mergeSource(sourceDir: string, outDir: string, files: Files): Promise<Record<string, unknown>> {
  // latestDir(outDir) is outDir itself exactly when something is there (Node: a file too, which list refuses).
  if ((await files.latestDir(outDir)) === outDir && (await files.list(outDir)).length > 0) throw new CheckpointError(outDir, "exists and is not empty; refusing to overwrite");
  const configFile = files.join(sourceDir, "config.json");
  try {
    return parseJson(await files.readText(configFile)) as Record<string, unknown>;
  } catch (e) {
    throw new CheckpointError(configFile, `cannot read: ${(e as Error).message}`);
  }
}

/** The dtypes a merged checkpoint's float tensors can be written in. */
export type MergeDType = "F32" | "BF16" | "F16";

/** The names config.json gives dtypes (`torch_dtype`, and `dtype` in transformers >= 4.56). */
export const TORCH_DTYPE: Readonly<Record<MergeDType, string>> = { F32: "float32", BF16: "bfloat16", F16: "float16" };

/** Files of a checkpoint folder besides config and weights that a merged copy keeps, when present. */
const COMPANION_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "tokenizer.model",
  "special_tokens_map.json",
  "added_tokens.json",
  "vocab.json",
  "merges.txt",
  "generation_config.json",
];

/** Copies the {@link COMPANION_FILES} that `sourceDir` has into `outDir`. */
export async function copyCompanions(files: Files, sourceDir: string, outDir: string): Promise<void> {
  for (const f of COMPANION_FILES) if (await files.exists(files.join(sourceDir, f))) await copyFile(files, files.join(sourceDir, f), files.join(outDir, f));
}

/**
 * Writes `model` (typically after {@link mergeLora}) as a Hugging Face checkpoint folder that
 * `loadModel` and transformers' `from_pretrained` read: `config.json` (the source's, with
 * `torch_dtype` set to what is written and no `quantization_config`), `model.safetensors` (one
 * file; the tied lm_head is stored once, as the embedding) and the tokenizer files found in
 * `sourceDir`. Every weight is written F32, or, when the model holds packed weights, in 16 bits:
 * F16 when they are all f16, else BF16 (an NF4 base has no 4-bit merged form: 16 bits keep
 * its values exactly and the merged update to bf16 precision). The folder is built aside and
 * renamed into place.
 * @returns the safetensors dtype written
 * @param sourceDir the folder the base model was loaded from
 * @param outDir must not exist or be empty (an existing checkpoint is never overwritten)
 * @param files where both folders are (default: the host's, io/files.ts)
 * @throws Error when LoRA modules remain unmerged; CheckpointError when `outDir` holds files or
 *   the source config.json cannot be read.
 */
export async function saveMergedModel(model: LlamaModel, sourceDir: string, outDir: string, files?: Files): Promise<MergeDType> {
  if (loraModules(model).size > 0) throw new Error("saveMergedModel: the model still has LoRA modules; call mergeLora(model) first");
  const host = files ?? (await hostFiles());
  const config = await mergeSource(sourceDir, outDir, host);
  const packed = [...model.namedWeights().values()].flatMap((w) => (w instanceof PackedWeight ? [w.dtype] : []));
  const dtype: MergeDType = packed.length === 0 ? "F32" : packed.every((d) => d === "f16") ? "F16" : "BF16";
  const torchDType = TORCH_DTYPE[dtype];
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, t] of model.namedWeights()) {
    tensors[name] = { dtype, shape: [...t.shape], data: Float32Array.from(await t.data()) };
  }
  await host.replaceDir(outDir, async (tmp) => {
    await host.writeAtomic(host.join(tmp, "config.json"), [JSON.stringify({ ...config, torch_dtype: torchDType, quantization_config: undefined }, null, 2) + "\n"]);
    await writeSafetensors(host.join(tmp, SINGLE_FILE), tensors, { format: "pt" }, host);
    await copyCompanions(host, sourceDir, tmp);
  });
  return dtype;
}
