import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import { parseJson } from "../io/json.ts";
import { loadConfig } from "../model/config.ts";
import { loadModel } from "../model/load.ts";
import type { LlamaModel } from "../model/llama.ts";
import { deviceLimits, formatPlan, memoryMisfit, planForDir, type PlanOptions } from "../model/plan.ts";
import { CheckpointError } from "../model/safetensors.ts";
import { LORA_DEFAULTS, LORA_MODULES, rankExcess, targetedShapes, type LoraConfig } from "../lora/layer.ts";
import { ADAPTER_CONFIG_FILE, loadAdapter } from "../lora/peft.ts";
import { CliError, device, required, stderrLine, weightDType } from "./args.ts";
import { Progress } from "./progress.ts";

/** What a command will run on the model, for the memory plan printed before the load. */
export type Usage = Pick<PlanOptions, "batch" | "seq" | "train">;

/**
 * Loads --model (and --adapter, a PEFT LoRA adapter folder, when given) on --device for a
 * command, its weights stored as --dtype (with --quantize-embeddings), drawing the bytes read on
 * `progress`. First says the memory plan (src/model/plan.ts): the weights and, when the command
 * says what it will run (`usage`), the KV cache or activations, LoRA and AdamW lines, and the
 * total, which must fit the device's memory where it has a limit (wasm).
 * @throws CliError when --model is missing or --dtype unknown, or the plan's total is above the device's memory; CheckpointError for a bad checkpoint or adapter.
 */
export async function loadForCli(command: string, values: Record<string, unknown>, progress?: Progress, usage?: Usage): Promise<LlamaModel> {
  const dir = required(command, values, "model");
  const dtype = weightDType(command, values);
  const quantizeEmbeddings = values["quantize-embeddings"] === true;
  const be = await device(command, values);
  const plan = await planForDir(dir, { dtype, quantizeEmbeddings, batch: 1, seq: 1, ...usage, limit: deviceLimits(be) });
  const lines = formatPlan(plan).filter((l) => usage !== undefined || /^(weights|total|largest)/.test(l));
  const say = progress ? (l: string) => progress.say(l) : stderrLine;
  for (const line of lines) say(`${command}: plan: ${line}`);
  // A device with one memory for every tensor (wasm) fails part-way through the load or the
  // first step when the total is above it: refused here, before anything is read.
  const misfit = memoryMisfit(plan);
  const remedies = usage?.train ? "a smaller --dtype, --batch-size or --max-length, --gradient-checkpointing," : "a smaller --dtype (nf4)";
  if (misfit) throw new CliError(`${command}: ${misfit}; choose ${remedies} or another --device (cpu has no such limit)`);
  const model = await loadModel(dir, {
    device: be,
    dtype,
    quantizeEmbeddings,
    onProgress: progress?.counter(`loading ${basename(dir)}`, "bytes"),
    onWarning: (w) => say(`${command}: warning: ${w}`),
  });
  if (typeof values.adapter === "string") await loadCheckedAdapter(model, values.adapter, dir, progress);
  return model;
}

/**
 * Whether the adapter in `adapterDir` names another base model than `modelDir` in its
 * `base_model_name_or_path`: the same model is a folder that resolves to the same path, a Hub id
 * whose last part is the folder's name (`Qwen/Qwen1.5-1.8B` for `~/models/Qwen1.5-1.8B`), or the
 * `_name_or_path` of the model's config.json. An adapter that names none is not questioned.
 * @returns a warning line, or null when the names agree
 * @throws CheckpointError when adapter_config.json cannot be read as JSON
 */
export async function baseModelMismatch(adapterDir: string, modelDir: string): Promise<string | null> {
  const file = join(adapterDir, ADAPTER_CONFIG_FILE);
  let base: unknown;
  try {
    base = (parseJson(await readFile(file, "utf8")) as Record<string, unknown>).base_model_name_or_path;
  } catch (e) {
    throw new CheckpointError(file, `cannot read a PEFT adapter config: ${(e as Error).message}`);
  }
  if (typeof base !== "string" || base === "") return null;
  if (resolve(base) === resolve(modelDir) || basename(base) === basename(resolve(modelDir))) return null;
  const config = join(modelDir, "config.json");
  const nameOrPath = existsSync(config) ? (parseJson(await readFile(config, "utf8")) as Record<string, unknown>)._name_or_path : undefined;
  if (nameOrPath === base) return null;
  return `adapter ${adapterDir} was trained on "${base}" (its base_model_name_or_path), which is not ${modelDir}: its LoRA update may not fit these weights`;
}

/** Loads a PEFT adapter onto `model`, warning first when it names another base model than `modelDir`. */
export async function loadCheckedAdapter(model: LlamaModel, adapterDir: string, modelDir: string, progress?: Progress): Promise<void> {
  const say = (w: string) => (progress ?? new Progress()).say(`warning: ${w}`);
  const mismatch = await baseModelMismatch(adapterDir, modelDir);
  if (mismatch) say(mismatch);
  await loadAdapter(model, adapterDir, undefined, say);
}

/**
 * Refuses a maximum length (tokens) beyond the model's context (config.json
 * max_position_embeddings) before any work: positions past it were never trained, and the
 * rotary tables stop there.
 * @param option the option that gave it (max-length, eval-max-length), which the message names
 * @throws CliError naming the option, the limit and the config file; CheckpointError for a bad config.json
 */
export async function checkMaxLength(command: string, dir: string, maxLength: number | undefined, option = "max-length"): Promise<void> {
  if (maxLength === undefined) return;
  const limit = (await loadConfig(dir)).max_position_embeddings;
  if (maxLength > limit) {
    throw new CliError(`${command}: --${option} ${maxLength} exceeds the model's context: max_position_embeddings is ${limit} in ${join(dir, "config.json")}`);
  }
}

/**
 * The rank and the Linear layers of a LoRA setting: LORA_DEFAULTS where a field is absent, PEFT's
 * "all-linear" (a string for target_modules) expanded to every name of LORA_MODULES.
 * @param lora r and target_modules as the command line gives them: PEFT short names (q_proj, ...) or "all-linear"
 * @returns r and the targeted short names (a new array)
 */
export function loraTargets(lora: Partial<Pick<LoraConfig, "r" | "target_modules">>): { r: number; targets: string[] } {
  const { r, target_modules: targets } = { ...LORA_DEFAULTS, ...lora };
  return { r, targets: typeof targets === "string" ? [...LORA_MODULES] : [...targets] };
}

/**
 * The memory plan's usage of a LoRA training run (train, align): its batch of `maxLength`
 * tokens, r and targets, and whether layers are recomputed.
 */
export function trainingUsage(training: {
  lora: Partial<Pick<LoraConfig, "r" | "target_modules">>;
  maxLength: number;
  hyper: { batchSize: number; gradientCheckpointing: boolean };
}): Usage {
  return { batch: training.hyper.batchSize, seq: training.maxLength, train: { ...loraTargets(training.lora), gradientCheckpointing: training.hyper.gradientCheckpointing } };
}

/**
 * Refuses a --r above min(in_features, out_features) of a targeted module of the model in `dir`
 * (from its config.json) before any work: the update's rank cannot exceed that (rankExcess).
 * @param lora r and target_modules as the command line gives them (LORA_DEFAULTS where absent):
 *   PEFT short names (q_proj, ...) or "all-linear"
 * @throws CliError naming the flag, the value, the module and its limit; CheckpointError for a bad config.json
 */
export async function checkLoraRank(command: string, dir: string, lora: Partial<Pick<LoraConfig, "r" | "target_modules">>): Promise<void> {
  const { r, targets } = loraTargets(lora);
  const excess = rankExcess(r, targetedShapes(await loadConfig(dir), targets));
  if (excess) throw new CliError(`${command}: --r ${r} is ${excess} (${join(dir, "config.json")})`);
}
