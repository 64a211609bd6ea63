import type { Backend } from "../tensor/backend.ts";
import { DeviceError, ShapeError, fmt } from "../tensor/errors.ts";
import { tensor } from "../tensor/ops/create.ts";
import { attention } from "../tensor/ops/attention.ts";
import { embedding } from "../tensor/ops/embedding.ts";
import { linear, type WeightLike } from "../tensor/ops/weights.ts";
import { rmsNorm } from "../tensor/ops/rmsnorm.ts";
import { rope } from "../tensor/ops/rope.ts";
import { concat } from "../tensor/ops/views.ts";
import { checkpoint } from "../tensor/checkpoint.ts";
import type { Rng } from "../tensor/random.ts";
import { keep } from "../tensor/scope.ts";
import type { Tensor } from "../tensor/tensor.ts";
import type { LlamaConfig } from "./config.ts";
import type { CheckpointTensor, LayerLinearPath, LayerWeightPath, TopModule } from "./params.ts";
import { checkpointTensors } from "./params.ts";
import { positionIds, ropeInvFreq, ropeTables } from "./rope.ts";

/**
 * The Llama-family decoder (llama, mistral, qwen2), top-down as in transformers'
 * modeling_llama.py; the three architectures differ only in config flags (qwen2: q/k/v biases;
 * mistral: sliding-window attention). Field names equal the checkpoint keys, so
 * `model.layers[3].self_attn.q_proj.weight` is `model.layers.3.self_attn.q_proj.weight`; the
 * list of modules, their shapes and biases is the table of params.ts.
 *
 * Shapes: B batch, T new tokens, P cached tokens, D hidden_size, H / Hkv heads, Dh head_dim,
 * F intermediate_size, V vocab_size, L num_hidden_layers.
 */

/**
 * A linear layer slot of the model: anything that maps [..., in] to [..., out] and holds a plain
 * Linear with the checkpoint's weight and bias. LoRA swaps a Linear for a wrapper of it.
 */
export interface LinearLike {
  forward(x: Tensor): Tensor;
  /** The plain Linear holding this layer's checkpoint weights: the layer itself, or the frozen one a wrapper adapts. */
  readonly linear: Linear;
}

/** nn.Linear: y = x W^T + b, weight [out, in], bias [out] or null. */
export class Linear implements LinearLike {
  constructor(
    public weight: WeightLike,
    public bias: Tensor | null = null,
  ) {}
  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }
  get linear(): Linear {
    return this;
  }
}

/** Keys and values of earlier tokens, per layer: [B, Hkv, P, Dh] each, plus the mask over them. */
export class KVCache {
  keys: (Tensor | null)[];
  values: (Tensor | null)[];
  /** attention_mask of the cached tokens [B][P]. */
  mask: number[][];

  constructor(numLayers: number, batch: number) {
    this.keys = new Array<Tensor | null>(numLayers).fill(null);
    this.values = new Array<Tensor | null>(numLayers).fill(null);
    this.mask = Array.from({ length: batch }, () => []);
  }

  /** Number of cached tokens P. */
  get length(): number {
    return this.mask[0]?.length ?? 0;
  }

  /** Appends k, v [B, Hkv, T, Dh] of layer `l` and returns the full [B, Hkv, P + T, Dh]. */
  append(l: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    const prevK = this.keys[l];
    const prevV = this.values[l];
    // The cache outlives the scope of the forward pass that fills it (see scope.ts).
    const fullK = keep(prevK ? concat([prevK, k], 2) : k.contiguous(true));
    const fullV = keep(prevV ? concat([prevV, v], 2) : v.contiguous(true));
    prevK?.dispose();
    prevV?.dispose();
    this.keys[l] = fullK;
    this.values[l] = fullV;
    return { k: fullK, v: fullV };
  }

  /**
   * A copy of this cache repeated for each of `batch` rows (this cache must have batch 1):
   * the shared k-shot prefix of an evaluation, reused by every item.
   */
  expand(batch: number): KVCache {
    const out = new KVCache(this.keys.length, batch);
    const rep = (t: Tensor | null) => (t ? keep(t.expand([batch, -1, -1, -1]).contiguous(true)) : null);
    out.keys = this.keys.map(rep);
    out.values = this.values.map(rep);
    out.mask = Array.from({ length: batch }, () => this.mask[0]!.slice());
    return out;
  }

  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t?.dispose();
    this.keys.fill(null);
    this.values.fill(null);
  }
}

/** What one forward pass needs besides the hidden states: rotary tables, key mask, cache. */
interface Context {
  cos: Tensor;
  sin: Tensor;
  /** f32 [B, P + T]: 1 for real tokens, 0 for padding; null when nothing is padded. */
  keyMask: Tensor | null;
  cache: KVCache | null;
}

/** Grouped-query self-attention (LlamaAttention / Qwen2Attention / MistralAttention). */
export class Attention {
  constructor(
    readonly config: LlamaConfig,
    readonly layerIndex: number,
    public q_proj: LinearLike,
    public k_proj: LinearLike,
    public v_proj: LinearLike,
    public o_proj: LinearLike,
  ) {}

  /** x [B, T, D] -> [B, T, D]. */
  forward(x: Tensor, ctx: Context): Tensor {
    const [B, T] = x.shape as [number, number, number];
    const { num_attention_heads: H, num_key_value_heads: Hkv, head_dim: Dh } = this.config;
    // [B, T, heads * Dh] -> [B, heads, T, Dh]
    const heads = (t: Tensor, n: number) => t.reshape([B, T, n, Dh]).permute([0, 2, 1, 3]);
    const q = rope(heads(this.q_proj.forward(x), H), ctx.cos, ctx.sin);
    let k = rope(heads(this.k_proj.forward(x), Hkv), ctx.cos, ctx.sin);
    let v = heads(this.v_proj.forward(x), Hkv);
    if (ctx.cache) ({ k, v } = ctx.cache.append(this.layerIndex, k, v));
    const o = attention(q, k, v, { keyMask: ctx.keyMask, window: this.config.sliding_window ?? 0 });
    return this.o_proj.forward(o.permute([0, 2, 1, 3]).reshape([B, T, H * Dh]));
  }
}

/** SiLU-gated MLP (LlamaMLP): down(silu(gate(x)) * up(x)), [B, T, D] -> [B, T, D]. */
export class Mlp {
  constructor(
    public gate_proj: LinearLike,
    public up_proj: LinearLike,
    public down_proj: LinearLike,
  ) {}
  forward(x: Tensor): Tensor {
    return this.down_proj.forward(this.gate_proj.forward(x).silu().mul(this.up_proj.forward(x)));
  }
}

/** A decoder layer's modules by their paths in the table of params.ts. */
export type LayerModules = { [P in LayerLinearPath]: LinearLike } & { [P in LayerWeightPath]: Tensor };

/** One pre-norm decoder layer (LlamaDecoderLayer). */
export class DecoderLayer {
  constructor(
    readonly config: LlamaConfig,
    public self_attn: Attention,
    public mlp: Mlp,
    public input_layernorm: Tensor,
    public post_attention_layernorm: Tensor,
  ) {}

  /** Layer `layerIndex` assembled from its modules (what the loader reads by the table). */
  static fromModules(config: LlamaConfig, layerIndex: number, m: LayerModules): DecoderLayer {
    const attn = new Attention(config, layerIndex, m["self_attn.q_proj"], m["self_attn.k_proj"], m["self_attn.v_proj"], m["self_attn.o_proj"]);
    const mlp = new Mlp(m["mlp.gate_proj"], m["mlp.up_proj"], m["mlp.down_proj"]);
    return new DecoderLayer(config, attn, mlp, m["input_layernorm"], m["post_attention_layernorm"]);
  }

  /** The Linear slot at a table path (`self_attn.q_proj`): the path walks the fields. */
  linearAt(path: LayerLinearPath): LinearLike {
    const [block, name] = path.split(".") as ["self_attn" | "mlp", string];
    return (this[block] as unknown as Record<string, LinearLike>)[name]!;
  }

  /** Puts `module` in the Linear slot at `path` (LoRA's module swap). */
  setLinearAt(path: LayerLinearPath, module: LinearLike): void {
    const [block, name] = path.split(".") as ["self_attn" | "mlp", string];
    (this[block] as unknown as Record<string, LinearLike>)[name] = module;
  }

  /** The bare weight at a table path (`input_layernorm`). */
  weightAt(path: LayerWeightPath): Tensor {
    return this[path];
  }

  /** x [B, T, D] -> x + attn(norm(x)), then + mlp(norm(.)). */
  forward(x: Tensor, ctx: Context): Tensor {
    const eps = this.config.rms_norm_eps;
    const h = x.add(this.self_attn.forward(rmsNorm(x, this.input_layernorm, eps), ctx));
    return h.add(this.mlp.forward(rmsNorm(h, this.post_attention_layernorm, eps)));
  }
}

export interface ForwardOptions {
  /** HF attention_mask [B][P + T] (1 real, 0 padding; left padding for batches). Default: all ones. */
  attentionMask?: readonly (readonly number[])[];
  /** Cache of earlier tokens; the new keys and values are appended to it. */
  cache?: KVCache;
  /** Also return the residual stream after the embedding and after every layer. */
  outputHiddenStates?: boolean;
  /** Compute logits for every position ("all", default) or only the last one ("last": [B, 1, V]). */
  logits?: "all" | "last" | "none";
}

export interface ForwardOutput {
  /** [B, T, V] (or [B, 1, V] with logits "last"); null with logits "none". */
  logits: Tensor | null;
  /**
   * With outputHiddenStates: L + 1 tensors [B, T, D]: the embedding output, then the residual
   * stream after each layer, before the final norm (HF's hidden_states, except that HF applies
   * the final norm to its last entry; here `finalNorm(hiddenStates[L])` gives that).
   */
  hiddenStates: Tensor[] | null;
}

/** LlamaForCausalLM and its relatives: embeddings, L decoder layers, final norm, lm_head. */
export class LlamaModel {
  readonly invFreq: Float64Array;
  /**
   * Activation checkpointing while training (src/tensor/checkpoint.ts): when set, each decoder
   * layer keeps only its input for backward and recomputes the rest there, `rngs` (dropout's
   * sources) replayed so the recomputation draws the same masks. Null: every intermediate kept.
   */
  gradientCheckpointing: { rngs: readonly Rng[] } | null = null;

  constructor(
    readonly config: LlamaConfig,
    readonly device: Backend,
    public embed_tokens: WeightLike,
    public layers: DecoderLayer[],
    public norm: Tensor,
    /** [V, D]; the embedding matrix itself when tie_word_embeddings. */
    public lm_head: WeightLike,
  ) {
    this.invFreq = ropeInvFreq(config);
  }

  /** The final RMSNorm, [..., D] -> [..., D]. */
  finalNorm(h: Tensor): Tensor {
    return rmsNorm(h, this.norm, this.config.rms_norm_eps);
  }

  /** Unembedding: h [..., D] -> logits [..., V] (lm_head, or the tied embedding). */
  unembed(h: Tensor): Tensor {
    return linear(h, this.lm_head);
  }

  /** A fresh KV cache for `batch` rows. */
  newCache(batch: number): KVCache {
    return new KVCache(this.config.num_hidden_layers, batch);
  }

  /**
   * input_ids i32 [B, T] -> logits [B, T, V] (see ForwardOptions). Records the autograd graph
   * when parameters require grad; wrap inference in `noGrad` and `tidy`.
   * @throws ShapeError when input_ids is not [B, T] i32, the mask's shape disagrees, or the
   *   sequence exceeds max_position_embeddings; DeviceError when input_ids are not on the
   *   model's device; RangeError naming the position for an id outside [0, V) when the ids are
   *   on the cpu device (on webgpu they cannot be read without a readback, and the embedding
   *   reads such ids as zero rows: loadTokenizer checks that a checkpoint's tokenizer fits V,
   *   and generate() checks its prompt on the host).
   */
  forward(inputIds: Tensor, opts: ForwardOptions = {}): ForwardOutput {
    if (inputIds.rank !== 2 || inputIds.dtype !== "i32") {
      throw new ShapeError("forward", `input_ids must be i32 [batch, seq], got ${inputIds.dtype} ${fmt(inputIds.shape)}`);
    }
    if (inputIds.backend !== this.device) {
      const where = inputIds.device === this.device.name ? `another ${this.device.name} device than the model` : `the ${inputIds.device} device but the model is on ${this.device.name}`;
      throw new DeviceError("forward", `input_ids are on ${where}; create them with { device: model.device }`);
    }
    checkHostIds(inputIds, this.config.vocab_size);
    const [B, T] = inputIds.shape as [number, number];
    const cache = opts.cache ?? null;
    const past = cache?.length ?? 0;
    const mask = opts.attentionMask ?? null;
    if (mask && (mask.length !== B || mask.some((row) => row.length !== past + T))) {
      throw new ShapeError("forward", `attention_mask must be [${B}][${past + T}] (cached + new tokens)`);
    }
    const limit = this.config.max_position_embeddings;
    if (past + T > limit) {
      throw new ShapeError("forward", `${past} cached + ${T} new tokens exceed max_position_embeddings ${limit} (config.json)`);
    }
    const fullMask = mask ?? Array.from({ length: B }, (_, b) => [...(cache?.mask[b] ?? []), ...new Array<number>(T).fill(1)]);
    const { cos, sin } = ropeTables(this.invFreq, positionIds(B, T, past, fullMask), this.device);
    const padded = fullMask.some((row) => row.some((m) => !m));
    const keyMask = padded ? tensor(fullMask.flat(), { device: this.device, shape: [B, past + T] }) : null;
    if (cache) cache.mask = fullMask.map((row) => row.slice());

    let x = embedding(this.embed_tokens, inputIds);
    const hidden: Tensor[] | null = opts.outputHiddenStates ? [x] : null;
    const ck = this.gradientCheckpointing;
    for (const layer of this.layers) {
      const ctx = { cos, sin, keyMask, cache };
      x = ck && !cache ? checkpoint((h) => layer.forward(h, ctx), x, ck.rngs) : layer.forward(x, ctx);
      hidden?.push(x);
    }
    const want = opts.logits ?? "all";
    let logits: Tensor | null = null;
    if (want !== "none") {
      const last = want === "last" ? x.slice(1, T - 1, T) : x;
      logits = this.unembed(this.finalNorm(last));
    }
    return { logits, hiddenStates: hidden };
  }

  /** The weight of a top module by its table path. */
  topWeight(path: TopModule["path"]): WeightLike {
    return { "model.embed_tokens": this.embed_tokens, "model.norm": this.norm, lm_head: this.lm_head }[path];
  }

  /** The tensor of the model that holds a checkpoint tensor, or null for a bias its Linear lacks. */
  tensorOf(t: CheckpointTensor): WeightLike | null {
    if (t.layer === null) return this.topWeight(t.module.path);
    const layer = this.layers[t.layer]!;
    if (t.module.kind === "weight") return layer.weightAt(t.module.path);
    const lin = layer.linearAt(t.module.path).linear;
    return t.part === "weight" ? lin.weight : lin.bias;
  }

  /**
   * Every weight by its checkpoint name, in state-dict order (params.ts's tables; the tied
   * lm_head appears once, as the embedding).
   */
  namedWeights(): Map<string, WeightLike> {
    const w = new Map<string, WeightLike>();
    for (const t of checkpointTensors(this.config)) {
      const tensor = this.tensorOf(t);
      if (tensor) w.set(t.key, tensor);
    }
    return w;
  }

  /** Frees every weight. */
  dispose(): void {
    for (const t of this.namedWeights().values()) t.dispose();
  }
}

/**
 * Checks input_ids [B, T] against the vocabulary [0, V) when their values are on the host (the
 * cpu device), which costs one pass over B*T ints; ids on webgpu are left to the caller, since
 * reading them would stall on a GPU readback.
 * @throws RangeError naming the position, the id and V.
 */
function checkHostIds(ids: Tensor, V: number): void {
  const data = ids.backend.peek(ids.storage);
  if (data === null) return;
  const [B, T] = ids.shape as [number, number];
  const [sb, st] = ids.strides as [number, number];
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const id = data[ids.offset + b * sb + t * st]!;
      if (id < 0 || id >= V) {
        throw new RangeError(
          `forward: input_ids[${b}][${t}] = ${id} is outside the vocabulary [0, ${V}) (config.json vocab_size); ` +
            "was it made by a tokenizer of another checkpoint?",
        );
      }
    }
  }
}

