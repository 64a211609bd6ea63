import { record } from "../autograd.ts";
import type { Storage } from "../backend.ts";
import { deviceOp } from "../backend.ts";
import { assertSameDevice } from "../device.ts";
import { hostArray, isFloat } from "../dtype.ts";
import { DTypeError, ShapeError, fmt } from "../errors.ts";
import type { Rng } from "../random.ts";
import { Tensor } from "../tensor.ts";
import type { WeightStorage } from "../weight.ts";
import { PackedWeight } from "../weight.ts";
import { tensor } from "./create.ts";

/**
 * Neural-network ops that run as fused kernels (softmax, cross-entropy, RMSNorm, RoPE,
 * attention) or need index tensors (embedding). Their gradients are derived in each doc
 * comment; the kernels and their CPU references are in src/kernels. Each fused op declares here
 * the device op it runs (`softmaxOp`, `rmsNormOp`, ...: name, operands, result) beside its
 * geometry type; the kernel files implement it per device.
 */

function assertFloat(op: string, ...xs: Tensor[]): void {
  for (const x of xs) {
    x.assertAlive(op);
    if (!isFloat(x.dtype)) throw new DTypeError(op, `needs a float tensor, got ${x.dtype} ${fmt(x.shape)}`);
  }
}

/** [..., C] -> (dense tensor, rows, C). */
function rowsOf(x: Tensor): { dense: Tensor; rows: number; cols: number } {
  const cols = x.shape[x.rank - 1] ?? 1;
  return { dense: x.isDense() ? x : x.contiguous(true), rows: x.size / Math.max(cols, 1), cols };
}

/** Frees `dense` when it is a copy made for a kernel. */
function release(dense: Tensor, original: Tensor): void {
  if (dense !== original) dense.dispose();
}

/**
 * Row softmax (log: log-softmax) of contiguous x [rows, cols], max-subtracted: out [rows, cols].
 * Kernels: src/kernels/softmax.ts (cpu), softmax.wgsl.ts (webgpu), wasm/rows.wasm.ts (wasm).
 */
export const softmaxOp = deviceOp<[x: Storage, rows: number, cols: number, log: boolean], Storage>("softmax");

/**
 * Softmax over the last axis, max-subtracted for stability. x [..., C] -> [..., C].
 * Gradient: dx = y (g - sum(g y)) along the last axis.
 */
export function softmax(x: Tensor): Tensor {
  assertFloat("softmax", x);
  const { dense, rows, cols } = rowsOf(x);
  const y = Tensor.fromStorage(x.backend, x.backend.run(softmaxOp, dense.storage, rows, cols, false), x.shape);
  release(dense, x);
  return record(y, "softmax", [x], (g) => [y.mul(g.sub(g.mul(y).sum(-1, true)))]);
}

/**
 * log(softmax(x)) over the last axis, computed as x - max - log(sum(exp(x - max))).
 * Gradient: dx = g - softmax(x) sum(g) along the last axis.
 */
export function logSoftmax(x: Tensor): Tensor {
  assertFloat("logSoftmax", x);
  const { dense, rows, cols } = rowsOf(x);
  const y = Tensor.fromStorage(x.backend, x.backend.run(softmaxOp, dense.storage, rows, cols, true), x.shape);
  release(dense, x);
  return record(y, "logSoftmax", [x], (g) => [g.sub(y.exp().mul(g.sum(-1, true)))]);
}

/** Geometry of a per-row cross-entropy over contiguous logits [rows, cols] (cols = V, the classes). */
export interface CrossEntropyGeometry {
  rows: number;
  cols: number;
  /** Target value that marks a row as ignored (loss 0, gradient 0): -100 in Hugging Face labels. */
  ignoreIndex: number;
}

/**
 * Per-row cross-entropy of logits [rows, cols] against i32 targets [rows]:
 * loss [rows] = logsumexp(logits[r]) - logits[r, target[r]], 0 where target == ignoreIndex.
 * Kernels: src/kernels/cross_entropy.ts, cross_entropy.wgsl.ts, wasm/rows.wasm.ts.
 */
export const crossEntropyOp = deviceOp<[logits: Storage, targets: Storage, g: CrossEntropyGeometry], Storage>("crossEntropy");

/**
 * Its gradient [rows, cols]: (softmax(logits[r]) - onehot(target[r])) * gradLoss[r], zero rows
 * where ignored.
 */
export const crossEntropyBackwardOp = deviceOp<[logits: Storage, targets: Storage, gradLoss: Storage, g: CrossEntropyGeometry], Storage>("crossEntropyBackward");

export interface CrossEntropyOptions {
  /** Targets equal to this contribute no loss and no gradient (PyTorch's default -100). */
  ignoreIndex?: number;
  /** Per-target weights [...] (e.g. a 0/1 loss mask), multiplied into each row's loss. */
  mask?: Tensor;
  /** "mean" over counted targets (sum of mask, or of non-ignored targets), "sum", or "none" ([...]). */
  reduction?: "mean" | "sum" | "none";
}

/**
 * Cross-entropy of logits [..., V] against class indices targets i32 [...]:
 * loss_r = logsumexp(logits_r) - logits_r[target_r] (fused kernel: no softmax tensor is kept).
 * With reduction "mean" the result is sum(loss * mask) / sum(mask), where mask defaults to
 * [target != ignoreIndex]; an all-ignored batch gives 0, not NaN.
 * Gradient: d loss_r / d logits_r = softmax(logits_r) - onehot(target_r) (kernel), times the
 * incoming gradient of each row.
 * Targets outside [0, V) other than ignoreIndex: the cpu device throws a RangeError; the webgpu
 * device gives them zero loss and gradient (they still count in the mean's divisor).
 * @throws ShapeError when targets' shape is not logits' without the last axis; DeviceError when
 *   logits, targets and mask are not on one device.
 */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  assertFloat("crossEntropy", logits);
  targets.assertAlive("crossEntropy");
  assertSameDevice("crossEntropy", logits, targets, opts.mask);
  if (targets.dtype !== "i32") throw new DTypeError("crossEntropy", `targets must be i32, got ${targets.dtype}`);
  const rowShape = logits.shape.slice(0, -1);
  if (targets.shape.join() !== rowShape.join()) {
    throw new ShapeError("crossEntropy", `targets ${fmt(targets.shape)} do not match logits ${fmt(logits.shape)} without the class axis`);
  }
  const ignoreIndex = opts.ignoreIndex ?? -100;
  const { dense, rows, cols } = rowsOf(logits);
  const tg = targets.isDense() ? targets : targets.contiguous(true);
  const be = logits.backend;
  const geo = { rows, cols, ignoreIndex };
  const perRow = Tensor.fromStorage(be, be.run(crossEntropyOp, dense.storage, tg.storage, geo), rowShape);
  release(dense, logits);
  record(perRow, "crossEntropy", [logits], (g) => {
    const lg = rowsOf(logits);
    const gd = g.isDense() ? g : g.contiguous(true);
    const dx = be.run(crossEntropyBackwardOp, lg.dense.storage, tg.storage, gd.storage, geo);
    release(lg.dense, logits);
    release(gd, g);
    return [Tensor.fromStorage(be, dx, logits.shape)];
  });
  // The node reads the targets in backward: keep them alive as long as the node.
  if (perRow.node && tg !== targets) perRow.node.owned = [tg];
  else if (tg !== targets) tg.dispose();
  const reduction = opts.reduction ?? "mean";
  if (reduction === "none") return opts.mask ? perRow.mul(opts.mask) : perRow;
  const weights = opts.mask ?? targets.eq(ignoreIndex).cast(logits.dtype).neg().add(1);
  const total = perRow.mul(weights).sum();
  if (reduction === "sum") return total;
  return total.div(weights.sum().maximum(1));
}

/** Geometry of an embedding table [V, D]: V rows (the vocabulary), D columns (the hidden size). */
export interface EmbeddingGeometry {
  V: number;
  D: number;
}

/**
 * out [N, D] = table[ids[n]] for table [V, D] and i32 ids [N]. Ids outside [0, V) throw (cpu)
 * or give zero rows (webgpu). Kernels: src/kernels/embedding.ts, embedding.wgsl.ts.
 */
export const gatherOp = deviceOp<[table: Storage, ids: Storage, g: EmbeddingGeometry], Storage>("gather");

/** out [V, D] = sum over n of onehot(ids[n]) grad[n] for grad [N, D]: the transpose of gather. */
export const scatterAddOp = deviceOp<[grad: Storage, ids: Storage, g: EmbeddingGeometry], Storage>("scatterAdd");

/**
 * out [n, D] = W[ids[i], :] for a packed table W [V, D] (bf16, f16, NF4) and i32 ids [n], f32;
 * out-of-range ids as gather. Kernels: src/kernels/weights.ts, weights.wgsl.ts.
 */
export const gatherWeightOp = deviceOp<[w: WeightStorage, ids: Storage], Storage>("gatherWeight");

/**
 * The product with a packed weight W [N, K] (N = w.rows, K = w.cols), dequantized in
 * registers, summed in f32: "nt" out [M, N] = x [M, K] @ W^T (a Linear's forward, and
 * decoding's matrix-vector product when M = 1); "nn" out [M, K] = x [M, N] @ W (its input
 * gradient). x contiguous f32. Kernels: src/kernels/weights.ts, weights.wgsl.ts.
 */
export const matmulWeightOp = deviceOp<[x: Storage, w: WeightStorage, M: number, form: "nt" | "nn"], Storage>("matmulWeight");

/**
 * Embedding lookup: table [V, D], ids i32 [...] -> [..., D] (HF nn.Embedding).
 * Gradient w.r.t. the table: scatter-add of the output gradient rows into the ids' rows.
 * Ids outside [0, V): the cpu device throws a RangeError; the webgpu device cannot check
 * without a readback and yields zero rows, so validate ids on the host where they come from.
 * @throws ShapeError when the table is not 2-D; DeviceError when table and ids are on different devices.
 */
export function embedding(table: WeightLike, ids: Tensor): Tensor {
  if (table instanceof PackedWeight) return packedEmbedding(table, ids);
  assertFloat("embedding", table);
  ids.assertAlive("embedding");
  assertSameDevice("embedding", table, ids);
  if (table.rank !== 2) throw new ShapeError("embedding", `table must be [V, D], got ${fmt(table.shape)}`);
  if (ids.dtype !== "i32") throw new DTypeError("embedding", `ids must be i32, got ${ids.dtype}`);
  const [V, D] = table.shape as [number, number];
  const tb = table.isDense() ? table : table.contiguous(true);
  const idd = ids.isDense() ? ids : ids.contiguous(true);
  const be = table.backend;
  const y = Tensor.fromStorage(be, be.run(gatherOp, tb.storage, idd.storage, { V, D }), [...ids.shape, D]);
  release(tb, table);
  record(y, "embedding", [table], (g) => {
    const gd = g.isDense() ? g : g.contiguous(true);
    const dt = be.run(scatterAddOp, gd.storage, idd.storage, { V, D });
    release(gd, g);
    return [Tensor.fromStorage(be, dt, table.shape)];
  });
  if (y.node && idd !== ids) y.node.owned = [idd];
  else if (idd !== ids) idd.dispose();
  return y;
}

/** A weight operand: a Tensor (f32, or f64 on cpu) or a frozen PackedWeight (bf16, f16, NF4). */
export type WeightLike = Tensor | PackedWeight;

/** Checks a PackedWeight operand of `op` and the f32 tensor it meets. */
function assertPacked(op: string, w: PackedWeight, x: Tensor): void {
  w.assertAlive(op);
  x.assertAlive(op);
  assertSameDevice(op, x, w);
  if (x.dtype !== (op === "embedding" ? "i32" : "f32")) {
    throw new DTypeError(op, `a ${w.dtype} weight needs ${op === "embedding" ? "i32 ids" : "an f32 input"}, got ${x.dtype}`);
  }
}

/** The embedding lookup in a packed table [V, D]: ids [...] -> [..., D] f32. The table is frozen: no gradient. */
function packedEmbedding(table: PackedWeight, ids: Tensor): Tensor {
  assertPacked("embedding", table, ids);
  const idd = ids.isDense() ? ids : ids.contiguous(true);
  const be = table.backend;
  const y = Tensor.fromStorage(be, be.run(gatherWeightOp, table.storage, idd.storage), [...ids.shape, table.shape[1]]);
  release(idd, ids);
  return y;
}

/**
 * y [..., N] = x [..., K] W^T for a packed W [N, K], read in its stored form (QLoRA's frozen base,
 * Dettmers et al. 2023 section 3: the weight is dequantized inside the kernel, the product is f32).
 * Gradient: dx = g W (the "nn" kernel); W itself is frozen and gets none.
 */
function packedLinear(x: Tensor, w: PackedWeight): Tensor {
  assertPacked("linear", w, x);
  const [N, K] = w.shape;
  if (x.shape[x.rank - 1] !== K) throw new ShapeError("linear", `x ${fmt(x.shape)} does not match a weight ${fmt(w.shape)} (last axis must be ${K})`);
  const { dense, rows } = rowsOf(x);
  const be = x.backend;
  const y = Tensor.fromStorage(be, be.run(matmulWeightOp, dense.storage, w.storage, rows, "nt"), [...x.shape.slice(0, -1), N]);
  release(dense, x);
  return record(y, "linear", [x], (g) => {
    const gd = g.isDense() ? g : g.contiguous(true);
    const dx = Tensor.fromStorage(be, be.run(matmulWeightOp, gd.storage, w.storage, rows, "nn"), x.shape);
    release(gd, g);
    return [dx];
  });
}

/**
 * Linear layer as in PyTorch nn.Linear: y = x W^T + b; x [..., in], weight [out, in],
 * bias [out]. A Tensor weight's transpose is read in place (no copy); a PackedWeight is read in
 * its stored form (packedLinear).
 * @throws DeviceError when x, weight and bias are not on one device; ShapeError / DTypeError for
 *   a packed weight that does not fit x.
 */
export function linear(x: Tensor, weight: WeightLike, bias?: Tensor | null): Tensor {
  assertSameDevice("linear", x, weight, bias);
  const y = weight instanceof PackedWeight ? packedLinear(x, weight) : x.matmul(weight.transpose());
  if (!bias) return y;
  const out = y.add(bias);
  return out;
}

/** Geometry of RMSNorm over contiguous x [rows, D] with weight [D]. */
export interface RmsNormGeometry {
  rows: number;
  D: number;
  /** Added to mean(x^2) under the square root (config `rms_norm_eps`). */
  eps: number;
}

/**
 * RMSNorm over rows: out = x / sqrt(mean(x^2) + eps) * weight; x [rows, D], weight [D].
 * Kernels: src/kernels/rmsnorm.ts, rmsnorm.wgsl.ts, wasm/rows.wasm.ts.
 */
export const rmsNormOp = deviceOp<[x: Storage, weight: Storage, g: RmsNormGeometry], Storage>("rmsNorm");

/**
 * RMSNorm (Zhang & Sennrich 2019; HF LlamaRMSNorm): y = x / sqrt(mean(x^2) + eps) * weight,
 * over the last axis of x [..., D], weight [D]; fused kernel forward.
 * Gradient, with r = (mean(x^2) + eps)^(-1/2) and u = g * weight:
 *   dx = r u - x r^3 mean(u x),  dweight = sum over rows of g x r.
 * @throws ShapeError when weight is not [D]; DeviceError when x and weight are on different devices.
 */
export function rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  assertFloat("rmsNorm", x, weight);
  assertSameDevice("rmsNorm", x, weight);
  const D = x.shape[x.rank - 1]!;
  if (weight.rank !== 1 || weight.shape[0] !== D) {
    throw new ShapeError("rmsNorm", `weight ${fmt(weight.shape)} does not match x ${fmt(x.shape)} (last axis ${D})`);
  }
  const { dense, rows } = rowsOf(x);
  const wd = weight.isDense() ? weight : weight.contiguous(true);
  const y = Tensor.fromStorage(x.backend, x.backend.run(rmsNormOp, dense.storage, wd.storage, { rows, D, eps }), x.shape);
  release(dense, x);
  release(wd, weight);
  return record(y, "rmsNorm", [x, weight], (g) => {
    const r = x.square().mean(-1, true).add(eps).rsqrt();
    const u = g.mul(weight);
    const dx = u.mul(r).sub(x.mul(r.pow(3)).mul(u.mul(x).mean(-1, true)));
    const dw = g.mul(x).mul(r).reshape([-1, D]).sum(0);
    return [dx, dw];
  });
}

/**
 * Geometry of a rotary embedding of contiguous x [B, H, T, Dh] with angle tables cos, sin
 * [Bc, T, Dh/2]: Bc = 1 (every batch row shares positions) or B (per-row positions, e.g. left
 * padding). `inverse` rotates by minus the angle (the backward pass).
 */
export interface RopeGeometry {
  B: number;
  H: number;
  T: number;
  Dh: number;
  Bc: number;
  inverse: boolean;
}

/**
 * Rotary embedding, Hugging Face "rotate_half" layout: for d < Dh/2,
 * out[d] = x[d] cos - x[d + Dh/2] sin and out[d + Dh/2] = x[d + Dh/2] cos + x[d] sin,
 * with cos/sin [Bc, T, Dh/2] (Bc = 1 or B) for x [B, H, T, Dh], see RopeGeometry.
 * Kernels: src/kernels/rope.ts, rope.wgsl.ts.
 */
export const ropeOp = deviceOp<[x: Storage, cos: Storage, sin: Storage, g: RopeGeometry], Storage>("rope");

/**
 * Rotary position embedding (Su et al. 2021, "RoFormer"), HF "rotate_half" layout
 * (modeling_llama.py apply_rotary_pos_emb): x [B, H, T, Dh] with cos, sin [Bc, T, Dh/2]
 * (Bc = 1 or B: per-row positions for left-padded batches), the angles of each position and
 * frequency. Gradient: the inverse rotation of g (rotations are orthogonal).
 * @throws ShapeError when the shapes disagree; DeviceError when x, cos and sin are not on one device.
 */
export function rope(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  assertFloat("rope", x, cos, sin);
  assertSameDevice("rope", x, cos, sin);
  if (x.rank !== 4) throw new ShapeError("rope", `x must be [B, H, T, Dh], got ${fmt(x.shape)}`);
  const [B, H, T, Dh] = x.shape as [number, number, number, number];
  const Bc = cos.shape[0]!;
  if (Dh % 2 !== 0 || cos.rank !== 3 || (Bc !== 1 && Bc !== B) || cos.shape[1] !== T || cos.shape[2] !== Dh / 2 || sin.shape.join() !== cos.shape.join()) {
    throw new ShapeError("rope", `x ${fmt(x.shape)} needs cos and sin [1 or ${B}, ${T}, ${Dh / 2}], got ${fmt(cos.shape)} and ${fmt(sin.shape)}`);
  }
  const be = x.backend;
  const c = cos.isDense() ? cos : cos.contiguous(true);
  const s = sin.isDense() ? sin : sin.contiguous(true);
  const apply = (t: Tensor, inverse: boolean): Tensor => {
    const td = t.isDense() ? t : t.contiguous(true);
    const out = Tensor.fromStorage(be, be.run(ropeOp, td.storage, c.storage, s.storage, { B, H, T, Dh, Bc, inverse }), t.shape);
    release(td, t);
    return out;
  };
  const y = apply(x, false);
  record(y, "rope", [x], (g) => [apply(g, true)]);
  const temps = [c, s].filter((t, i) => t !== [cos, sin][i]);
  if (y.node) y.node.owned = temps;
  else for (const t of temps) t.dispose();
  return y;
}

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

/**
 * Inverted dropout (Srivastava et al. 2014): each element is kept with probability 1 - p and
 * scaled by 1 / (1 - p), so the expectation is unchanged. The mask is drawn on the host from
 * `rng` (seeded, reproducible on every device). Identity when p = 0.
 */
export function dropout(x: Tensor, p: number, rng: Rng): Tensor {
  if (p <= 0) return x;
  if (p >= 1) throw new RangeError(`dropout: p must be in [0, 1), got ${p}`);
  const keep = hostArray(x.dtype, x.size);
  for (let i = 0; i < keep.length; i++) keep[i] = rng.uniform() >= p ? 1 / (1 - p) : 0;
  const mask = tensor(keep, { device: x.backend, shape: x.shape });
  const y = x.mul(mask);
  if (y.node) y.node.owned = [mask];
  else mask.dispose();
  return y;
}
