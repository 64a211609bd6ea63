import type { BinaryOp, Storage, UnaryOp, View } from "../../tensor/backend.ts";
import type { DType, HostArray } from "../../tensor/dtype.ts";
import { dtypeOf } from "../../tensor/dtype.ts";
import { DeviceLimitError } from "../../tensor/errors.ts";
import type { HostWeight, WeightStorage } from "../../tensor/weight.ts";
import { CpuBackend } from "../cpu.ts";
import { CpuWeightStorage, hostView } from "../host.ts";
import type { HostView } from "../elementwise.ts";
import { assignRef, binaryRef, castRef, unaryRef } from "../elementwise.ts";
import { WASM_BINARY, WASM_CAST, WASM_UNARY, WHERE_EXPORT, castExport, elementwiseExport, elementwiseModule } from "./elementwise.wasm.ts";
import { attentionModule } from "./attention.wasm.ts";
import { WasmHeap } from "./heap.ts";
import { GEMM_SCRATCH_BYTES, matmulModule } from "./matmul.wasm.ts";
import { hasRelaxedSimd } from "./module.ts";
import type { KernelRef } from "./pool.ts";
import { PARALLEL_MIN_ELEMENTS, PARALLEL_MIN_MACS, WasmPool } from "./pool.ts";
import { rowsModule } from "./rows.wasm.ts";
import { ADAMW_KERNELS, adamwModule } from "./adamw.wasm.ts";
import { EMBEDDING_KERNELS, embeddingModule } from "./embedding.wasm.ts";
import { REDUCE_KERNELS, reduceModule } from "./reduce.wasm.ts";
import { ROPE_KERNELS, ropeModule } from "./rope.wasm.ts";
import { WEIGHT_KERNELS, weightsModule } from "./weights.wasm.ts";

/**
 * The `wasm` device: storages live in one WebAssembly.Memory (shared between worker threads
 * when SharedArrayBuffer exists), so a storage's host array is a view of that memory and its
 * byte offset is the pointer kernels use. It holds f32, i32 and f64, like `cpu`.
 *
 * Which kernels run where:
 * - fused ops with a wasm kernel, registered beside its WebAssembly module (each file's
 *   `registerKernel(..., "wasm", ...)`): matmul (f32: the blocked, register-tiled product and the
 *   matrix-vector forms, matmul.wasm.ts), attention forward and backward (f32, head size a
 *   multiple of 4, attention.wasm.ts), softmax, log-softmax, cross-entropy forward and backward
 *   and RMSNorm (f32, rows.wasm.ts), RoPE (f32, rope.wasm.ts), AdamW (f32, adamw.wasm.ts), row
 *   sums and maxima (f32, reduce.wasm.ts), the embedding gather and its scatter-add (f32 table
 *   and gradient, embedding.wasm.ts), and the packed bf16/f16/NF4 weights' products and
 *   embedding gather (weights.wasm.ts: decoded a slice of rows at a time into the f32 matmul
 *   kernels); split between threads where the work is large enough (PARALLEL_MIN_*).
 * - unary and binary ops of elementwise.wasm.ts (arithmetic, comparisons, exp, sigmoid, silu,
 *   ...), where, and assign between distinct storages, f32, and casts f32 <-> i32 (and f32 to
 *   f32, a copy), on views that collapse to at most 4 dims (this file).
 * - packed weights live in the device's memory (uploadWeight copies them there; one that does
 *   not fit stays in host memory and its products run the references).
 * - every other op (pow, log, tanh, GELU, ...), and f64 (its casts included):
 *   the cpu device's kernels, which `run` falls back to for any fused op without a wasm kernel
 *   (`kernelNames`), on the calling thread, reading and writing the shared memory in place.
 *   Those share the reference's numerics (computed in doubles, rounded once at the store).
 * Argument checks, dtypes and errors are the cpu device's: this class extends it, and each wasm
 * kernel wraps its compute in the op's host checks (`rmsNormOnHost` in src/kernels/rmsnorm.ts).
 */

const ELEMENTWISE_NAMES = [
  ...Object.keys(WASM_UNARY).map((op) => elementwiseExport("unary", op)),
  ...Object.keys(WASM_BINARY).map((op) => elementwiseExport("binary", op)),
  WHERE_EXPORT,
  ...(Object.keys(WASM_CAST) as (keyof typeof WASM_CAST)[]).map(castExport),
];
/** Modules after the first four (matmul, attention, elementwise, rows), with their kernels' export names, in pool order. */
const MORE_MODULES = [
  { make: weightsModule, names: WEIGHT_KERNELS },
  { make: ropeModule, names: ROPE_KERNELS },
  { make: adamwModule, names: ADAMW_KERNELS },
  { make: reduceModule, names: REDUCE_KERNELS },
  { make: embeddingModule, names: EMBEDDING_KERNELS },
] as const;
/** The kernels of the matmul (0), attention (1) and row (3) modules. */
const FIRST_KERNELS = [
  { module: 0, name: "gemm" },
  { module: 0, name: "gemv_dot" },
  { module: 0, name: "gemv_axpy" },
  { module: 1, name: "attn" },
  { module: 1, name: "attn_bwd" },
  { module: 3, name: "row_stats" },
  { module: 3, name: "row_apply" },
  { module: 3, name: "rmsnorm" },
] as const;
/** Every kernel, in pool order. */
const KERNELS: readonly KernelRef[] = [
  ...FIRST_KERNELS,
  ...ELEMENTWISE_NAMES.map((name) => ({ module: 2, name })),
  ...MORE_MODULES.flatMap(({ names }, i) => names.map((name) => ({ module: 4 + i, name }))),
];
/** Pool index of each kernel, by export name (the names are distinct across modules). */
const EXPORT_INDEX = new Map(KERNELS.map((k, i) => [k.name, i]));

/** The kernels `WasmBackend.call` runs, by export name (`gemm`, `attn`, `binary_add`, `decode_nf4`, `rope`, ...). */
export type WasmKernel = (typeof FIRST_KERNELS)[number]["name"] | (typeof MORE_MODULES)[number]["names"][number] | ReturnType<typeof elementwiseExport> | typeof WHERE_EXPORT | ReturnType<typeof castExport>;

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
  /** The one memory every storage is a block of: the same as the binding limit. */
  override readonly maxMemoryBytes: number;
  /** Whether the matmul kernels use relaxed SIMD's multiply-add. */
  readonly relaxedSimd: boolean;
  protected override readonly kernels = {
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
    // f32 <-> i32 on WASM_CAST's kernels, f32 -> f32 a copy; other pairs (f64) on the reference.
    cast: (x: HostView, out: HostArray) => {
      const [from, to] = [dtypeOf(x.data), dtypeOf(out)];
      const cast = `${from}_${to}`;
      const name = cast in WASM_CAST ? castExport(cast as keyof typeof WASM_CAST) : from === "f32" && to === "f32" ? elementwiseExport("unary", "copy") : null;
      if (name === null || !this.mapKernel(name, out, contiguous(x.shape), [x, x], x.shape, 0, { out: to, in: from })) castRef(x, out);
    },
  };
  /** Fused ops run their wasm kernel where one is registered, else the cpu one. */
  protected override readonly kernelNames: readonly ("cpu" | "wasm")[] = ["wasm", "cpu"];
  /** Byte address of the gemm kernel's packing scratch (one slice per thread). For kernels. */
  readonly scratch: number;
  private readonly heap: WasmHeap;
  private readonly pool: WasmPool;
  /** Every buffer object storages were viewed on (a shared memory hands out a new one per growth). */
  private readonly buffers = new WeakSet<ArrayBufferLike>();

  /** Use `createWasmBackend` (starting the workers is asynchronous). */
  constructor(heap: WasmHeap, pool: WasmPool, relaxedSimd: boolean) {
    super();
    this.heap = heap;
    this.pool = pool;
    this.relaxedSimd = relaxedSimd;
    this.maxBindingBytes = this.maxMemoryBytes = heap.maxBytes;
    this.scratch = heap.alloc(GEMM_SCRATCH_BYTES * pool.threads);
  }

  /** Threads kernels run on (the caller's included). */
  get threads(): number {
    return this.pool.threads;
  }

  override allocate(dtype: DType, numel: number): HostArray {
    const bytesPer = dtype === "f64" ? 8 : 4;
    const ptr = this.heap.alloc(numel * bytesPer);
    const buffer = this.heap.memory.buffer;
    this.buffers.add(buffer);
    if (dtype === "f64") return new Float64Array(buffer, ptr, numel);
    return dtype === "i32" ? new Int32Array(buffer, ptr, numel) : new Float32Array(buffer, ptr, numel);
  }

  /** Gives an array from `allocate` back to the heap (storages' memory, and kernels' temporaries). */
  override release(data: HostArray): void {
    this.heap.release(data.byteOffset);
  }

  /** Stops the worker threads; the backend must not be used afterwards. */
  destroy(): void {
    this.pool.destroy();
  }

  /**
   * Runs kernel `kernel` with `args` on `threads` threads.
   * @throws Error for an elementwise export name that has no kernel (an op without a SIMD form)
   */
  call(kernel: WasmKernel, args: readonly number[], threads: number): void {
    const index = EXPORT_INDEX.get(kernel);
    if (index === undefined) throw new Error(`wasm: no kernel ${kernel}`);
    this.pool.run(index, args, threads);
  }

  /**
   * Copies the packed weight into the device's memory, where the decoding kernels
   * (weights.wasm.ts) read it; a weight that does not fit stays in host memory, and its products
   * run the references there.
   */
  override uploadWeight(w: HostWeight, rows: number, cols: number): WeightStorage {
    const parts = w.dtype === "nf4" ? [w.packed, w.absmax] : [w.bits];
    const copies: (Uint8Array | Uint16Array | Float32Array)[] = [];
    try {
      for (const a of parts) {
        const ptr = this.heap.alloc(a.byteLength); // first: it may grow the memory, which gives a new buffer
        const view = new (a.constructor as Uint8ArrayConstructor)(this.heap.memory.buffer, ptr, a.length);
        this.buffers.add(view.buffer);
        copies.push(view);
        view.set(a);
      }
    } catch (e) {
      for (const c of copies) this.heap.release(c.byteOffset);
      if (e instanceof DeviceLimitError) return super.uploadWeight(w, rows, cols);
      throw e;
    }
    const inHeap: HostWeight = w.dtype === "nf4" ? { dtype: "nf4", packed: copies[0] as Uint8Array, absmax: copies[1] as Float32Array } : { dtype: w.dtype, bits: copies[0] as Uint16Array };
    return super.uploadWeight(inHeap, rows, cols);
  }

  override freeWeight(w: WeightStorage): void {
    if (w instanceof CpuWeightStorage && !w.freed) {
      const parts = w.data.dtype === "nf4" ? [w.data.packed, w.data.absmax] : [w.data.bits];
      for (const a of parts) if (this.owns(a)) this.heap.release(a.byteOffset);
    }
    super.freeWeight(w);
  }

  /** Whether `x` is a view of this backend's memory. */
  owns(x: ArrayBufferView): boolean {
    return this.buffers.has(x.buffer);
  }

  /**
   * Runs elementwise kernel `name` when it exists and every array is this backend's, of
   * `dtypes` (f32 but for the casts): out (at element `outOffset`, with `outStrides`) =
   * f(...views) over `shape` (two views for unary and binary ops and casts, three for where).
   * Returns false (nothing written) when the reference must run instead.
   */
  private mapKernel(
    name: string,
    out: HostArray,
    outStrides: readonly number[],
    views: readonly HostView[],
    shape: readonly number[],
    outOffset = 0,
    dtypes: { out: DType; in: DType } = { out: "f32", in: "f32" },
  ): boolean {
    const index = EXPORT_INDEX.get(name);
    const ok = (x: HostArray, dtype: DType) => dtypeOf(x) === dtype && this.owns(x);
    if (index === undefined || !ok(out, dtypes.out) || !views.every((v) => ok(v.data, dtypes.in))) return false;
    const dims = collapse(shape, [outStrides, ...views.map((v) => v.strides)]);
    if (!dims) return false;
    const total = dims.n.reduce((p, x) => p * x, 1);
    if (total === 0) return true;
    const ptr = (data: HostArray, offset: number) => data.byteOffset + 4 * offset;
    const args = [ptr(out, outOffset), ...views.map((v) => ptr(v.data, v.offset)), ...dims.n, ...dims.s.flat()];
    this.pool.run(index, args, total < PARALLEL_MIN_ELEMENTS ? 1 : this.pool.threads);
    return true;
  }

  /**
   * cond != 0 ? a : b on the elementwise module's where kernel when all three are f32 views of
   * this device's memory of one shape; otherwise the cpu device's (its checks and errors).
   */
  override where(cond: View, a: View, b: View): Storage {
    const views = [cond, a, b].map((v) => hostView("where", v));
    const sameShape = [cond, b].every((v) => v.shape.length === a.shape.length && v.shape.every((d, i) => d === a.shape[i]));
    if (!sameShape || [cond, a, b].some((v) => v.storage.dtype !== "f32")) return super.where(cond, a, b);
    const out = this.allocate("f32", a.shape.reduce((p, d) => p * d, 1));
    if (this.mapKernel(WHERE_EXPORT, out, contiguous(a.shape), views, a.shape)) return this.wrap(out);
    this.release(out);
    return super.where(cond, a, b);
  }

  /** Threads for a row kernel over rows x cols elements. */
  rowThreads(rows: number, cols: number): number {
    return rows * cols < PARALLEL_MIN_ELEMENTS ? 1 : this.pool.threads;
  }

  /** Threads for a product kernel (matmul, attention) of `macs` multiply-adds. */
  macThreads(macs: number): number {
    return macs < PARALLEL_MIN_MACS ? 1 : this.pool.threads;
  }

  /** Whether every array is an f32 view of this backend's memory (the row kernels' condition). */
  ownF32(arrays: readonly HostArray[]): boolean {
    return arrays.every((v) => v instanceof Float32Array && this.owns(v));
  }
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
  const bytes = [matmulModule(shared, relaxed), attentionModule(shared), elementwiseModule(shared), rowsModule(shared), ...MORE_MODULES.map((m) => m.make(shared))];
  const modules = await Promise.all(bytes.map((b) => WebAssembly.compile(b)));
  const pool = await WasmPool.create(modules, heap.memory, KERNELS, threads);
  return new WasmBackend(heap, pool, relaxed);
}
