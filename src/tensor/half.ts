/**
 * IEEE 754 binary16 ("float16") and bfloat16 <-> float32 conversions, bit-exact, for checkpoint
 * dtypes F16 and BF16. bfloat16 is the top half of a float32; float16 has a 5-bit exponent (bias
 * 15) and a 10-bit mantissa. Rounding to 16 bits is to nearest, ties to even.
 */

/**
 * The float32 bit pattern of a float16 bit pattern: exact, including ±0, subnormals (normalised
 * into f32's wider exponent range), ±inf and NaN (payload kept, shifted into the f32 mantissa).
 */
function halfToFloatBits(h: number): number {
  const sign = (h & 0x8000) << 16;
  let exp = (h >>> 10) & 0x1f;
  let man = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (man << 13)) >>> 0;
  if (exp === 0) {
    if (man === 0) return sign >>> 0;
    // Subnormal man * 2^-24: shift the leading 1 up to bit 10, lowering the exponent to match.
    exp = 1;
    while ((man & 0x400) === 0) {
      man <<= 1;
      exp--;
    }
    man &= 0x3ff;
  }
  return (sign | ((exp + 112) << 23) | (man << 13)) >>> 0; // rebias 15 -> 127
}

let halfTable: Float32Array | undefined;
/** All 65536 float16 values as float32, built on first use (256 KiB). */
function halfLookup(): Float32Array {
  if (halfTable === undefined) {
    const bits = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) bits[h] = halfToFloatBits(h);
    halfTable = new Float32Array(bits.buffer);
  }
  return halfTable;
}

/** Converts float16 bit patterns to float32 values, exactly. */
export function f16ToF32(src: Uint16Array): Float32Array {
  const table = halfLookup();
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = table[src[i]!]!;
  return out;
}

/** Converts bfloat16 bit patterns to float32 values, exactly (a bf16 is the top 16 bits). */
export function bf16ToF32(src: Uint16Array): Float32Array {
  const bits = new Uint32Array(src.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i]! << 16;
  return new Float32Array(bits.buffer);
}

/**
 * Rounds float32 values to float16 bit patterns, round-to-nearest-even; values beyond the f16
 * range become ±inf, NaN becomes a quiet NaN, tiny values become subnormals or ±0.
 */
export function f32ToF16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = floatBitsToHalf(bits[i]!);
  return out;
}

function floatBitsToHalf(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const man = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (man !== 0 ? 0x200 : 0);
  const e = exp - 112; // the f16 biased exponent
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // f16 subnormal: the value in units of 2^-24 is (1.man) * 2^(exp-150) / 2^-24.
    const shift = 14 - e;
    if (shift > 24) return sign; // below half the smallest subnormal: rounds to ±0
    const m = man | 0x800000;
    let q = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (q & 1) === 1)) q++;
    return sign | q; // q may carry into the smallest normal, which is the correct encoding
  }
  let h = (e << 10) | (man >>> 13);
  const rem = man & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++; // a carry may reach inf: correct
  return sign | h;
}

/** Rounds float32 values to bfloat16 bit patterns, round-to-nearest-even; NaN stays NaN. */
export function f32ToBf16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const x = bits[i]!;
    if ((x & 0x7fffffff) > 0x7f800000) out[i] = (x >>> 16) | 0x40;
    else out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}

