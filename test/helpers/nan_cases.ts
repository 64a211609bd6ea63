import { expect } from "vitest";
import type { Backend } from "../../src/tensor/backend.ts";
import { attention } from "../../src/tensor/ops/attention.ts";
import { crossEntropy } from "../../src/tensor/ops/cross_entropy.ts";
import { tensor } from "../../src/tensor/ops/create.ts";
import { tidy } from "../../src/tensor/scope.ts";

/**
 * The NaN cases of test/nan.test.ts, each a function of the device that throws (vitest's expect)
 * when the device does not propagate NaN as PyTorch does (see test/nan.test.ts).
 */
/** The unary methods of a tensor (the pointwise table's unary ops that have one). */
const UNARY_OPS = ["neg", "exp", "log", "sqrt", "rsqrt", "abs", "silu", "sigmoid", "tanh", "gelu", "relu", "square", "reciprocal"] as const;

export type Case = [name: string, run: (device: Backend) => Promise<void>];

const values = async (t: { data(): Promise<ArrayLike<number>> }) => Array.from(await t.data());

/** Float64 causal attention for one head row: softmax over the visible keys of scale q.k, times v. */
function attentionRow(q: number[], keys: number[][], vals: number[][], visible: number[], scale: number): number[] {
  const s = visible.map((j) => scale * q.reduce((acc, qd, d) => acc + qd * keys[j]![d]!, 0));
  const m = Math.max(...s);
  const e = s.map((x) => Math.exp(x - m));
  const l = e.reduce((a, b) => a + b, 0);
  return q.map((_, d) => visible.reduce((acc, j, n) => acc + (e[n]! / l) * vals[j]![d]!, 0));
}

// Attention geometry: B 1, H 2 query heads sharing Hkv 1 kv head, T 6, Dh 16 (the quad kernel's multiple).
const T = 6;
const Dh = 16;
const rowsOf = (seed: number, n: number) => Array.from({ length: n }, (_, i) => Array.from({ length: Dh }, (_, d) => Math.sin(seed + 1.3 * i + 0.7 * d)));

/**
 * attention with k[key] = NaN (or q[query] = NaN); returns out [H][T][Dh] and the expected rows:
 * NaN for a row that sees the NaN, else the float64 reference over the visible keys.
 */
async function nanAttention(device: Backend, opts: { nanKey?: number; nanQuery?: number; window?: number; padded?: number }) {
  const H = 2;
  const q = [rowsOf(0, T), rowsOf(5, T)];
  const k = rowsOf(11, T);
  const v = rowsOf(17, T);
  if (opts.nanKey !== undefined) k[opts.nanKey]![3] = NaN;
  if (opts.nanQuery !== undefined) q[1]![opts.nanQuery]![0] = NaN;
  const mask = Array.from({ length: T }, (_, j) => (j === opts.padded ? 0 : 1));
  const t = (rows: number[][][], heads: number) => tensor(Float32Array.from(rows.flat(2)), { device, shape: [1, heads, T, Dh] });
  const out = attention(t(q, H), t([k], 1), t([v], 1), {
    window: opts.window ?? 0,
    keyMask: opts.padded === undefined ? null : tensor(Float32Array.from(mask), { device, shape: [1, T] }),
  });
  const got = await values(out);
  const scale = 1 / Math.sqrt(Dh);
  const rows: { head: number; i: number; got: number[]; want: number[] | "nan" }[] = [];
  for (let h = 0; h < H; h++) {
    for (let i = 0; i < T; i++) {
      const visible = Array.from({ length: i + 1 }, (_, j) => j).filter((j) => mask[j] === 1 && (!opts.window || j > i - opts.window));
      const seesNan = (opts.nanKey !== undefined && visible.includes(opts.nanKey)) || (h === 1 && i === opts.nanQuery);
      rows.push({ head: h, i, got: got.slice((h * T + i) * Dh, (h * T + i + 1) * Dh), want: seesNan ? "nan" : attentionRow(q[h]![i]!, k, v, visible, scale) });
    }
  }
  return rows;
}

function expectRows(rows: Awaited<ReturnType<typeof nanAttention>>) {
  for (const r of rows) {
    const where = `head ${r.head} query ${r.i}`;
    if (r.want === "nan") expect(r.got.every(Number.isNaN), where).toBe(true);
    // f32 kernels against the float64 reference: outputs are O(1), a few f32 ulps apart.
    else r.got.forEach((x, d) => expect(Math.abs(x - (r.want as number[])[d]!), `${where} dim ${d}`).toBeLessThan(1e-5));
  }
}

export const CASES: Case[] = [
  ["cross-entropy of a row with a NaN logit is NaN, and so is the mean", async (device) => {
    const logits = tensor(Float32Array.from([0, 0, NaN, 1]), { device, shape: [2, 2] });
    const targets = tensor(Int32Array.from([0, 1]), { device, shape: [2] });
    expect(await values(crossEntropy(logits, targets, { reduction: "none" }))).toEqual([Math.fround(Math.LN2), NaN]); // -log(1/2), NaN
    expect(await values(crossEntropy(logits, targets))).toEqual([NaN]);
  }],
  ["the cross-entropy gradient is NaN in the NaN row only", async (device) => {
    const logits = tensor(Float32Array.from([0, 0, NaN, 1]), { device, shape: [2, 2] }).requireGrad();
    tidy(() => crossEntropy(logits, tensor(Int32Array.from([0, 1]), { device, shape: [2] }), { reduction: "sum" }).backward());
    // d loss / d logits = softmax - onehot per row: [1/2 - 1, 1/2] for the clean row 0 ([0, 0], target 0).
    expect(await values(logits.grad!)).toEqual([-0.5, 0.5, NaN, NaN]);
    logits.grad!.dispose();
    logits.dispose();
  }],
  ["max over all elements: max([1, NaN, 3, 4]) is NaN", async (device) => {
    expect(await values(tensor([1, NaN, 3, 4], { device }).max())).toEqual([NaN]);
    expect(await values(tensor([NaN, 1, 3, 4], { device }).max())).toEqual([NaN]);
  }],
  ["max over an axis is NaN in the rows holding a NaN only", async (device) => {
    const x = tensor(Float32Array.from([1, NaN, 2, 3, -5, -7, NaN, NaN]), { device, shape: [4, 2] });
    expect(await values(x.max(1))).toEqual([NaN, 3, -5, NaN]);
    // A long row, so that GPU-sized workgroups fold the NaN in their tree.
    const long = Float32Array.from({ length: 1000 }, (_, i) => i);
    long[777] = NaN;
    expect(await values(tensor(long, { device }).max())).toEqual([NaN]);
  }],
  ["maximum, minimum and relu of NaN are NaN", async (device) => {
    const a = tensor([NaN, 1, NaN, -2], { device });
    const b = tensor([1, NaN, NaN, 3], { device });
    expect(await values(a.maximum(b))).toEqual([NaN, NaN, NaN, 3]);
    expect(await values(a.minimum(b))).toEqual([NaN, NaN, NaN, -2]);
    expect(await values(a.relu())).toEqual([NaN, 1, NaN, 0]);
  }],
  ["every unary op of NaN is NaN (exp, log, tanh, sigmoid, ... as torch gives)", async (device) => {
    const x = tensor([NaN, 0.5], { device });
    for (const op of UNARY_OPS) {
      const [atNan, atHalf] = await values(x[op]());
      expect(Number.isNaN(atNan), `${op}(NaN)`).toBe(true);
      expect(Number.isNaN(atHalf), `${op}(0.5)`).toBe(false);
    }
  }],
  ["softmax and log-softmax: a NaN makes its whole row NaN, other rows exact", async (device) => {
    const x = tensor(Float32Array.from([0, Math.log(2), Math.log(3), 3, NaN, 4]), { device, shape: [2, 3] });
    // Row 0 is [0, ln 2, ln 3]: probabilities 1/6, 2/6, 3/6 (f32 rounding: within 1e-6).
    const p = await values(x.softmax());
    [1 / 6, 2 / 6, 3 / 6].forEach((want, c) => expect(Math.abs(p[c]! - want)).toBeLessThan(1e-6));
    expect(p.slice(3)).toEqual([NaN, NaN, NaN]);
    const logp = await values(x.logSoftmax());
    [1 / 6, 2 / 6, 3 / 6].forEach((want, c) => expect(Math.abs(logp[c]! - Math.log(want))).toBeLessThan(1e-6));
    expect(logp.slice(3)).toEqual([NaN, NaN, NaN]);
  }],
  ["the mean of no elements is NaN (torch.mean)", async (device) => {
    const empty = tensor(new Float32Array(0), { device, shape: [3, 0] });
    expect(await values(empty.mean())).toEqual([NaN]);
    expect(await values(empty.mean(1))).toEqual([NaN, NaN, NaN]);
    expect(await values(tensor(new Float32Array(0), { device, shape: [0, 2] }).mean(0))).toEqual([NaN, NaN]);
  }],
  ["attention: a NaN key reaches exactly the query rows that see it", async (device) => {
    expectRows(await nanAttention(device, { nanKey: 2 }));
  }],
  ["attention: a NaN query row gives NaN in that row only", async (device) => {
    expectRows(await nanAttention(device, { nanQuery: 3 }));
  }],
  ["attention: a NaN key outside the sliding window or padded out is never reached", async (device) => {
    expectRows(await nanAttention(device, { nanKey: 1, window: 2 }));
    expectRows(await nanAttention(device, { nanKey: 4, padded: 4 }));
  }],
];

