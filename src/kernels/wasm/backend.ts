import type { MatmulGeometry } from "../../tensor/backend.ts";
import type { DType, HostArray } from "../../tensor/dtype.ts";
import { CpuBackend } from "../cpu.ts";
import { matmulRef } from "../matmul.ts";
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
 * - every other op, and f64 matmul: the cpu device's TypeScript references (src/kernels/*.ts)
 *   on the calling thread, reading and writing the shared memory in place. Those ops are
 *   memory-bound or small next to the matmuls of a transformer layer; they share the reference's
 *   numerics (computed in doubles, rounded once at the store).
 * Argument checks, dtypes and errors are the cpu device's (this class extends it).
 */

/** Products below this many multiply-adds run on the calling thread only (waking workers costs more). */
const PARALLEL_MIN_MACS = 1 << 16;

// Kernel indices in the pool's list.
const K = { gemm: 0, gemvDot: 1, gemvAxpy: 2 } as const;
const KERNELS: readonly KernelRef[] = [
  { module: 0, name: "gemm" },
  { module: 0, name: "gemv_dot" },
  { module: 0, name: "gemv_axpy" },
];

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
  protected override readonly kernels = { matmul: (a: HostArray, b: HostArray, out: HostArray, g: MatmulGeometry) => this.matmulKernel(a, b, out, g) };
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
  const modules = [await WebAssembly.compile(matmulModule(shared, relaxed))];
  const pool = await WasmPool.create(modules, heap.memory, KERNELS, threads);
  return new WasmBackend(heap, pool, relaxed);
}
