import { Linear, type DecoderLayer, type LinearLike, type LlamaModel } from "../model/llama.ts";
import type { LlamaConfig } from "../model/config.ts";
import { LAYER_MODULES, layerPrefix, moduleName, type LoraPath, type ModuleName } from "../model/params.ts";
import { rand, zeros } from "../tensor/ops/create.ts";
import { dropout } from "../tensor/ops/dropout.ts";
import { linear } from "../tensor/ops/weights.ts";
import { Rng } from "../tensor/random.ts";
import type { Tensor } from "../tensor/tensor.ts";

/**
 * LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") as a module swap,
 * the way PEFT (`peft/tuners/lora/layer.py`, class `Linear`) and mlx-lm do it: a frozen linear
 * layer W [out, in] gets a trainable low-rank update B A, with A [r, in] and B [out, r]:
 *
 *   y = x W^T + b + (dropout(x) A^T B^T) * scaling,   scaling = lora_alpha / r
 *                                                     (lora_alpha / sqrt(r) with rsLoRA)
 *
 * B starts at zero, so the adapted model starts equal to the base model.
 */

/** The decoder layer's LoRA-targetable modules (the `lora` rows of params.ts's table), by path. */
const LORA_PATHS: readonly LoraPath[] = LAYER_MODULES.flatMap((m) => (m.lora ? [m.path] : []));
/** PEFT's short names of the linear layers LoRA can adapt, in table order (q_proj ... down_proj). */
export const LORA_MODULES: readonly LoraModuleName[] = LORA_PATHS.map(moduleName);
/** One of {@link LORA_MODULES}. */
export type LoraModuleName = ModuleName<LoraPath>;

/** The LoRA hyper-parameters, named as the fields of PEFT's `LoraConfig` (adapter_config.json). */
export interface LoraConfig {
  /** Rank of the update (PEFT default 8). */
  r: number;
  /** The update is scaled by lora_alpha / r (PEFT default 8; qalign's default 16, as the paper's runs). */
  lora_alpha: number;
  /** Dropout probability on the LoRA branch's input, in [0, 1). */
  lora_dropout: number;
  /**
   * Which linear layers to adapt, as PEFT matches them against module paths such as
   * `model.layers.3.self_attn.q_proj`: a list of names, each equal to the path or a suffix of it
   * after a dot (`"q_proj"`, `"self_attn.q_proj"`); or one string, a regular expression that must
   * match the whole path; or `"all-linear"` (all seven per layer; lm_head is never adapted).
   */
  target_modules: string[] | string;
  /** Rank-stabilised LoRA (Kalajdzievski 2023): scaling = lora_alpha / sqrt(r). */
  use_rslora: boolean;
}

/** qalign's defaults: the paper's LoRA setup (q_proj and v_proj, r 8, alpha 16, dropout 0.05). */
export const LORA_DEFAULTS: LoraConfig = {
  r: 8,
  lora_alpha: 16,
  lora_dropout: 0.05,
  target_modules: ["q_proj", "v_proj"],
  use_rslora: false,
};

/**
 * lora_dropout's range, written once for the command line, applyLora and adapter_config.json: a
 * probability of zeroing each input of the LoRA branch while training (torch's nn.Dropout, which
 * PEFT uses, scales the rest by 1 / (1 - p): p 1 would zero every input).
 */
export const LORA_DROPOUT_RANGE = "[0, 1)";
/** Whether `p` is in {@link LORA_DROPOUT_RANGE}. */
export const isLoraDropout = (p: number): boolean => p >= 0 && p < 1;

/** The factor of the low-rank branch: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA. */
export function loraScaling(config: Pick<LoraConfig, "r" | "lora_alpha" | "use_rslora">): number {
  return config.lora_alpha / (config.use_rslora ? Math.sqrt(config.r) : config.r);
}

/**
 * Why rank `r` is too high for one of `modules` (module path and weight shape [out_features,
 * in_features]), as a clause, or null when it fits every one. B A, [out, r] times [r, in], has
 * rank at most min(in_features, out_features): PEFT accepts a higher r, but the extra rank only
 * adds parameters and compute, never anything the update can express.
 */
export function rankExcess(r: number, modules: Iterable<readonly [path: string, shape: readonly number[]]>): string | null {
  for (const [path, [out, inp]] of modules) {
    const limit = Math.min(out!, inp!);
    if (r > limit) return `above ${limit}, min(in_features, out_features) of ${path} [${out}, ${inp}]: a LoRA update there has rank at most ${limit}`;
  }
  return null;
}

/**
 * The targeted linear modules of decoder layer 0 of a model of `config` (every layer has the
 * same shapes), by PEFT short name (`q_proj`): path and weight shape [out_features, in_features].
 */
export function targetedShapes(config: LlamaConfig, names: readonly string[]): [string, number[]][] {
  return LAYER_MODULES.flatMap((m) => (m.lora && names.includes(moduleName(m.path)) ? [[layerPrefix(0) + m.path, m.shape(config)] as [string, number[]]] : []));
}

/**
 * A frozen Linear plus a trainable low-rank update (PEFT `peft/tuners/lora/layer.py`,
 * `Linear.forward`). Parameters keep PEFT's names: `lora_A` [r, in], `lora_B` [out, r], float,
 * on the base weight's device.
 */
export class LoraLinear implements LinearLike {
  /**
   * Source of dropout masks while training; null in evaluation (PEFT's `module.eval()`), when
   * the branch sees x itself.
   */
  rng: Rng | null = null;

  /**
   * @param base the frozen layer, weight [out, in] (merged by `mergeLora`)
   * @param lora_A [r, in]
   * @param lora_B [out, r]
   * @param scaling see {@link loraScaling}
   * @param dropoutP probability in [0, 1)
   */
  constructor(
    readonly base: Linear,
    readonly lora_A: Tensor,
    readonly lora_B: Tensor,
    readonly scaling: number,
    readonly dropoutP: number,
  ) {}

  /** The frozen layer: its weights are the checkpoint's (LinearLike). */
  get linear(): Linear {
    return this.base;
  }

  /** x [..., in] -> [..., out]. */
  forward(x: Tensor): Tensor {
    const y = this.base.forward(x);
    const xd = this.rng ? dropout(x, this.dropoutP, this.rng) : x;
    // Scaling the rank-r activations instead of the out-wide result: r multiplies, not out.
    return y.add(linear(linear(xd, this.lora_A).mul(this.scaling), this.lora_B));
  }

  /** scaling * B A, the [out, in] update that merging adds to W (PEFT `get_delta_weight`). */
  deltaWeight(): Tensor {
    return this.lora_B.matmul(this.lora_A).mul(this.scaling);
  }
}

/** One adaptable linear layer of a model: its PEFT module path and how to read or swap it. */
export interface ModuleSlot {
  /** e.g. `model.layers.3.self_attn.q_proj` (the module's name inside LlamaForCausalLM). */
  path: string;
  get(): LinearLike;
  set(module: LinearLike): void;
}

function slotOf(layer: DecoderLayer, i: number, path: LoraPath): ModuleSlot {
  return { path: `${layerPrefix(i)}${path}`, get: () => layer.linearAt(path), set: (m) => layer.setLinearAt(path, m) };
}

/** Every adaptable linear layer of `model`, layer by layer in {@link LORA_MODULES} order. */
export function moduleSlots(model: LlamaModel): ModuleSlot[] {
  return model.layers.flatMap((layer, i) => LORA_PATHS.map((path) => slotOf(layer, i, path)));
}

/**
 * The slots that `target_modules` selects, with PEFT's matching rules (`check_target_module_exists`
 * in `peft/tuners/tuners_utils.py`); see {@link LoraConfig.target_modules}.
 * @throws RangeError when a listed name matches no module (PEFT only fails when nothing matches;
 *   a misspelt entry next to a valid one is an error here), or a regex matches nothing.
 */
export function selectTargets(model: LlamaModel, targets: string[] | string): ModuleSlot[] {
  const slots = moduleSlots(model);
  if (targets === "all-linear") return slots;
  if (typeof targets === "string") {
    const re = new RegExp(`^(?:${targets})$`);
    const hit = slots.filter((s) => re.test(s.path));
    if (hit.length === 0) throw new RangeError(`target_modules regex "${targets}" matches no module (paths look like ${slots[0]?.path})`);
    return hit;
  }
  const matches = (path: string, t: string) => path === t || path.endsWith(`.${t}`);
  for (const t of targets) {
    if (!slots.some((s) => matches(s.path, t))) {
      throw new RangeError(`target module "${t}" matches no module; LoRA can adapt ${LORA_MODULES.join(", ")}`);
    }
  }
  return slots.filter((s) => targets.some((t) => matches(s.path, t)));
}

/**
 * A model's LoRA modules, by module path, with their config: what `applyLora` and
 * `loadAdapter` return, what `saveAdapter` and the trainer take.
 */
export class LoraAdapter {
  constructor(
    readonly config: LoraConfig,
    /** Module path -> its LoraLinear, in model order. */
    readonly modules: ReadonlyMap<string, LoraLinear>,
  ) {}

  /** The trainable parameters: lora_A, lora_B of every module, in model order. */
  get params(): Tensor[] {
    return [...this.modules.values()].flatMap((m) => [m.lora_A, m.lora_B]);
  }

  /**
   * Parameters by their PEFT state-dict key,
   * `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight` (PEFT's
   * `get_peft_model_state_dict` drops the adapter name "default").
   */
  namedParams(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [path, m] of this.modules) {
      out.set(peftKey(path, "A"), m.lora_A);
      out.set(peftKey(path, "B"), m.lora_B);
    }
    return out;
  }

  /** Training mode (dropout masks drawn from `rng`) or, with null, evaluation mode (no dropout). */
  setDropoutRng(rng: Rng | null): void {
    for (const m of this.modules.values()) m.rng = rng;
  }
}

/** The PEFT state-dict key of a module's lora_A or lora_B weight. */
export function peftKey(path: string, which: "A" | "B"): string {
  return `base_model.model.${path}.lora_${which}.weight`;
}

/** Options of {@link applyLora}: a partial {@link LoraConfig} plus the initialisation seed. */
export interface ApplyLoraOptions extends Partial<LoraConfig> {
  /** Seed of lora_A's initialisation (default 0). */
  seed?: number;
}

/**
 * Wraps the selected linear layers of `model` in LoraLinear modules, in place, and freezes every
 * base weight (requiresGrad false). Initialisation as PEFT's `reset_lora_parameters` with
 * `init_lora_weights=True`: lora_A ~ kaiming_uniform_(a = sqrt(5)), which for a [r, in] weight
 * is U(-1/sqrt(in), 1/sqrt(in)) (gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / in)), drawn
 * module after module from one seeded Rng; lora_B = 0. Parameters are f32 on the model's device.
 * @returns the adapter; its `params` are the trainable tensors (requiresGrad true)
 * @throws RangeError for a bad rank (below 1, or above a target's min(in_features, out_features)),
 *   alpha or dropout, a target that matches nothing, or a
 *   model that already carries LoRA modules.
 */
export function applyLora(model: LlamaModel, opts: ApplyLoraOptions = {}): LoraAdapter {
  const { seed = 0, ...rest } = opts;
  const config: LoraConfig = { ...LORA_DEFAULTS, ...rest };
  if (!Number.isInteger(config.r) || config.r < 1) throw new RangeError(`LoRA r must be a positive integer, got ${config.r}`);
  if (!(config.lora_alpha > 0)) throw new RangeError(`lora_alpha must be positive, got ${config.lora_alpha}`);
  if (!isLoraDropout(config.lora_dropout)) throw new RangeError(`lora_dropout must be in ${LORA_DROPOUT_RANGE}, got ${config.lora_dropout}`);
  if (loraModules(model).size > 0) throw new RangeError("applyLora: the model already has LoRA modules");
  // All checks before the first swap, so that a failure leaves the model untouched.
  const targets = selectTargets(model, config.target_modules).map((slot) => {
    const base = slot.get();
    if (!(base instanceof Linear)) throw new RangeError(`applyLora: ${slot.path} is not a plain Linear`);
    return { slot, base };
  });
  const excess = rankExcess(config.r, targets.map(({ slot, base }) => [slot.path, base.weight.shape] as const));
  if (excess) throw new RangeError(`applyLora: LoRA r ${config.r} is ${excess}`);
  for (const w of model.namedWeights().values()) w.requiresGrad = false;
  const rng = new Rng(seed);
  const scaling = loraScaling(config);
  const modules = new Map<string, LoraLinear>();
  for (const { slot, base } of targets) {
    const [out, inp] = base.weight.shape as [number, number];
    const bound = 1 / Math.sqrt(inp);
    const A = rand([config.r, inp], { device: model.device, rng, low: -bound, high: bound, requiresGrad: true });
    const B = zeros([out, config.r], { device: model.device, requiresGrad: true });
    const lora = new LoraLinear(base, A, B, scaling, config.lora_dropout);
    slot.set(lora);
    modules.set(slot.path, lora);
  }
  return new LoraAdapter(config, modules);
}

/** The LoRA modules present in `model`, by module path (empty when it has none). */
export function loraModules(model: LlamaModel): Map<string, LoraLinear> {
  const out = new Map<string, LoraLinear>();
  for (const s of moduleSlots(model)) {
    const m = s.get();
    if (m instanceof LoraLinear) out.set(s.path, m);
  }
  return out;
}
