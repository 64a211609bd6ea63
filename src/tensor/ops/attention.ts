import { record } from "../autograd.ts";
import type { Storage } from "../backend.ts";
import { deviceOp } from "../backend.ts";
import { assertSameDevice } from "../device.ts";
import { ShapeError, fmt } from "../errors.ts";
import { Tensor } from "../tensor.ts";
import { assertFloat, release } from "./operands.ts";

/**
 * Causal scaled-dot-product attention with grouped-query heads, fused forward and backward. The
 * device ops (`attentionOp`, `attentionBackwardOp`), their geometry and operand types are
 * declared here; their kernels are in src/kernels (attention.ts, attention.wgsl.ts,
 * wasm/attention.wasm.ts).
 */

/**
 * Geometry of causal scaled-dot-product attention with grouped-query heads.
 * q: [B, H, Tq, Dh], k and v: [B, Hkv, Tk, Dh], out: [B, H, Tq, Dh], all contiguous.
 * Query head h reads kv head floor(h / (H / Hkv)). Query i sits at absolute position
 * Tk - Tq + i (so a KV cache of Tk - Tq earlier tokens works), and sees key j when
 * j <= Tk - Tq + i (causal), j > Tk - Tq + i - window (when window > 0, Mistral's sliding window)
 * and keyMask[b, j] != 0 (when a key mask is given: padding).
 */
export interface AttentionGeometry {
  B: number;
  H: number;
  Hkv: number;
  Tq: number;
  Tk: number;
  Dh: number;
  /** Multiplier of q.k, usually 1 / sqrt(Dh). */
  scale: number;
  causal: boolean;
  /** Sliding window in tokens, 0 for none. */
  window: number;
}

/**
 * The operands of attention: q [B, H, Tq, Dh], k and v [B, Hkv, Tk, Dh], all contiguous, and
 * keyMask [B, Tk] (nonzero keep, 0 padding) or null. `S` is the storage type (a backend's
 * `Storage`, or a kernel's host or GPU array).
 */
export interface AttentionInputs<S> {
  q: S;
  k: S;
  v: S;
  keyMask: S | null;
}

/**
 * What attention's backward pass reads: the forward operands, the forward's output `out`
 * [B, H, Tq, Dh] and its row log-sum-exp `lse` [B, H, Tq], and the output gradient `dOut`
 * [B, H, Tq, Dh].
 */
export interface AttentionBackwardInputs<S> extends AttentionInputs<S> {
  out: S;
  dOut: S;
  lse: S;
}

/** The gradients of attention w.r.t. its operands: dq [B, H, Tq, Dh], dk and dv [B, Hkv, Tk, Dh]. */
export interface AttentionGrads<S> {
  dq: S;
  dk: S;
  dv: S;
}

/**
 * Fused attention forward (online softmax, no [Tq, Tk] matrix in memory): out [B, H, Tq, Dh]
 * and the row log-sum-exp of the scaled, masked scores lse [B, H, Tq], which the backward
 * reuses. Kernels: src/kernels/attention.ts, attention.wgsl.ts, wasm/attention.wasm.ts.
 */
export const attentionOp = deviceOp<[ins: AttentionInputs<Storage>, g: AttentionGeometry], { out: Storage; lse: Storage }>("attention");

/** Gradients of attention w.r.t. q, k, v given dOut, recomputing probabilities from lse. */
export const attentionBackwardOp = deviceOp<[ins: AttentionBackwardInputs<Storage>, g: AttentionGeometry], AttentionGrads<Storage>>("attentionBackward");

export interface AttentionOptions {
  /** Causal mask (default true). */
  causal?: boolean;
  /** Key padding mask [B, Tk]: 1 keep, 0 drop (HF attention_mask). */
  keyMask?: Tensor | null;
  /** Sliding window in tokens (Mistral), 0 for none. */
  window?: number;
  /** Score scale, default 1 / sqrt(Dh). */
  scale?: number;
}

/**
 * Scaled dot-product attention with grouped-query heads (Ainslie et al. 2023, GQA), fused:
 * q [B, H, Tq, Dh], k and v [B, Hkv, Tk, Dh] -> [B, H, Tq, Dh]; query i is at absolute
 * position Tk - Tq + i (earlier keys from a KV cache). Softmax(q k^T scale + mask) v, with
 * the online softmax of flash attention (Dao 2022) so no [Tq, Tk] matrix is stored; the
 * backward recomputes probabilities from the saved row log-sum-exp (flash attention 2).
 * A query that sees no key (all padding) outputs zeros.
 * @throws ShapeError when heads do not divide, or shapes disagree; DeviceError when q, k, v and
 *   keyMask are not on one device.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  assertFloat("attention", q, k, v);
  assertSameDevice("attention", q, k, v, opts.keyMask);
  if (q.rank !== 4 || k.rank !== 4 || v.rank !== 4) {
    throw new ShapeError("attention", `q, k, v must be 4-D, got ${fmt(q.shape)}, ${fmt(k.shape)}, ${fmt(v.shape)}`);
  }
  const [B, H, Tq, Dh] = q.shape as [number, number, number, number];
  const [Bk, Hkv, Tk, Dk] = k.shape as [number, number, number, number];
  if (Bk !== B || Dk !== Dh || v.shape.join() !== k.shape.join() || H % Hkv !== 0 || Tk < Tq) {
    throw new ShapeError("attention", `q ${fmt(q.shape)}, k ${fmt(k.shape)}, v ${fmt(v.shape)}: need k = v = [B, Hkv, Tk >= Tq, Dh] with Hkv dividing H`);
  }
  const mask = opts.keyMask ?? null;
  if (mask && (mask.shape.join() !== `${B},${Tk}` || mask.dtype !== q.dtype)) {
    throw new ShapeError("attention", `keyMask must be ${q.dtype} [${B}, ${Tk}], got ${mask.dtype} ${fmt(mask.shape)}`);
  }
  const geo: AttentionGeometry = {
    B, H, Hkv, Tq, Tk, Dh,
    scale: opts.scale ?? 1 / Math.sqrt(Dh),
    causal: opts.causal ?? true,
    window: opts.window ?? 0,
  };
  const be = q.backend;
  const [qd, kd, vd] = [q, k, v].map((t) => (t.isDense() ? t : t.contiguous(true))) as [Tensor, Tensor, Tensor];
  const md = mask === null ? null : mask.isDense() ? mask : mask.contiguous(true);
  const ins = { q: qd.storage, k: kd.storage, v: vd.storage, keyMask: md?.storage ?? null };
  const { out, lse } = be.run(attentionOp, ins, geo);
  const y = Tensor.fromStorage(be, out, q.shape);
  const lseT = Tensor.fromStorage(be, lse, [B, H, Tq]);
  record(y, "attention", [q, k, v], (g) => {
    const gd = g.isDense() ? g : g.contiguous(true);
    const grads = be.run(attentionBackwardOp, { ...ins, out: y.storage, dOut: gd.storage, lse: lseT.storage }, geo);
    release(gd, g);
    return [
      Tensor.fromStorage(be, grads.dq, q.shape),
      Tensor.fromStorage(be, grads.dk, k.shape),
      Tensor.fromStorage(be, grads.dv, v.shape),
    ];
  });
  // Dense copies and the log-sum-exp live as long as the node needs them.
  const temps = [lseT, ...[qd, kd, vd].filter((t, i) => t !== [q, k, v][i]), ...(md && md !== mask ? [md] : [])];
  if (y.node) y.node.owned = temps;
  else for (const t of temps) t.dispose();
  return y;
}
