import type { LlamaConfig } from "./config.ts";

/**
 * The Llama-family parameter tree, written once: every module of a checkpoint with the shape
 * its config implies, whether it has a bias, and whether LoRA may adapt it. The checkpoint's
 * expected weights (and so the loader's checks), the model's named weights and LoRA's module
 * slots are all derived from these two tables.
 *
 * Paths are Hugging Face module names (`LlamaForCausalLM` / `MistralForCausalLM` /
 * `Qwen2ForCausalLM` state dicts): a module's tensors are `<path>.weight` and, with a bias,
 * `<path>.bias`; decoder layer i prefixes `model.layers.{i}.`. The model classes in llama.ts
 * use the same names as fields, so a path also walks the object tree
 * (`layer.self_attn.q_proj`). Linear weights are [out, in] as in `nn.Linear`.
 *
 * Shape letters: V vocab_size, D hidden_size, F intermediate_size, H / Hkv heads, Dh head_dim,
 * L num_hidden_layers.
 */

/** "linear": a Linear layer slot (weight [out, in], optional bias [out]); "weight": a bare tensor (norms, embedding, lm_head). */
export type ModuleKind = "linear" | "weight";

/** One module of the tree. */
export interface ModuleSpec {
  readonly path: string;
  readonly kind: ModuleKind;
  /** The weight's shape implied by the config. */
  readonly shape: (c: LlamaConfig) => number[];
  /** Whether the checkpoint holds `<path>.bias` [out] (linear modules only). */
  readonly bias: (c: LlamaConfig) => boolean;
  /** Whether LoRA may adapt it (PEFT target name: the path's last segment). */
  readonly lora: boolean;
}

const noBias = () => false;
const qWidth = (c: LlamaConfig) => c.num_attention_heads * c.head_dim;
const kvWidth = (c: LlamaConfig) => c.num_key_value_heads * c.head_dim;
const hidden = (c: LlamaConfig) => [c.hidden_size];

/**
 * The modules of one decoder layer (LlamaDecoderLayer), in state-dict order: attention
 * projections (q/k/v biases when `qkv_bias`, qwen2; o's when `o_bias`, llama with
 * attention_bias), the SiLU-gated MLP, and the two RMSNorm weights.
 */
export const LAYER_MODULES = [
  { path: "self_attn.q_proj", kind: "linear", shape: (c) => [qWidth(c), c.hidden_size], bias: (c) => c.qkv_bias, lora: true },
  { path: "self_attn.k_proj", kind: "linear", shape: (c) => [kvWidth(c), c.hidden_size], bias: (c) => c.qkv_bias, lora: true },
  { path: "self_attn.v_proj", kind: "linear", shape: (c) => [kvWidth(c), c.hidden_size], bias: (c) => c.qkv_bias, lora: true },
  { path: "self_attn.o_proj", kind: "linear", shape: (c) => [c.hidden_size, qWidth(c)], bias: (c) => c.o_bias, lora: true },
  { path: "mlp.gate_proj", kind: "linear", shape: (c) => [c.intermediate_size, c.hidden_size], bias: noBias, lora: true },
  { path: "mlp.up_proj", kind: "linear", shape: (c) => [c.intermediate_size, c.hidden_size], bias: noBias, lora: true },
  { path: "mlp.down_proj", kind: "linear", shape: (c) => [c.hidden_size, c.intermediate_size], bias: noBias, lora: true },
  { path: "input_layernorm", kind: "weight", shape: hidden, bias: noBias, lora: false },
  { path: "post_attention_layernorm", kind: "weight", shape: hidden, bias: noBias, lora: false },
] as const satisfies readonly ModuleSpec[];

/** A module outside the layers; `afterLayers` places it in state-dict order, `present` says whether the checkpoint holds it. */
export interface TopModuleSpec extends ModuleSpec {
  readonly afterLayers: boolean;
  readonly present: (c: LlamaConfig) => boolean;
}

const always = () => true;

/**
 * The modules around the layers: the embedding [V, D] before them; the final norm [D] and
 * lm_head [V, D] after them, lm_head absent when `tie_word_embeddings` (the embedding is reused).
 */
export const TOP_MODULES = [
  { path: "model.embed_tokens", kind: "weight", shape: (c) => [c.vocab_size, c.hidden_size], bias: noBias, lora: false, afterLayers: false, present: always },
  { path: "model.norm", kind: "weight", shape: hidden, bias: noBias, lora: false, afterLayers: true, present: always },
  { path: "lm_head", kind: "weight", shape: (c) => [c.vocab_size, c.hidden_size], bias: noBias, lora: false, afterLayers: true, present: (c) => !c.tie_word_embeddings },
] as const satisfies readonly TopModuleSpec[];

/** A row of LAYER_MODULES. */
export type LayerModule = (typeof LAYER_MODULES)[number];
/** A row of TOP_MODULES. */
export type TopModule = (typeof TOP_MODULES)[number];
/** Path of a Linear slot of a decoder layer (`self_attn.q_proj`, ...). */
export type LayerLinearPath = Extract<LayerModule, { kind: "linear" }>["path"];
/** Path of a bare weight of a decoder layer (`input_layernorm`, ...). */
export type LayerWeightPath = Extract<LayerModule, { kind: "weight" }>["path"];
/** Path of a LoRA-targetable Linear of a decoder layer. */
export type LoraPath = Extract<LayerModule, { lora: true }>["path"];
/** The last segment of a path: PEFT's short module name (`q_proj`). */
export type ModuleName<P extends string> = P extends `${string}.${infer N}` ? ModuleName<N> : P;

/** The last segment of `path` (`self_attn.q_proj` -> `q_proj`). */
export function moduleName<P extends string>(path: P): ModuleName<P> {
  return path.slice(path.lastIndexOf(".") + 1) as ModuleName<P>;
}

/** One tensor of a checkpoint: its key and shape, and the module (of layer `layer`, or a top one) it belongs to. */
export type CheckpointTensor = { key: string; shape: number[]; part: "weight" | "bias" } & (
  | { layer: number; module: LayerModule }
  | { layer: null; module: TopModule }
);

/** The checkpoint key prefix of decoder layer `i`. */
export const layerPrefix = (i: number): string => `model.layers.${i}.`;

/** The tensors of one module: its weight, then its bias when the config has one. */
function* tensorsOf<M extends LayerModule | TopModule>(
  module: M,
  layer: M extends LayerModule ? number : null,
  c: LlamaConfig,
): Generator<CheckpointTensor> {
  const prefix = layer === null ? "" : layerPrefix(layer);
  const shape = module.shape(c);
  const at = { layer, module } as { layer: number; module: LayerModule } | { layer: null; module: TopModule };
  yield { key: `${prefix}${module.path}.weight`, shape, part: "weight", ...at };
  if (module.bias(c)) yield { key: `${prefix}${module.path}.bias`, shape: [shape[0]!], part: "bias", ...at };
}

/**
 * Every tensor a checkpoint of `config` holds, in state-dict order: the embedding, the layers'
 * modules, the final norm and lm_head (see the tables). Lazy: it yields one entry at a time,
 * so nothing proportional to the layer count is built unless the caller builds it (check a
 * config's count against the files' with `expectedWeightCount` first, which allocates nothing).
 */
export function* checkpointTensors(config: LlamaConfig): Generator<CheckpointTensor> {
  const top = TOP_MODULES.filter((m) => m.present(config));
  for (const m of top.filter((m) => !m.afterLayers)) yield* tensorsOf(m, null, config);
  for (let i = 0; i < config.num_hidden_layers; i++) {
    for (const m of LAYER_MODULES) yield* tensorsOf(m, i, config);
  }
  for (const m of top.filter((m) => m.afterLayers)) yield* tensorsOf(m, null, config);
}

/** [key, shape] of every tensor of checkpointTensors(config), lazily, in the same order. */
export function* expectedWeights(config: LlamaConfig): Generator<[string, number[]]> {
  for (const t of checkpointTensors(config)) yield [t.key, t.shape];
}

/** Number of tensors `expectedWeights(config)` yields, in closed form: L times a layer's count plus the top modules'. */
export function expectedWeightCount(config: LlamaConfig): number {
  const count = (mods: readonly ModuleSpec[]) => mods.reduce((n, m) => n + 1 + (m.bias(config) ? 1 : 0), 0);
  return config.num_hidden_layers * count(LAYER_MODULES) + count(TOP_MODULES.filter((m) => m.present(config)));
}

/**
 * The shape `config` implies for the checkpoint key `name`, or null when no such tensor belongs
 * to the architecture (a layer index >= L, an unknown module, a bias the config has none of).
 * Answers by parsing the key, without listing the expected weights.
 */
export function expectedShape(config: LlamaConfig, name: string): number[] | null {
  const layer = /^model\.layers\.(0|[1-9]\d*)\.(.+)$/.exec(name);
  const index = layer ? Number(layer[1]) : null;
  const rest = layer ? layer[2]! : name;
  const suffix = /\.(weight|bias)$/.exec(rest);
  if (!suffix) return null;
  const path = rest.slice(0, suffix.index);
  const found =
    index === null
      ? [...TOP_MODULES].filter((m) => m.present(config) && m.path === path).flatMap((m) => [...tensorsOf(m, null, config)])
      : index < config.num_hidden_layers
        ? [...LAYER_MODULES].filter((m) => m.path === path).flatMap((m) => [...tensorsOf(m, index, config)])
        : [];
  return found.find((t) => t.key === name)?.shape ?? null;
}
