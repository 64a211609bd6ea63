import type { DType, HostArray } from "./dtype.ts";
import type { BinaryOp, UnaryOp } from "./ops/pointwise_table.ts";
import type { HostWeight, WeightStorage } from "./weight.ts";

/**
 * The contract between tensors and devices.
 *
 * A `Tensor` is a view (shape, strides, offset) on a `Storage` that a backend owns. Backends
 * implement a small set of kernels over such views; every op of the tensor API, and every
 * backward rule, is written on top of them once, independent of the device. Kernels read
 * strided views (so transposes, slices and broadcasts by stride 0 cost no copy) and write
 * fresh contiguous storages, except `assign` and the optimizer steps, which write in place.
 *
 * Three backends implement it: `cpu` (src/kernels/cpu, plain TypeScript, the reference
 * numerics, f32/f64/i32), `wasm` (src/kernels/wasm, the cpu device with its storages in one
 * WebAssembly memory and SIMD kernels on worker threads where they pay) and `webgpu` (src/kernels/webgpu, WGSL kernels through Dawn,
 * f32/i32). Each kernel's CPU twin is the specification of its WGSL.
 *
 * Arguments: storages first, then one geometry object naming the sizes (`MatmulGeometry`,
 * `AttentionGeometry`, ...), so no call passes a long list of bare integers. Every backend checks
 * a call's storage sizes against its geometry with the shared checks of src/kernels/checks.ts
 * (ShapeError naming the op, the operand and both sizes) before any compute, and its dtypes
 * itself (DTypeError), then allocates the outputs the geometry implies.
 */

/** A device buffer. Backends subclass it; the tensor layer only counts references. */
export interface Storage {
  readonly dtype: DType;
  /** Number of elements. */
  readonly numel: number;
  /** Tensors (views) that still use this storage; the tensor layer frees it at zero. */
  refs: number;
  /** Set when freed; any use after that is an error. */
  freed: boolean;
}

/** A strided view of a storage, in elements. */
export interface View {
  readonly storage: Storage;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

/** Elementwise ops: the rows of the pointwise table. */
export type { BinaryOp, UnaryOp };

export type ReduceOp = "sum" | "max";

/** Geometry of a batched matrix product `out[b] = opA(A[b]) @ opB(B[b])`. */
export interface MatmulGeometry {
  /** Batch count of the output. */
  batch: number;
  /** Rows of opA(A) and of the output. */
  M: number;
  /** Columns of opB(B) and of the output. */
  N: number;
  /** Inner dimension. */
  K: number;
  /** When true, A is stored [K, M] per batch and read transposed. */
  transA: boolean;
  /** When true, B is stored [N, K] per batch (a PyTorch Linear weight) and read transposed. */
  transB: boolean;
  /** Elements between consecutive batches of A, or 0 to reuse one matrix for every batch. */
  batchStrideA: number;
  /** Elements between consecutive batches of B, or 0 to reuse one matrix for every batch. */
  batchStrideB: number;
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

/** Geometry of a per-row cross-entropy over contiguous logits [rows, cols] (cols = V, the classes). */
export interface CrossEntropyGeometry {
  rows: number;
  cols: number;
  /** Target value that marks a row as ignored (loss 0, gradient 0): -100 in Hugging Face labels. */
  ignoreIndex: number;
}

/** Geometry of an embedding table [V, D]: V rows (the vocabulary), D columns (the hidden size). */
export interface EmbeddingGeometry {
  V: number;
  D: number;
}

/** Geometry of RMSNorm over contiguous x [rows, D] with weight [D]. */
export interface RmsNormGeometry {
  rows: number;
  D: number;
  /** Added to mean(x^2) under the square root (config `rms_norm_eps`). */
  eps: number;
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

/** Hyper-parameters of one AdamW step (Loshchilov & Hutter, decoupled weight decay). */
export interface AdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step count, for bias correction. */
  step: number;
}

/** Contiguous inputs are passed as bare storages; `View`s may be strided. */
export interface Backend {
  readonly name: "cpu" | "wasm" | "webgpu";
  /** Largest storage in bytes that one kernel binding may address. */
  readonly maxBindingBytes: number;

  /** A zero-filled storage. */
  zeros(dtype: DType, numel: number): Storage;
  /** A storage holding a copy of `data`. */
  upload(data: HostArray): Storage;
  /** Copies `numel` elements starting at element `offset` back to the host. */
  read(storage: Storage, offset?: number, numel?: number): Promise<HostArray>;
  /**
   * The elements of a live storage without a copy when the device keeps them in host memory
   * (cpu, wasm), else null (webgpu: its values need the asynchronous `read`). For cheap host-side
   * checks of small inputs (token ids); callers must not write to the array.
   */
  peek(storage: Storage): HostArray | null;
  /** Releases the storage's memory (to a pool or to the system). */
  free(storage: Storage): void;
  /** Sets every element of a contiguous storage to `value`. */
  fill(storage: Storage, value: number): void;

  /** out[i] = f(x[i]) for a strided view, written contiguous. */
  unary(op: UnaryOp, x: View): Storage;
  /** out[i] = f(a[i], b[i]); `a` and `b` already have the output's shape (broadcast by stride 0). */
  binary(op: BinaryOp, a: View, b: View): Storage;
  /** out[i] = cond[i] != 0 ? a[i] : b[i]; all three views have the output's shape. */
  where(cond: View, a: View, b: View): Storage;
  /** Writes `src` into the strided view `dst` (same shape) in place. */
  assign(dst: View, src: View): void;
  /** Converts between f32/f64 and i32 (truncating toward zero). */
  cast(x: View, dtype: DType): Storage;

  /** x: contiguous [rows, cols] -> [rows], reducing each row. */
  reduceRows(op: ReduceOp, x: Storage, rows: number, cols: number): Storage;
  /** Batched matrix product, see MatmulGeometry. Inputs contiguous per matrix. */
  matmul(a: Storage, b: Storage, g: MatmulGeometry): Storage;
  /** Row softmax (or log-softmax) of contiguous [rows, cols], numerically stable (max-subtracted). */
  softmax(x: Storage, rows: number, cols: number, log: boolean): Storage;

  /** Per-row cross-entropy loss: logsumexp(logits[r]) - logits[r, target[r]], 0 where target == ignoreIndex. */
  crossEntropy(logits: Storage, targets: Storage, g: CrossEntropyGeometry): Storage;
  /** d loss[r] / d logits[r] scaled by gradLoss[r]: (softmax(logits[r]) - onehot(target[r])) * gradLoss[r]; 0 rows where ignored. */
  crossEntropyBackward(logits: Storage, targets: Storage, gradLoss: Storage, g: CrossEntropyGeometry): Storage;

  /** out[n] = table[ids[n]] for table [V, D] and ids i32 [N]; out is [N, D]. Ids outside [0, V) throw or yield zeros (documented per backend). */
  gather(table: Storage, ids: Storage, g: EmbeddingGeometry): Storage;
  /** out [V, D] = sum over n of onehot(ids[n]) grad[n]: the transpose of gather. */
  scatterAdd(grad: Storage, ids: Storage, g: EmbeddingGeometry): Storage;

  /** RMSNorm over rows: y = x / sqrt(mean(x^2) + eps) * weight; x [rows, D], weight [D]. */
  rmsNorm(x: Storage, weight: Storage, g: RmsNormGeometry): Storage;

  /**
   * Rotary embedding, Hugging Face "rotate_half" layout: for d < Dh/2,
   * out[d] = x[d] cos - x[d + Dh/2] sin and out[d + Dh/2] = x[d + Dh/2] cos + x[d] sin,
   * with cos/sin [Bc, T, Dh/2] (Bc = 1 or B) for x [B, H, T, Dh], see RopeGeometry.
   */
  rope(x: Storage, cos: Storage, sin: Storage, g: RopeGeometry): Storage;

  /**
   * Fused attention forward (online softmax, no [Tq, Tk] matrix in memory).
   * Returns out [B, H, Tq, Dh] and the row log-sum-exp of the scaled, masked scores [B, H, Tq],
   * which the backward pass reuses.
   */
  attention(ins: AttentionInputs<Storage>, g: AttentionGeometry): { out: Storage; lse: Storage };
  /** Gradients of attention w.r.t. q, k, v given dOut, recomputing probabilities from lse. */
  attentionBackward(ins: AttentionBackwardInputs<Storage>, g: AttentionGeometry): AttentionGrads<Storage>;

  /**
   * Uploads a packed weight [rows, cols] (bf16, f16 or NF4; see src/tensor/weight.ts) in its
   * stored form; the caller checked its sizes (assertHostWeight).
   * @throws DeviceLimitError when it does not fit one binding or the device's memory.
   */
  uploadWeight(w: HostWeight, rows: number, cols: number): WeightStorage;
  /** The dequantized values of a packed weight, row-major f32 [rows * cols], on the host. */
  readWeight(w: WeightStorage): Promise<Float32Array>;
  /** Releases a packed weight's memory. */
  freeWeight(w: WeightStorage): void;
  /**
   * The product with a packed weight W [N, K] (N = w.rows, K = w.cols), dequantized in
   * registers, summed in f32: "nt" out [M, N] = x [M, K] @ W^T (a Linear's forward, and
   * decoding's matrix-vector product when M = 1); "nn" out [M, K] = x [M, N] @ W (its input
   * gradient). x contiguous f32.
   */
  matmulWeight(x: Storage, w: WeightStorage, M: number, form: "nt" | "nn"): Storage;
  /** out [n, D] = W[ids[i], :] for a packed table W [V, D] and ids i32 [n]; out-of-range ids as gather. */
  gatherWeight(w: WeightStorage, ids: Storage): Storage;

  /** In place: one AdamW step on param, with moments m and v, given grad (all contiguous, same size). */
  adamw(param: Storage, grad: Storage, m: Storage, v: Storage, h: AdamWStep): void;

  /** Waits until all queued work is done (no-op on cpu). */
  sync(): Promise<void>;
  /** Bytes currently held by live storages, for leak tests. */
  liveBytes(): number;
}
