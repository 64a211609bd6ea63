import type { LlamaModel } from "../model/llama.ts";
import { CheckpointError, openSafetensors, writeSafetensors, type TensorToWrite } from "../model/safetensors.ts";
import type { HostArray } from "../tensor/dtype.ts";
import { tensor } from "../tensor/ops/create.ts";
import { applyLora, isLoraDropout, LORA_DEFAULTS, LORA_DROPOUT_RANGE, peftKey, rankExcess, selectTargets, LoraAdapter, type LoraConfig } from "./layer.ts";
import { hostFiles, type Files } from "../io/files.ts";
import { parseJson } from "../io/json.ts";

/**
 * Adapters in PEFT's on-disk layout, so that `PeftModel.from_pretrained(base, dir)` loads what
 * qalign trains and qalign loads what PEFT trains:
 *   adapter_config.json        the LoraConfig as JSON (`PeftConfigMixin.save_pretrained`:
 *                              `json.dumps(config, indent=2, sort_keys=True)`)
 *   adapter_model.safetensors  F32 tensors `base_model.model.<module path>.lora_A.weight` [r, in]
 *                              and `.lora_B.weight` [out, r], metadata {"format": "pt"}
 */

/** PEFT's `CONFIG_NAME`. */
export const ADAPTER_CONFIG_FILE = "adapter_config.json";
/** PEFT's `SAFETENSORS_WEIGHTS_NAME`. */
export const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";

/**
 * The adapter_config.json object PEFT 0.12 writes for a LoRA adapter of a causal LM: qalign's
 * fields plus every other LoraConfig field at its default, in sorted key order (PEFT's
 * `sort_keys=True`). Serialised with 2-space indentation it equals PEFT's file byte for byte,
 * except that JavaScript writes an integral float such as lora_dropout 0.0 as `0`.
 * @param baseModel `base_model_name_or_path`: the base checkpoint's folder or Hub id, or null
 */
export function peftConfigJson(config: LoraConfig, baseModel: string | null): Record<string, unknown> {
  return {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: baseModel,
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: config.lora_alpha,
    lora_dropout: config.lora_dropout,
    megatron_config: null,
    megatron_core: "megatron.core",
    modules_to_save: null,
    peft_type: "LORA",
    r: config.r,
    rank_pattern: {},
    revision: null,
    target_modules: config.target_modules,
    task_type: "CAUSAL_LM",
    use_dora: false,
    use_rslora: config.use_rslora,
  };
}

/**
 * Writes `adapter` to `dir` in PEFT layout, reading the parameters back from the device. The
 * folder is created; each file is replaced atomically (a folder replaced as a whole is
 * checkpoint.ts's job).
 * @param baseModel recorded as `base_model_name_or_path`
 * @param files where to write (default: the host's, io/files.ts; in a browser the OPFS's, opfsFiles)
 * @param values the parameters' values, by PEFT key, when the caller has already read them from
 *   the device (the trainer, which checks them first); a key it lacks is read here
 * @throws Error from `files` when it cannot write there (a read-only source)
 */
export async function saveAdapter(
  adapter: LoraAdapter,
  dir: string,
  baseModel: string | null,
  files?: Files,
  values?: ReadonlyMap<string, HostArray>,
): Promise<void> {
  files ??= await hostFiles();
  const tensors: Record<string, TensorToWrite> = {};
  for (const [key, p] of adapter.namedParams()) {
    tensors[key] = { dtype: "F32", shape: [...p.shape], data: Float32Array.from(values?.get(key) ?? (await p.data())) };
  }
  await files.writeAtomic(files.join(dir, ADAPTER_CONFIG_FILE), [JSON.stringify(peftConfigJson(adapter.config, baseModel), null, 2)]);
  await writeSafetensors(files.join(dir, ADAPTER_WEIGHTS_FILE), tensors, { format: "pt" }, files);
}

/**
 * The adapter_config.json keys of PEFT's LoraConfig (peft/tuners/lora/config.py) that change
 * what a saved adapter computes, each either implemented here or refused by name. Keys that only
 * steer training or initialisation (eva_config, corda_config, layers_pattern without
 * layers_to_transform, runtime_config) do not change a saved adapter's output and are not listed.
 */
export const IMPLEMENTED_ADAPTER_KEYS = ["r", "lora_alpha", "use_rslora", "target_modules", "lora_dropout"] as const;

/** `init_lora_weights` values whose saved adapter is plain LoRA: they only choose the starting A and B. */
const PLAIN_INITS: readonly unknown[] = [true, false, "gaussian", "eva", "orthogonal"];
const isNullOrEmpty = (v: unknown) => v === null || (Array.isArray(v) && v.length === 0) || isEmptyObject(v);

/**
 * Keys that PEFT may set and qalign cannot honour: name, whether a value is the harmless
 * default, why. Any other value is refused by name.
 */
export const REFUSED_ADAPTER_KEYS: readonly [string, (v: unknown) => boolean, string][] = [
  ["fan_in_fan_out", (v) => v === false, "Llama-family weights are stored [out, in]"],
  ["bias", (v) => v === "none", "trained biases are not part of the adapters qalign reads"],
  ["lora_bias", (v) => v === false, "lora_B has no bias here"],
  ["use_dora", (v) => v === false, "DoRA's magnitude vectors are not implemented"],
  ["modules_to_save", (v) => v === null || (Array.isArray(v) && v.length === 0), "only LoRA weights are loaded"],
  ["layers_to_transform", (v) => v === null, "every layer of a targeted module is adapted"],
  ["layer_replication", (v) => v === null, "layers are not replicated"],
  ["exclude_modules", (v) => v === null, "modules are selected by target_modules only"],
  ["rank_pattern", isEmptyObject, "one r applies to every module"],
  ["alpha_pattern", isEmptyObject, "one lora_alpha applies to every module"],
  [
    "init_lora_weights",
    (v) => PLAIN_INITS.includes(v),
    "PiSSA, OLoRA, CorDA and LoftQ adapters hold weights relative to a residual base model that PEFT rebuilds at load; " +
      "convert them to plain LoRA when saving (PEFT's path_initial_model_for_weight_conversion) or merge them",
  ],
  ["loftq_config", (v) => v === null || isEmptyObject(v), "LoftQ replaces the base weights by quantized residuals"],
  ["alora_invocation_tokens", (v) => v === null, "activated LoRA (aLoRA) applies the adapter only after its invocation tokens"],
  ["use_qalora", (v) => v === false, "QA-LoRA pools the input in groups before lora_A"],
  ["use_bdlora", (v) => v === false || v === null, "its adapter layout is not plain LoRA and is not implemented"],
  ["trainable_token_indices", (v) => v === null, "trained embedding rows (PEFT TrainableTokens) are not loaded"],
  ["target_parameters", isNullOrEmpty, "LoRA on parameters rather than modules is not implemented"],
];

function isEmptyObject(v: unknown): boolean {
  return typeof v === "object" && v !== null && !Array.isArray(v) && Object.keys(v).length === 0;
}

/**
 * adapter_config.json keys of newer PEFT versions (LoraConfig and PeftConfig) than the 0.12 that
 * peftConfigJson writes, which neither change a saved adapter's output nor are refused: the
 * version that wrote it, and what only steers training, initialisation or a Megatron run.
 */
const QUIET_ADAPTER_KEYS = ["peft_version", "eva_config", "corda_config", "runtime_config", "qalora_group_size", "ensure_weight_tying", "arrow_config"];

/** Every adapter_config.json key qalign knows: PEFT 0.12's fields, the refused and the quiet ones. */
const KNOWN_ADAPTER_KEYS = new Set([
  ...Object.keys(peftConfigJson(LORA_DEFAULTS, null)),
  ...REFUSED_ADAPTER_KEYS.map(([key]) => key),
  ...QUIET_ADAPTER_KEYS,
]);

/**
 * PEFT's default targets when `target_modules` is null
 * (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`: llama, mistral and qwen2 alike).
 */
const DEFAULT_TARGETS = ["q_proj", "v_proj"];

/**
 * Reads and validates `<dir>/adapter_config.json`.
 * @returns the LoRA hyper-parameters (`use_rslora` is supported: scaling lora_alpha / sqrt(r))
 * @throws CheckpointError naming the file and field: missing file or not JSON, `peft_type` other
 *   than "LORA", `task_type` other than CAUSAL_LM, a bad r / lora_alpha / lora_dropout /
 *   target_modules, or any field of {@link REFUSED_ADAPTER_KEYS} away from its default
 *   (rank_pattern, alpha_pattern, DoRA, PiSSA / OLoRA / CorDA initialisation, aLoRA, ...).
 * @param files where `dir` is (default: the host's, io/files.ts)
 * @param onWarning called once when the file has keys qalign does not know, naming the file and
 *   them: they are ignored, as PEFT (0.14 and later) ignores the keys of a newer version with a
 *   warning (default: console.warn, as PEFT's warnings.warn)
 */
export async function readAdapterConfig(dir: string, files?: Files, onWarning: (message: string) => void = console.warn): Promise<LoraConfig> {
  files ??= await hostFiles();
  const file = files.join(dir, ADAPTER_CONFIG_FILE);
  let raw: unknown;
  try {
    raw = parseJson(await files.readText(file));
  } catch (e) {
    throw new CheckpointError(file, `cannot read a PEFT adapter config: ${(e as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new CheckpointError(file, "must hold a JSON object");
  const c = raw as Record<string, unknown>;
  const bad = (field: string, why: string) => new CheckpointError(file, `field "${field}" = ${JSON.stringify(c[field])}: ${why}`);
  if (c.peft_type !== "LORA") throw bad("peft_type", 'qalign loads LoRA adapters only (peft_type "LORA")');
  if (c.task_type !== undefined && c.task_type !== null && c.task_type !== "CAUSAL_LM") {
    throw bad("task_type", "only CAUSAL_LM adapters fit a causal language model");
  }
  const unknown = Object.keys(c).filter((k) => !KNOWN_ADAPTER_KEYS.has(k));
  if (unknown.length > 0) {
    onWarning(`${file}: ignored ${unknown.map((k) => `"${k}"`).join(", ")}, not a LoraConfig field qalign knows (PEFT ignores the fields of a newer version too); if a newer PEFT wrote it, check that the adapter's output is as expected`);
  }
  for (const [field, isDefault, why] of REFUSED_ADAPTER_KEYS) {
    if (c[field] !== undefined && !isDefault(c[field])) throw bad(field, `not supported: ${why}`);
  }
  const r = c.r;
  if (typeof r !== "number" || !Number.isInteger(r) || r < 1) throw bad("r", "must be a positive integer");
  const alpha = c.lora_alpha ?? 8;
  if (typeof alpha !== "number" || !(alpha > 0)) throw bad("lora_alpha", "must be a positive number");
  const dropout = c.lora_dropout ?? 0;
  if (typeof dropout !== "number" || !isLoraDropout(dropout)) throw bad("lora_dropout", `must be a number in ${LORA_DROPOUT_RANGE}`);
  const targets = c.target_modules ?? DEFAULT_TARGETS;
  const listOk = Array.isArray(targets) && targets.length > 0 && targets.every((t) => typeof t === "string");
  if (typeof targets !== "string" && !listOk) throw bad("target_modules", "must be a non-empty list of module names or a regex string");
  const rslora = c.use_rslora ?? false;
  if (typeof rslora !== "boolean") throw bad("use_rslora", "must be true or false");
  return { r, lora_alpha: alpha, lora_dropout: dropout, target_modules: targets as string[] | string, use_rslora: rslora };
}

/**
 * Refuses an adapter whose `r` is above min(in_features, out_features) of one of `modules`
 * (path, weight shape [out, in]; see rankExcess).
 * @param configFile the adapter_config.json named in the error
 * @throws CheckpointError naming the file, the field "r", the module and its limit
 */
export function checkAdapterRank(configFile: string, r: number, modules: Iterable<readonly [string, readonly number[]]>): void {
  const excess = rankExcess(r, modules);
  if (excess) throw new CheckpointError(configFile, `field "r" = ${r}: ${excess}`);
}

/**
 * Reads `<dir>/adapter_model.safetensors` for `config` applied to `model`, checking every key and
 * shape before any data is read.
 * @returns PEFT key -> f32 data, row-major
 * @throws CheckpointError naming the file and key: an r above a target's min(in_features,
 *   out_features) (naming adapter_config.json and its field "r"), no safetensors file (a pickled
 *   adapter_model.bin is not read), targets that match nothing in the model, a missing or an
 *   unexpected key, a shape that disagrees with the model (expected and found shapes).
 * @param files where `dir` is (default: the host's, io/files.ts)
 */
export async function readAdapterWeights(dir: string, model: LlamaModel, config: LoraConfig, files?: Files): Promise<Map<string, Float32Array>> {
  files ??= await hostFiles();
  const file = files.join(dir, ADAPTER_WEIGHTS_FILE);
  if (!(await files.exists(file))) {
    const pickled = (await files.exists(files.join(dir, "adapter_model.bin"))) ? " (adapter_model.bin is a pickle, which qalign does not read)" : "";
    throw new CheckpointError(file, `missing${pickled}`);
  }
  let targets;
  try {
    targets = selectTargets(model, config.target_modules);
  } catch (e) {
    throw new CheckpointError(files.join(dir, ADAPTER_CONFIG_FILE), (e as Error).message);
  }
  checkAdapterRank(files.join(dir, ADAPTER_CONFIG_FILE), config.r, targets.map(({ path, get }) => [path, get().linear.weight.shape] as const));
  const expected = new Map<string, number[]>();
  for (const { path, get } of targets) {
    const [out, inp] = get().linear.weight.shape as [number, number];
    expected.set(peftKey(path, "A"), [config.r, inp]);
    expected.set(peftKey(path, "B"), [out, config.r]);
  }
  const f = await openSafetensors(file, files);
  try {
    for (const [key, shape] of expected) {
      if (!f.has(key)) throw new CheckpointError(file, `missing (expected shape [${shape}])`, key);
      const found = f.info(key).shape;
      if (found.join() !== shape.join()) {
        throw new CheckpointError(file, `shape [${found}] disagrees with the model and adapter_config.json, which imply [${shape}]`, key);
      }
    }
    for (const key of f.names()) {
      if (!expected.has(key)) throw new CheckpointError(file, "unexpected tensor: not a lora_A/lora_B weight of a targeted module", key);
    }
    const out = new Map<string, Float32Array>();
    for (const key of expected.keys()) out.set(key, await f.readF32(key));
    return out;
  } finally {
    await f.close();
  }
}

/**
 * Writes `weights` (PEFT key -> f32 data, as from {@link readAdapterWeights}) into the adapter's
 * parameters in place, so that optimizers and views keep referring to the same tensors.
 * @throws RangeError when a parameter has no entry or one of another size.
 */
export function setAdapterWeights(adapter: LoraAdapter, weights: ReadonlyMap<string, Float32Array>): void {
  for (const [key, p] of adapter.namedParams()) {
    const data = weights.get(key);
    if (!data || data.length !== p.size) throw new RangeError(`setAdapterWeights: "${key}" is missing or not of ${p.size} values`);
    const src = tensor(data, { device: p.backend, shape: p.shape, dtype: p.dtype });
    p.backend.assign(p, src);
    src.dispose();
  }
}

/**
 * Loads a PEFT LoRA adapter folder onto `model`: validates adapter_config.json and every tensor
 * against the model first (so a bad adapter leaves the model untouched), then swaps in
 * LoraLinear modules holding the stored weights. The adapter starts in evaluation mode (no
 * dropout).
 * @param files where `dir` is (default: the host's, io/files.ts; in a browser URLs, picked files or the OPFS)
 * @param onWarning as readAdapterConfig's (its unknown keys; default console.warn)
 * @throws CheckpointError as {@link readAdapterConfig} and {@link readAdapterWeights}.
 */
export async function loadAdapter(model: LlamaModel, dir: string, files?: Files, onWarning?: (message: string) => void): Promise<LoraAdapter> {
  files ??= await hostFiles();
  const config = await readAdapterConfig(dir, files, onWarning);
  const weights = await readAdapterWeights(dir, model, config, files);
  const adapter = applyLora(model, config);
  setAdapterWeights(adapter, weights);
  return adapter;
}
