import type {
  AdamWStep,
  AttentionGeometry,
  Backend,
  BinaryOp,
  MatmulGeometry,
  ReduceOp,
  Storage,
  UnaryOp,
  View,
} from "../../tensor/backend.ts";
import type { DType, HostArray } from "../../tensor/dtype.ts";
import { dtypeOf, hostArray } from "../../tensor/dtype.ts";
import { DTypeError, DeviceLimitError, DisposedError, ShapeError } from "../../tensor/errors.ts";
import { assertSameShape, contiguousStrides, numel } from "../../tensor/shape.ts";
import { encodeAdamW } from "../adamw.wgsl.ts";
import { assertViewInBounds, attentionSizes } from "../checks.ts";
import { ATTENTION_MAX_DH, encodeAttention, encodeAttentionBackward } from "../attention.wgsl.ts";
import { encodeCrossEntropy, encodeCrossEntropyBackward } from "../cross_entropy.wgsl.ts";
import { binaryDefinedOnInt, unaryDefinedOnInt } from "../elementwise.ts";
import type { StridedOperand } from "../elementwise.wgsl.ts";
import { encodeAssign, encodeBinary, encodeCast, encodeFill, encodeUnary, encodeWhere } from "../elementwise.wgsl.ts";
import { encodeGather, encodeScatterAdd } from "../embedding.wgsl.ts";
import { matmulOperandNumel } from "../matmul.ts";
import { MATMUL_VARIANTS, encodeMatmul } from "../matmul.wgsl.ts";
import { encodeReduceRows } from "../reduce.wgsl.ts";
import { encodeRmsNorm } from "../rmsnorm.wgsl.ts";
import { encodeRope } from "../rope.wgsl.ts";
import { encodeSoftmax } from "../softmax.wgsl.ts";
import { PipelineCache } from "./pipelines.ts";
import type { PooledBuffer } from "./pool.ts";
import { BufferPool } from "./pool.ts";
import type { AttentionVariant, Chunk, GpuData, Kernel, KernelHost, MatmulVariant, ParamValues } from "./program.ts";
import { packParams } from "./program.ts";

/** Kernels index elements with 32-bit integers, so one storage holds at most 2^31 - 1 of them. */
const MAX_ELEMENTS = 2 ** 31 - 1;
/**
 * Bytes kept below the adapter's buffer limits: SwiftShader advertises maxBufferSize = 1 GiB but
 * fails to allocate a buffer of exactly 1 GiB (VK_ERROR_OUT_OF_DEVICE_MEMORY: the driver's
 * allocation limit is 1 GiB and the buffer needs a little more), while 1 GiB - 256 works.
 */
const BUFFER_SLACK = 256;
/**
 * Dispatches recorded before a batch is submitted: few, so the device starts on the first ones
 * while the host records the rest (TensorFlow.js's WebGPU backend submits every 15 commands).
 * Measured on SwiftShader, the tiny model's 128-token prefill took 34 ms with batches of 128 and
 * 29-32 ms with 8 or 16.
 */
const MAX_BATCH = 16;

/**
 * A webgpu storage: `numel` f32 or i32 elements in one GPUBuffer, or, above the per-binding
 * limit, in several chunks of a fixed element count (the last one shorter). Only upload, read,
 * the elementwise kernels, gather (as the table) and matmul (as B) accept chunked storages;
 * every other kernel throws DeviceLimitError for them.
 */
export class WebGpuStorage implements Storage, GpuData {
  refs = 0;
  freed = false;

  constructor(
    readonly dtype: "f32" | "i32",
    readonly numel: number,
    readonly chunks: readonly Chunk[],
    /** The backend that owns the buffers. */
    readonly owner: WebGpuBackend,
  ) {}
}

/** Bytes of `n` elements: every webgpu dtype (f32, i32) is 4 bytes. */
const bytesOf = (n: number) => n * 4;

/**
 * The `webgpu` device: WGSL kernels (src/kernels/*.wgsl.ts) run through Dawn.
 *
 * Submission: dispatches are recorded into one command encoder (one compute pass) and submitted
 * in batches of up to MAX_BATCH, or earlier when the host needs results (`read`, `sync`) or
 * writes into a reused buffer. Each dispatch's uniform block goes into a host-side array at a
 * 256-byte-aligned slot; the array is written to one uniform buffer right before the batch is
 * submitted (queue.writeBuffer and submit run in queue order, so the next batch's parameters never
 * overwrite this one's before it runs).
 *
 * Hazard: a freed buffer returns to the pool at once and may be handed out while unsubmitted
 * commands still read it. Recorded commands (dispatch, copy, clear) stay in order, but
 * `queue.writeBuffer` runs before every unsubmitted command, so `upload` submits pending work
 * before writing into a reused buffer.
 *
 * Errors: every batch runs inside a Dawn validation error scope and each pipeline is compiled
 * inside one; a captured error becomes an Error naming the kernel(s), thrown by the next `read`
 * or `sync` (Dawn reports asynchronously). Uncaptured errors and device loss are caught the same
 * way, so no bare Dawn message reaches the process.
 */
export class WebGpuBackend implements Backend, KernelHost {
  readonly name = "webgpu";
  readonly maxBindingBytes: number;
  readonly maxGridDim: number;
  readonly rowWorkgroup: number;
  readonly matmulVariant: MatmulVariant;
  readonly attentionVariant: AttentionVariant;
  /** Elements per chunk of a chunked storage. */
  private readonly chunkElems: number;
  private readonly pool: BufferPool;
  private readonly staging: BufferPool;
  private readonly pipelines: PipelineCache;
  private readonly uniforms: GPUBuffer;
  private readonly uniformHost: ArrayBuffer;
  private readonly uniformView: DataView;
  private readonly uniformAlign: number;
  private uniformUsed = 0;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private batchKernels = new Set<string>();
  private batchDispatches = 0;
  private readonly pendingScopes = new Set<Promise<void>>();
  /** While `gpuTime` runs: its query set, the queries written so far, and whether it ran out of them. */
  private timing: { set: GPUQuerySet; used: number; overflow: boolean } | null = null;
  private failure: Error | null = null;

  /**
   * @param gpu the Dawn GPU object (kept alive with the device)
   * @param device a device created with the adapter's binding and buffer limits
   * @param opts.maxBindingBytes a lower per-binding limit (tests of chunked storages)
   * @param opts.rowWorkgroup invocations per row in the row kernels and the matrix-vector kernel
   *   (a power of two); by default 256, or 1 on a fallback (CPU) adapter such as SwiftShader
   * @param opts.matmulVariant the matmul variant (src/kernels/matmul.wgsl.ts); by default
   *   $QALIGN_MATMUL, else "quad" on a fallback (CPU) adapter with the `subgroups` feature, else "vec4"
   * @param opts.attentionVariant the fused attention forward; by default "quad" where the matmul
   *   default is "quad" (a CPU adapter with subgroups), else "rows"
   * @throws RangeError for a bad rowWorkgroup, or a "quad" variant without the `subgroups` feature
   */
  constructor(
    readonly gpu: GPU,
    readonly device: GPUDevice,
    opts: { maxBindingBytes?: number; rowWorkgroup?: number; matmulVariant?: MatmulVariant; attentionVariant?: AttentionVariant } = {},
  ) {
    const { maxBindingBytes, rowWorkgroup } = opts;
    const limits = device.limits;
    const info = device.adapterInfo;
    this.rowWorkgroup = rowWorkgroup ?? (info.isFallbackAdapter ? 1 : 256);
    if (!Number.isInteger(Math.log2(this.rowWorkgroup)) || this.rowWorkgroup > limits.maxComputeInvocationsPerWorkgroup) {
      throw new RangeError(`webgpu: rowWorkgroup ${this.rowWorkgroup} is not a power of two <= ${limits.maxComputeInvocationsPerWorkgroup}`);
    }
    const subgroups = device.features.has("subgroups");
    const fromEnv = process.env["QALIGN_MATMUL"];
    if (fromEnv !== undefined && !(MATMUL_VARIANTS as readonly string[]).includes(fromEnv)) {
      throw new RangeError(`webgpu: QALIGN_MATMUL=${fromEnv} is not one of ${MATMUL_VARIANTS.join(", ")}`);
    }
    const cpuQuads = info.isFallbackAdapter && subgroups;
    this.matmulVariant = opts.matmulVariant ?? (fromEnv as MatmulVariant | undefined) ?? (cpuQuads ? "quad" : "vec4");
    this.attentionVariant = opts.attentionVariant ?? (cpuQuads ? "quad" : "rows");
    if ((this.matmulVariant === "quad" || this.attentionVariant === "quad") && !subgroups) {
      throw new RangeError("webgpu: the quad kernel variants need the adapter's `subgroups` feature, which this adapter lacks");
    }
    const deviceMax = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize) - BUFFER_SLACK;
    this.maxBindingBytes = Math.min(deviceMax, maxBindingBytes ?? Infinity);
    this.chunkElems = Math.max(64, Math.floor(this.maxBindingBytes / 4 / 64) * 64);
    this.maxGridDim = limits.maxComputeWorkgroupsPerDimension;
    this.uniformAlign = limits.minUniformBufferOffsetAlignment;
    const closeScope = (describe: (message: string) => Error) => this.closeScope(describe);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    this.pool = new BufferPool(device, usage, deviceMax, "qalign storage", closeScope);
    this.staging = new BufferPool(device, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, limits.maxBufferSize - BUFFER_SLACK, "qalign readback", closeScope);
    this.pipelines = new PipelineCache(device, closeScope);
    this.uniformHost = new ArrayBuffer(MAX_BATCH * 256);
    this.uniformView = new DataView(this.uniformHost);
    this.uniforms = device.createBuffer({
      label: "qalign uniforms",
      size: this.uniformHost.byteLength,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    device.addEventListener("uncapturederror", (ev) => this.fail(new Error(`webgpu: ${(ev as GPUUncapturedErrorEvent).error.message}`)));
    void device.lost.then((info) => {
      if (info.reason !== "destroyed") this.fail(new Error(`webgpu: device lost: ${info.message}`));
    });
  }

  // ---- storages ----

  zeros(dtype: DType, numel: number): Storage {
    const { storage, fresh } = this.allocate("zeros", dtype, numel, true);
    // New buffers are zero already (WebGPU zero-initializes); reused ones are cleared in order.
    storage.chunks.forEach((ch, i) => {
      if (!fresh[i]) this.commandEncoder().clearBuffer(ch.buf.buffer, 0, ch.buf.size);
    });
    return storage;
  }

  /** @throws DTypeError for Float64Array (webgpu has no f64). */
  upload(data: HostArray): Storage {
    const { storage, fresh } = this.allocate("upload", dtypeOf(data), data.length, true);
    storage.chunks.forEach((ch, i) => {
      // writeBuffer runs before unsubmitted commands: submit those first if they may use this buffer.
      if (!fresh[i]) this.flush();
      if (ch.len > 0) this.device.queue.writeBuffer(ch.buf.buffer, 0, data, ch.base, ch.len);
    });
    return storage;
  }

  /**
   * Copies elements [offset, offset + numel) to the host: submits pending work, copies each
   * chunk's part into a MAP_READ staging buffer, maps them, and throws any error Dawn reported.
   * @throws RangeError when the range is outside the storage.
   */
  async read(storage: Storage, offset = 0, numel = storage.numel - offset): Promise<HostArray> {
    const s = this.live("read", storage);
    if (offset < 0 || numel < 0 || offset + numel > s.numel) {
      throw new RangeError(`read: elements [${offset}, ${offset + numel}) are outside a storage of ${s.numel}`);
    }
    const out = hostArray(s.dtype, numel);
    const pieces: { staging: PooledBuffer; at: number; n: number }[] = [];
    for (const ch of s.chunks) {
      const lo = Math.max(offset, ch.base);
      const hi = Math.min(offset + numel, ch.base + ch.len);
      if (hi <= lo) continue;
      const staging = this.staging.acquire(bytesOf(hi - lo)).pb;
      this.commandEncoder().copyBufferToBuffer(ch.buf.buffer, bytesOf(lo - ch.base), staging.buffer, 0, bytesOf(hi - lo));
      pieces.push({ staging, at: lo - offset, n: hi - lo });
    }
    this.flush();
    try {
      await Promise.all(pieces.map((p) => p.staging.buffer.mapAsync(GPUMapMode.READ, 0, bytesOf(p.n))));
    } catch (e) {
      await this.settle(); // a recorded failure (device lost, validation) explains the failed map best
      throw new Error(`webgpu read: mapping the readback buffer failed: ${(e as Error).message}`);
    }
    for (const p of pieces) {
      const mapped = p.staging.buffer.getMappedRange(0, bytesOf(p.n));
      out.set(s.dtype === "f32" ? new Float32Array(mapped) : new Int32Array(mapped), p.at);
      p.staging.buffer.unmap();
      this.staging.release(p.staging);
    }
    await this.settle();
    return out;
  }

  /** @throws DisposedError when already freed. */
  free(storage: Storage): void {
    const s = this.live("free", storage);
    s.freed = true;
    for (const ch of s.chunks) this.pool.release(ch.buf);
  }

  fill(storage: Storage, value: number): void {
    const s = this.live("fill", storage);
    if (value === 0) {
      for (const ch of s.chunks) this.commandEncoder().clearBuffer(ch.buf.buffer, 0, ch.buf.size);
    } else {
      encodeFill(this, s, value);
    }
  }

  liveBytes(): number {
    return this.pool.inUseBytes;
  }

  /** Pool counters: bytes in use by storages, held by the pool in total, and the peak in use. */
  memoryStats(): { inUseBytes: number; allocatedBytes: number; peakBytes: number } {
    return { inUseBytes: this.pool.inUseBytes, allocatedBytes: this.pool.allocatedBytes, peakBytes: this.pool.peakBytes };
  }

  /** Starts a new peak in `memoryStats().peakBytes` from the bytes in use now. */
  resetPeakBytes(): void {
    this.pool.resetPeak();
  }

  /**
   * GPU time of the work that `record` encodes, in ms: with the adapter's `timestamp-query`
   * feature, every compute pass recorded meanwhile gets timestamps at its start and end, and the
   * result is the sum of the pass durations (copies and clears between passes are not counted).
   * Pending work is submitted first. Returns null without the feature, or when `record` opens more
   * than 2048 passes (one per MAX_BATCH dispatches or per copy); the work is then still done.
   */
  async gpuTime(record: () => void): Promise<number | null> {
    if (!this.device.features.has("timestamp-query")) {
      record();
      await this.sync();
      return null;
    }
    this.flush();
    const count = 4096;
    const set = this.device.createQuerySet({ label: "qalign timing", type: "timestamp", count });
    const resolved = this.device.createBuffer({ label: "qalign timing", size: count * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    const staging = this.device.createBuffer({ label: "qalign timing readback", size: count * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.timing = { set, used: 0, overflow: false };
    let used = 0;
    let overflow = false;
    try {
      record();
      this.flush();
    } finally {
      ({ used, overflow } = this.timing);
      this.timing = null;
    }
    let ns = 0n;
    if (used > 0) {
      // A query set keeps its values across submits: resolve them all once, after the work.
      const enc = this.device.createCommandEncoder({ label: "qalign timing" });
      enc.resolveQuerySet(set, 0, used, resolved, 0);
      enc.copyBufferToBuffer(resolved, 0, staging, 0, used * 8);
      this.device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ, 0, used * 8);
      // Pairs of (start, end) nanoseconds, one per pass.
      const t = new BigUint64Array(staging.getMappedRange(0, used * 8));
      for (let i = 0; i < used; i += 2) ns += t[i + 1]! - t[i]!;
      staging.unmap();
    }
    set.destroy();
    resolved.destroy();
    staging.destroy();
    await this.settle();
    return overflow ? null : Number(ns) / 1e6;
  }

  /** Number of distinct kernels compiled so far (each shader key compiles once). */
  compiledKernels(): number {
    return this.pipelines.size;
  }

  // ---- elementwise (chunked storages allowed) ----

  /** @throws DTypeError for i32 input to a float-only op. */
  unary(op: UnaryOp, x: View): Storage {
    const name = `unary ${op}`;
    const xo = this.operand(name, x);
    if (xo.data.dtype === "i32" && !unaryDefinedOnInt(op)) throw new DTypeError(name, "not defined on i32");
    const out = this.allocate(name, xo.data.dtype, numel(x.shape), true).storage;
    encodeUnary(this, op, xo, x.shape, out);
    return out;
  }

  /** @throws DTypeError when dtypes differ or i32 meets a float-only op; ShapeError when shapes differ. */
  binary(op: BinaryOp, a: View, b: View): Storage {
    const name = `binary ${op}`;
    const [ao, bo] = [this.operand(name, a), this.operand(name, b)];
    if (ao.data.dtype !== bo.data.dtype) throw new DTypeError(name, `dtypes differ: ${ao.data.dtype} vs ${bo.data.dtype}`);
    if (ao.data.dtype === "i32" && !binaryDefinedOnInt(op)) throw new DTypeError(name, "not defined on i32");
    assertSameShape(name, a.shape, b.shape);
    const out = this.allocate(name, ao.data.dtype, numel(a.shape), true).storage;
    encodeBinary(this, op, ao, bo, a.shape, out);
    return out;
  }

  where(cond: View, a: View, b: View): Storage {
    const [co, ao, bo] = [this.operand("where", cond), this.operand("where", a), this.operand("where", b)];
    if (ao.data.dtype !== bo.data.dtype) throw new DTypeError("where", `dtypes differ: ${ao.data.dtype} vs ${bo.data.dtype}`);
    assertSameShape("where", cond.shape, a.shape);
    assertSameShape("where", a.shape, b.shape);
    const out = this.allocate("where", ao.data.dtype, numel(a.shape), true).storage;
    encodeWhere(this, co, ao, bo, a.shape, out);
    return out;
  }

  /** When dst and src share a storage, src is copied first (a kernel cannot read and write one buffer). */
  assign(dst: View, src: View): void {
    const [d, s] = [this.operand("assign", dst), this.operand("assign", src)];
    if (d.data.dtype !== s.data.dtype) throw new DTypeError("assign", `dtypes differ: ${d.data.dtype} vs ${s.data.dtype}`);
    assertSameShape("assign", dst.shape, src.shape);
    if (d.data !== s.data) {
      encodeAssign(this, d, s, dst.shape);
      return;
    }
    const copy = this.unary("copy", src) as WebGpuStorage;
    encodeAssign(this, d, { data: copy, strides: contiguousStrides(src.shape), offset: 0 }, dst.shape);
    this.free(copy);
  }

  cast(x: View, dtype: DType): Storage {
    const xo = this.operand("cast", x);
    const out = this.allocate("cast", dtype, numel(x.shape), true).storage;
    encodeCast(this, xo, x.shape, out);
    return out;
  }

  // ---- row kernels, matmul, nn ops (one chunk only, except gather's table and matmul's B) ----

  /** @throws ShapeError for max over empty rows, as the reference. */
  reduceRows(op: ReduceOp, x: Storage, rows: number, cols: number): Storage {
    const name = `reduce ${op}`;
    if (op === "max" && cols === 0 && rows > 0) throw new ShapeError(name, "rows are empty (cols = 0)");
    const xs = this.whole(name, "x", x);
    this.need(name, "x", xs, rows * cols);
    const out = this.output(name, xs.dtype, rows);
    encodeReduceRows(this, op, xs, out, rows, cols);
    return out;
  }

  /**
   * B may be chunked (the lm_head weight) when batchStrideB is 0 or batch is 1.
   * @throws DeviceLimitError for a chunked A, a chunked batched B, or an output above one binding.
   */
  matmul(a: Storage, b: Storage, g: MatmulGeometry): Storage {
    const as = this.whole("matmul", "a", a);
    const bs = this.float("matmul", "b", b);
    this.float("matmul", "a", as);
    this.need("matmul", "a", as, matmulOperandNumel(g.batch, g.batchStrideA, g.M, g.K));
    this.need("matmul", "b", bs, matmulOperandNumel(g.batch, g.batchStrideB, g.K, g.N));
    if (bs.chunks.length > 1 && g.batch > 1 && g.batchStrideB !== 0) {
      throw new DeviceLimitError("matmul", `batched b of ${bytesOf(bs.numel)} bytes exceeds the per-binding limit of ${this.maxBindingBytes} bytes`);
    }
    const out = this.output("matmul", "f32", g.batch * g.M * g.N);
    encodeMatmul(this, as, bs, out, g);
    return out;
  }

  softmax(x: Storage, rows: number, cols: number, log: boolean): Storage {
    const xs = this.float("softmax", "x", this.whole("softmax", "x", x));
    this.need("softmax", "x", xs, rows * cols);
    const out = this.output("softmax", "f32", rows * cols);
    encodeSoftmax(this, xs, out, rows, cols, log);
    return out;
  }

  /** Targets outside [0, cols) (other than ignoreIndex) give loss 0 here; the cpu device throws. */
  crossEntropy(logits: Storage, targets: Storage, rows: number, cols: number, ignoreIndex: number): Storage {
    const op = "crossEntropy";
    const [ls, ts] = this.classification(op, logits, targets, rows, cols);
    const out = this.output(op, "f32", rows);
    encodeCrossEntropy(this, ls, ts, out, rows, cols, ignoreIndex);
    return out;
  }

  /** Targets outside [0, cols) (other than ignoreIndex) give a zero row here; the cpu device throws. */
  crossEntropyBackward(logits: Storage, targets: Storage, gradLoss: Storage, rows: number, cols: number, ignoreIndex: number): Storage {
    const op = "crossEntropyBackward";
    const [ls, ts] = this.classification(op, logits, targets, rows, cols);
    const gs = this.float(op, "gradLoss", this.whole(op, "gradLoss", gradLoss));
    this.need(op, "gradLoss", gs, rows);
    const out = this.output(op, "f32", rows * cols);
    encodeCrossEntropyBackward(this, ls, ts, gs, out, rows, cols, ignoreIndex);
    return out;
  }

  /** The table may be chunked. Ids outside [0, V) give zero rows (the cpu device throws). */
  gather(table: Storage, ids: Storage, V: number, D: number): Storage {
    const ts = this.live("gather", table);
    const is = this.ids("gather", ids);
    this.need("gather", "table", ts, V * D);
    const out = this.output("gather", ts.dtype, is.numel * D);
    encodeGather(this, ts, is, out, V, D);
    return out;
  }

  /** Ids outside [0, V) are skipped (the cpu device throws). */
  scatterAdd(grad: Storage, ids: Storage, V: number, D: number): Storage {
    const gs = this.whole("scatterAdd", "grad", grad);
    const is = this.ids("scatterAdd", ids);
    this.need("scatterAdd", "grad", gs, is.numel * D);
    const out = this.output("scatterAdd", gs.dtype, V * D);
    for (const ch of out.chunks) this.commandEncoder().clearBuffer(ch.buf.buffer, 0, ch.buf.size);
    encodeScatterAdd(this, gs, is, out, V, D);
    return out;
  }

  rmsNorm(x: Storage, weight: Storage, rows: number, D: number, eps: number): Storage {
    const xs = this.float("rmsNorm", "x", this.whole("rmsNorm", "x", x));
    const ws = this.float("rmsNorm", "weight", this.whole("rmsNorm", "weight", weight));
    this.need("rmsNorm", "x", xs, rows * D);
    this.need("rmsNorm", "weight", ws, D);
    const out = this.output("rmsNorm", "f32", rows * D);
    encodeRmsNorm(this, xs, ws, out, rows, D, eps);
    return out;
  }

  /** @throws ShapeError when Dh is odd or Bc is neither 1 nor B. */
  rope(x: Storage, cos: Storage, sin: Storage, B: number, H: number, T: number, Dh: number, Bc: number, inverse: boolean): Storage {
    if (Dh % 2 !== 0) throw new ShapeError("rope", `head dim ${Dh} is odd`);
    if (Bc !== 1 && Bc !== B) throw new ShapeError("rope", `cos/sin batch ${Bc} is neither 1 nor B = ${B}`);
    const [xs, cs, ss] = [["x", x], ["cos", cos], ["sin", sin]].map(([w, s]) =>
      this.float("rope", w as string, this.whole("rope", w as string, s as Storage)),
    ) as [WebGpuStorage, WebGpuStorage, WebGpuStorage];
    this.need("rope", "x", xs, B * H * T * Dh);
    this.need("rope", "cos", cs, (Bc * T * Dh) / 2);
    this.need("rope", "sin", ss, (Bc * T * Dh) / 2);
    const out = this.output("rope", "f32", B * H * T * Dh);
    encodeRope(this, xs, cs, ss, out, { B, H, T, Dh, Bc, inverse });
    return out;
  }

  /** keyMask may be f32 or i32 (nonzero = keep). @throws DeviceLimitError for Dh > 256. */
  attention(q: Storage, k: Storage, v: Storage, keyMask: Storage | null, g: AttentionGeometry): { out: Storage; lse: Storage } {
    const op = "attention";
    const { qs, ks, vs, ms } = this.attentionInputs(op, q, k, v, keyMask, g);
    const out = this.output(op, "f32", g.B * g.H * g.Tq * g.Dh);
    const lse = this.output(op, "f32", g.B * g.H * g.Tq);
    encodeAttention(this, qs, ks, vs, ms, out, lse, g);
    return { out, lse };
  }

  attentionBackward(
    q: Storage,
    k: Storage,
    v: Storage,
    keyMask: Storage | null,
    out: Storage,
    dOut: Storage,
    lse: Storage,
    g: AttentionGeometry,
  ): { dq: Storage; dk: Storage; dv: Storage } {
    const op = "attentionBackward";
    const { qs, ks, vs, ms } = this.attentionInputs(op, q, k, v, keyMask, g);
    const [os, dos, ls] = [["out", out], ["dOut", dOut], ["lse", lse]].map(([w, s]) =>
      this.float(op, w as string, this.whole(op, w as string, s as Storage)),
    ) as [WebGpuStorage, WebGpuStorage, WebGpuStorage];
    this.need(op, "out", os, g.B * g.H * g.Tq * g.Dh);
    this.need(op, "dOut", dos, g.B * g.H * g.Tq * g.Dh);
    this.need(op, "lse", ls, g.B * g.H * g.Tq);
    const dq = this.output(op, "f32", g.B * g.H * g.Tq * g.Dh);
    const dk = this.output(op, "f32", g.B * g.Hkv * g.Tk * g.Dh);
    const dv = this.output(op, "f32", g.B * g.Hkv * g.Tk * g.Dh);
    encodeAttentionBackward(this, { q: qs, k: ks, v: vs, keyMask: ms, out: os, dOut: dos, lse: ls }, { dq, dk, dv }, g);
    return { dq, dk, dv };
  }

  adamw(param: Storage, grad: Storage, m: Storage, v: Storage, h: AdamWStep): void {
    const [ps, gs, ms, vs] = [["param", param], ["grad", grad], ["m", m], ["v", v]].map(([w, s]) =>
      this.float("adamw", w as string, this.whole("adamw", w as string, s as Storage)),
    ) as [WebGpuStorage, WebGpuStorage, WebGpuStorage, WebGpuStorage];
    for (const [w, s] of [["grad", gs], ["m", ms], ["v", vs]] as const) this.need("adamw", w, s, ps.numel);
    encodeAdamW(this, ps, gs, ms, vs, h);
  }

  /** Submits pending work, waits for the GPU, and throws any error Dawn reported. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    await this.settle();
  }

  /** Waits for pending work and destroys the device; the backend is unusable afterwards. */
  async destroy(): Promise<void> {
    await this.sync();
    this.device.destroy();
  }

  // ---- KernelHost ----

  dispatch(k: Kernel, params: ParamValues, buffers: readonly PooledBuffer[], grid: number | readonly [number, number, number]): void {
    const [x, y, z] = typeof grid === "number" ? this.grid2d(k.key, grid) : grid;
    if (x === 0 || y === 0 || z === 0) return;
    if (buffers.length !== k.buffers.length) throw new Error(`${k.key}: ${buffers.length} buffers bound, ${k.buffers.length} declared`);
    const slot = Math.ceil(k.paramBytes / this.uniformAlign) * this.uniformAlign;
    if (this.uniformUsed + slot > this.uniformHost.byteLength || this.batchDispatches >= MAX_BATCH) this.flush();
    const pass = this.computePass();
    const compiled = this.pipelines.get(k);
    const at = this.uniformUsed;
    packParams(k, params, this.uniformView, at);
    this.uniformUsed += slot;
    const bindGroup = this.device.createBindGroup({
      label: k.key,
      layout: compiled.layout,
      entries: [
        { binding: 0, resource: { buffer: this.uniforms, offset: at, size: k.paramBytes } },
        ...buffers.map((b, i) => ({ binding: i + 1, resource: { buffer: b.buffer } })),
      ],
    });
    pass.setPipeline(compiled.pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(x, y, z);
    this.batchKernels.add(k.key);
    this.batchDispatches++;
  }

  copy(src: PooledBuffer, srcByte: number, dst: PooledBuffer, dstByte: number, bytes: number): void {
    this.commandEncoder().copyBufferToBuffer(src.buffer, srcByte, dst.buffer, dstByte, bytes);
  }

  temp(bytes: number): PooledBuffer {
    return this.pool.acquire(Math.max(bytes, 4)).pb;
  }

  releaseTemp(b: PooledBuffer): void {
    this.pool.release(b);
  }

  // ---- internals ----

  /** A workgroup count as a 2-D grid within maxGridDim per dimension. */
  private grid2d(key: string, n: number): [number, number, number] {
    if (n <= this.maxGridDim) return [n, 1, 1];
    const y = Math.ceil(n / this.maxGridDim);
    if (y > this.maxGridDim) throw new DeviceLimitError(key, `${n} workgroups exceed a ${this.maxGridDim}^2 grid`);
    return [this.maxGridDim, y, 1];
  }

  /** The open command encoder (starting a batch and its error scope if needed), outside any pass. */
  private commandEncoder(): GPUCommandEncoder {
    if (!this.encoder) {
      this.device.pushErrorScope("validation");
      this.encoder = this.device.createCommandEncoder({ label: "qalign batch" });
    }
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    return this.encoder;
  }

  private computePass(): GPUComputePassEncoder {
    if (this.pass) return this.pass;
    const t = this.timing;
    const room = t !== null && t.used + 2 <= t.set.count;
    if (t && !room) t.overflow = true;
    this.pass = this.commandEncoder().beginComputePass({
      label: "qalign kernels",
      ...(t && room ? { timestampWrites: { querySet: t.set, beginningOfPassWriteIndex: t.used, endOfPassWriteIndex: t.used + 1 } } : {}),
    });
    if (t && room) t.used += 2;
    return this.pass;
  }

  /** Submits the batch: its uniforms first (queue order), then its commands; closes its error scope. */
  private flush(): void {
    if (!this.encoder) return;
    if (this.pass) this.pass.end();
    if (this.uniformUsed > 0) this.device.queue.writeBuffer(this.uniforms, 0, this.uniformHost, 0, this.uniformUsed);
    this.device.queue.submit([this.encoder.finish()]);
    const kernels = [...this.batchKernels].join(", ") || "copies only";
    this.closeScope((message) => new Error(`webgpu: ${message} [in a batch running: ${kernels}]`));
    this.encoder = null;
    this.pass = null;
    this.uniformUsed = 0;
    this.batchKernels = new Set();
    this.batchDispatches = 0;
  }

  /**
   * Pops the innermost Dawn error scope; an error it caught becomes `describe(message)`, thrown
   * by the next `settle`. The pop is asynchronous, so `settle` waits for every pending one.
   */
  private closeScope(describe: (message: string) => Error): void {
    const scope = this.device.popErrorScope().then((e) => {
      if (e) this.fail(describe(e.message));
    });
    this.pendingScopes.add(scope);
    void scope.finally(() => this.pendingScopes.delete(scope));
  }

  /** Records the first asynchronous failure; `settle` throws it. */
  private fail(e: Error): void {
    this.failure ??= e;
  }

  /** Waits for the error scopes of submitted batches, then throws (once) the first failure. */
  private async settle(): Promise<void> {
    await Promise.all(this.pendingScopes);
    const e = this.failure;
    if (e) {
      this.failure = null;
      throw e;
    }
  }

  /**
   * A new storage of `numel` elements. Above the binding limit it is split into chunks when the
   * op accepts them (`chunkable`). `fresh[i]` says chunk i is a new (zeroed) buffer.
   */
  private allocate(op: string, dtype: DType, n: number, chunkable: boolean): { storage: WebGpuStorage; fresh: boolean[] } {
    if (dtype === "f64") throw new DTypeError(op, "webgpu has no f64 (use the cpu device for float64)");
    if (!Number.isInteger(n) || n < 0) throw new ShapeError(op, `invalid element count ${n}`);
    if (n > MAX_ELEMENTS) {
      throw new DeviceLimitError(op, `${bytesOf(n)} bytes (${n} elements) exceed what one webgpu storage can hold (${MAX_ELEMENTS} elements, 32-bit indices)`);
    }
    if (!chunkable && bytesOf(n) > this.maxBindingBytes) {
      throw new DeviceLimitError(op, `output of ${bytesOf(n)} bytes exceeds the per-binding limit of ${this.maxBindingBytes} bytes`);
    }
    const chunks: Chunk[] = [];
    const fresh: boolean[] = [];
    for (let base = 0; base < n || chunks.length === 0; base += this.chunkElems) {
      const len = Math.min(this.chunkElems, n - base);
      const got = this.pool.acquire(bytesOf(Math.max(len, 1)));
      chunks.push({ buf: got.pb, base, len });
      fresh.push(got.fresh);
    }
    return { storage: new WebGpuStorage(dtype, n, chunks, this), fresh };
  }

  /** An output that must fit one binding. */
  private output(op: string, dtype: DType, n: number): WebGpuStorage {
    return this.allocate(op, dtype, n, false).storage;
  }

  /** `s` as a live storage of this backend. @throws DisposedError when freed. */
  private live(op: string, s: Storage): WebGpuStorage {
    if (!(s instanceof WebGpuStorage) || s.owner !== this) throw new TypeError(`${op}: storage does not belong to this webgpu backend`);
    if (s.freed) throw new DisposedError(op);
    return s;
  }

  /** A live storage in one chunk. @throws DeviceLimitError naming the op, the size and the limit otherwise. */
  private whole(op: string, what: string, s: Storage): WebGpuStorage {
    const w = this.live(op, s);
    if (w.chunks.length > 1) {
      throw new DeviceLimitError(op, `${what} of ${bytesOf(w.numel)} bytes exceeds the per-binding limit of ${this.maxBindingBytes} bytes`);
    }
    return w;
  }

  private float(op: string, what: string, s: Storage): WebGpuStorage {
    const w = this.live(op, s);
    if (w.dtype !== "f32") throw new DTypeError(op, `${what} must be f32, got ${w.dtype}`);
    return w;
  }

  private ids(op: string, s: Storage): WebGpuStorage {
    const w = this.whole(op, "ids", s);
    if (w.dtype !== "i32") throw new DTypeError(op, `ids must be i32, got ${w.dtype}`);
    return w;
  }

  private need(op: string, what: string, s: Storage, n: number): void {
    if (s.numel < n) throw new ShapeError(op, `${what} has ${s.numel} elements, needs ${n}`);
  }

  private classification(op: string, logits: Storage, targets: Storage, rows: number, cols: number): [WebGpuStorage, WebGpuStorage] {
    const ls = this.float(op, "logits", this.whole(op, "logits", logits));
    const ts = this.whole(op, "targets", targets);
    if (ts.dtype !== "i32") throw new DTypeError(op, `targets must be i32, got ${ts.dtype}`);
    this.need(op, "logits", ls, rows * cols);
    this.need(op, "targets", ts, rows);
    return [ls, ts];
  }

  private attentionInputs(op: string, q: Storage, k: Storage, v: Storage, keyMask: Storage | null, g: AttentionGeometry) {
    const n = attentionSizes(op, g);
    if (g.Dh > ATTENTION_MAX_DH) throw new DeviceLimitError(op, `head dim ${g.Dh} > ${ATTENTION_MAX_DH}, the kernel's largest`);
    const [qs, ks, vs] = [["q", q], ["k", k], ["v", v]].map(([w, s]) =>
      this.float(op, w as string, this.whole(op, w as string, s as Storage)),
    ) as [WebGpuStorage, WebGpuStorage, WebGpuStorage];
    this.need(op, "q", qs, n.q);
    this.need(op, "k", ks, n.kv);
    this.need(op, "v", vs, n.kv);
    const ms = keyMask === null ? null : this.whole(op, "keyMask", keyMask);
    if (ms) this.need(op, "keyMask", ms, n.keyMask);
    return { qs, ks, vs, ms };
  }

  /**
   * A view as a kernel operand, after checking that every element it addresses lies inside its
   * storage (the extreme positions take each axis at 0 or at its end).
   * @throws ShapeError naming the op, the view and the storage size otherwise.
   */
  private operand(op: string, v: View): StridedOperand {
    const data = this.live(op, v.storage);
    assertViewInBounds(op, v, data.numel);
    return { data, strides: v.strides, offset: v.offset };
  }
}
