import type { AttentionGeometry } from "../tensor/backend.ts";
import type { Field, GpuData, KernelHost } from "./webgpu/program.ts";
import { kernel, single } from "./webgpu/program.ts";
import { ROW_MAIN_ARGS, workgroupReduce } from "./reduce.wgsl.ts";

/**
 * WGSL fused causal grouped-query attention, forward and backward, specified by attentionRef and
 * attentionBackwardRef in src/kernels/attention.ts (FlashAttention-2, Dao 2023): no [Tq, Tk]
 * score matrix is ever stored.
 *
 * Forward, one workgroup per query row (b, h, i): the visible keys are walked in blocks of wg
 * (the workgroup size). Invocation t scores key j0 + t (s = scale q.k, q held in workgroup memory); the block maximum
 * updates the running max m -> m', the old sum l and output accumulator are rescaled by
 * exp(m - m') (online softmax), the block's p = exp(s - m') are summed into l, and every
 * invocation adds sum_j p_j v_j for the head dimensions it owns (d = t, t + wg, ...; coalesced
 * reads of v). At the end out = acc / l and lse = m + log l.
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
 * (WGSL may assume there are no infinities).
 */

/**
 * Invocations per workgroup, also the block of keys (or queries) scored at once: 64 on a GPU, the
 * device's row workgroup (one subgroup) on SwiftShader, where barriers are costly.
 */
const blockSize = (host: KernelHost) => Math.min(64, host.rowWorkgroup);
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
    let mNew = max(m, wg_max(s, lid));
    let p = select(0.0, exp(s - mNew), seen);
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
  let seesAny = l > 0.0;
  for (var u = 0u; u < ${ATTENTION_MAX_DH / wg}u; u++) {
    let d = lid + u * ${wg}u;
    if (d < P.Dh) { out[row * P.Dh + d] = select(0.0, acc[u] / l, seesAny); }
  }
  if (lid == 0u) { lse[row] = select(0.0, m + log(l), seesAny); }
}`,
  }));

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
 * Fused forward.
 * @param q f32 [B, H, Tq, Dh]; k, v f32 [B, Hkv, Tk, Dh]; all one chunk, Dh <= 256
 * @param keyMask [B, Tk] f32 or i32 (nonzero = keep), or null
 * @param out f32 [B, H, Tq, Dh]; lse f32 [B, H, Tq]
 */
export function encodeAttention(
  host: KernelHost,
  q: GpuData,
  k: GpuData,
  v: GpuData,
  keyMask: GpuData | null,
  out: GpuData,
  lse: GpuData,
  g: AttentionGeometry,
): void {
  const rows = g.B * g.H * g.Tq;
  const mask = maskArgs(q, keyMask);
  host.dispatch(
    forwardKernel(mask.type, blockSize(host)),
    { ...geometry(g, rows), hasMask: mask.has },
    [single(q), single(k), single(v), mask.buf, single(out), single(lse)],
    rows,
  );
}

/**
 * Backward: dq, dk, dv from dOut, recomputing probabilities from lse.
 * @param out, dOut f32 [B, H, Tq, Dh]; lse f32 [B, H, Tq] from the forward
 * @param dq f32 [B, H, Tq, Dh]; dk, dv f32 [B, Hkv, Tk, Dh] (written)
 */
export function encodeAttentionBackward(
  host: KernelHost,
  ins: { q: GpuData; k: GpuData; v: GpuData; keyMask: GpuData | null; out: GpuData; dOut: GpuData; lse: GpuData },
  grads: { dq: GpuData; dk: GpuData; dv: GpuData },
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
