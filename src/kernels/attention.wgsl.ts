import type { Storage } from "../tensor/backend.ts";
import { DeviceLimitError } from "../tensor/errors.ts";
import type { AttentionBackwardInputs, AttentionGeometry, AttentionGrads, AttentionInputs } from "../tensor/ops/attention.ts";
import { attentionBackwardOp, attentionOp } from "../tensor/ops/attention.ts";
import { checkAttention, checkAttentionBackward } from "./attention.ts";
import { registerKernel } from "./registry.ts";
import type { WebGpuBackend, WebGpuStorage } from "./webgpu/backend.ts";
import type { Field, GpuData, KernelHost } from "./webgpu/program.ts";
import { VEC4_LANES, ints, kernel, single } from "./webgpu/program.ts";
import { isNanVec4Wgsl, isNanWgsl } from "./nan.wgsl.ts";
import { ROW_MAIN_ARGS, workgroupReduce } from "./reduce.wgsl.ts";

/**
 * WGSL fused causal grouped-query attention, forward and backward, specified by attentionRef and
 * attentionBackwardRef in src/kernels/attention.ts (FlashAttention-2, Dao 2023): no [Tq, Tk]
 * score matrix is ever stored.
 *
 * Two forward variants (the backward has one), chosen by KernelHost.attentionVariant:
 *
 * "rows", one workgroup per query row (b, h, i): the visible keys are walked in blocks of wg
 * (the workgroup size). Invocation t scores key j0 + t (s = scale q.k, q held in workgroup memory); the block maximum
 * updates the running max m -> m', the old sum l and output accumulator are rescaled by
 * exp(m - m') (online softmax), the block's p = exp(s - m') are summed into l, and every
 * invocation adds sum_j p_j v_j for the head dimensions it owns (d = t, t + wg, ...; coalesced
 * reads of v). At the end out = acc / l and lse = m + log l. Every query row reads all of its
 * keys and values, so K and V are read Tq times per head.
 *
 * "quad", one quad of invocations (a workgroup of 4) per block of TQ query rows of one head: the
 * four lanes split the head dimension (lane l owns dims [l Dh/4, (l + 1) Dh/4), read as vec4),
 * keep their quarter of the TQ query rows and of the TQ output accumulators in registers, and
 * walk the keys visible to any row of the block 4 at a time. Per key block each lane loads its
 * quarter of 4 keys, forms partial dot products for TQ x 4 scores, and two quad swaps
 * (quadSwapX, quadSwapY) sum the quarters so every lane holds the full scores; all lanes then
 * run the same online-softmax update (per-row max m, sum l, rescale by exp(m - m')) and add
 * p_ij v_j for their quarter of v_j. So each key and value is loaded once per TQ query rows
 * instead of once per row, with no workgroup memory and no barriers (costly on CPU adapters).
 * Rows of the block that may not see a key (causal diagonal, sliding window, padding) get p = 0.
 * Needs the `subgroups` feature and Dh a multiple of 16.
 *
 * Backward recomputes p_ij = exp(s_ij - lse_i) instead of storing it:
 *   pass 1 (dq), one workgroup per query row: D_i = sum_d dO_i O_i (saved for pass 2), then
 *     per key block ds_ij = p_ij (dO_i . v_j - D_i) and dq_i += scale sum_j ds_ij k_j;
 *   pass 2 (dk, dv), one workgroup per key row j of a kv head: for every query head of its group
 *     and every query row that sees j, dv_j += p_ij dO_i and dk_j += scale ds_ij q_i.
 * Each output row is written by one workgroup, so no atomics are needed.
 *
 * Masks: causal and sliding-window limits are turned into a key (or query) range per row, so
 * invisible blocks are never visited; padding (keyMask) zeroes p per key. Rows that see no key
 * give out 0 and lse 0, as in the reference. Scores use the sentinel -1e30 for "no key yet"
 * (WGSL may assume there are no infinities); a NaN score of a visible key is kept out of the
 * running max and passed into its probability (nan.wgsl.ts), so the row's output is NaN, as in
 * PyTorch.
 */

/**
 * Invocations per workgroup, also the block of keys (or queries) scored at once: 64 on a GPU; on a
 * CPU emulation (rowWorkgroup 1), where barriers are costly, 4, one SIMD group of SwiftShader.
 */
const blockSize = (host: KernelHost) => Math.max(4, Math.min(64, host.rowWorkgroup));
/** Largest head dimension: each invocation owns ATTENTION_MAX_DH / wg dimensions of the row. */
export const ATTENTION_MAX_DH = 256;
const NEG = "-1.0e30";

const geometryParams: Field[] = [
  { name: "rows", type: "u32" },
  { name: "H", type: "u32" },
  { name: "Hkv", type: "u32" },
  { name: "group", type: "u32" },
  { name: "Tq", type: "u32" },
  { name: "Tk", type: "u32" },
  { name: "Dh", type: "u32" },
  { name: "scale", type: "f32" },
  { name: "causal", type: "u32" },
  { name: "window", type: "u32" },
  { name: "hasMask", type: "u32" },
  // Query rows B * H * Tq: the backward's stats buffer holds lse at [0, qRows) and D at [qRows, 2 qRows).
  { name: "qRows", type: "u32" },
];

/**
 * WGSL shared by the kernels: `key_kept(b, j)` (the padding mask) and, for query-row kernels,
 * `query_row(row)`, which returns the row's batch, the start of its kv head in k/v, and its
 * visible key range [lo, hi) from the causal and window limits.
 */
const COMMON = `
const NEG = ${NEG};
fn key_kept(b: u32, j: u32) -> bool { return P.hasMask == 0u || mask[b * P.Tk + j] != 0; }
struct QueryRow { b: u32, kv: u32, lo: i32, hi: i32 }
fn query_row(row: u32) -> QueryRow {
  let i = row % P.Tq;
  let bh = row / P.Tq;
  let b = bh / P.H;
  let kv = (b * P.Hkv + (bh % P.H) / P.group) * P.Tk * P.Dh;
  // The query sits at absolute position Tk - Tq + i.
  let pos = i32(P.Tk) - i32(P.Tq) + i32(i);
  var hi = i32(P.Tk);
  if (P.causal == 1u) { hi = min(hi, pos + 1); }
  var lo = 0;
  if (P.window > 0u) { lo = max(0, pos - i32(P.window) + 1); }
  return QueryRow(b, kv, lo, hi);
}`;

const maskBuffer = (maskType: "f32" | "i32") => ({ name: "mask", type: maskType, access: "read" as const });

const forwardKernel = (maskType: "f32" | "i32", wg: number) =>
  kernel(`attention.fwd.mask_${maskType}.wg${wg}`, () => ({
    params: geometryParams,
    buffers: [
      { name: "q", type: "f32", access: "read" },
      { name: "k", type: "f32", access: "read" },
      { name: "v", type: "f32", access: "read" },
      maskBuffer(maskType),
      { name: "out", type: "f32", access: "read_write" },
      { name: "lse", type: "f32", access: "read_write" },
    ],
    body: () => `${workgroupReduce("f32", wg)}
${COMMON}
var<workgroup> qs: array<f32, ${ATTENTION_MAX_DH}>;
var<workgroup> ps: array<f32, ${wg}>;
@compute @workgroup_size(${wg})
fn main(${ROW_MAIN_ARGS}) {
  let row = wg_linear(wid, nwg);
  if (row >= P.rows) { return; }
  let r = query_row(row);
  for (var d = lid; d < P.Dh; d += ${wg}u) { qs[d] = q[row * P.Dh + d] * P.scale; }
  workgroupBarrier();
  var m = NEG;
  var l = 0.0;
  var acc: array<f32, ${ATTENTION_MAX_DH / wg}>;
  for (var j0 = r.lo; j0 < r.hi; j0 += ${wg}) {
    let j = j0 + i32(lid);
    var s = NEG;
    let seen = j < r.hi && key_kept(r.b, u32(j));
    if (seen) {
      let kr = r.kv + u32(j) * P.Dh;
      var dot = 0.0;
      for (var d = 0u; d < P.Dh; d++) { dot += qs[d] * k[kr + d]; }
      s = dot;
    }
    // NaN stays out of the running max (exp(x - NaN) is inf, not NaN, on SwiftShader) and goes
    // into p instead, from where the sums carry it to l and the output.
    let sNan = ${isNanWgsl("s")};
    let mNew = max(m, wg_max(select(s, NEG, sNan), lid));
    let p = select(0.0, select(exp(s - mNew), s, sNan), seen);
    ps[lid] = p;
    let alpha = exp(m - mNew);
    l = l * alpha + wg_sum(p, lid);
    let nj = u32(min(${wg}, r.hi - j0));
    for (var u = 0u; u < ${ATTENTION_MAX_DH / wg}u; u++) {
      let d = lid + u * ${wg}u;
      if (d < P.Dh) {
        var o = acc[u] * alpha;
        for (var jj = 0u; jj < nj; jj++) { o += ps[jj] * v[r.kv + (u32(j0) + jj) * P.Dh + d]; }
        acc[u] = o;
      }
    }
    workgroupBarrier();
    m = mNew;
  }
  // l is 0 only when no key is visible; NaN must count as seeing one (a != may compile to an
  // ordered comparison, false for NaN).
  let seesAny = l != 0.0 || ${isNanWgsl("l")};
  for (var u = 0u; u < ${ATTENTION_MAX_DH / wg}u; u++) {
    let d = lid + u * ${wg}u;
    if (d < P.Dh) { out[row * P.Dh + d] = select(0.0, acc[u] / l, seesAny); }
  }
  if (lid == 0u) { lse[row] = select(0.0, m + log(l), seesAny); }
}`,
  }));

/**
 * Query rows per quad in the "quad" forward: each key and value loaded serves this many rows; the
 * accumulators (16 x Dh / 4 per lane) spill to L1 on a CPU adapter, which costs less than loads.
 */
const QUAD_ROWS = 16;

const quadForwardKernel = (maskType: "f32" | "i32", dh: number, tq: number) =>
  kernel(`attention.fwd.quad.mask_${maskType}.dh${dh}.tq${tq}`, () => {
    const rows = ints(tq);
    // vec4s of the head dimension owned by one lane, and the 4 keys of a block.
    const dv = ints(dh / 16);
    const keys = ints(4);
    const perRows = (f: (r: number) => string, sep = " ") => rows.map(f).join(sep);
    const perVec = (f: (v: number) => string) => dv.map(f).join(" ");
    return {
      params: geometryParams,
      enables: ["subgroups"],
      buffers: [
        { name: "q", type: "vec4<f32>", access: "read" },
        { name: "k", type: "vec4<f32>", access: "read" },
        { name: "v", type: "vec4<f32>", access: "read" },
        maskBuffer(maskType),
        { name: "out", type: "vec4<f32>", access: "read_write" },
        { name: "lse", type: "f32", access: "read_write" },
      ],
      body: () => `${COMMON}
@compute @workgroup_size(4)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) sg: u32) {
  let blk = wg_linear(wid, nwg);                 // (b * H + h) * blocks + block
  if (blk >= P.rows) { return; }
  let lane = sg % 4u;
  let blocks = (P.Tq + ${tq - 1}u) / ${tq}u;
  let i0 = (blk % blocks) * ${tq}u;
  let head = blk / blocks;                       // b * H + h
  let d4 = P.Dh / 4u;                            // vec4s per row
  let mine = lane * ${dh / 16}u;                 // this lane's first vec4 of a row
  // Keys visible to some row of the block: from the first row's window start to the last row's causal end.
  let first = query_row(head * P.Tq + i0);
  let last = query_row(head * P.Tq + min(i0 + ${tq - 1}u, P.Tq - 1u));
  let kvRow = first.kv / 4u;                     // vec4 index of key 0 of this kv head
  let shift = i32(P.Tk) - i32(P.Tq);             // query i sits at position shift + i
  ${perRows((r) => `let qr${r} = (head * P.Tq + min(i0 + ${r}u, P.Tq - 1u)) * d4 + mine;`, "\n  ")}
  ${perRows((r) => perVec((v) => `let q${r}_${v} = q[qr${r} + ${v}u] * P.scale;`), "\n  ")}
  ${perRows((r) => `var m${r} = NEG; var l${r} = 0.0; ${perVec((v) => `var o${r}_${v} = vec4<f32>();`)}`, "\n  ")}
  for (var j0 = first.lo; j0 < last.hi; j0 += 4) {
    // This lane's quarter of keys and values j0 .. j0 + 3 (clamped; keys past hi get p = 0).
    ${keys.map((t) => `let at${t} = kvRow + u32(min(j0 + ${t}, i32(P.Tk) - 1)) * d4 + mine;`).join(" ")}
    ${keys.map((t) => perVec((v) => `let k${t}_${v} = k[at${t} + ${v}u];`)).join("\n    ")}
    let kept = vec4<bool>(${keys.map((t) => `j0 + ${t} < last.hi && key_kept(first.b, u32(min(j0 + ${t}, i32(P.Tk) - 1)))`).join(", ")});
    let js = vec4<i32>(j0, j0 + 1, j0 + 2, j0 + 3);
    ${perRows(
      (r) => `{
      // Scores of row i0 + ${r} against the 4 keys: partial dots over this lane's dims, summed over the quad.
      var s = vec4<f32>(${keys.map((t) => dv.map((v) => `dot(q${r}_${v}, k${t}_${v})`).join(" + ")).join(", ")});
      s += quadSwapX(s);
      s += quadSwapY(s);
      let pos = shift + i32(i0 + ${r}u);
      var seen = kept;
      if (P.causal == 1u) { seen = seen & (js <= vec4<i32>(pos)); }
      if (P.window > 0u) { seen = seen & (js > vec4<i32>(pos - i32(P.window))); }
      s = select(vec4<f32>(NEG), s, seen);
      // NaN stays out of the running max and goes into p, as in the rows kernel.
      let sNan = ${isNanVec4Wgsl("s")};
      let sm = select(s, vec4<f32>(NEG), sNan);
      let mNew = max(m${r}, max(max(sm.x, sm.y), max(sm.z, sm.w)));
      let alpha = exp(m${r} - mNew);
      let p = select(vec4<f32>(0.0), select(exp(s - vec4<f32>(mNew)), s, sNan), seen);
      l${r} = l${r} * alpha + p.x + p.y + p.z + p.w;
      m${r} = mNew;
      ${perVec((v) => `o${r}_${v} = o${r}_${v} * alpha + ${keys.map((t) => `p.${VEC4_LANES[t]} * v[at${t} + ${v}u]`).join(" + ")};`)}
    }`,
      "\n    ",
    )}
  }
  ${perRows(
    (r) => `if (i0 + ${r}u < P.Tq) {
    let seesAny = l${r} != 0.0 || ${isNanWgsl(`l${r}`)}; // NaN counts, as in the rows kernel
    let inv = select(0.0, 1.0 / l${r}, seesAny);
    ${perVec((v) => `out[qr${r} + ${v}u] = o${r}_${v} * inv;`)}
    if (lane == 0u) { lse[head * P.Tq + i0 + ${r}u] = select(0.0, m${r} + log(l${r}), seesAny); }
  }`,
    "\n  ",
  )}
}`,
    };
  });

const dqKernel = (maskType: "f32" | "i32", wg: number) =>
  kernel(`attention.bwd_dq.mask_${maskType}.wg${wg}`, () => ({
    params: geometryParams,
    buffers: [
      { name: "q", type: "f32", access: "read" },
      { name: "k", type: "f32", access: "read" },
      { name: "v", type: "f32", access: "read" },
      maskBuffer(maskType),
      { name: "o", type: "f32", access: "read" },
      { name: "dO", type: "f32", access: "read" },
      { name: "stats", type: "f32", access: "read_write" },
      { name: "dq", type: "f32", access: "read_write" },
    ],
    body: () => `${workgroupReduce("f32", wg)}
${COMMON}
var<workgroup> qs: array<f32, ${ATTENTION_MAX_DH}>;
var<workgroup> dos: array<f32, ${ATTENTION_MAX_DH}>;
var<workgroup> dss: array<f32, ${wg}>;
@compute @workgroup_size(${wg})
fn main(${ROW_MAIN_ARGS}) {
  let row = wg_linear(wid, nwg);
  if (row >= P.rows) { return; }
  let r = query_row(row);
  var part = 0.0;
  for (var d = lid; d < P.Dh; d += ${wg}u) {
    qs[d] = q[row * P.Dh + d] * P.scale;
    let g = dO[row * P.Dh + d];
    dos[d] = g;
    part += g * o[row * P.Dh + d];
  }
  // D_i = dO_i . O_i; wg_sum's barriers also publish qs and dos.
  let Di = wg_sum(part, lid);
  if (lid == 0u) { stats[P.qRows + row] = Di; }
  let lseI = stats[row];
  var acc: array<f32, ${ATTENTION_MAX_DH / wg}>;
  for (var j0 = r.lo; j0 < r.hi; j0 += ${wg}) {
    let j = j0 + i32(lid);
    var ds = 0.0;
    if (j < r.hi && key_kept(r.b, u32(j))) {
      let kr = r.kv + u32(j) * P.Dh;
      var s = 0.0;
      var dp = 0.0;
      for (var d = 0u; d < P.Dh; d++) { s += qs[d] * k[kr + d]; dp += dos[d] * v[kr + d]; }
      ds = exp(s - lseI) * (dp - Di);
    }
    dss[lid] = ds;
    workgroupBarrier();
    let nj = u32(min(${wg}, r.hi - j0));
    for (var u = 0u; u < ${ATTENTION_MAX_DH / wg}u; u++) {
      let d = lid + u * ${wg}u;
      if (d < P.Dh) {
        var a = acc[u];
        for (var jj = 0u; jj < nj; jj++) { a += dss[jj] * k[r.kv + (u32(j0) + jj) * P.Dh + d]; }
        acc[u] = a;
      }
    }
    workgroupBarrier();
  }
  for (var u = 0u; u < ${ATTENTION_MAX_DH / wg}u; u++) {
    let d = lid + u * ${wg}u;
    if (d < P.Dh) { dq[row * P.Dh + d] = acc[u] * P.scale; }
  }
}`,
  }));

const dkvKernel = (maskType: "f32" | "i32", wg: number) =>
  kernel(`attention.bwd_dkv.mask_${maskType}.wg${wg}`, () => ({
    params: geometryParams,
    buffers: [
      { name: "q", type: "f32", access: "read" },
      { name: "k", type: "f32", access: "read" },
      { name: "v", type: "f32", access: "read" },
      maskBuffer(maskType),
      { name: "dO", type: "f32", access: "read" },
      { name: "stats", type: "f32", access: "read" },
      { name: "dk", type: "f32", access: "read_write" },
      { name: "dv", type: "f32", access: "read_write" },
    ],
    body: () => `${COMMON}
var<workgroup> ks: array<f32, ${ATTENTION_MAX_DH}>;
var<workgroup> vs: array<f32, ${ATTENTION_MAX_DH}>;
var<workgroup> ps: array<f32, ${wg}>;
var<workgroup> dss: array<f32, ${wg}>;
var<workgroup> kept: u32;
@compute @workgroup_size(${wg})
fn main(${ROW_MAIN_ARGS}) {
  let row = wg_linear(wid, nwg);   // (b * Hkv + hk) * Tk + j
  if (row >= P.rows) { return; }
  let j = row % P.Tk;
  let bhk = row / P.Tk;
  let b = bhk / P.Hkv;
  let hk = bhk % P.Hkv;
  for (var d = lid; d < P.Dh; d += ${wg}u) { ks[d] = k[row * P.Dh + d]; vs[d] = v[row * P.Dh + d]; }
  if (lid == 0u) { kept = select(0u, 1u, key_kept(b, j)); }
  // A padded key gets zero gradients: its query range is made empty. workgroupUniformLoad makes
  // the flag (read from memory) uniform, so the loops below may keep their barriers.
  let keep = workgroupUniformLoad(&kept) == 1u;
  // Query i sees key j when j <= Tk - Tq + i (causal) and j > Tk - Tq + i - window.
  let shift = i32(P.Tk) - i32(P.Tq);
  var ilo = 0;
  if (P.causal == 1u) { ilo = max(0, i32(j) - shift); }
  var ihi = i32(P.Tq);
  if (P.window > 0u) { ihi = min(ihi, i32(j) + i32(P.window) - shift); }
  if (!keep) { ihi = ilo; }
  var dka: array<f32, ${ATTENTION_MAX_DH / wg}>;
  var dva: array<f32, ${ATTENTION_MAX_DH / wg}>;
  for (var h = hk * P.group; h < (hk + 1u) * P.group; h++) {
    let head = (b * P.H + h) * P.Tq;
    for (var i0 = ilo; i0 < ihi; i0 += ${wg}) {
      let i = i0 + i32(lid);
      var p = 0.0;
      var ds = 0.0;
      if (i < ihi) {
        let qr = head + u32(i);
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < P.Dh; d++) { s += q[qr * P.Dh + d] * ks[d]; dp += dO[qr * P.Dh + d] * vs[d]; }
        p = exp(s * P.scale - stats[qr]);
        ds = p * (dp - stats[P.qRows + qr]);
      }
      ps[lid] = p;
      dss[lid] = ds;
      workgroupBarrier();
      let ni = u32(min(${wg}, ihi - i0));
      for (var u = 0u; u < ${ATTENTION_MAX_DH / wg}u; u++) {
        let d = lid + u * ${wg}u;
        if (d < P.Dh) {
          var a = dka[u];
          var c = dva[u];
          for (var ii = 0u; ii < ni; ii++) {
            let at = (head + u32(i0) + ii) * P.Dh + d;
            a += dss[ii] * q[at];
            c += ps[ii] * dO[at];
          }
          dka[u] = a;
          dva[u] = c;
        }
      }
      workgroupBarrier();
    }
  }
  for (var u = 0u; u < ${ATTENTION_MAX_DH / wg}u; u++) {
    let d = lid + u * ${wg}u;
    if (d < P.Dh) {
      dk[row * P.Dh + d] = dka[u] * P.scale;
      dv[row * P.Dh + d] = dva[u];
    }
  }
}`,
  }));

function geometry(g: AttentionGeometry, rows: number) {
  return {
    rows,
    qRows: g.B * g.H * g.Tq,
    H: g.H,
    Hkv: g.Hkv,
    group: g.H / g.Hkv,
    Tq: g.Tq,
    Tk: g.Tk,
    Dh: g.Dh,
    scale: g.scale,
    causal: g.causal ? 1 : 0,
    window: g.window,
    hasMask: 0,
  };
}

/** The mask binding: the mask, or (unused, hasMask = 0) the q buffer so the layout stays fixed. */
function maskArgs(q: GpuData, keyMask: GpuData | null) {
  return keyMask ? { type: keyMask.dtype, buf: single(keyMask), has: 1 } : { type: "f32" as const, buf: single(q), has: 0 };
}

/**
 * Fused forward: the host's variant ("quad" when it has one and Dh is a multiple of 16, else "rows").
 * @param ins.q f32 [B, H, Tq, Dh]; ins.k, ins.v f32 [B, Hkv, Tk, Dh]; all one chunk, Dh <= 256
 * @param ins.keyMask [B, Tk] f32 or i32 (nonzero = keep), or null
 * @param out f32 [B, H, Tq, Dh]; lse f32 [B, H, Tq]
 */
function encodeAttention(
  host: KernelHost,
  ins: AttentionInputs<GpuData>,
  outs: { out: GpuData; lse: GpuData },
  g: AttentionGeometry,
): void {
  const { q, k, v, keyMask } = ins;
  const { out, lse } = outs;
  const mask = maskArgs(q, keyMask);
  const buffers = [single(q), single(k), single(v), mask.buf, single(out), single(lse)];
  if (host.attentionVariant === "quad" && quadFits(g)) {
    const blocks = g.B * g.H * Math.ceil(g.Tq / QUAD_ROWS);
    host.dispatch(quadForwardKernel(mask.type, g.Dh, QUAD_ROWS), { ...geometry(g, blocks), hasMask: mask.has }, buffers, blocks);
    return;
  }
  const rows = g.B * g.H * g.Tq;
  host.dispatch(forwardKernel(mask.type, blockSize(host)), { ...geometry(g, rows), hasMask: mask.has }, buffers, rows);
}

/** Whether the "quad" forward handles this geometry: lanes own Dh / 4 dims as whole vec4s. */
const quadFits = (g: AttentionGeometry) => g.Dh % 16 === 0 && g.Dh > 0;

/**
 * Backward: dq, dk, dv from dOut, recomputing probabilities from lse.
 * @param out, dOut f32 [B, H, Tq, Dh]; lse f32 [B, H, Tq] from the forward
 * @param dq f32 [B, H, Tq, Dh]; dk, dv f32 [B, Hkv, Tk, Dh] (written)
 */
function encodeAttentionBackward(
  host: KernelHost,
  ins: AttentionBackwardInputs<GpuData>,
  grads: AttentionGrads<GpuData>,
  g: AttentionGeometry,
): void {
  const { q, k, v, out, dOut, lse } = ins;
  const mask = maskArgs(q, ins.keyMask);
  const qRows = g.B * g.H * g.Tq;
  const kRows = g.B * g.Hkv * g.Tk;
  // lse and D_i share one buffer, so each pass binds 8 storage buffers (WebGPU's default limit).
  const stats = host.temp(Math.max(2 * qRows, 1) * 4);
  host.copy(single(lse), 0, stats, 0, qRows * 4);
  host.dispatch(
    dqKernel(mask.type, blockSize(host)),
    { ...geometry(g, qRows), hasMask: mask.has },
    [single(q), single(k), single(v), mask.buf, single(out), single(dOut), stats, single(grads.dq)],
    qRows,
  );
  host.dispatch(
    dkvKernel(mask.type, blockSize(host)),
    { ...geometry(g, kRows), hasMask: mask.has },
    [single(q), single(k), single(v), mask.buf, single(dOut), stats, single(grads.dk), single(grads.dv)],
    kRows,
  );
  host.releaseTemp(stats);
}

/** q, k, v (f32, one chunk) and the key mask (any dtype, one chunk), for a head dim the kernels handle. */
function gpuOperands(gpu: WebGpuBackend, op: string, ins: AttentionInputs<Storage>, g: AttentionGeometry): AttentionInputs<WebGpuStorage> {
  if (g.Dh > ATTENTION_MAX_DH) throw new DeviceLimitError(op, `head dim ${g.Dh} > ${ATTENTION_MAX_DH}, the kernel's largest`);
  const [q, k, v] = gpu.floats(op, { q: ins.q, k: ins.k, v: ins.v });
  const keyMask = ins.keyMask === null ? null : gpu.space.whole(op, "keyMask", ins.keyMask);
  return { q: q!, k: k!, v: v!, keyMask };
}

// The webgpu kernels: keyMask f32 or i32 (nonzero = keep); DeviceLimitError for Dh > 256.
registerKernel(attentionOp, "webgpu", (gpu, ins, g) => {
  const op = "attention";
  const gpuIns = gpuOperands(gpu, op, ins, g);
  const n = checkAttention(op, gpuIns, g);
  const out = gpu.space.output(op, "f32", n.q);
  const lse = gpu.space.output(op, "f32", n.lse);
  encodeAttention(gpu, gpuIns, { out, lse }, g);
  return { out, lse };
});

registerKernel(attentionBackwardOp, "webgpu", (gpu, ins, g) => {
  const op = "attentionBackward";
  const [out, dOut, lse] = gpu.floats(op, { out: ins.out, dOut: ins.dOut, lse: ins.lse });
  const gpuIns = { ...gpuOperands(gpu, op, ins, g), out: out!, dOut: dOut!, lse: lse! };
  const n = checkAttentionBackward(gpuIns, g);
  const grads = { dq: gpu.space.output(op, "f32", n.q), dk: gpu.space.output(op, "f32", n.kv), dv: gpu.space.output(op, "f32", n.kv) };
  encodeAttentionBackward(gpu, gpuIns, grads, g);
  return grads;
});
