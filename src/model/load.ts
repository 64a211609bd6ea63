import type { Files } from "../io/files.ts";
import type { Backend } from "../tensor/backend.ts";
import { defaultDevice } from "../tensor/device.ts";
import { DeviceLimitError } from "../tensor/errors.ts";
import { f32ToBf16, f32ToF16 } from "../tensor/half.ts";
import { dequantizeNf4, quantizeNf4 } from "../tensor/nf4.ts";
import { tensor } from "../tensor/ops/create.ts";
import type { WeightLike } from "../tensor/ops/weights.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { PackedWeight, WEIGHT_COL_MULTIPLE, assertWeightDType, type HostWeight, type WeightDType } from "../tensor/weight.ts";
import { resolveModel, type HubOptions } from "./hub.ts";
import { bnbPackedShape, isBnb4bit, isBnbCompanion, readBnb4bit } from "./bnb.ts";
import { loadConfig, type LlamaConfig } from "./config.ts";
import { DecoderLayer, Linear, LlamaModel, type LayerModules } from "./llama.ts";
import { LAYER_MODULES, expectedShape, expectedWeightCount, expectedWeights, layerPrefix } from "./params.ts";
import { CheckpointError, openCheckpoint, type Checkpoint } from "./safetensors.ts";

/**
 * Loads a Hugging Face Llama-family checkpoint folder (config.json + model.safetensors or a
 * sharded index) onto a device, strictly: every expected weight must exist with its expected
 * shape, checked for all tensors before any is read (nanoGPT's and MLX's loaders do the same).
 * Weights are read one at a time by byte range, so peak host memory is about the largest tensor.
 *
 * Weight matrices are stored on the device in the `dtype` load option (src/tensor/weight.ts),
 * by default the checkpoint's own: F32 as f32 tensors, BF16 and F16 kept in 16 bits, weights
 * saved 4-bit by bitsandbytes (bnb.ts) as NF4. With dtype "nf4" the decoder's Linear weights are
 * quantized at load (bitsandbytes' algorithm, src/tensor/nf4.ts) and, as transformers does, the
 * embedding and lm_head keep the checkpoint's dtype unless `quantizeEmbeddings`. Norm weights
 * and biases are always f32 tensors (they are vectors: a few KB).
 */

/** Keys that HF checkpoints may carry and that the model does not use. */
const IGNORED = [/\.rotary_emb\.inv_freq$/];

/** The config.json sizes that enter tensor shapes, as `field value` pairs for an error message. */
function sizeFields(config: LlamaConfig): string {
  const fields = ["vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"] as const;
  return fields.map((f) => `${f} ${config[f]}`).join(", ");
}

/**
 * Checks the checkpoint against the config: num_hidden_layers against the layers the files hold
 * first (so that a hostile value costs nothing), then missing tensors, shape mismatches, unexpected
 * keys. Every loop below is bounded by the files' own tensor count.
 * @throws CheckpointError naming config.json and num_hidden_layers when the config implies more
 *   layers than the files hold; else naming the file, the tensor, the expected and found
 *   shapes and the config sizes behind them.
 */
export function validateCheckpoint(config: LlamaConfig, ckpt: Checkpoint, dir: string): void {
  const held = ckpt.names();
  // Layers the files hold: one past the highest layer index of their keys.
  const layers = held.reduce((n, name) => Math.max(n, Number(/^model\.layers\.(\d+)\./.exec(name)?.[1] ?? -1) + 1), 0);
  if (config.num_hidden_layers > layers) {
    throw new CheckpointError(
      `${dir}/config.json`,
      `field "num_hidden_layers" is ${config.num_hidden_layers}, which implies ${expectedWeightCount(config)} tensors, but the checkpoint holds ${held.length} tensors in ${layers} layers`,
    );
  }
  // From here L <= layers, and the lazy walk below stops at the first missing tensor, so it
  // visits at most one tensor more than the files hold.
  for (const [name, shape] of expectedWeights(config)) {
    if (!ckpt.has(name)) {
      const untied = name === "lm_head.weight" ? "; config.json's tie_word_embeddings is false" : "";
      throw new CheckpointError(dir, `missing tensor (expected shape [${shape}])${untied}`, name);
    }
    const info = ckpt.info(name);
    if (isBnb4bit(ckpt, name)) {
      if (info.dtype !== "U8" || info.shape.join() !== bnbPackedShape(shape).join()) {
        throw new CheckpointError(info.file, `a 4-bit weight of [${shape}] is saved as U8 [${bnbPackedShape(shape)}], found ${info.dtype} [${info.shape}]`, name);
      }
    } else if (info.shape.join() !== shape.join()) {
      throw new CheckpointError(info.file, `shape [${info.shape}] disagrees with config.json, which implies [${shape}] (${sizeFields(config)})`, name);
    }
  }
  for (const name of held) {
    if (expectedShape(config, name) !== null || IGNORED.some((re) => re.test(name)) || isBnbCompanion(ckpt, name)) continue;
    // A tied checkpoint may still store lm_head.weight (a copy of the embedding); HF ignores it.
    if (name === "lm_head.weight" && config.tie_word_embeddings) continue;
    throw new CheckpointError(ckpt.info(name).file, "unexpected tensor: not part of this architecture", name);
  }
}

/** Options of {@link loadModel}; those of {@link HubOptions} apply when the model is a Hub id. */
export interface LoadOptions extends HubOptions {
  device?: Backend;
  /** How weight matrices are stored on the device; default: as the checkpoint stores them. */
  dtype?: WeightDType;
  /** With dtype "nf4", quantize the embedding and lm_head too (they keep the checkpoint's dtype otherwise). */
  quantizeEmbeddings?: boolean;
  /**
   * Called with (0, total) before the first tensor is read and after each one, with the bytes of
   * tensor data read so far and the total the model reads (as stored on disk: 2 bytes per BF16
   * value), for a progress line.
   */
  onProgress?: (bytesRead: number, totalBytes: number) => void;
  /**
   * Where the checkpoint folder is: the host's files by default (Node's file system; in a
   * browser, URLs against the page's location), or e.g. io/web_files.ts's blobFiles for files
   * a user picked (then `model` names a folder of these files, never a Hub id). Only the byte
   * ranges of the tensors are read.
   */
  files?: Files;
  /**
   * Called with each warning about the checkpoint (it loads nonetheless): a tied checkpoint
   * whose stored lm_head.weight differs from the embedding. The library prints nothing itself.
   */
  onWarning?: (message: string) => void;
}

/** Bytes per read when comparing two stored tensors: bounded host memory for any tensor size. */
const COMPARE_CHUNK = 1 << 22;

/**
 * Whether tensors `a` and `b` of the checkpoint hold the same dtype, shape and stored bytes,
 * read COMPARE_CHUNK bytes at a time (never a whole tensor in host memory).
 */
async function sameStoredTensor(ckpt: Checkpoint, a: string, b: string): Promise<boolean> {
  const [ia, ib] = [ckpt.info(a), ckpt.info(b)];
  if (ia.dtype !== ib.dtype || ia.shape.join() !== ib.shape.join()) return false;
  const bytes = ia.byteRange[1] - ia.byteRange[0];
  for (let at = 0; at < bytes; at += COMPARE_CHUNK) {
    const end = Math.min(at + COMPARE_CHUNK, bytes);
    const [x, y] = await Promise.all([ckpt.readRawRange(a, at, end), ckpt.readRawRange(b, at, end)]);
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  }
  return true;
}

/** The decoder Linear weights that NF4 quantizes (transformers' bitsandbytes integration replaces every nn.Linear but lm_head). */
const QUANTIZABLE = /\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$/;

/**
 * How tensor `name` is stored in the checkpoint, as a weight dtype: "nf4" for a bitsandbytes
 * 4-bit weight (bnb.ts), "bf16"/"f16" for BF16/F16, else "f32" (F32, F64 and the integer dtypes,
 * which readF32 converts or refuses).
 * @throws CheckpointError when `name` is not in the checkpoint, or is stored FP4 (unsupported).
 */
export function storedDType(ckpt: Checkpoint, name: string): WeightDType {
  if (isBnb4bit(ckpt, name)) return "nf4";
  const d = ckpt.info(name).dtype;
  return d === "BF16" ? "bf16" : d === "F16" ? "f16" : "f32";
}

/**
 * The device dtype of tensor `name` [shape] stored as `stored`, under `opts` (see the file
 * comment): vectors (norms, biases) f32; matrices as `opts.dtype`, else as stored; with dtype
 * "nf4", only the decoder's Linear weights unless `quantizeEmbeddings` (as transformers'
 * bitsandbytes integration). A pure decision: it throws nothing (loadModel checks the columns).
 */
export function deviceDType(name: string, shape: readonly number[], stored: WeightDType, opts: Pick<LoadOptions, "dtype" | "quantizeEmbeddings">): WeightDType {
  if (shape.length !== 2) return "f32";
  if (opts.dtype === undefined) return stored;
  if (opts.dtype === "nf4" && !QUANTIZABLE.test(name) && !opts.quantizeEmbeddings) return stored;
  return opts.dtype;
}

/**
 * Reads matrix `name` [rows, cols] from the checkpoint into its device form `target`: f32
 * values, or a host weight (16-bit patterns copied as stored when the dtypes agree, else
 * rounded to nearest even; NF4 codes as stored, else quantized from the f32 values).
 */
async function readMatrix(ckpt: Checkpoint, name: string, shape: [number, number], target: WeightDType): Promise<Float32Array | HostWeight> {
  const stored = storedDType(ckpt, name);
  if (stored === target && target !== "f32" && target !== "nf4") return { dtype: target, bits: new Uint16Array((await ckpt.readRaw(name)).buffer) };
  let values: Float32Array;
  if (stored === "nf4") {
    const q = await readBnb4bit(ckpt, name, shape);
    if (target === "nf4") return { dtype: "nf4", ...q };
    values = dequantizeNf4(q, shape[0] * shape[1]);
  } else {
    values = await ckpt.readF32(name);
  }
  if (target === "f32") return values;
  if (target === "nf4") return { dtype: "nf4", ...quantizeNf4(values) };
  return { dtype: target, bits: target === "bf16" ? f32ToBf16(values) : f32ToF16(values) };
}

/**
 * Loads checkpoint `model` into a LlamaModel on `opts.device` (default: the default device):
 * a folder (or, in a page, a URL), or a Hub id "org/name" as transformers' `from_pretrained`
 * takes it (no such local folder: downloaded into the host's cache first, or found there, see
 * hub.ts's resolveModel; `opts.revision`, `endpoint`, `onDownload`, `signal` steer it).
 * @throws CheckpointError naming the repository, the file and the HTTP status when a download
 *   fails (before any weight is read); for a bad config.json, a malformed or truncated safetensors file, a
 *   missing shard or tensor, a shape that disagrees with the config, a bad 4-bit quant state,
 *   or a matrix whose columns do not suit a packed dtype; all before any compute. DTypeError
 *   for an unknown `dtype`.
 */
export async function loadModel(model: string, opts: LoadOptions = {}): Promise<LlamaModel> {
  const device = opts.device ?? defaultDevice();
  if (opts.dtype !== undefined) assertWeightDType("loadModel", opts.dtype);
  const { dir, files } = await resolveModel(model, opts);
  const config = await loadConfig(dir, files);
  const ckpt = await openCheckpoint(dir, files);
  // Weights uploaded so far, freed if a later read fails (a short read, an I/O error).
  const loaded: WeightLike[] = [];
  try {
    validateCheckpoint(config, ckpt, dir);
    // transformers ties lm_head to the embedding whatever the file stores; say so when they differ.
    if (opts.onWarning && config.tie_word_embeddings && ckpt.has("lm_head.weight") && !(await sameStoredTensor(ckpt, "lm_head.weight", "model.embed_tokens.weight"))) {
      opts.onWarning(
        `${ckpt.info("lm_head.weight").file}: lm_head.weight differs from model.embed_tokens.weight, and config.json's tie_word_embeddings is true: the embedding is used as lm_head (as transformers does)`,
      );
    }
    // Each tensor's device dtype, decided (and checked against the packed layouts) once.
    const targets = new Map<string, WeightDType>();
    for (const [name, shape] of expectedWeights(config)) {
      const target = deviceDType(name, shape, storedDType(ckpt, name), opts);
      if (target !== "f32" && shape[1]! % WEIGHT_COL_MULTIPLE !== 0) {
        throw new CheckpointError(ckpt.info(name).file, `[${shape}] cannot be stored ${target}: its columns are not a multiple of ${WEIGHT_COL_MULTIPLE} (load with dtype "f32")`, name);
      }
      targets.set(name, target);
    }
    // Validated: every key below exists with the shape expectedShape gives.
    const bytes = (name: string) => ckpt.info(name).byteRange[1] - ckpt.info(name).byteRange[0];
    const totalBytes = [...targets.keys()].reduce((sum, name) => sum + bytes(name), 0);
    let bytesRead = 0;
    opts.onProgress?.(0, totalBytes);
    const read = (name: string) => {
      bytesRead += bytes(name);
      opts.onProgress?.(bytesRead, totalBytes);
    };
    const vector = async (name: string): Promise<Tensor> => {
      const t = tensor(await ckpt.readF32(name), { device, shape: expectedShape(config, name)! });
      loaded.push(t);
      read(name);
      return t;
    };
    const matrix = async (name: string): Promise<WeightLike> => {
      const shape = expectedShape(config, name)! as [number, number];
      const host = await readMatrix(ckpt, name, shape, targets.get(name)!);
      let w: WeightLike;
      try {
        w = host instanceof Float32Array ? tensor(host, { device, shape }) : PackedWeight.upload(device, host, ...shape);
      } catch (e) {
        if (!(e instanceof DeviceLimitError)) throw e;
        // Name the tensor and what the model already holds: the device's message names the bytes.
        throw new DeviceLimitError("loadModel", `${name} [${shape}]: ${e.message}; ${device.liveBytes()} bytes were allocated before it`);
      }
      loaded.push(w);
      read(name);
      return w;
    };
    const maybe = (name: string) => (expectedShape(config, name) !== null ? vector(name) : Promise.resolve(null));

    const embed = await matrix("model.embed_tokens.weight");
    const layers: DecoderLayer[] = [];
    for (let i = 0; i < config.num_hidden_layers; i++) {
      const p = layerPrefix(i);
      const modules: Record<string, Linear | Tensor> = {};
      for (const m of LAYER_MODULES) {
        const name = `${p}${m.path}.weight`;
        modules[m.path] = m.kind === "linear" ? new Linear(await matrix(name), await maybe(`${p}${m.path}.bias`)) : await vector(name);
      }
      layers.push(DecoderLayer.fromModules(config, i, modules as unknown as LayerModules)); // every table path is set
    }
    const norm = await vector("model.norm.weight");
    const head = config.tie_word_embeddings ? embed : await matrix("lm_head.weight");
    return new LlamaModel(config, device, embed, layers, norm, head);
  } catch (err) {
    for (const t of loaded) t.dispose();
    throw err;
  } finally {
    await ckpt.close();
  }
}
