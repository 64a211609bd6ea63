import { gatherWeightOp, matmulWeightOp } from "../tensor/ops/weights.ts";
import type { PackedDType } from "../tensor/weight.ts";
import { registerKernel } from "./registry.ts";
import { checkMatmulWeight } from "./weights.ts";
import { NF4_CODE } from "../tensor/nf4.ts";
import { gemvShape, laneReduction, type GemvShape } from "./gemv.wgsl.ts";
import type { PooledBuffer } from "./webgpu/pool.ts";
import type { Kernel, KernelHost } from "./webgpu/program.ts";
import { groups, ints, kernel, single } from "./webgpu/program.ts";

/**
 * WGSL kernels that read a packed weight W [N, K] (N rows, K columns, K a multiple of 8) in its
 * stored form, specified by src/kernels/weights.ts: the product x W^T ("nt", a Linear's
 * forward; with M = 1 the matrix-vector product of decoding), the product g W ("nn", its input
 * gradient), and the embedding gather. Weights are decoded in registers 8 at a time and every
 * sum is f32, so a 16-bit weight gives bit-for-bit the inputs of the f32 kernels.
 *
 * Stored forms (bound as array<u32>):
 * - bf16: two per word, element 2j in the low half: lo = bitcast<f32>(w << 16), hi =
 *   bitcast<f32>(w & 0xffff0000) (a bf16 is the top half of an f32; no `shader-f16` needed);
 * - f16: two per word, `unpack2x16float` (lo half first);
 * - nf4: eight per word (four bytes, little-endian); byte j holds element 2j in its high nibble
 *   and 2j + 1 in its low one (bitsandbytes' order); value = NF4[q] * absmax[i / 64], with the
 *   absmax f32 array as a second binding. A group of 8 starting at a multiple of 8 lies in one
 *   block of 64, so it needs one absmax load.
 *
 * Tiling: "nt" gives each invocation a TM x TN block of out [M, N] (16 x 8 on an 8 x 2
 * workgroup), stepping k by 8: TN weight groups decoded, TM x 2 vec4 loads of x, 2 TM TN dot
 * products; one row (decoding) runs the matrix-vector arrangement of gemv.wgsl.ts (decodeKernel). "nn" gives each invocation TM = 4 rows x the 8 columns
 * k0..k0+7 of out [M, K] and walks n, decoding W[n, k0..k0+7] once for its 4 rows.
 */

/** What the kernels need of a packed weight on the device. */
export interface GpuWeight {
  readonly dtype: PackedDType;
  readonly rows: number;
  readonly cols: number;
  /** The packed words. */
  readonly data: PooledBuffer;
  /** NF4's f32 absmax per block of 64; null for 16-bit weights. */
  readonly absmax: PooledBuffer | null;
}

/** WGSL: `fn w8(e0: u32) -> W8`, the 8 weights at flat elements e0..e0+7 (e0 a multiple of 8) as two vec4. */
function decoder(dtype: PackedDType): string {
  const struct = "struct W8 { lo: vec4<f32>, hi: vec4<f32> }";
  if (dtype === "nf4") {
    const code = Array.from(NF4_CODE, (v) => `${v.toPrecision(9)}`).join(", ");
    // Element e of the word sits at bit 8 (e / 2) + 4 (1 - e % 2).
    const el = (e: number) => `NF4[(q >> ${8 * Math.floor(e / 2) + (e % 2 === 0 ? 4 : 0)}u) & 15u]`;
    return `${struct}
var<private> NF4: array<f32, 16> = array<f32, 16>(${code});
fn w8(e0: u32) -> W8 {
  let q = W[e0 / 8u];
  let s = S[e0 / 64u];
  return W8(vec4<f32>(${ints(4).map(el).join(", ")}) * s, vec4<f32>(${ints(4).map((e) => el(e + 4)).join(", ")}) * s);
}`;
  }
  const pair =
    dtype === "f16"
      ? (w: string) => `unpack2x16float(${w})`
      : (w: string) => `vec2<f32>(bitcast<f32>(${w} << 16u), bitcast<f32>(${w} & 0xffff0000u))`;
  // W is bound as vec4<u32>: the 8 weights are one 16-byte load.
  return `${struct}
fn w8(e0: u32) -> W8 {
  let q = W[e0 / 8u];
  return W8(vec4<f32>(${pair("q.x")}, ${pair("q.y")}), vec4<f32>(${pair("q.z")}, ${pair("q.w")}));
}`;
}

const PARAMS = ["M", "N", "K"].map((name) => ({ name, type: "u32" as const }));

/** How the packed words are bound: 16-bit weights as vec4<u32> (8 weights a load), NF4 as u32 (8 a word). */
const wordType = (dtype: PackedDType) => (dtype === "nf4" ? ("u32" as const) : ("vec4<u32>" as const));

function weightBuffers(dtype: PackedDType, xType: "f32" | "vec4<f32>") {
  return [
    { name: "X", type: xType, access: "read" as const },
    { name: "W", type: wordType(dtype), access: "read" as const },
    ...(dtype === "nf4" ? [{ name: "S", type: "f32" as const, access: "read" as const }] : []),
    { name: "C", type: "f32" as const, access: "read_write" as const },
  ];
}

/** out [M, N] = X [M, K] @ W^T: a TM x TN block per invocation, on a wgX x wgY workgroup. */
function ntKernel(dtype: PackedDType, tm: number, tn: number, wgX: number, wgY: number): Kernel {
  return kernel(`weights.nt.${dtype}.${tm}x${tn}.${wgX}x${wgY}`, () => ({
    params: PARAMS,
    buffers: weightBuffers(dtype, "vec4<f32>"),
    body: () => {
      const [rows, cols] = [ints(tm), ints(tn)];
      return `${decoder(dtype)}
@compute @workgroup_size(${wgX}, ${wgY}, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let m0 = gid.y * ${tm}u;
  let n0 = gid.x * ${tn}u;
  if (m0 >= P.M || n0 >= P.N) { return; }
  // Rows and columns past the edge are clamped when read and skipped when stored.
  ${rows.map((r) => `let x${r} = min(m0 + ${r}u, P.M - 1u) * (P.K / 4u);`).join("\n  ")}
  ${cols.map((c) => `let w${c} = min(n0 + ${c}u, P.N - 1u) * P.K;`).join("\n  ")}
  ${rows.map((r) => cols.map((c) => `var a${r}_${c} = 0.0;`).join(" ")).join("\n  ")}
  for (var k = 0u; k < P.K; k += 8u) {
    ${cols.map((c) => `let b${c} = w8(w${c} + k);`).join("\n    ")}
    ${rows
      .map(
        (r) => `{ let lo = X[x${r} + k / 4u]; let hi = X[x${r} + k / 4u + 1u];
      ${cols.map((c) => `a${r}_${c} += dot(lo, b${c}.lo) + dot(hi, b${c}.hi);`).join(" ")} }`,
      )
      .join("\n    ")}
  }
  ${rows
    .map(
      (r) => `if (m0 + ${r}u < P.M) {
    ${cols.map((c) => `if (n0 + ${c}u < P.N) { C[(m0 + ${r}u) * P.N + n0 + ${c}u] = a${r}_${c}; }`).join(" ")}
  }`,
    )
    .join("\n  ")}
}`;
    },
  }));
}

/**
 * Decoding, out [1, N] = x [1, K] @ W^T, arranged as gemv.wgsl.ts's matrix-vector kernel (its
 * GemvShape): a block of TN output columns is computed by `lanes` invocations that split K in
 * groups of 8 (lane l takes groups l, l + lanes, ...: on a GPU neighbouring lanes read
 * neighbouring words of a row, which coalesces) and add their partial sums by a tree reduction in
 * workgroup memory. With lanes = 1 (a CPU emulation) an invocation runs all of K for its TN
 * columns, with no barrier.
 */
function decodeKernel(dtype: PackedDType, s: GemvShape): Kernel {
  const { lanes, tn, blocksPerWorkgroup: G } = s;
  return kernel(`weights.decode.${dtype}.${lanes}x${tn}x${G}`, () => ({
    params: PARAMS,
    buffers: weightBuffers(dtype, "vec4<f32>"),
    body: () => {
      const cols = ints(tn);
      const r = laneReduction(s, "a");
      return `${decoder(dtype)}
${r.decl}
${r.entry}
  // Columns past N are clamped (read, never stored), so every invocation reaches the barriers.
  ${cols.map((c) => `let w${c} = min(n0 + ${c}u, P.N - 1u) * P.K;`).join("\n  ")}
  ${cols.map((c) => `var a${c} = 0.0;`).join(" ")}
  for (var k = lane * 8u; k < P.K; k += ${lanes * 8}u) {
    let lo = X[k / 4u];
    let hi = X[k / 4u + 1u];
    ${cols.map((c) => `{ let b = w8(w${c} + k); a${c} += dot(lo, b.lo) + dot(hi, b.hi); }`).join("\n    ")}
  }
  ${r.reduce}
  if (lane == 0u) {
    ${r.collect}
    ${cols.map((c) => `if (n0 + ${c}u < P.N) { C[n0 + ${c}u] = a${c}; }`).join("\n    ")}
  }
}`;
    },
  }));
}

/** out [M, K] = X [M, N] @ W: TM rows x 8 columns per invocation on an 8 x 8 workgroup. */
function nnKernel(dtype: PackedDType, tm: number): Kernel {
  return kernel(`weights.nn.${dtype}.${tm}`, () => ({
    params: PARAMS,
    buffers: weightBuffers(dtype, "f32"),
    body: () => {
      const rows = ints(tm);
      return `${decoder(dtype)}
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let m0 = gid.y * ${tm}u;
  let k0 = gid.x * 8u;
  if (m0 >= P.M || k0 >= P.K) { return; }
  ${rows.map((r) => `let g${r} = min(m0 + ${r}u, P.M - 1u) * P.N;`).join("\n  ")}
  ${rows.map((r) => `var lo${r} = vec4<f32>(); var hi${r} = vec4<f32>();`).join("\n  ")}
  for (var n = 0u; n < P.N; n++) {
    let b = w8(n * P.K + k0);
    ${rows.map((r) => `{ let g = X[g${r} + n]; lo${r} += g * b.lo; hi${r} += g * b.hi; }`).join("\n    ")}
  }
  ${rows
    .map(
      (r) => `if (m0 + ${r}u < P.M) {
    let o = (m0 + ${r}u) * P.K + k0;
    ${ints(8)
      .map((e) => `C[o + ${e}u] = ${e < 4 ? `lo${r}` : `hi${r}`}[${e % 4}];`)
      .join(" ")}
  }`,
    )
    .join("\n  ")}
}`;
    },
  }));
}

/** One invocation per 8 output elements (n, d0..d0+7): out[n, d] = W[ids[n], d]; zeros for ids outside [0, V). */
function gatherKernel(dtype: PackedDType): Kernel {
  return kernel(`weights.gather.${dtype}`, () => ({
    params: [
      { name: "groups", type: "u32" },
      { name: "D", type: "u32" },
      { name: "V", type: "i32" },
    ],
    buffers: [
      { name: "ids", type: "i32", access: "read" },
      { name: "W", type: wordType(dtype), access: "read" },
      ...(dtype === "nf4" ? [{ name: "S", type: "f32" as const, access: "read" as const }] : []),
      { name: "C", type: "f32", access: "read_write" },
    ],
    body: () => `${decoder(dtype)}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let g = wg_linear(wid, nwg) * 64u + lid;
  if (g >= P.groups) { return; }
  let per = P.D / 8u;
  let n = g / per;
  let d0 = (g % per) * 8u;
  let id = ids[n];
  var b = W8(vec4<f32>(), vec4<f32>());
  if (id >= 0 && id < P.V) { b = w8(u32(id) * P.D + d0); }
  let o = n * P.D + d0;
  ${ints(8)
    .map((e) => `C[o + ${e}u] = ${e < 4 ? "b.lo" : "b.hi"}[${e % 4}];`)
    .join(" ")}
}`,
  }));
}

/** The buffers of a weight, in binding order after the first operand. */
function weightBindings(w: GpuWeight): PooledBuffer[] {
  return w.absmax ? [w.data, w.absmax] : [w.data];
}

/**
 * The "nt" tile with more than one row [TM, TN, workgroup x, workgroup y]: 16 x 8, so each
 * decoded group of 8 weights feeds 16 rows (measured on SwiftShader at [16, 2048] x [5504, 2048]:
 * 16 x 8 ran bf16 at 0.8x and nf4 at 0.7x the f32 "quad" kernel, 4 x 4 at 0.36x and 0.25x;
 * 16 x 16 did not compile). One row runs decodeKernel.
 */
const PREFILL_TILE = [16, 8, 8, 2] as const;

/**
 * Records out = x @ W^T ("nt": x [M, K], out [M, N]) or out = x @ W ("nn": x [M, N], out
 * [M, K]) for a packed weight W [N, K]. x and out are contiguous f32 from element 0.
 */
function encodeWeightMatmul(host: KernelHost, x: PooledBuffer, w: GpuWeight, out: PooledBuffer, M: number, form: "nt" | "nn"): void {
  const [N, K] = [w.rows, w.cols];
  if (M === 0 || N === 0 || K === 0) return;
  const p = { M, N, K };
  const bufs = [x, ...weightBindings(w), out];
  if (form === "nt" && M === 1) {
    const sh = gemvShape(host.rowWorkgroup);
    host.dispatch(decodeKernel(w.dtype, sh), p, bufs, [groups(N, sh.tn * sh.blocksPerWorkgroup), 1, 1]);
  } else if (form === "nt") {
    const [tm, tn, wgX, wgY] = PREFILL_TILE;
    host.dispatch(ntKernel(w.dtype, tm, tn, wgX, wgY), p, bufs, [groups(N, tn * wgX), groups(M, tm * wgY), 1]);
  } else {
    host.dispatch(nnKernel(w.dtype, 4), p, bufs, [groups(K, 8 * 8), groups(M, 4 * 8), 1]);
  }
}

/** Records out [n, D] = W[ids, :] for i32 ids [n] and a packed table W [V, D]. */
function encodeWeightGather(host: KernelHost, w: GpuWeight, ids: PooledBuffer, n: number, out: PooledBuffer): void {
  const g = (n * w.cols) / 8;
  if (g === 0) return;
  host.dispatch(gatherKernel(w.dtype), { groups: g, D: w.cols, V: w.rows }, [ids, ...weightBindings(w), out], groups(g, 64));
}

// The webgpu kernels: x f32 and ids i32 in one chunk; ids outside [0, V) give zero rows (the cpu device throws).
registerKernel(matmulWeightOp, "webgpu", (gpu, x, w, M, form) => {
  const s = gpu.weights.live("matmulWeight", w);
  const xs = gpu.space.wholeFloat("matmulWeight", "x", x);
  const out = gpu.space.output("matmulWeight", "f32", checkMatmulWeight(xs, s, M, form));
  encodeWeightMatmul(gpu, single(xs), s, single(out), M, form);
  return out;
});

registerKernel(gatherWeightOp, "webgpu", (gpu, w, ids) => {
  const s = gpu.weights.live("gatherWeight", w);
  const is = gpu.space.wholeInt("gatherWeight", "ids", ids);
  const out = gpu.space.output("gatherWeight", "f32", is.numel * s.cols);
  encodeWeightGather(gpu, s, single(is), is.numel, single(out));
  return out;
});
