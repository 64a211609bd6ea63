import type {
  AttentionBackwardInputs,
  AttentionGeometry,
  AttentionGrads,
  AttentionInputs,
  BinaryOp,
  CrossEntropyGeometry,
  MatmulGeometry,
  RmsNormGeometry,
  UnaryOp,
} from "../../tensor/backend.ts";
import type { DType, HostArray } from "../../tensor/dtype.ts";
import { CpuBackend } from "../cpu.ts";
import { attentionBackwardRef, attentionRef } from "../attention.ts";
import { crossEntropyBackwardRef, crossEntropyRef, crossEntropyTarget } from "../cross_entropy.ts";
import { rmsNormRef } from "../rmsnorm.ts";
import { softmaxRef } from "../softmax.ts";
import { rowsModule } from "./rows.wasm.ts";
import type { HostView } from "../elementwise.ts";
import { assignRef, binaryRef, unaryRef } from "../elementwise.ts";
import { matmulRef } from "../matmul.ts";
import { WASM_BINARY, WASM_UNARY, elementwiseExport, elementwiseModule } from "./elementwise.wasm.ts";
import { attentionModule } from "./attention.wasm.ts";
import { WasmHeap } from "./heap.ts";
import { GEMM_SCRATCH_BYTES, MC, NC, NR, matmulModule } from "./matmul.wasm.ts";
import { hasRelaxedSimd } from "./module.ts";
import type { KernelRef } from "./pool.ts";
import { WasmPool } from "./pool.ts";

/**
 * The `wasm` device: storages live in one WebAssembly.Memory (shared between worker threads
 * when SharedArrayBuffer exists), so a storage's host array is a view of that memory and its
 * byte offset is the pointer kernels use. It holds f32, i32 and f64, like `cpu`.
 *
 * Which kernels run where:
 * - matmul (f32): WebAssembly SIMD kernels on every thread (matmul.wasm.ts): the blocked,
 *   register-tiled product, and the matrix-vector forms when M or N is 1.
 * - attention forward and backward (f32, head size a multiple of 4): the online-softmax kernels
 *   of attention.wasm.ts, split between threads by query row (forward) and kv head (backward).
 * - softmax, log-softmax, cross-entropy forward and backward and RMSNorm (f32): the row kernels
 *   of rows.wasm.ts, rows split between threads (the one log per row on the calling thread).
 * - unary and binary ops of elementwise.wasm.ts (arithmetic, exp, sigmoid, silu, ...) and assign
 *   between distinct storages, f32, on views that collapse to at most 4 dims.
 * - every other op (comparisons, where, cast, reductions, RoPE, embedding, AdamW, the packed
 *   bf16/f16/NF4 weights, which stay in host memory as on cpu, ...), and f64: the
 *   cpu device's TypeScript references (src/kernels/*.ts)
 *   on the calling thread, reading and writing the shared memory in place. Those ops are
 *   memory-bound or small next to the matmuls of a transformer layer; they share the reference's
 *   numerics (computed in doubles, rounded once at the store).
 * Argument checks, dtypes and errors are the cpu device's (this class extends it).
 */

/** Products below this many multiply-adds run on the calling thread only (waking workers costs more). */
const PARALLEL_MIN_MACS = 1 << 16;

// Kernel indices in the pool's list.
const K = { gemm: 0, gemvDot: 1, gemvAxpy: 2, attention: 3, attentionBackward: 4, rowStats: 5, rowApply: 6, rmsNorm: 7 } as const;
const ELEMENTWISE_NAMES = [
  ...Object.keys(WASM_UNARY).map((op) => elementwiseExport("unary", op)),
  ...Object.keys(WASM_BINARY).map((op) => elementwiseExport("binary", op)),
];
const KERNELS: readonly KernelRef[] = [
  { module: 0, name: "gemm" },
  { module: 0, name: "gemv_dot" },
  { module: 0, name: "gemv_axpy" },
  { module: 1, name: "attn" },
  { module: 1, name: "attn_bwd" },
  { module: 3, name: "row_stats" },
  { module: 3, name: "row_apply" },
  { module: 3, name: "rmsnorm" },
  ...ELEMENTWISE_NAMES.map((name) => ({ module: 2, name })),
];
/** Pool index of each elementwise kernel, by export name. */
const ELEMENTWISE_INDEX = new Map(ELEMENTWISE_NAMES.map((name, i) => [name, 8 + i]));

/** Elementwise ops below this many elements run on the calling thread only. */
const PARALLEL_MIN_ELEMENTS = 1 << 15;

/**
 * A strided iteration space collapsed to exactly 4 dims: adjacent axes merge when every operand
 * steps through them as one (stride[i] = stride[i + 1] * size[i + 1]), size-1 axes drop, and
 * leading size-1 axes pad. Null when more than 4 remain (the caller runs the reference).
 */
function collapse(shape: readonly number[], strides: readonly (readonly number[])[]): { n: number[]; s: number[][] } | null {
  const n: number[] = [];
  const s: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = n.length - 1;
    if (last >= 0 && strides.every((st, k) => s[k]![last] === st[d]! * shape[d]!)) {
      n[last]! *= shape[d]!;
      strides.forEach((st, k) => (s[k]![last] = st[d]!));
    } else {
      n.push(shape[d]!);
      strides.forEach((st, k) => s[k]!.push(st[d]!));
    }
  }
  if (n.length > 4) return null;
  while (n.length < 4) {
    n.unshift(1);
    s.forEach((x) => x.unshift(0));
  }
  return { n, s };
}

/** The bits of `x` rounded to f32, as an i32 (how kernels take float arguments). */
const f32Bits = (x: number) => new Int32Array(new Float32Array([x]).buffer)[0]!;

/** Row-major strides of a contiguous shape. */
const contiguous = (shape: readonly number[]) => {
  const st = new Array<number>(shape.length);
  for (let d = shape.length - 1, acc = 1; d >= 0; acc *= shape[d]!, d--) st[d] = acc;
  return st;
};

export interface WasmOptions {
  /** Threads, the caller's included; default: every core. 1 without SharedArrayBuffer. */
  threads?: number;
  /**
   * The memory's limit in bytes (default: 4 GiB, wasm32's address space, with threads; 1 GiB
   * on one thread, where the memory is allocated at its limit up front).
   */
  maxMemoryBytes?: number;
  /** Use relaxed SIMD's fused multiply-add when the engine has it (default: when detected). */
  relaxedSimd?: boolean;
}

export class WasmBackend extends CpuBackend {
  override readonly name = "wasm";
  override readonly maxBindingBytes: number;
  /** Whether the matmul kernels use relaxed SIMD's multiply-add. */
  readonly relaxedSimd: boolean;
  protected override readonly kernels = {
    softmax: (x: HostArray, out: HostArray, rows: number, cols: number, log: boolean) => {
      if (!this.ownF32([x, out])) return softmaxRef(x, out, rows, cols, log);
      this.rowKernels(x, out, rows, cols, (s) => (log ? Math.log(s) : 1 / s), log ? 1 : 0);
    },
    crossEntropy: (logits: HostArray, targets: Int32Array, out: HostArray, g: CrossEntropyGeometry) => this.crossEntropyKernel(logits, targets, null, out, g),
    crossEntropyBackward: (logits: HostArray, targets: Int32Array, gradLoss: HostArray, out: HostArray, g: CrossEntropyGeometry) =>
      this.crossEntropyKernel(logits, targets, gradLoss, out, g),
    rmsNorm: (x: HostArray, weight: HostArray, out: HostArray, g: RmsNormGeometry) => {
      if (!this.ownF32([x, weight, out])) return rmsNormRef(x, weight, out, g);
      this.pool.run(K.rmsNorm, [x.byteOffset, weight.byteOffset, out.byteOffset, g.rows, g.D, f32Bits(g.eps)], this.rowThreads(g.rows, g.D));
    },
    unary: (op: UnaryOp, x: HostView, out: HostArray) => {
      if (!this.mapKernel(elementwiseExport("unary", op), out, contiguous(x.shape), [x, x], x.shape)) unaryRef(op, x, out);
    },
    binary: (op: BinaryOp, a: HostView, b: HostView, out: HostArray) => {
      if (!this.mapKernel(elementwiseExport("binary", op), out, contiguous(a.shape), [a, b], a.shape)) binaryRef(op, a, b, out);
    },
    // The kernel reads and writes in one pass: only for distinct storages (the reference copies src first).
    assign: (dst: HostView, src: HostView) => {
      const ok = dst.data !== src.data && this.mapKernel(elementwiseExport("unary", "copy"), dst.data, dst.strides, [src, src], src.shape, dst.offset);
      if (!ok) assignRef(dst, src);
    },
    matmul: (a: HostArray, b: HostArray, out: HostArray, g: MatmulGeometry) => this.matmulKernel(a, b, out, g),
    attention: (ins: AttentionInputs<HostArray>, outs: { out: HostArray; lse: HostArray }, g: AttentionGeometry) => this.attentionKernel(ins, outs, g),
    attentionBackward: (ins: AttentionBackwardInputs<HostArray>, grads: AttentionGrads<HostArray>, g: AttentionGeometry) => this.attentionBackwardKernel(ins, grads, g),
  };
  private readonly heap: WasmHeap;
  private readonly pool: WasmPool;
  private readonly scratch: number;
  /** Every buffer object storages were viewed on (a shared memory hands out a new one per growth). */
  private readonly buffers = new WeakSet<ArrayBufferLike>();

  /** Use `createWasmBackend` (starting the workers is asynchronous). */
  constructor(heap: WasmHeap, pool: WasmPool, relaxedSimd: boolean) {
    super();
    this.heap = heap;
    this.pool = pool;
    this.relaxedSimd = relaxedSimd;
    this.maxBindingBytes = heap.maxBytes;
    this.scratch = heap.alloc(GEMM_SCRATCH_BYTES * pool.threads);
  }

  /** Threads kernels run on (the caller's included). */
  get threads(): number {
    return this.pool.threads;
  }

  protected override allocate(dtype: DType, numel: number): HostArray {
    const bytesPer = dtype === "f64" ? 8 : 4;
    const ptr = this.heap.alloc(numel * bytesPer);
    const buffer = this.heap.memory.buffer;
    this.buffers.add(buffer);
    if (dtype === "f64") return new Float64Array(buffer, ptr, numel);
    return dtype === "i32" ? new Int32Array(buffer, ptr, numel) : new Float32Array(buffer, ptr, numel);
  }

  protected override release(data: HostArray): void {
    this.heap.release(data.byteOffset);
  }

  /** Stops the worker threads; the backend must not be used afterwards. */
  destroy(): void {
    this.pool.destroy();
  }

  /**
   * f32 products on the SIMD kernels; M = 1 or N = 1 take the matrix-vector forms (a dot
   * product per output where the matrix's rows are contiguous along k, else scaled rows summed
   * into an output strip). f64 runs the reference.
   */
  private matmulKernel(a: HostArray, b: HostArray, out: HostArray, g: MatmulGeometry): void {
    if (!(a instanceof Float32Array && b instanceof Float32Array && out instanceof Float32Array)) {
      matmulRef(a, b, out, g);
      return;
    }
    for (const x of [a, b]) if (!this.buffers.has(x.buffer)) throw new TypeError("matmul: storage does not belong to this wasm backend");
    const { batch, M, N, K: Kd } = g;
    if (batch * M * N === 0 || Kd === 0) return; // the output is already zero
    const [sAm, sAk] = g.transA ? [1, M] : [Kd, 1];
    const [sBk, sBn] = g.transB ? [1, Kd] : [N, 1];
    const sAb = g.batchStrideA;
    const sBb = g.batchStrideB;
    const [pa, pb, pc] = [a.byteOffset, b.byteOffset, out.byteOffset];
    const threads = batch * M * N * Kd < PARALLEL_MIN_MACS ? 1 : this.pool.threads;
    if (M === 1) {
      // out[j] = sum_k B(j, k) a[k]; a's k-stride is 1 whether or not A is transposed.
      if (sBk === 1) this.pool.run(K.gemvDot, [pb, pa, pc, N, Kd, sBn, batch, sBb, sAb], threads);
      else this.pool.run(K.gemvAxpy, [pb, pa, pc, N, Kd, sBk, batch, sBb, sAb], threads);
    } else if (N === 1) {
      // out[i] = sum_k A(i, k) b[k]; b's k-stride is 1 whether or not B is transposed.
      if (sAk === 1) this.pool.run(K.gemvDot, [pa, pb, pc, M, Kd, sAm, batch, sAb, sBb], threads);
      else this.pool.run(K.gemvAxpy, [pa, pb, pc, M, Kd, sAk, batch, sAb, sBb], threads);
    } else {
      this.pool.run(K.gemm, [pa, pb, pc, M, N, Kd, sAm, sAk, sBk, sBn, batch, sAb, sBb, unitColumns(batch, M, N, threads), this.scratch], threads);
    }
  }

  /**
   * Runs elementwise kernel `name` when it exists and every array is this backend's f32: out (at
   * element `outOffset`, with `outStrides`) = f(views[0], views[1]) over `shape`. Returns false
   * (nothing written) when the reference must run instead.
   */
  private mapKernel(name: string, out: HostArray, outStrides: readonly number[], views: readonly [HostView, HostView], shape: readonly number[], outOffset = 0): boolean {
    const index = ELEMENTWISE_INDEX.get(name);
    const arrays = [out, views[0].data, views[1].data];
    if (index === undefined || !arrays.every((x) => x instanceof Float32Array && this.buffers.has(x.buffer))) return false;
    const dims = collapse(shape, [outStrides, views[0].strides, views[1].strides]);
    if (!dims) return false;
    const total = dims.n.reduce((p, x) => p * x, 1);
    if (total === 0) return true;
    const ptr = (data: HostArray, offset: number) => data.byteOffset + 4 * offset;
    const [so, sa, sb] = dims.s as [number[], number[], number[]];
    const args = [ptr(out, outOffset), ptr(views[0].data, views[0].offset), ptr(views[1].data, views[1].offset), ...dims.n, ...so, ...sa, ...sb];
    this.pool.run(index, args, total < PARALLEL_MIN_ELEMENTS ? 1 : this.pool.threads);
    return true;
  }

  /** Threads for a row kernel over rows x cols elements. */
  private rowThreads(rows: number, cols: number): number {
    return rows * cols < PARALLEL_MIN_ELEMENTS ? 1 : this.pool.threads;
  }

  /** Whether every array is an f32 view of this backend's memory (the row kernels' condition). */
  private ownF32(arrays: readonly HostArray[]): boolean {
    return arrays.every((v) => v instanceof Float32Array && this.buffers.has(v.buffer));
  }

  /**
   * row_stats over x [rows, cols] into a temporary (m, s) per row (max, sum of exp(x - m)), then
   * `then(stats, threads)`; the temporary is released after.
   */
  private withRowStats(x: HostArray, rows: number, cols: number, then: (stats: HostArray, threads: number) => void): void {
    if (rows * cols === 0) return;
    const stats = this.allocate("f32", 2 * rows);
    try {
      const threads = this.rowThreads(rows, cols);
      this.pool.run(K.rowStats, [x.byteOffset, stats.byteOffset, rows, cols], threads);
      then(stats, threads);
    } finally {
      this.release(stats);
    }
  }

  /**
   * The two-pass row kernels: each row's (m, s), then row_apply writes `out` from (m, a(s, r))
   * with `mode` (0: exp(x - m) a, 1: x - m - a).
   */
  private rowKernels(x: HostArray, out: HostArray, rows: number, cols: number, a: (s: number, r: number) => number, mode: number): void {
    this.withRowStats(x, rows, cols, (stats, threads) => {
      for (let r = 0; r < rows; r++) stats[2 * r + 1] = a(stats[2 * r + 1]!, r);
      this.pool.run(K.rowApply, [x.byteOffset, stats.byteOffset, out.byteOffset, rows, cols, mode], threads);
    });
  }

  /**
   * Cross-entropy on the row kernels: targets are checked first (the reference's RangeError);
   * loss = m + log s - z_t; the gradient is softmax * gradLoss from row_apply (a = gradLoss / s, 0
   * for ignored rows), then gradLoss subtracted at each target. `gradLoss` null: the forward.
   */
  private crossEntropyKernel(logits: HostArray, targets: Int32Array, gradLoss: HostArray | null, out: HostArray, g: CrossEntropyGeometry): void {
    const { rows, cols, ignoreIndex } = g;
    if (!this.ownF32(gradLoss ? [logits, gradLoss, out] : [logits, out])) {
      if (gradLoss) crossEntropyBackwardRef(logits, targets, gradLoss, out, g);
      else crossEntropyRef(logits, targets, out, g);
      return;
    }
    const t = Array.from({ length: rows }, (_, r) => crossEntropyTarget(targets, r, cols, ignoreIndex));
    if (gradLoss === null) {
      // One value per row: the stats pass alone, then the loss here.
      this.withRowStats(logits, rows, cols, (stats) => {
        for (let r = 0; r < rows; r++) {
          const tr = t[r]!;
          out[r] = tr === null ? 0 : stats[2 * r]! + Math.log(stats[2 * r + 1]!) - logits[r * cols + tr]!;
        }
      });
      return;
    }
    this.rowKernels(logits, out, rows, cols, (s, r) => (t[r] === null ? 0 : gradLoss[r]! / s), 0);
    for (let r = 0; r < rows; r++) {
      const tr = t[r];
      if (tr !== null) out[r * cols + tr]! -= gradLoss[r]!;
    }
  }

  /**
   * The f32 forward on the SIMD kernel (head size a multiple of 4), else the reference. The key
   * mask (any dtype, nonzero = keep) is first written as i32 0/1 into the heap; the kernel
   * leaves (m, l) per row and lse = m + log l is taken here (0 for a row that sees no key).
   */
  private attentionKernel(ins: AttentionInputs<HostArray>, outs: { out: HostArray; lse: HostArray }, g: AttentionGeometry): void {
    const f32 = [ins.q, ins.k, ins.v, outs.out, outs.lse].every((x) => x instanceof Float32Array);
    if (!f32 || g.Dh % 4 !== 0) {
      attentionRef(ins, outs, g);
      return;
    }
    for (const x of [ins.q, ins.k, ins.v]) if (!this.buffers.has(x.buffer)) throw new TypeError("attention: storage does not belong to this wasm backend");
    const rows = g.B * g.H * g.Tq;
    const temps: HostArray[] = [];
    const temp = (dtype: DType, n: number) => {
      const a = this.allocate(dtype, n);
      temps.push(a);
      return a;
    };
    try {
      const mask = ins.keyMask ? this.maskOf(ins.keyMask, g) : null;
      if (mask) temps.push(mask);
      const maskPtr = mask?.byteOffset ?? 0;
      const ml = temp("f32", 2 * rows);
      const scratch = temp("f32", g.Dh * this.pool.threads);
      const threads = rows * g.Tk * g.Dh < PARALLEL_MIN_MACS ? 1 : this.pool.threads;
      this.pool.run(
        K.attention,
        [ins.q.byteOffset, ins.k.byteOffset, ins.v.byteOffset, maskPtr, outs.out.byteOffset, ml.byteOffset, g.B, g.H, g.Hkv, g.Tq, g.Tk, g.Dh, f32Bits(g.scale), g.causal ? 1 : 0, g.window, scratch.byteOffset],
        threads,
      );
      for (let r = 0; r < rows; r++) {
        const l = ml[2 * r + 1]!;
        outs.lse[r] = l > 0 ? ml[2 * r]! + Math.log(l) : 0;
      }
    } finally {
      for (const a of temps) this.release(a);
    }
  }

  /** The f32 backward on the SIMD kernel (head size a multiple of 4), else the reference. */
  private attentionBackwardKernel(ins: AttentionBackwardInputs<HostArray>, grads: AttentionGrads<HostArray>, g: AttentionGeometry): void {
    const arrays = [ins.q, ins.k, ins.v, ins.out, ins.dOut, ins.lse, grads.dq, grads.dk, grads.dv];
    if (!arrays.every((x) => x instanceof Float32Array) || g.Dh % 4 !== 0) {
      attentionBackwardRef(ins, grads, g);
      return;
    }
    for (const x of arrays) if (!this.buffers.has(x.buffer)) throw new TypeError("attentionBackward: storage does not belong to this wasm backend");
    const mask = ins.keyMask ? this.maskOf(ins.keyMask, g) : null;
    try {
      const ptrs = arrays.map((x) => x.byteOffset);
      const threads = g.B * g.H * g.Tq * g.Tk * g.Dh < PARALLEL_MIN_MACS ? 1 : this.pool.threads;
      this.pool.run(
        K.attentionBackward,
        [...ptrs.slice(0, 3), mask?.byteOffset ?? 0, ...ptrs.slice(3), g.B, g.H, g.Hkv, g.Tq, g.Tk, g.Dh, f32Bits(g.scale), g.causal ? 1 : 0, g.window],
        threads,
      );
    } finally {
      if (mask) this.release(mask);
    }
  }

  /** The key mask (any dtype, nonzero = keep) as i32 0/1 in the heap, for the kernels; release it after. */
  private maskOf(keyMask: HostArray, g: AttentionGeometry): Int32Array {
    const mask = this.allocate("i32", g.B * g.Tk) as Int32Array;
    for (let i = 0; i < mask.length; i++) mask[i] = keyMask[i] !== 0 ? 1 : 0;
    return mask;
  }
}

/** Units per thread the gemm split aims for, so that uneven units still balance. */
const UNITS_PER_THREAD = 4;
/** The narrowest unit (columns): below it, packing A again per unit costs more than it shares. */
const MIN_UNIT_COLUMNS = 8 * NR;

/**
 * Columns of one gemm unit: NC, halved (staying a multiple of NR) until the batch x M-blocks x
 * N-blocks units number UNITS_PER_THREAD per thread or the unit is MIN_UNIT_COLUMNS wide.
 */
function unitColumns(batch: number, M: number, N: number, threads: number): number {
  const mBlocks = batch * Math.ceil(M / MC);
  let nc = NC;
  while (nc > MIN_UNIT_COLUMNS && mBlocks * Math.ceil(N / nc) < UNITS_PER_THREAD * threads) nc = Math.max(MIN_UNIT_COLUMNS, Math.ceil(nc / 2 / NR) * NR);
  return nc;
}

/**
 * Starts a wasm device: compiles the kernel modules and starts `threads - 1` workers.
 * @throws RangeError when threads is not a positive integer.
 */
export async function createWasmBackend(opts: WasmOptions & { threads: number }): Promise<WasmBackend> {
  if (!Number.isInteger(opts.threads) || opts.threads < 1) throw new RangeError(`wasm: threads must be a positive integer, got ${opts.threads}`);
  const shared = typeof SharedArrayBuffer !== "undefined" && opts.threads > 1;
  const threads = shared ? opts.threads : 1;
  const heap = new WasmHeap(shared, opts.maxMemoryBytes ?? (shared ? 2 ** 32 : 2 ** 30));
  const relaxed = opts.relaxedSimd ?? hasRelaxedSimd();
  const modules = await Promise.all([matmulModule(shared, relaxed), attentionModule(shared), elementwiseModule(shared), rowsModule(shared)].map((bytes) => WebAssembly.compile(bytes)));
  const pool = await WasmPool.create(modules, heap.memory, KERNELS, threads);
  return new WasmBackend(heap, pool, relaxed);
}
