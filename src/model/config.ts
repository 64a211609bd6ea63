/**
 * `config.json` of a Llama-family checkpoint (llama, mistral, qwen2), parsed strictly into a
 * typed {@link LlamaConfig} with Hugging Face field names and HF's defaults. What follows from
 * a config lives beside it: the parameter tree and its shapes in params.ts; RoPE's fields
 * (`rope_theta`, `rope_scaling`) are parsed, with the rest of RoPE, in rope.ts.
 *
 * Sources: transformers' `configuration_{llama,mistral,qwen2}.py`, `modeling_rope_utils.py`,
 * `modeling_{llama,mistral,qwen2}.py`.
 */
import { hostFiles, type Files } from "../io/files.ts";
import { parseJson } from "../io/json.ts";
import { parseRope, type RopeScaling } from "./rope.ts";
import { CheckpointError } from "./safetensors.ts";

/** The architectures this loader understands, by HF `model_type`. */
export const MODEL_TYPES = ["llama", "mistral", "qwen2"] as const;
/** One of {@link MODEL_TYPES}: picks the architecture's details (biases, sliding window). */
export type ModelType = (typeof MODEL_TYPES)[number];

/**
 * A validated Llama-family config. Field names are HF's; defaults are filled in as HF does.
 * Shape letters: D = hidden_size, F = intermediate_size, L = num_hidden_layers,
 * H = num_attention_heads, Hkv = num_key_value_heads, Dh = head_dim, V = vocab_size.
 */
export interface LlamaConfig {
  model_type: ModelType;
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  /** Defaults to `num_attention_heads`; divides it (grouped-query attention). */
  num_key_value_heads: number;
  /** Defaults to `hidden_size / num_attention_heads`; even (rotate_half splits it in two). */
  head_dim: number;
  rms_norm_eps: number;
  /** RoPE base θ; default 10000. */
  rope_theta: number;
  rope_scaling: RopeScaling | null;
  max_position_embeddings: number;
  tie_word_embeddings: boolean;
  /** Derived, not an HF key: q/k/v projections have biases (qwen2 always; llama per `attention_bias`). */
  qkv_bias: boolean;
  /** Derived, not an HF key: o_proj has a bias (llama with `attention_bias` only). */
  o_bias: boolean;
  /** Keys a query may attend to, itself included (mistral); null = full causal attention. */
  sliding_window: number | null;
  /** HF `torch_dtype` (or `dtype` in newer configs), e.g. "bfloat16"; null when absent. */
  torch_dtype: string | null;
  bos_token_id: number | null;
  /** Always a list (HF allows a number or a list); empty when absent. */
  eos_token_id: number[];
  hidden_act: "silu";
}

/** HF's default `max_position_embeddings` per architecture (each `configuration_*.py`). */
const MAX_POSITIONS: Record<ModelType, number> = { llama: 2048, mistral: 4096 * 32, qwen2: 32768 };
/** `MistralConfig`'s default `sliding_window` when the key is absent (null switches it off). */
const MISTRAL_SLIDING_WINDOW = 4096;

/** Typed access to a raw JSON object whose errors name the file and the field. */
export class Fields {
  constructor(
    readonly file: string,
    private readonly raw: Record<string, unknown>,
    private readonly prefix = "",
  ) {}

  fail(field: string, message: string): never {
    throw new CheckpointError(this.file, `field "${this.prefix}${field}" ${message}`);
  }

  private get(field: string, what: string): unknown {
    const v = this.raw[field];
    if (v === undefined) this.fail(field, `is missing (expected ${what})`);
    return v;
  }

  private bad(field: string, what: string, v: unknown): never {
    this.fail(field, `must be ${what}, got ${JSON.stringify(v)} (${v === null ? "null" : typeof v})`);
  }

  /** Present and not null. */
  has(field: string): boolean {
    return this.raw[field] !== undefined && this.raw[field] !== null;
  }

  /** Present and explicitly null (HF's way to switch a defaulted feature off). */
  isNull(field: string): boolean {
    return this.raw[field] === null;
  }

  /** A positive integer; `fallback` when the field is absent (required when no fallback). */
  int(field: string, fallback?: number): number {
    if (fallback !== undefined && !this.has(field)) return fallback;
    const v = this.get(field, "a positive integer");
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) this.bad(field, "a positive integer", v);
    return v;
  }

  /** A positive finite number. */
  num(field: string, fallback?: number): number {
    if (fallback !== undefined && !this.has(field)) return fallback;
    const v = this.get(field, "a positive number");
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) this.bad(field, "a positive number", v);
    return v;
  }

  bool(field: string, fallback: boolean): boolean {
    if (!this.has(field)) return fallback;
    const v = this.raw[field];
    if (typeof v !== "boolean") this.bad(field, "true or false", v);
    return v;
  }

  /** A non-negative integer token id, or null when absent. */
  tokenId(field: string): number | null {
    if (!this.has(field)) return null;
    const v = this.raw[field];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) this.bad(field, "a token id", v);
    return v;
  }

  /** A list of token ids from a number or an array; [] when absent. */
  tokenIds(field: string): number[] {
    if (!this.has(field)) return [];
    const v = this.raw[field];
    const ids = Array.isArray(v) ? v : [v];
    if (!ids.every((x) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0)) {
      this.bad(field, "a token id or a list of token ids", v);
    }
    return ids as number[];
  }

  string(field: string): string | null {
    if (!this.has(field)) return null;
    const v = this.raw[field];
    if (typeof v !== "string") this.bad(field, "a string", v);
    return v;
  }

  /** A nested object, e.g. `rope_scaling`, whose errors read `rope_scaling.factor`. */
  object(field: string): Fields | null {
    if (!this.has(field)) return null;
    const v = this.raw[field];
    if (typeof v !== "object" || Array.isArray(v)) this.bad(field, "an object or null", v);
    return new Fields(this.file, v as Record<string, unknown>, `${this.prefix}${field}.`);
  }
}

/**
 * The float dtype names torch knows (`torch.float32`, its alias `torch.float`, ...), each to the
 * canonical name transformers' save_pretrained writes. config.json's `torch_dtype` only describes
 * the checkpoint (the loader reads each tensor's own dtype from its safetensors header), so every
 * float name is accepted; float64 weights are read as float32, as F64 tensors are.
 */
export const TORCH_DTYPES: Readonly<Record<string, "float32" | "float16" | "bfloat16" | "float64">> = {
  float32: "float32",
  float: "float32",
  float16: "float16",
  half: "float16",
  bfloat16: "bfloat16",
  float64: "float64",
  double: "float64",
};

/**
 * `torch_dtype` (or `dtype`, transformers >= 4.56) in its canonical name, null when absent. A
 * name torch has no float dtype of is refused as transformers refuses it: its PretrainedConfig
 * turns the name into `getattr(torch, name)`, which fails for "int3".
 */
function torchDType(f: Fields): string | null {
  const field = f.has("torch_dtype") ? "torch_dtype" : "dtype";
  const v = f.string(field);
  if (v === null) return null;
  const canonical = Object.hasOwn(TORCH_DTYPES, v) ? TORCH_DTYPES[v] : undefined;
  if (canonical === undefined) f.fail(field, `is '${v}', not a float dtype torch knows: one of ${Object.keys(TORCH_DTYPES).join(", ")}`);
  return canonical;
}

/**
 * Validates a parsed `config.json` object.
 * @param raw the JSON value; `file` is only used in error messages
 * @throws CheckpointError naming the file and field: unknown `model_type` (listing the supported
 *   ones), a missing required field, a wrong type, an unsupported `rope_scaling` type,
 *   `hidden_act` other than "silu", `mlp_bias` true, qwen2 `use_sliding_window` true,
 *   heads that do not divide (`num_attention_heads % num_key_value_heads`), an odd head_dim, a
 *   `torch_dtype` that names no float dtype of torch (TORCH_DTYPES).
 */
export function parseConfig(raw: unknown, file: string): LlamaConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new CheckpointError(file, "config must be a JSON object");
  }
  const f: Fields = new Fields(file, raw as Record<string, unknown>); // typed: lets `fail` narrow
  const type = f.string("model_type");
  if (type === null) f.fail("model_type", `is missing (supported: ${MODEL_TYPES.join(", ")})`);
  if (!(MODEL_TYPES as readonly string[]).includes(type)) {
    f.fail("model_type", `is '${type}', which is not supported; supported: ${MODEL_TYPES.join(", ")}`);
  }
  const model_type = type as ModelType;
  const hidden_act = f.string("hidden_act") ?? "silu";
  if (hidden_act !== "silu") f.fail("hidden_act", `is '${hidden_act}'; only "silu" is supported`);
  if (f.bool("mlp_bias", false)) f.fail("mlp_bias", "is true; MLP biases are not supported");

  const hidden_size = f.int("hidden_size");
  const num_attention_heads = f.int("num_attention_heads");
  const num_key_value_heads = f.int("num_key_value_heads", num_attention_heads);
  if (num_attention_heads % num_key_value_heads !== 0) {
    f.fail("num_key_value_heads", `(${num_key_value_heads}) must divide num_attention_heads (${num_attention_heads})`);
  }
  if (!f.has("head_dim") && hidden_size % num_attention_heads !== 0) {
    f.fail("head_dim", `is missing and hidden_size (${hidden_size}) is not divisible by num_attention_heads (${num_attention_heads})`);
  }
  const head_dim = f.int("head_dim", hidden_size / num_attention_heads);
  if (head_dim % 2 !== 0) f.fail("head_dim", `(${head_dim}) must be even for rotary embeddings`);

  // Attention biases: modeling_qwen2.py hard-codes q/k/v bias and no o bias; modeling_llama.py
  // gives all four projections `bias=config.attention_bias`; modeling_mistral.py has none.
  const attention_bias = f.bool("attention_bias", false);
  if (model_type === "mistral" && attention_bias) f.fail("attention_bias", "is true; mistral has no attention biases");
  const qkv_bias = model_type === "qwen2" || attention_bias;
  const o_bias = model_type === "llama" && attention_bias;

  // Sliding window: mistral's `sliding_window` (null = off); qwen2 ignores it unless
  // `use_sliding_window`, which applies it to some layers only and is not supported here.
  let sliding_window: number | null = null;
  if (model_type === "mistral") {
    sliding_window = f.isNull("sliding_window") ? null : f.int("sliding_window", MISTRAL_SLIDING_WINDOW);
  } else if (model_type === "qwen2" && f.bool("use_sliding_window", false)) {
    f.fail("use_sliding_window", "is true; per-layer sliding windows (max_window_layers) are not supported");
  }

  return {
    model_type,
    vocab_size: f.int("vocab_size"),
    hidden_size,
    intermediate_size: f.int("intermediate_size"),
    num_hidden_layers: f.int("num_hidden_layers"),
    num_attention_heads,
    num_key_value_heads,
    head_dim,
    rms_norm_eps: f.num("rms_norm_eps", 1e-6),
    ...parseRope(f),
    max_position_embeddings: f.int("max_position_embeddings", MAX_POSITIONS[model_type]),
    tie_word_embeddings: f.bool("tie_word_embeddings", false),
    qkv_bias,
    o_bias,
    sliding_window,
    torch_dtype: torchDType(f),
    bos_token_id: f.tokenId("bos_token_id"),
    eos_token_id: f.tokenIds("eos_token_id"),
    hidden_act: "silu",
  };
}

/**
 * Reads and validates `<dir>/config.json`.
 * @param files where `dir` is (default: the host's, io/files.ts)
 * @throws CheckpointError when the file is missing or not JSON, or as {@link parseConfig}.
 */
export async function loadConfig(dir: string, files?: Files): Promise<LlamaConfig> {
  files ??= await hostFiles();
  const file = files.join(dir, "config.json");
  let text: string;
  try {
    text = await files.readText(file);
  } catch (e) {
    throw new CheckpointError(file, `cannot read: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parseJson(text);
  } catch (e) {
    throw new CheckpointError(file, `not valid JSON: ${(e as Error).message}`);
  }
  return parseConfig(raw, file);
}
