import { join } from "node:path";
import { describe, expect, test } from "vitest";
import { openSafetensors } from "../src/model/safetensors.ts";
import {
  NF4_CODE,
  decompressAbsmax,
  dequantizeNf4,
  quantizeNf4,
} from "../src/tensor/nf4.ts";

/**
 * NF4 quantization against scripts/make_nf4_fixtures.py, which implements bitsandbytes'
 * published algorithm in PyTorch (argmin over the code table, f32 arithmetic). Every step is
 * a deterministic f32 computation done the same way on both sides, so the comparisons are
 * exact: the code table, absmax, packed bytes (nibble order), dequantized values, and the
 * decoding of a double-quantized absmax.
 */
async function blocks() {
  const f = await openSafetensors(join(import.meta.dirname, "fixtures", "nf4", "blocks.safetensors"));
  const get = (n: string) => f.readF32(n);
  const raw = (n: string) => f.readRaw(n);
  const out = {
    x: await get("x"),
    quant_map: await get("quant_map"),
    packed: await raw("packed"),
    absmax: await get("absmax"),
    dequantized: await get("dequantized"),
    dynamic_map: await get("dynamic_map"),
    nested_offset: (await get("nested_offset"))[0]!,
    nested_indices: await raw("nested_indices"),
    nested_absmax: await get("nested_absmax"),
    absmax_nested_dequantized: await get("absmax_nested_dequantized"),
    dequantized_nested: await get("dequantized_nested"),
  };
  await f.close();
  return out;
}

describe("NF4 (bitsandbytes) against the PyTorch reference", () => {
  test("code table: the 16 NF4 values, bit for bit", async () => {
    const b = await blocks();
    expect(Array.from(NF4_CODE)).toEqual(Array.from(b.quant_map));
  });

  test("blockwise absmax, nearest-code indices in high-nibble-first bytes, and dequantized values", async () => {
    const b = await blocks();
    const q = quantizeNf4(b.x);
    expect(Array.from(q.absmax)).toEqual(Array.from(b.absmax));
    expect(Array.from(q.packed)).toEqual(Array.from(b.packed));
    expect(Array.from(dequantizeNf4(q, b.x.length))).toEqual(Array.from(b.dequantized));
  });

  test("double-quantized absmax decodes to the reference's absmax, and its weights to the reference's", async () => {
    const b = await blocks();
    const decoded = decompressAbsmax({
      absmax: b.nested_indices,
      nested_absmax: b.nested_absmax,
      nested_quant_map: b.dynamic_map,
      nested_offset: b.nested_offset,
    });
    expect(Array.from(decoded)).toEqual(Array.from(b.absmax_nested_dequantized));
    const q = quantizeNf4(b.x);
    expect(Array.from(dequantizeNf4({ packed: q.packed, absmax: decoded }, b.x.length))).toEqual(Array.from(b.dequantized_nested));
    // The 8-bit code keeps absmax to about 1% (its step near 1 is 1/64 of the nested absmax).
    for (let i = 0; i < decoded.length; i++) expect(Math.abs(decoded[i]! - b.absmax[i]!)).toBeLessThanOrEqual(0.02 * b.nested_absmax[0]!);
  });

  test("dequantized values lie within half a code gap of the input, times absmax (closed form)", async () => {
    const b = await blocks();
    const q = quantizeNf4(b.x);
    const d = dequantizeNf4(q, b.x.length);
    let maxGap = 0;
    for (let i = 1; i < 16; i++) maxGap = Math.max(maxGap, NF4_CODE[i]! - NF4_CODE[i - 1]!);
    for (let i = 0; i < b.x.length; i++) {
      const a = q.absmax[Math.floor(i / 64)]!;
      expect(Math.abs(d[i]! - b.x[i]!)).toBeLessThanOrEqual((maxGap / 2) * a * (1 + 1e-6));
    }
  });
});
