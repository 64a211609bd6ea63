import { NF4_BLOCK, NF4_CODE, decompressAbsmax, type Nf4Data } from "../tensor/nf4.ts";
import { CheckpointError, type Checkpoint } from "./safetensors.ts";

/**
 * Checkpoints saved 4-bit by transformers + bitsandbytes (`load_in_4bit=True`, then
 * `save_pretrained`; bitsandbytes `Linear4bit._save_to_state_dict` and `QuantState.as_dict(packed=True)`),
 * as published on the Hub for many models. A quantized Linear `<m>` is stored as:
 *   <m>.weight                                  U8 [n / 2, 1]: the packed NF4 indices
 *   <m>.weight.absmax                           F32 [n / 64], or U8 [n / 64] when double-quantized
 *   <m>.weight.quant_map                        F32 [16]: the NF4 code
 *   <m>.weight.nested_absmax, .nested_quant_map F32 [n / 64 / 256], F32 [256] (double quantization)
 *   <m>.weight.quant_state.bitsandbytes__nf4    U8: UTF-8 JSON {quant_type, blocksize, dtype, shape,
 *                                               and nested_blocksize, nested_dtype, nested_offset}
 * Everything else (embeddings, norms, biases, lm_head) is stored as usual.
 */

/** The JSON key of the packed quant state; FP4 ("bitsandbytes__fp4") is not supported. */
const STATE = "quant_state.bitsandbytes__nf4";
const FP4_STATE = "quant_state.bitsandbytes__fp4";

/** The companion tensors of a quantized weight `<m>.weight`, by suffix. */
const COMPANIONS = ["absmax", "quant_map", "nested_absmax", "nested_quant_map", STATE];

/** Whether `name` (a `.weight`) is stored 4-bit in `ckpt`. @throws CheckpointError for FP4, which is not supported. */
export function isBnb4bit(ckpt: Checkpoint, name: string): boolean {
  if (ckpt.has(`${name}.${FP4_STATE}`)) {
    throw new CheckpointError(ckpt.info(`${name}.${FP4_STATE}`).file, "bitsandbytes FP4 weights are not supported (NF4 is)", name);
  }
  return ckpt.has(`${name}.${STATE}`);
}

/** Whether `name` is one of the companion tensors of a 4-bit weight stored in `ckpt`. */
export function isBnbCompanion(ckpt: Checkpoint, name: string): boolean {
  return COMPANIONS.some((c) => name.endsWith(`.weight.${c}`) && ckpt.has(`${name.slice(0, -c.length - 1)}.${STATE}`));
}

/** The shape a 4-bit weight of `shape` is saved with: [n / 2, 1] bytes. */
export function bnbPackedShape(shape: readonly number[]): number[] {
  return [Math.ceil(shape.reduce((a, b) => a * b, 1) / 2), 1];
}

/**
 * The quant state JSON of 4-bit weight `name`, checked: NF4, blocks of 64, a shape of positive integers.
 * @throws CheckpointError naming the file, the tensor and the field.
 */
export async function readBnbState(ckpt: Checkpoint, name: string): Promise<Record<string, unknown> & { shape: number[] }> {
  const file = ckpt.info(name).file;
  const fail = (msg: string): never => {
    throw new CheckpointError(file, msg, name);
  };
  let state: Record<string, unknown>;
  try {
    state = JSON.parse(new TextDecoder().decode(await ckpt.readRaw(`${name}.${STATE}`))) as Record<string, unknown>;
  } catch (e) {
    return fail(`${STATE} is not JSON: ${(e as Error).message}`);
  }
  if (state["quant_type"] !== "nf4") fail(`${STATE}: quant_type is ${JSON.stringify(state["quant_type"])}, expected "nf4"`);
  if (state["blocksize"] !== NF4_BLOCK) fail(`${STATE}: blocksize is ${JSON.stringify(state["blocksize"])}; only ${NF4_BLOCK} is supported`);
  const shape = state["shape"];
  if (!Array.isArray(shape) || shape.length === 0 || !shape.every((d) => Number.isInteger(d) && d > 0)) fail(`${STATE}: shape ${JSON.stringify(shape)} is not a list of positive integers`);
  return state as Record<string, unknown> & { shape: number[] };
}

/**
 * Reads a 4-bit weight `name` of `shape` as NF4 data with an f32 absmax (decoding a
 * double-quantized one, src/tensor/nf4.ts), checking its quant state.
 * @throws CheckpointError naming the file, the tensor and the field: a quant state that is not
 *   JSON, not NF4, a blocksize other than 64, a shape other than `shape`, a quant_map other
 *   than the NF4 code, or companion tensors of the wrong size.
 */
export async function readBnb4bit(ckpt: Checkpoint, name: string, shape: readonly number[]): Promise<Nf4Data> {
  const file = ckpt.info(name).file;
  const fail = (msg: string): never => {
    throw new CheckpointError(file, msg, name);
  };
  const state = await readBnbState(ckpt, name);
  if (JSON.stringify(state.shape) !== JSON.stringify(shape)) fail(`${STATE}: shape ${JSON.stringify(state.shape)} disagrees with config.json, which implies [${shape}]`);
  const code = await ckpt.readF32(`${name}.quant_map`);
  if (code.length !== 16 || code.some((v, i) => v !== NF4_CODE[i])) fail("quant_map is not the NF4 code of bitsandbytes");
  const n = shape.reduce((a, b) => a * b, 1);
  const blocks = Math.ceil(n / NF4_BLOCK);
  const packed = await ckpt.readRaw(name);
  if (packed.length !== Math.ceil(n / 2)) fail(`holds ${packed.length} bytes, a 4-bit [${shape}] weight needs ${Math.ceil(n / 2)}`);
  const absmaxName = `${name}.absmax`;
  let absmax: Float32Array;
  if (ckpt.has(`${name}.nested_absmax`)) {
    const offset = state["nested_offset"];
    if (typeof offset !== "number") fail(`${STATE}: nested_offset is missing for a double-quantized absmax`);
    if (state["nested_blocksize"] !== 256) fail(`${STATE}: nested_blocksize is ${JSON.stringify(state["nested_blocksize"])}; only 256 is supported`);
    const q = await ckpt.readRaw(absmaxName);
    if (ckpt.info(absmaxName).dtype !== "U8" || q.length !== blocks) fail(`absmax must be U8 [${blocks}] when double-quantized`);
    const nested = await ckpt.readF32(`${name}.nested_absmax`);
    if (nested.length !== Math.ceil(blocks / 256)) fail(`nested_absmax has ${nested.length} values, ${blocks} absmax values need ${Math.ceil(blocks / 256)}`);
    const map = await ckpt.readF32(`${name}.nested_quant_map`);
    if (map.length !== 256) fail(`nested_quant_map has ${map.length} values, expected 256`);
    absmax = decompressAbsmax({ absmax: q, nested_absmax: nested, nested_quant_map: map, nested_offset: offset as number });
  } else {
    absmax = await ckpt.readF32(absmaxName);
    if (absmax.length !== blocks) fail(`absmax has ${absmax.length} values, a [${shape}] weight has ${blocks} blocks of ${NF4_BLOCK}`);
  }
  return { packed, absmax };
}
