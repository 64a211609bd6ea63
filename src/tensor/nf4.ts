/**
 * 4-bit NormalFloat (NF4) quantization as bitsandbytes defines it (Dettmers et al., "QLoRA:
 * Efficient Finetuning of Quantized LLMs", 2023, section 3; bitsandbytes `functional.py`
 * `quantize_4bit` / `dequantize_4bit` / `quantize_blockwise`, and the reference kernels of its
 * `backends/default/ops.py`), the plain-TypeScript specification of the NF4 WGSL kernels
 * (weights.wgsl.ts) and of the loader's quantize-at-load.
 *
 * A weight tensor, flattened row-major, is cut into blocks of 64 values. Each block keeps its
 * absolute maximum `absmax` (f32); each value becomes the index of the nearest of the 16 NF4
 * code values to value / absmax (in [-1, 1]); two indices share a byte, the first (even) element
 * in the high nibble: byte = q[2i] << 4 | q[2i + 1]. Dequantized, w = code[q] * absmax[block].
 *
 * Double quantization ("compress_statistics", `bnb_4bit_use_double_quant`): the absmax vector
 * itself is stored in 8 bits: offset = mean(absmax), then absmax - offset is quantized blockwise
 * (blocks of 256) with bitsandbytes' signed 8-bit dynamic code (`create_dynamic_map`), keeping
 * an f32 absmax per block of 256 ("nested_absmax"). Decoded: absmax = nested_code[q8] *
 * nested_absmax[i / 256] + offset. qalign decodes it when loading such a checkpoint and keeps
 * the f32 absmax on the device (0.5625 bytes per weight instead of 0.516: one table lookup less
 * per block in every kernel); quantizing at load writes f32 absmax directly.
 *
 * Arithmetic is f32 throughout, as bitsandbytes' kernels do it (`Math.fround` after every
 * operation): value * (1 / absmax), clamped to [-1, 1]; the nearest code by f32 distance, ties
 * to the lower index (PyTorch's argmin returns the first minimum).
 */

/** Values per NF4 block (bitsandbytes' default `blocksize` for 4-bit on CUDA and CPU). */
export const NF4_BLOCK = 64;

/** Values per block of the double-quantized absmax (bitsandbytes: `quantize_blockwise(..., blocksize=256)`). */
export const NESTED_BLOCK = 256;

/**
 * The 16 NF4 code values (bitsandbytes `get_4bit_type("nf4")`): quantiles of N(0, 1) with equal
 * area per bin, normalized to [-1, 1], with an exact 0 (index 7). As f32.
 */
export const NF4_CODE = Float32Array.from([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]);

const f = Math.fround;

/** Number of blocks of `size` covering `n` values (the last one may be partial). */
function blockCount(n: number, size: number): number {
  return Math.ceil(n / size);
}

/**
 * The index of the code value nearest to `x` by f32 distance |x - code[i]|, ties to the lower
 * index. `code` is sorted ascending (both NF4 and the dynamic code are), so the answer is one of
 * the two neighbours of x's insertion point: f32 subtraction is monotone, so no farther code
 * can be nearer.
 */
function nearestCode(x: number, code: Float32Array): number {
  let lo = 0;
  let hi = code.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (code[mid]! <= x) lo = mid;
    else hi = mid;
  }
  const dl = Math.abs(f(x - code[lo]!));
  const dh = Math.abs(f(x - code[hi]!));
  return dh < dl ? hi : lo;
}

/**
 * Blockwise absmax quantization (bitsandbytes `quantize_blockwise` / the 4-bit variant before
 * packing): absmax[b] = max |a| over block b; index[i] = nearestCode(clamp(a[i] * (1 / absmax[b]), -1, 1)).
 * A block of zeros (absmax 0) maps to the code nearest 0 (bitsandbytes would divide by zero).
 * @param a values [n], f32
 * @returns indices [n] (one byte each, unpacked) and absmax [ceil(n / blocksize)], f32
 */
function quantizeBlockwise(a: Float32Array, code: Float32Array, blocksize: number): { indices: Uint8Array; absmax: Float32Array } {
  const n = a.length;
  const absmax = new Float32Array(blockCount(n, blocksize));
  const indices = new Uint8Array(n);
  const zero = nearestCode(0, code);
  for (let b = 0; b < absmax.length; b++) {
    const lo = b * blocksize;
    const hi = Math.min(n, lo + blocksize);
    let m = 0;
    for (let i = lo; i < hi; i++) m = Math.max(m, Math.abs(a[i]!));
    absmax[b] = m;
    if (m === 0) {
      indices.fill(zero, lo, hi);
      continue;
    }
    const r = f(1 / m);
    for (let i = lo; i < hi; i++) indices[i] = nearestCode(Math.min(1, Math.max(-1, f(a[i]! * r))), code);
  }
  return { indices, absmax };
}

/** out[i] = f32(code[indices[i]] * absmax[i / blocksize]) (bitsandbytes `dequantize_blockwise`). */
function dequantizeBlockwise(indices: Uint8Array, absmax: Float32Array, code: Float32Array, blocksize: number): Float32Array {
  const out = new Float32Array(indices.length);
  for (let i = 0; i < indices.length; i++) out[i] = code[indices[i]!]! * absmax[Math.floor(i / blocksize)]!;
  return out;
}

/** Two 4-bit indices per byte, the even element in the high nibble; an odd count pads with index 0. */
function packNibbles(indices: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(indices.length / 2));
  for (let i = 0; i < indices.length; i++) out[i >> 1]! |= (indices[i]! & 15) << (i & 1 ? 0 : 4);
  return out;
}

/** The 4-bit index of element i of a packed array (the inverse of packNibbles). */
export function nibble(packed: Uint8Array, i: number): number {
  const byte = packed[i >> 1]!;
  return i & 1 ? byte & 15 : byte >> 4;
}

/** An NF4 tensor: packed indices [ceil(n / 2)] bytes and one f32 absmax per block of 64. */
export interface Nf4Data {
  packed: Uint8Array;
  absmax: Float32Array;
}

/**
 * NF4-quantizes `a` (bitsandbytes `quantize_4bit(A, blocksize=64, quant_type="nf4")` without
 * compress_statistics).
 * @param a values [n], f32 (f16 and bf16 weights are converted exactly first)
 */
export function quantizeNf4(a: Float32Array): Nf4Data {
  const { indices, absmax } = quantizeBlockwise(a, NF4_CODE, NF4_BLOCK);
  return { packed: packNibbles(indices), absmax };
}

/** The n values of an NF4 tensor, w[i] = f32(NF4_CODE[q_i] * absmax[i / 64]) (bitsandbytes `dequantize_4bit`). */
export function dequantizeNf4(d: Nf4Data, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = NF4_CODE[nibble(d.packed, i)]! * d.absmax[Math.floor(i / NF4_BLOCK)]!;
  return out;
}

/** A double-quantized absmax vector, in bitsandbytes' saved names. */
export interface NestedAbsmax {
  /** absmax - offset, quantized to 8-bit dynamic code indices [blocks]. */
  absmax: Uint8Array;
  /** f32 absmax of each 256 of those [ceil(blocks / 256)]. */
  nested_absmax: Float32Array;
  /** The 256-value code: bitsandbytes' signed 8-bit dynamic code (`create_dynamic_map`), as saved. */
  nested_quant_map: Float32Array;
  /** mean(absmax), f32. */
  nested_offset: number;
}

/**
 * Decodes a double-quantized absmax: f32(f32(nested_quant_map[q] * nested_absmax[i / 256]) +
 * offset) (bitsandbytes `dequantize_blockwise` followed by `absmax += offset`).
 */
export function decompressAbsmax(n: NestedAbsmax): Float32Array {
  const out = dequantizeBlockwise(n.absmax, n.nested_absmax, n.nested_quant_map, NESTED_BLOCK);
  for (let i = 0; i < out.length; i++) out[i] = out[i]! + n.nested_offset;
  return out;
}
