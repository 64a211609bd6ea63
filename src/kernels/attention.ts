import type { HostArray } from "../tensor/dtype.ts";
import { ShapeError } from "../tensor/errors.ts";
import type { AttentionBackwardInputs, AttentionGeometry, AttentionGrads, AttentionInputs } from "../tensor/ops/attention.ts";
import { attentionBackwardOp, attentionOp } from "../tensor/ops/attention.ts";
import type { Sized } from "./checks.ts";
import { need } from "./checks.ts";
import type { CpuBackend } from "./cpu.ts";
import { floatArgs, hostData } from "./host.ts";
import type { KernelOf } from "./registry.ts";
import { registerKernel } from "./registry.ts";

/**
 * Scaled-dot-product attention with causal / sliding-window / padding masks and grouped-query
 * heads, computed the flash-attention way (Dao 2023, "FlashAttention-2", Algorithms 1 and 2):
 * the forward keeps a running max and sum per query row instead of the [Tq, Tk] score matrix,
 * and saves only the row log-sum-exp; the backward recomputes every probability from it.
 *
 * For query row i of head h and key j of its kv head (see AttentionGeometry for who sees whom):
 *   s_ij = scale * q_i . k_j
 *   p_ij = exp(s_ij - lse_i),  lse_i = log sum_{j visible} exp(s_ij)
 *   o_i  = sum_j p_ij v_j
 * Invisible pairs have p_ij = 0. A query row that sees no key at all (every key padded, or a
 * query before the first key) has no distribution: by convention its output is 0, its lse is 0
 * (a finite sentinel; nothing reads it, as the row has no visible pair) and its gradients are 0.
 */

/**
 * Whether query i (0 <= i < Tq) may see key j (0 <= j < Tk) in batch row b. The query sits at
 * absolute position Tk - Tq + i; it sees j when j <= that position (if causal), when j is within
 * the last `window` positions up to it (if window > 0) and when keyMask[b, j] != 0 (if a mask is
 * given).
 * @param keyMask [B, Tk], any dtype, or null
 */
function attentionVisible(g: AttentionGeometry, keyMask: HostArray | null, b: number, i: number, j: number): boolean {
  const pos = g.Tk - g.Tq + i;
  if (g.causal && j > pos) return false;
  if (g.window > 0 && j <= pos - g.window) return false;
  return keyMask === null || keyMask[b * g.Tk + j] !== 0;
}

/** Start of query (and output) row i of head h, and of key/value row j that head h reads. */
function rowIndex(g: AttentionGeometry) {
  const group = g.H / g.Hkv;
  return {
    q: (b: number, h: number, i: number) => ((b * g.H + h) * g.Tq + i) * g.Dh,
    kv: (b: number, h: number, j: number) => ((b * g.Hkv + Math.floor(h / group)) * g.Tk + j) * g.Dh,
  };
}

/** sum_d x[xs + d] * y[ys + d] over n elements. */
function dot(x: HostArray, xs: number, y: HostArray, ys: number, n: number): number {
  let acc = 0;
  for (let d = 0; d < n; d++) acc += x[xs + d]! * y[ys + d]!;
  return acc;
}

/**
 * Forward pass by online softmax. Keys are visited in order with a running maximum m, a running
 * sum l = sum exp(s_j - m) and an unnormalised output acc = sum exp(s_j - m) v_j; when a larger
 * score raises m to m', the old terms are rescaled by exp(m - m'). At the end o = acc / l and
 * lse = m + log l.
 * @param ins.q float [B, H, Tq, Dh]
 * @param ins.k, ins.v [B, Hkv, Tk, Dh], dtype of q
 * @param ins.keyMask [B, Tk] (nonzero = keep), any dtype, or null
 * @param outs.out [B, H, Tq, Dh] and outs.lse [B, H, Tq], dtype of q
 * @throws ShapeError when H is not a multiple of Hkv.
 */
export function attentionRef(ins: AttentionInputs<HostArray>, outs: { out: HostArray; lse: HostArray }, g: AttentionGeometry): void {
  attentionSizes("attention", g); // checks the head grouping
  const { q, k, v, keyMask } = ins;
  const { B, H, Tq, Tk, Dh } = g;
  const at = rowIndex(g);
  const acc = new Float64Array(Dh);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < Tq; i++) {
        const qi = at.q(b, h, i);
        let m = -Infinity;
        let l = 0;
        acc.fill(0);
        for (let j = 0; j < Tk; j++) {
          if (!attentionVisible(g, keyMask, b, i, j)) continue;
          const kj = at.kv(b, h, j);
          const s = g.scale * dot(q, qi, k, kj, Dh);
          const mNew = Math.max(m, s);
          const rescale = Math.exp(m - mNew); // 0 for the first visible key (m = -Infinity)
          const p = Math.exp(s - mNew);
          l = l * rescale + p;
          for (let d = 0; d < Dh; d++) acc[d] = acc[d]! * rescale + p * v[kj + d]!;
          m = mNew;
        }
        // l >= 1 once a key is visible (the maximum's term is exp(0)); NaN when a score is NaN,
        // which must reach the output as in PyTorch (l > 0 would be false and give 0).
        const seesAny = l !== 0;
        for (let d = 0; d < Dh; d++) outs.out[qi + d] = seesAny ? acc[d]! / l : 0;
        outs.lse[qi / Dh] = seesAny ? m + Math.log(l) : 0;
      }
    }
  }
}

/**
 * Backward pass, recomputing probabilities from the saved lse (FlashAttention-2, Algorithm 2):
 *   D_i   = sum_d dO_i[d] * O_i[d]        (= sum_j p_ij dp_ij, because O_i = sum_j p_ij v_j)
 *   p_ij  = exp(s_ij - lse_i)
 *   dv_j  = sum_i p_ij dO_i
 *   dp_ij = dO_i . v_j
 *   ds_ij = p_ij (dp_ij - D_i)           (softmax backward)
 *   dq_i  = scale sum_j ds_ij k_j,   dk_j = scale sum_i ds_ij q_i
 * where sums over i run over the query rows of every query head of the kv head's group, and only
 * over visible pairs. Accumulates in doubles and rounds once into the outputs.
 * @param ins.q, ins.out, ins.dOut float [B, H, Tq, Dh]
 * @param ins.k, ins.v [B, Hkv, Tk, Dh]
 * @param ins.keyMask [B, Tk] (nonzero = keep), any dtype, or null
 * @param ins.lse [B, H, Tq] from attentionRef
 * @param grads.dq [B, H, Tq, Dh]; grads.dk, grads.dv [B, Hkv, Tk, Dh]; dtype of q; overwritten
 * @throws ShapeError when H is not a multiple of Hkv.
 */
export function attentionBackwardRef(ins: AttentionBackwardInputs<HostArray>, grads: AttentionGrads<HostArray>, g: AttentionGeometry): void {
  attentionSizes("attentionBackward", g); // checks the head grouping
  const { q, k, v, keyMask, out, dOut, lse } = ins;
  const { B, H, Tq, Tk, Dh } = g;
  const at = rowIndex(g);
  const dq = new Float64Array(grads.dq.length);
  const dk = new Float64Array(grads.dk.length);
  const dv = new Float64Array(grads.dv.length);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < Tq; i++) {
        const qi = at.q(b, h, i);
        const lseI = lse[qi / Dh]!;
        const Di = dot(dOut, qi, out, qi, Dh);
        for (let j = 0; j < Tk; j++) {
          if (!attentionVisible(g, keyMask, b, i, j)) continue;
          const kj = at.kv(b, h, j);
          const p = Math.exp(g.scale * dot(q, qi, k, kj, Dh) - lseI);
          const ds = p * (dot(dOut, qi, v, kj, Dh) - Di);
          for (let d = 0; d < Dh; d++) {
            dv[kj + d]! += p * dOut[qi + d]!;
            dq[qi + d]! += g.scale * ds * k[kj + d]!;
            dk[kj + d]! += g.scale * ds * q[qi + d]!;
          }
        }
      }
    }
  }
  grads.dq.set(dq);
  grads.dk.set(dk);
  grads.dv.set(dv);
}

/** Element counts of attention's operands: q and out [B, H, Tq, Dh], k and v [B, Hkv, Tk, Dh], lse [B, H, Tq], keyMask [B, Tk]. */
export interface AttentionSizes {
  q: number;
  kv: number;
  lse: number;
  keyMask: number;
}

/**
 * The attention geometry alone, and the operand sizes it implies.
 * @throws ShapeError naming `op` when H is not a multiple of Hkv (grouped-query attention
 *   shares each kv head among H / Hkv query heads)
 */
function attentionSizes(op: string, g: AttentionGeometry): AttentionSizes {
  if (g.Hkv <= 0 || g.H % g.Hkv !== 0) throw new ShapeError(op, `query heads H = ${g.H} are not a multiple of kv heads Hkv = ${g.Hkv}`);
  return { q: g.B * g.H * g.Tq * g.Dh, kv: g.B * g.Hkv * g.Tk * g.Dh, lse: g.B * g.H * g.Tq, keyMask: g.B * g.Tk };
}

/**
 * The size check of the attention forward: q, k, v and the optional key mask.
 * @returns the operand sizes (out is q's size, lse [B, H, Tq])
 * @throws ShapeError as attentionSizes, or for a storage too small
 */
export function checkAttention(op: string, ins: AttentionInputs<Sized>, g: AttentionGeometry): AttentionSizes {
  const n = attentionSizes(op, g);
  need(op, "q", ins.q, n.q);
  need(op, "k", ins.k, n.kv);
  need(op, "v", ins.v, n.kv);
  if (ins.keyMask) need(op, "keyMask", ins.keyMask, n.keyMask);
  return n;
}

/**
 * The size check of the attention backward: the forward's operands plus out, dOut and lse.
 * @returns the operand sizes (dq is q's size, dk and dv kv's)
 */
export function checkAttentionBackward(ins: AttentionBackwardInputs<Sized>, g: AttentionGeometry): AttentionSizes {
  const op = "attentionBackward";
  const n = checkAttention(op, ins, g);
  need(op, "out", ins.out, n.q);
  need(op, "dOut", ins.dOut, n.q);
  need(op, "lse", ins.lse, n.lse);
  return n;
}

/**
 * attention on a host-memory device: q, k, v of one float dtype, keyMask of any dtype (nonzero
 * = keep), the size check, the outputs, then `compute` (the reference on cpu; the SIMD kernel on
 * wasm, wasm/attention.wasm.ts). Rows that see no key give out 0 and lse 0.
 */
export function attentionOnHost<D extends CpuBackend>(
  compute: (device: D, ins: AttentionInputs<HostArray>, outs: { out: HostArray; lse: HostArray }, g: AttentionGeometry) => void,
): KernelOf<typeof attentionOp, D> {
  return (device, ins, g) => {
    const op = "attention";
    const [q, k, v] = floatArgs(op, [ins.q, ins.k, ins.v]);
    const n = checkAttention(op, ins, g);
    const keyMask = ins.keyMask && hostData(op, ins.keyMask);
    const out = device.allocate(ins.q.dtype, n.q);
    const lse = device.allocate(ins.q.dtype, n.lse);
    compute(device, { q: q!, k: k!, v: v!, keyMask }, { out, lse }, g);
    return { out: device.wrap(out), lse: device.wrap(lse) };
  };
}

/** attentionBackward on a host-memory device, as attentionOnHost: out, dOut and lse of q's dtype. */
export function attentionBackwardOnHost<D extends CpuBackend>(
  compute: (device: D, ins: AttentionBackwardInputs<HostArray>, grads: AttentionGrads<HostArray>, g: AttentionGeometry) => void,
): KernelOf<typeof attentionBackwardOp, D> {
  return (device, ins, g) => {
    const op = "attentionBackward";
    const [q, k, v, out, dOut, lse] = floatArgs(op, [ins.q, ins.k, ins.v, ins.out, ins.dOut, ins.lse]);
    const n = checkAttentionBackward(ins, g);
    const keyMask = ins.keyMask && hostData(op, ins.keyMask);
    const dq = device.allocate(ins.q.dtype, n.q);
    const dk = device.allocate(ins.q.dtype, n.kv);
    const dv = device.allocate(ins.q.dtype, n.kv);
    compute(device, { q: q!, k: k!, v: v!, keyMask, out: out!, dOut: dOut!, lse: lse! }, { dq, dk, dv }, g);
    return { dq: device.wrap(dq), dk: device.wrap(dk), dv: device.wrap(dv) };
  };
}

registerKernel(attentionOp, "cpu", attentionOnHost((_cpu, ...args) => attentionRef(...args)));
registerKernel(attentionBackwardOp, "cpu", attentionBackwardOnHost((_cpu, ...args) => attentionBackwardRef(...args)));
