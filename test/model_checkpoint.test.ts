import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "../src/tensor/half.ts";
import {
  CheckpointError,
  openCheckpoint,
  openSafetensors,
  writeSafetensors,
  type Checkpoint,
} from "../src/model/safetensors.ts";
import { loadConfig, parseConfig, type LlamaConfig } from "../src/model/config.ts";
import { expectedShape, expectedWeightCount, expectedWeights } from "../src/model/params.ts";
import { ropeInvFreq } from "../src/model/rope.ts";
import { expectCheckpointError } from "./helpers/errors.ts";

const tmp = mkdtempSync(join(tmpdir(), "qalign-ckpt-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let fileCount = 0;

/** Writes a safetensors file from a header object (or raw header text) and `data` bytes. */
function craft(header: unknown, data: number | Uint8Array, headerLen?: bigint): string {
  const text = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const bytes = typeof data === "number" ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + text.length + bytes.length);
  new DataView(out.buffer).setBigUint64(0, headerLen ?? BigInt(text.length), true);
  out.set(text, 8);
  out.set(bytes, 8 + text.length);
  const file = join(tmp, `crafted-${fileCount++}.safetensors`);
  writeFileSync(file, out);
  return file;
}

/** Expects a CheckpointError whose message names `file`, `tensor` (when given) and matches `pattern`. */
function expectError(p: Promise<unknown>, file: string, tensor: string | undefined, pattern: RegExp): Promise<void> {
  return expectCheckpointError(p, file, ...(tensor === undefined ? [] : [`"${tensor}"`]), pattern);
}

const f32 = (shape: number[], begin: number) => ({
  dtype: "F32",
  shape,
  data_offsets: [begin, begin + 4 * shape.reduce((a, b) => a * b, 1)],
});

describe("safetensors validation", () => {
  it("rejects a file shorter than the 8-byte length", async () => {
    const file = join(tmp, "short.safetensors");
    writeFileSync(file, new Uint8Array(5));
    await expectError(openSafetensors(file), file, undefined, /too short.*truncated/);
  });

  it("rejects a header length beyond the file", async () => {
    const file = craft({ w: f32([2], 0) }, 8, 10_000n);
    await expectError(openSafetensors(file), file, undefined, /header length 10000 runs past the end/);
  });

  it("rejects a header that is not JSON", async () => {
    const file = craft('{"w": {"dtype": "F32",', 0);
    await expectError(openSafetensors(file), file, undefined, /not valid UTF-8 JSON/);
  });

  it("rejects an unknown dtype, naming it and the tensor", async () => {
    const file = craft({ "model.norm.weight": { dtype: "F17", shape: [2], data_offsets: [0, 8] } }, 8);
    await expectError(openSafetensors(file), file, "model.norm.weight", /unknown dtype "F17"/);
    const proto = craft({ w: { dtype: "constructor", shape: [2], data_offsets: [0, 8] } }, 8);
    await expectError(openSafetensors(proto), proto, "w", /unknown dtype "constructor"/);
  });

  it("rejects data offsets out of range (a truncated data section)", async () => {
    const file = craft({ a: f32([2], 0), b: f32([4], 16) }, 24);
    await expectError(openSafetensors(file), file, "b", /\[16, 32\] out of range.*holds 24 bytes/);
  });

  it("rejects reversed data offsets as reversed, not as a truncated file", async () => {
    const file = craft({ w: { dtype: "F32", shape: [2], data_offsets: [100, 50] } }, 200);
    await expectError(openSafetensors(file), file, "w", /data_offsets \[100, 50\] are reversed: end 50 is before begin 100$/);
    const err = await openSafetensors(file).catch((e: Error) => e);
    expect((err as Error).message).not.toMatch(/truncated|out of range/);
  });

  it("names a missing dtype, shape or data_offsets field of a header entry", async () => {
    const fields = { dtype: "F32", shape: [2], data_offsets: [0, 8] };
    for (const field of ["dtype", "shape", "data_offsets"] as const) {
      const entry: Record<string, unknown> = { ...fields };
      delete entry[field];
      const file = craft({ "model.norm.weight": entry }, 8);
      await expectError(
        openSafetensors(file),
        file,
        "model.norm.weight",
        new RegExp(`field "${field}" is missing \\(every header entry needs dtype, shape and data_offsets\\)$`),
      );
      const err = await openSafetensors(file).catch((e: Error) => e);
      expect((err as Error).message).not.toContain("undefined");
    }
    // A present but null dtype is still reported as a bad value, readably.
    const nul = craft({ w: { ...fields, dtype: null } }, 8);
    await expectError(openSafetensors(nul), nul, "w", /unknown dtype null \(null\)/);
  });

  it("rejects a file cut in the middle of its data", async () => {
    const file = craft({ a: f32([4], 0), b: f32([4], 16) }, 32);
    truncateSync(file, readFileSync(file).length - 3);
    await expectError(openSafetensors(file), file, "b", /out of range/);
  });

  it("rejects overlapping tensors, naming both", async () => {
    const file = craft({ a: f32([4], 0), b: f32([4], 8) }, 24);
    await expectError(openSafetensors(file), file, "b", /overlap tensor "a"/);
  });

  it("rejects offsets whose length disagrees with dtype x shape", async () => {
    const file = craft({ w: { dtype: "BF16", shape: [3, 2], data_offsets: [0, 24] } }, 24);
    await expectError(openSafetensors(file), file, "w", /hold 24 bytes but BF16 x \[3,2\] needs 12/);
  });

  it("rejects malformed entries and metadata", async () => {
    const a = craft({ w: { dtype: "F32", shape: [-1], data_offsets: [0, 0] } }, 0);
    await expectError(openSafetensors(a), a, "w", /shape must be an array of non-negative integers/);
    const b = craft({ w: { dtype: "F32", shape: [1], data_offsets: [0] } }, 4);
    await expectError(openSafetensors(b), b, "w", /data_offsets must be \[begin, end\]/);
    const c = craft({ __metadata__: { n: 3 } }, 0);
    await expectError(openSafetensors(c), c, undefined, /__metadata__ must map strings to strings/);
  });

  it("names the file and tensor when a requested tensor is missing or unreadable", async () => {
    const file = craft({ i8: { dtype: "I8", shape: [4], data_offsets: [0, 4] }, f: f32([1], 4) }, 8);
    const st = await openSafetensors(file);
    try {
      expect(() => st.info("lm_head.weight")).toThrow(CheckpointError);
      await expectError(st.readF32("lm_head.weight"), file, "lm_head.weight", /not in the checkpoint/);
      await expectError(st.readF32("i8"), file, "i8", /dtype I8 cannot be read as float32/);
      await expectError(st.readI32("f"), file, "f", /dtype F32 cannot be read as int32/);
    } finally {
      await st.close();
    }
  });

  it("reads I32 and I64, rejecting I64 values beyond int32", async () => {
    const data = new Uint8Array(8 + 16 + 16);
    new Int32Array(data.buffer, 0, 2).set([-7, 2 ** 31 - 1]);
    new BigInt64Array(data.buffer, 8, 2).set([-(2n ** 31n), 5n]);
    new BigInt64Array(data.buffer, 24, 2).set([1n, 2n ** 31n]);
    const file = craft(
      {
        i32: { dtype: "I32", shape: [2], data_offsets: [0, 8] },
        i64: { dtype: "I64", shape: [2], data_offsets: [8, 24] },
        big: { dtype: "I64", shape: [2], data_offsets: [24, 40] },
      },
      data,
    );
    const st = await openSafetensors(file);
    try {
      expect([...(await st.readI32("i32"))]).toEqual([-7, 2 ** 31 - 1]);
      expect([...(await st.readI32("i64"))]).toEqual([-(2 ** 31), 5]);
      await expectError(st.readI32("big"), file, "big", /I64 value 2147483648 at index 1 does not fit/);
    } finally {
      await st.close();
    }
  });
});

describe("sharded checkpoints", () => {
  function shardedDir(weightMap: Record<string, string>, shards: Record<string, unknown>): string {
    const dir = mkdtempSync(join(tmp, "sharded-"));
    for (const [name, header] of Object.entries(shards)) {
      const src = craft(header, 16);
      writeFileSync(join(dir, name), readFileSync(src));
    }
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    return dir;
  }

  it("fails naming a missing shard file and a tensor it should hold", async () => {
    const dir = shardedDir({ a: "s1.safetensors", b: "s2.safetensors" }, { "s1.safetensors": { a: f32([4], 0) } });
    await expectError(openCheckpoint(dir), "model.safetensors.index.json", "b", /shard file .*s2\.safetensors is missing/);
  });

  it("fails naming a tensor listed in the index but absent from its shard", async () => {
    const dir = shardedDir({ a: "s1.safetensors", b: "s1.safetensors" }, { "s1.safetensors": { a: f32([4], 0) } });
    await expectError(openCheckpoint(dir), "model.safetensors.index.json", "b", /absent from that shard/);
  });

  it("fails on a folder with no weights, and names a missing tensor", async () => {
    const empty = mkdtempSync(join(tmp, "empty-"));
    await expectError(openCheckpoint(empty), empty, undefined, /neither model\.safetensors nor/);
    const folder = mkdtempSync(join(tmp, "weights-folder-"));
    mkdirSync(join(folder, "model.safetensors"));
    await expect(openCheckpoint(folder)).rejects.toThrow(`${join(folder, "model.safetensors")}: is a folder, not a file: a checkpoint's weights are safetensors files`);
    const dir = shardedDir({ a: "s1.safetensors" }, { "s1.safetensors": { a: f32([4], 0) } });
    const ckpt = await openCheckpoint(dir);
    try {
      await expectError(ckpt.readF32("b"), "model.safetensors.index.json", "b", /not in the checkpoint's weight_map/);
    } finally {
      await ckpt.close();
    }
  });
});

describe("safetensors: what the reference implementation refuses (safetensors/src/tensor.rs)", () => {
  it("rejects a tensor named twice in the header, naming it (JSON.parse would keep the last)", async () => {
    // Raw text: an object literal cannot hold the same key twice.
    const entry = (begin: number) => JSON.stringify(f32([1], begin));
    const file = craft(`{"w":${entry(0)},"w":${entry(4)}}`, 8);
    await expectError(openSafetensors(file), file, undefined, /key "w" appears twice/);
  });

  it("rejects a hole between two tensors, naming the tensor after it", async () => {
    const file = craft({ a: f32([2], 0), b: f32([2], 12) }, 20);
    await expectError(openSafetensors(file), file, "b", /bytes \[\d+, \d+\) between tensor "a" and this tensor belong to no tensor/);
  });

  it("rejects bytes before the first tensor", async () => {
    const file = craft({ a: f32([2], 4) }, 12);
    await expectError(openSafetensors(file), file, "a", /between the start of the data section and this tensor belong to no tensor/);
  });

  it("rejects trailing bytes after the last tensor, naming it", async () => {
    const file = craft({ a: f32([2], 0), b: f32([1], 8) }, 15);
    await expectError(openSafetensors(file), file, undefined, /3 bytes \[\d+, \d+\) follow the last tensor, "b", and belong to no tensor/);
    const empty = craft({}, 1);
    await expectError(openSafetensors(empty), empty, undefined, /1 bytes .* follow the header \(no tensors\)/);
  });

  it("accepts zero-size tensors anywhere in a packed layout, as the reference does", async () => {
    const file = craft({ a: f32([2], 0), z: { dtype: "F32", shape: [0, 3], data_offsets: [8, 8] }, b: f32([1], 8) }, 12);
    const st = await openSafetensors(file);
    try {
      expect(st.names().sort()).toEqual(["a", "b", "z"]);
      expect(await st.readF32("z")).toHaveLength(0);
    } finally {
      await st.close();
    }
  });

  it("rejects a tensor listed twice in model.safetensors.index.json, naming it", async () => {
    const dir = mkdtempSync(join(tmp, "dup-index-"));
    writeFileSync(join(dir, "s1.safetensors"), readFileSync(craft({ a: f32([4], 0) }, 16)));
    writeFileSync(join(dir, "s2.safetensors"), readFileSync(craft({ a: f32([4], 0) }, 16)));
    writeFileSync(join(dir, "model.safetensors.index.json"), `{"metadata": {}, "weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}}`);
    await expectError(openCheckpoint(dir), "model.safetensors.index.json", undefined, /key "weight_map"\."a" appears twice/);
  });

  it("rejects a key given twice in config.json, naming the file and key", async () => {
    const dir = mkdtempSync(join(tmp, "dup-config-"));
    const text = JSON.stringify(BASE).replace(/}$/, `, "num_hidden_layers": 3}`);
    writeFileSync(join(dir, "config.json"), text);
    await expect(loadConfig(dir)).rejects.toThrow(new RegExp(`^${join(dir, "config.json")}: .*key "num_hidden_layers" appears twice`));
  });

  it("reads a config.json that starts with a UTF-8 byte-order mark", async () => {
    const dir = mkdtempSync(join(tmp, "bom-config-"));
    writeFileSync(join(dir, "config.json"), "\uFEFF" + JSON.stringify(BASE));
    expect((await loadConfig(dir)).num_hidden_layers).toBe(BASE.num_hidden_layers);
  });
});

// ---------------------------------------------------------------------------------------------

/** Closed forms in float64: (-1)^s 2^(e-bias) (1 + m/2^mbits), subnormals 2^(1-bias) (m/2^mbits). */
function closedForm(bits: number, expBits: number, manBits: number): number {
  const sign = bits >>> (expBits + manBits) ? -1 : 1;
  const e = (bits >>> manBits) & ((1 << expBits) - 1);
  const m = bits & ((1 << manBits) - 1);
  const bias = (1 << (expBits - 1)) - 1;
  if (e === (1 << expBits) - 1) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * 2 ** (1 - bias) * (m / 2 ** manBits);
  return sign * 2 ** (e - bias) * (1 + m / 2 ** manBits);
}
const half = (h: number) => closedForm(h, 5, 10);
const brain = (h: number) => closedForm(h, 8, 7);

/**
 * The nearest value by brute force: positive finite bit patterns are ordered like their values,
 * so binary search for the neighbours and round to nearest, ties to the even pattern.
 */
function nearest(x: number, value: (h: number) => number, maxFinite: number, inf: number): number {
  const signBit = x < 0 || Object.is(x, -0) ? 0x8000 : 0; // the same bit in f16 and bf16
  const a = Math.abs(x);
  let lo = 0;
  let hi = maxFinite;
  if (a >= value(maxFinite)) {
    const next = 2 * value(maxFinite) - value(maxFinite - 1); // one ulp above the largest value
    return signBit | (2 * a >= value(maxFinite) + next ? inf : maxFinite);
  }
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (value(mid) <= a) lo = mid;
    else hi = mid;
  }
  const twice = 2 * a;
  const mid = value(lo) + value(hi); // compare 2a with lo + hi: exact in float64
  const pick = twice < mid ? lo : twice > mid ? hi : lo % 2 === 0 ? lo : hi;
  return signBit | pick;
}

/** Random float32 bit patterns, half of them with low mantissa bits cleared so exact ties are common. */
const f32Bits = fc
  .tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 23 }), fc.boolean())
  .map(([b, k, clear]) => new Float32Array(new Uint32Array([clear ? b & ~((1 << k) - 1) : b]).buffer)[0]!);

describe("float16 / bfloat16 conversion", () => {
  it("f16 -> f32 matches the closed form for random bit patterns", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff }), (h) => {
        expect(Object.is(f16ToF32(Uint16Array.of(h))[0], half(h))).toBe(true);
      }),
      { numRuns: 5000 },
    );
    // The edges explicitly: ±0, smallest subnormal, largest subnormal, smallest normal, max, ±inf.
    const edges = [0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x7bff, 0x7c00, 0xfc00];
    expect([...f16ToF32(Uint16Array.from(edges))]).toEqual([0, -0, 2 ** -24, 1023 * 2 ** -24, 2 ** -14, 65504, Infinity, -Infinity]);
    expect(f16ToF32(Uint16Array.of(0x7e00, 0xfc01)).every(Number.isNaN)).toBe(true);
  });

  it("bf16 -> f32 matches the closed form for random bit patterns", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff }), (h) => {
        expect(Object.is(bf16ToF32(Uint16Array.of(h))[0], brain(h))).toBe(true);
      }),
      { numRuns: 5000 },
    );
  });

  it("f32 -> f16 -> f32 is the identity on every finite and infinite f16", () => {
    const all = Uint16Array.from({ length: 65536 }, (_, h) => h).filter((h) => !Number.isNaN(half(h)));
    expect(f32ToF16(f16ToF32(all))).toEqual(all);
    const allB = Uint16Array.from({ length: 65536 }, (_, h) => h).filter((h) => !Number.isNaN(brain(h)));
    expect(f32ToBf16(bf16ToF32(allB))).toEqual(allB);
  });

  it("f32 -> f16 and f32 -> bf16 round to nearest, ties to even", () => {
    fc.assert(
      fc.property(f32Bits, (x) => {
        const [h] = f32ToF16(Float32Array.of(x));
        const [b] = f32ToBf16(Float32Array.of(x));
        if (Number.isNaN(x)) {
          expect(Number.isNaN(half(h!)) && Number.isNaN(brain(b!))).toBe(true);
        } else {
          expect(h).toBe(nearest(x, half, 0x7bff, 0x7c00));
          expect(b).toBe(nearest(x, brain, 0x7f7f, 0x7f80));
        }
      }),
      { numRuns: 20000 },
    );
    // Ties go to the even pattern: 1 + 2^-11 -> 1, 1 + 3 * 2^-11 -> 1 + 2^-9, 65520 -> inf;
    // in subnormal units of 2^-24: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (0.75 -> 1 is not a tie).
    const ties = Float32Array.of(1 + 2 ** -11, 1 + 3 * 2 ** -11, 65520, 2 ** -25, 0.75 * 2 ** -24, 1.5 * 2 ** -24, 2.5 * 2 ** -24);
    expect([...f32ToF16(ties)]).toEqual([0x3c00, 0x3c02, 0x7c00, 0x0000, 0x0001, 0x0002, 0x0002]);
  });
});

// ---------------------------------------------------------------------------------------------

describe("writer round trip", () => {
  it("writes F32, F16 and BF16 that read back (rounded), with metadata and an aligned header", async () => {
    const data = Float32Array.from({ length: 30 }, (_, i) => Math.sin(i) * 100);
    const file = join(tmp, "rt.safetensors");
    writeFileSync(file, "old contents");
    await writeSafetensors(
      file,
      {
        "b.half": { dtype: "F16", shape: [5, 3], data: data.subarray(0, 15) },
        "a.full": { dtype: "F32", shape: [2, 3, 5], data },
        "c.brain": { dtype: "BF16", shape: [3], data: data.subarray(3, 6) },
        empty: { dtype: "F32", shape: [0, 4], data: new Float32Array(0) },
        ["__proto__"]: { dtype: "F32", shape: [1], data: Float32Array.of(7) }, // a key, not the prototype
      },
      { format: "pt" },
    );
    const bytes = readFileSync(file);
    const n = Number(bytes.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0);
    expect(readdirSync(tmp).filter((f) => f.endsWith(".tmp"))).toEqual([]);
    const st = await openSafetensors(file);
    try {
      expect(st.metadata).toEqual({ format: "pt" });
      expect(st.info("a.full")).toMatchObject({ dtype: "F32", shape: [2, 3, 5] });
      // Layout by element size then name: F32 "__proto__", "a.full", "empty", then F16, BF16.
      expect(st.info("a.full").byteRange[0]).toBe(8 + n + 4);
      expect(st.info("b.half").byteRange[0]).toBe(8 + n + 124);
      expect(await st.readF32("a.full")).toEqual(data);
      expect(await st.readF32("b.half")).toEqual(f16ToF32(f32ToF16(data.subarray(0, 15))));
      expect(await st.readF32("c.brain")).toEqual(bf16ToF32(f32ToBf16(data.subarray(3, 6))));
      expect(await st.readF32("empty")).toEqual(new Float32Array(0));
      expect(await st.readF32("__proto__")).toEqual(Float32Array.of(7));
    } finally {
      await st.close();
    }
  });

  it("refuses a shape that disagrees with the data, leaving nothing behind", async () => {
    const file = join(tmp, "bad-write.safetensors");
    await expectError(
      writeSafetensors(file, { w: { dtype: "F32", shape: [2, 2], data: new Float32Array(3) } }),
      file,
      "w",
      /shape \[2,2\] does not match 3 elements/,
    );
    expect(readdirSync(tmp).filter((f) => f.includes("bad-write"))).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------

const FIXTURES = join(import.meta.dirname, "fixtures", "models");
const DTYPE: Record<string, string> = { float32: "F32", float16: "F16", bfloat16: "BF16" };

describe.each(["llama-untied", "mistral-sliding", "qwen2-tied", "qwen2-sharded"])("fixture %s", (name) => {
  const dir = join(FIXTURES, name);

  it("holds exactly the weights expectedWeights(config) lists, with their shapes", async () => {
    const config = await loadConfig(dir);
    const ckpt = await openCheckpoint(dir);
    try {
      const expected = new Map(expectedWeights(config));
      expect(new Set(ckpt.names())).toEqual(new Set(expected.keys()));
      for (const [w, shape] of expected) {
        const info = ckpt.info(w);
        expect(info.shape, w).toEqual(shape);
        expect(info.dtype).toBe(DTYPE[config.torch_dtype!]);
        const data = await ckpt.readF32(w);
        expect(data.length).toBe(shape.reduce((a, b) => a * b, 1));
        expect(data.every(Number.isFinite)).toBe(true);
      }
    } finally {
      await ckpt.close();
    }
  });

  it("expectedWeightCount and expectedShape answer for the checkpoint's tensors without listing them", async () => {
    const config = await loadConfig(dir);
    const ckpt = await openCheckpoint(dir);
    try {
      // The PyTorch-written files are the reference: their count and each tensor's shape.
      expect(expectedWeightCount(config)).toBe(ckpt.names().length);
      for (const name of ckpt.names()) expect(expectedShape(config, name), name).toEqual(ckpt.info(name).shape);
      const L = config.num_hidden_layers;
      for (const foreign of [`model.layers.${L}.input_layernorm.weight`, "model.layers.00.input_layernorm.weight", "model.layers.0.mlp.gate_proj.bias", "model.layers.0.mlp.gate_proj", "model.rotary_emb.inv_freq"]) {
        expect(expectedShape(config, foreign), foreign).toBeNull();
      }
    } finally {
      await ckpt.close();
    }
  });

  it("agrees with expected.safetensors: embedding rows and rope_inv_freq", async () => {
    const config = await loadConfig(dir);
    const ckpt = await openCheckpoint(dir);
    const exp = await openSafetensors(join(dir, "expected.safetensors"));
    try {
      const { hidden_size: D, num_hidden_layers: L, vocab_size: V } = config;
      const [B, T] = exp.info("input_ids").shape as [number, number];
      expect(exp.info("hidden_states_residual").shape).toEqual([L + 1, B, T, D]);
      expect(exp.info("hidden_states_hf").shape).toEqual([L + 1, B, T, D]);
      expect(exp.info("logits").shape).toEqual([B, T, V]);
      const ids = await exp.readI32("input_ids");
      const mask = await exp.readI32("attention_mask");
      const embed = await ckpt.readF32("model.embed_tokens.weight");
      const h0 = await exp.readF32("hidden_states_residual");
      for (let bt = 0; bt < B * T; bt++) {
        if (mask[bt] === 0) continue;
        // hidden state 0 is the embedding row of the token, exactly (f16/bf16 -> f32 is exact).
        expect(h0.subarray(bt * D, bt * D + D)).toEqual(embed.subarray(ids[bt]! * D, ids[bt]! * D + D));
      }
      const ref = await exp.readF32("rope_inv_freq");
      const ours = ropeInvFreq(config);
      expect(ref.length).toBe(config.head_dim / 2);
      ref.forEach((r, i) => expect(Math.abs(r - ours[i]!)).toBeLessThanOrEqual(1e-7 * r));
    } finally {
      await Promise.all([ckpt.close(), exp.close()]);
    }
  });
});

it("fixture configs parse to the features each one exercises", async () => {
  const load = (n: string) => loadConfig(join(FIXTURES, n));
  expect(await load("llama-untied")).toMatchObject({ tie_word_embeddings: false, qkv_bias: false, eos_token_id: [2, 3] });
  expect((await load("llama-untied")).rope_scaling?.rope_type).toBe("llama3");
  expect(await load("mistral-sliding")).toMatchObject({ sliding_window: 3, num_key_value_heads: 2, num_attention_heads: 4 });
  expect(await load("qwen2-tied")).toMatchObject({ tie_word_embeddings: true, qkv_bias: true, o_bias: false, sliding_window: null });
  const sharded: Checkpoint = await openCheckpoint(join(FIXTURES, "qwen2-sharded"));
  expect(sharded.info("lm_head.weight").file).toMatch(/model-00002-of-00002\.safetensors$/);
  await sharded.close();
});

// ---------------------------------------------------------------------------------------------

const BASE = {
  model_type: "llama",
  vocab_size: 100,
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  rms_norm_eps: 1e-5,
};
const parse = (over: Record<string, unknown>) => parseConfig({ ...BASE, ...over }, "/ckpt/config.json");

describe("config", () => {
  it("fills HF defaults", () => {
    const c = parse({});
    expect(c).toMatchObject({
      num_key_value_heads: 4,
      head_dim: 8,
      rope_theta: 10000,
      rope_scaling: null,
      tie_word_embeddings: false,
      qkv_bias: false,
      o_bias: false,
      sliding_window: null,
      eos_token_id: [],
      bos_token_id: null,
    });
    expect(parse({ model_type: "mistral" }).sliding_window).toBe(4096);
    expect(parse({ model_type: "mistral", sliding_window: null }).sliding_window).toBe(null);
    expect(parse({ model_type: "qwen2", use_sliding_window: false, sliding_window: 4096 })).toMatchObject({
      sliding_window: null,
      qkv_bias: true,
      o_bias: false,
    });
    expect(parse({ attention_bias: true })).toMatchObject({ qkv_bias: true, o_bias: true });
    expect(parse({ eos_token_id: 7, head_dim: 16 })).toMatchObject({ eos_token_id: [7], head_dim: 16 });
    expect(parse({ rope_scaling: { type: "linear", factor: 2 } }).rope_scaling).toEqual({ rope_type: "linear", factor: 2 });
    expect(parse({ rope_parameters: { rope_type: "default", rope_theta: 1e6 } })).toMatchObject({ rope_theta: 1e6, rope_scaling: null });
  });

  // torch's aliases (torch.float is torch.float32, torch.half is torch.float16, torch.double is
  // torch.float64) all name float dtypes transformers accepts; qalign keeps the canonical name.
  it.each([
    ["float32", "float32"],
    ["float", "float32"],
    ["half", "float16"],
    ["bfloat16", "bfloat16"],
    ["double", "float64"],
  ])("reads torch_dtype %s as %s", (given, canonical) => {
    expect(parse({ torch_dtype: given }).torch_dtype).toBe(canonical);
    expect(parse({ dtype: given }).torch_dtype).toBe(canonical);
  });

  const bad: [string, Record<string, unknown>, RegExp][] = [
    ["unknown model_type", { model_type: "gpt2" }, /"model_type" is 'gpt2', which is not supported; supported: llama, mistral, qwen2/],
    ["yarn rope", { rope_scaling: { rope_type: "yarn", factor: 4 } }, /rope_scaling type 'yarn' is not supported; supported: default, linear, llama3/],
    ["string number", { hidden_size: "32" }, /"hidden_size" must be a positive integer, got "32" \(string\)/],
    ["missing field", { vocab_size: undefined }, /"vocab_size" is missing/],
    ["bad eos", { eos_token_id: ["</s>"] }, /"eos_token_id" must be a token id or a list of token ids/],
    ["gelu", { hidden_act: "gelu" }, /"hidden_act" is 'gelu'; only "silu"/],
    ["mlp bias", { mlp_bias: true }, /"mlp_bias" is true/],
    ["kv heads", { num_key_value_heads: 3 }, /"num_key_value_heads" \(3\) must divide num_attention_heads \(4\)/],
    ["llama3 field", { rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4 } }, /"rope_scaling.original_max_position_embeddings" is missing/],
    ["qwen2 window", { model_type: "qwen2", use_sliding_window: true }, /"use_sliding_window" is true/],
    ["bool type", { tie_word_embeddings: "yes" }, /"tie_word_embeddings" must be true or false/],
    // transformers' PretrainedConfig fails too: getattr(torch, "int3") has no such dtype.
    ["torch_dtype int3", { torch_dtype: "int3" }, /^\/ckpt\/config\.json: field "torch_dtype" is 'int3', not a float dtype torch knows: one of float32, float, float16, half, bfloat16, float64, double$/],
    ["dtype int3", { dtype: "int3" }, /: field "dtype" is 'int3', not a float dtype torch knows: one of float32, float, float16, half, bfloat16, float64, double$/],
    ["torch_dtype toString", { torch_dtype: "toString" }, /: field "torch_dtype" is 'toString', not a float dtype torch knows/],
  ];
  it.each(bad)("rejects %s, naming the file and field", (_, over, pattern) => {
    expect(() => parse(over)).toThrow(CheckpointError);
    expect(() => parse(over)).toThrow(/^\/ckpt\/config\.json: /);
    expect(() => parse(over)).toThrow(pattern);
  });
});

describe("ropeInvFreq", () => {
  const cfg = (over: Record<string, unknown>): LlamaConfig => parse({ hidden_size: 512, num_attention_heads: 4, ...over });

  it("default: theta^(-2i/Dh)", () => {
    const inv = ropeInvFreq(cfg({ rope_theta: 500000 }));
    expect(inv.length).toBe(64);
    inv.forEach((x, i) => expect(x).toBeCloseTo(Math.exp((-2 * i * Math.log(500000)) / 128), 15));
  });

  it("linear: default / factor", () => {
    const inv = ropeInvFreq(cfg({ rope_scaling: { rope_type: "linear", factor: 4 } }));
    inv.forEach((x, i) => expect(x).toBeCloseTo(10000 ** (-i / 64) / 4, 15));
  });

  it("llama3: Meta's apply_scaling, and Llama 3.1 8B values from PyTorch", () => {
    const scaling = { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
    const inv = ropeInvFreq(cfg({ rope_theta: 500000, rope_scaling: scaling }));
    // llama-models `apply_scaling`: keep short wavelengths, divide long ones, blend in between.
    const published = (freq: number) => {
      const wavelen = (2 * Math.PI) / freq;
      if (wavelen < 8192 / 4) return freq;
      if (wavelen > 8192 / 1) return freq / 8;
      const smooth = (8192 / wavelen - 1) / (4 - 1);
      return ((1 - smooth) * freq) / 8 + smooth * freq;
    };
    inv.forEach((x, i) => expect(x).toBeCloseTo(published(500000 ** (-i / 64)), 15));
    const torch: [number, number][] = [
      [0, 1.0],
      [20, 0.016560440080994446],
      [30, 0.001371893567761138],
      [40, 3.428102195952591e-5],
      [47, 8.160728247435942e-6],
      [63, 3.068925988914511e-7],
    ];
    for (const [i, v] of torch) expect(Math.abs(inv[i]! - v)).toBeLessThanOrEqual(1e-12 * v);
  });
});
