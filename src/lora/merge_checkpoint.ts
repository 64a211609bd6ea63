import { hostFiles, type Files } from "../io/files.ts";
import { CheckpointError, DTYPE_SIZE, encodeTensor, INDEX_FILE, openCheckpoint, openSafetensors, SINGLE_FILE, writeSafetensorsStream, type SafetensorsDType, type TensorLayout } from "../model/safetensors.ts";
import { isBnb4bit, isBnbCompanion, readBnb4bit, readBnbState } from "../model/bnb.ts";
import { dequantizeNf4 } from "../tensor/nf4.ts";
import { loraScaling, peftKey } from "./layer.ts";
import { copyCompanions, mergeSource, TORCH_DTYPE, type MergeDType } from "./merge.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, checkAdapterRank, readAdapterConfig } from "./peft.ts";

/**
 * Merging a PEFT LoRA adapter into a checkpoint on disk, tensor by tensor, as transformers would
 * save `PeftModel.merge_and_unload()`: W' = W + scaling B A for every adapted Linear (PEFT's
 * `Linear.merge`, `peft/tuners/lora/layer.py`), every other tensor copied. Nothing is loaded on a
 * device and no model is built: host memory holds one tensor at a time (the base weight in f32
 * while its update is added, or a copied tensor's bytes), so a 7B checkpoint merges in about the
 * memory of its largest tensor. The output is sharded as `PreTrainedModel.save_pretrained` does
 * (`max_shard_size` 5 GB, files `model-0000i-of-0000n.safetensors` and
 * `model.safetensors.index.json`; one `model.safetensors` when everything fits in one shard).
 */

/** transformers' default `max_shard_size`: "5GB", decimal. */
export const DEFAULT_MAX_SHARD_BYTES = 5e9;

export type { MergeDType } from "./merge.ts";

export interface MergeOptions {
  /** Write every float tensor in this dtype; default: each tensor keeps its checkpoint dtype. */
  dtype?: MergeDType;
  /** Largest shard in bytes (a tensor larger than this gets a shard of its own); default 5e9. */
  maxShardBytes?: number;
  /** Called after each tensor is written with bytes written so far and the total. */
  onProgress?: (bytesDone: number, totalBytes: number) => void;
  /** Where the three folders are (default: the host's files, io/files.ts). */
  files?: Files;
}

export interface MergeResult {
  /** The safetensors files written, in order. */
  files: string[];
  /** Base tensors that received a LoRA update. */
  merged: number;
  /** Bytes of tensor data written (the index's `metadata.total_size`). */
  totalBytes: number;
  /** Weights the base stored 4-bit (bitsandbytes), written in 16 bits (BF16 unless `dtype`). */
  dequantized: number;
}

/**
 * Groups tensors into shards in checkpoint order, as transformers' `shard_checkpoint` does: a
 * tensor starts a new shard when it would take the current one past `maxBytes`.
 * @returns lists of tensor names, one per shard
 */
export function planShards(sizes: readonly [string, number][], maxBytes: number): string[][] {
  const shards: string[][] = [];
  let current: string[] = [];
  let bytes = 0;
  for (const [name, size] of sizes) {
    if (current.length > 0 && bytes + size > maxBytes) {
      shards.push(current);
      current = [];
      bytes = 0;
    }
    current.push(name);
    bytes += size;
  }
  if (current.length > 0) shards.push(current);
  return shards;
}

/** A shard's file name as transformers writes it: model-00001-of-00003.safetensors. */
function shardName(i: number, n: number): string {
  return n === 1 ? SINGLE_FILE : `model-${String(i + 1).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.safetensors`;
}

/**
 * Merges the PEFT LoRA adapter in `adapterDir` into the checkpoint in `modelDir`, writing a
 * checkpoint folder `outDir` that loadModel and transformers' `from_pretrained` read: the
 * safetensors shards (and index), config.json (with `torch_dtype`, and `dtype` when the source
 * has one, set to `opts.dtype` when given) and the tokenizer and generation files of `modelDir`.
 * Adapted modules are those with `lora_A` / `lora_B` weights in the adapter; each needs
 * `<module>.weight` [out, in] in the base with A [r, in] and B [out, r]. A base saved 4-bit by
 * transformers + bitsandbytes (src/model/bnb.ts) is merged from its dequantized NF4 weights and
 * written in 16 bits (BF16 unless `opts.dtype`), without its quantization_config and quant-state
 * tensors. The folder is built aside and renamed into place.
 * @throws CheckpointError (naming the file) when outDir exists and is not empty, a 4-bit weight's
 *   quant state is bad (bnb.ts), an adapted module is missing from the base or disagrees in shape, the
 *   adapter config is invalid (readAdapterConfig) or its r above an adapted module's min(in_features,
 *   out_features), or a file cannot be read; RangeError for a
 *   maxShardBytes that is not a positive number.
 */
export async function mergeCheckpoint(modelDir: string, adapterDir: string, outDir: string, opts: MergeOptions = {}): Promise<MergeResult> {
  const maxShardBytes = opts.maxShardBytes ?? DEFAULT_MAX_SHARD_BYTES;
  if (!(maxShardBytes > 0)) throw new RangeError(`mergeCheckpoint: maxShardBytes must be positive, got ${maxShardBytes}`);
  const host = opts.files ?? (await hostFiles());
  const config = await mergeSource(modelDir, outDir, host);
  const lora = await readAdapterConfig(adapterDir, host);
  const scaling = loraScaling(lora);
  const ckpt = await openCheckpoint(modelDir, host);
  const adapter = await openSafetensors(host.join(adapterDir, ADAPTER_WEIGHTS_FILE), host);
  try {
    // Weights saved 4-bit by bitsandbytes: their real shapes, from their quant states. A merged
    // update has no 4-bit form: they are written in 16 bits (BF16 unless opts.dtype).
    const fourBit = new Map<string, number[]>();
    for (const name of ckpt.names()) if (isBnb4bit(ckpt, name)) fourBit.set(name, (await readBnbState(ckpt, name)).shape);
    const shapeOf = (name: string) => fourBit.get(name) ?? ckpt.info(name).shape;
    /** A base tensor as f32 values (a 4-bit one dequantized). */
    const values = async (name: string) => {
      const shape = fourBit.get(name);
      return shape ? dequantizeNf4(await readBnb4bit(ckpt, name, shape), shape.reduce((a, b) => a * b, 1)) : ckpt.readF32(name);
    };
    // Adapted modules: every lora_A in the adapter file, checked against the base before any write.
    const modules = new Map<string, { a: string; b: string }>();
    for (const key of adapter.names()) {
      const m = /^base_model\.model\.(.+)\.lora_A\.weight$/.exec(key);
      if (!m) continue;
      const path = m[1]!;
      const b = peftKey(path, "B");
      const weight = `${path}.weight`;
      if (!adapter.has(b)) throw new CheckpointError(adapter.file, `has ${key} but no ${b}`, key);
      if (!ckpt.has(weight)) throw new CheckpointError(modelDir, `the adapter updates ${path}, which the checkpoint does not have`, weight);
      const [out, inp] = shapeOf(weight) as [number, number];
      checkAdapterRank(host.join(adapterDir, ADAPTER_CONFIG_FILE), lora.r, [[path, [out, inp]]]);
      const shapeA = adapter.info(key).shape.join();
      const shapeB = adapter.info(b).shape.join();
      if (shapeA !== `${lora.r},${inp}` || shapeB !== `${out},${lora.r}`) {
        throw new CheckpointError(adapter.file, `lora_A [${shapeA}] and lora_B [${shapeB}] do not fit ${weight} [${out},${inp}] at r ${lora.r}`, key);
      }
      modules.set(weight, { a: key, b });
    }

    const names = ckpt.names().filter((n) => !isBnbCompanion(ckpt, n));
    const dtypeOf = (name: string): SafetensorsDType => {
      if (fourBit.has(name)) return opts.dtype ?? "BF16";
      const stored = ckpt.info(name).dtype;
      return opts.dtype !== undefined && (stored === "F32" || stored === "BF16" || stored === "F16") ? opts.dtype : stored;
    };
    const bytesOf = (name: string) => shapeOf(name).reduce((a, b) => a * b, 1) * DTYPE_SIZE[dtypeOf(name)];
    const shards = planShards(names.map((n) => [n, bytesOf(n)]), maxShardBytes);
    const totalBytes = names.reduce((sum, n) => sum + bytesOf(n), 0);
    let done = 0;

    /** The bytes of output tensor `name`: the base plus its update, or the base converted or as stored. */
    const produce = async (name: string): Promise<Uint8Array> => {
      const dtype = dtypeOf(name);
      const update = modules.get(name);
      let bytes: Uint8Array;
      if (update) {
        const w = await values(name);
        addLowRank(w, await adapter.readF32(update.b), await adapter.readF32(update.a), lora.r, scaling);
        bytes = encodeTensor({ dtype: dtype as MergeDType, shape: shapeOf(name), data: w });
      } else if (dtype === ckpt.info(name).dtype && !fourBit.has(name)) {
        bytes = await ckpt.readRaw(name);
      } else {
        bytes = encodeTensor({ dtype: dtype as MergeDType, shape: shapeOf(name), data: await values(name) });
      }
      done += bytes.byteLength;
      opts.onProgress?.(done, totalBytes);
      return bytes;
    };

    const files = shards.map((_, i) => shardName(i, shards.length));
    const { quantization_config: _, ...outConfig } = config;
    if (opts.dtype !== undefined) {
      outConfig.torch_dtype = TORCH_DTYPE[opts.dtype];
      if ("dtype" in config) outConfig.dtype = TORCH_DTYPE[opts.dtype];
    }
    await host.replaceDir(outDir, async (tmp) => {
      opts.onProgress?.(0, totalBytes);
      for (const [i, shard] of shards.entries()) {
        const layout: Record<string, TensorLayout> = Object.fromEntries(shard.map((n) => [n, { dtype: dtypeOf(n), shape: shapeOf(n) }]));
        await writeSafetensorsStream(host.join(tmp, files[i]!), layout, produce, { format: "pt" }, host);
      }
      if (shards.length > 1) {
        const weightMap = Object.fromEntries(shards.flatMap((shard, i) => shard.map((n) => [n, files[i]!])).sort(([a], [b]) => (a! < b! ? -1 : 1)));
        await host.writeAtomic(host.join(tmp, INDEX_FILE), [JSON.stringify({ metadata: { total_size: totalBytes }, weight_map: weightMap }, null, 2) + "\n"]);
      }
      await host.writeAtomic(host.join(tmp, "config.json"), [JSON.stringify(outConfig, null, 2) + "\n"]);
      await copyCompanions(host, modelDir, tmp);
    });
    return { files, merged: modules.size, totalBytes, dequantized: fourBit.size };
  } finally {
    await Promise.all([ckpt.close(), adapter.close()]);
  }
}

/**
 * W += scaling B A, in place: W [out, in] row-major f32, B [out, r], A [r, in]. Row o of the
 * update is sum_k B[o, k] A[k, :], accumulated row by row so that W and A are read in order.
 */
function addLowRank(w: Float32Array, b: Float32Array, a: Float32Array, r: number, scaling: number): void {
  const inp = a.length / r;
  const out = w.length / inp;
  for (let o = 0; o < out; o++) {
    const row = o * inp;
    for (let k = 0; k < r; k++) {
      const s = scaling * b[o * r + k]!;
      const ak = k * inp;
      for (let i = 0; i < inp; i++) w[row + i]! += s * a[ak + i]!;
    }
  }
}
