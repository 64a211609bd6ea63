import type { Storage } from "../../tensor/backend.ts";
import type { DType, HostArray } from "../../tensor/dtype.ts";
import { dtypeOf, hostArray } from "../../tensor/dtype.ts";
import { DTypeError, DeviceLimitError, DisposedError, ShapeError } from "../../tensor/errors.ts";
import type { PooledBuffer } from "./pool.ts";
import { BufferPool } from "./pool.ts";
import type { Chunk, GpuData } from "./program.ts";
import type { CommandQueue } from "./queue.ts";
import type { ErrorScopes } from "./scopes.ts";

/** Kernels index elements with 32-bit integers, so one storage holds at most 2^31 - 1 of them. */
const MAX_ELEMENTS = 2 ** 31 - 1;
/**
 * Bytes kept below the adapter's buffer limits: SwiftShader advertises maxBufferSize = 1 GiB but
 * fails to allocate a buffer of exactly 1 GiB (VK_ERROR_OUT_OF_DEVICE_MEMORY: the driver's
 * allocation limit is 1 GiB and the buffer needs a little more), while 1 GiB - 256 works.
 */
const BUFFER_SLACK = 256;

/** Bytes of `n` elements: every webgpu dtype (f32, i32) is 4 bytes. */
export const bytesOf = (n: number): number => n * 4;

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
    /** The storage space that owns the buffers. */
    readonly owner: StorageSpace,
  ) {}
}

/**
 * The webgpu device's memory: storages made of pooled buffers, split into chunks above the
 * per-binding limit, their upload and readback, and the checks that a storage handed to an op
 * is live, belongs here, fits one binding and has the dtype the kernel reads.
 *
 * Hazard: a freed buffer returns to the pool at once and may be handed out while unsubmitted
 * commands still read it. Recorded commands (dispatch, copy, clear) stay in order, but
 * `queue.writeBuffer` runs before every unsubmitted command, so `upload` submits pending work
 * before writing into a reused buffer.
 */
export class StorageSpace {
  /** Largest storage in bytes that one kernel binding may address. */
  readonly maxBindingBytes: number;
  /** Elements per chunk of a chunked storage. */
  private readonly chunkElems: number;
  private readonly pool: BufferPool;
  private readonly staging: BufferPool;

  /**
   * @param maxBindingBytes a lower per-binding limit than the adapter's (tests of chunked storages)
   */
  constructor(
    private readonly device: GPUDevice,
    private readonly queue: CommandQueue,
    private readonly scopes: ErrorScopes,
    maxBindingBytes: number | undefined,
  ) {
    const limits = device.limits;
    const deviceMax = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize) - BUFFER_SLACK;
    this.maxBindingBytes = Math.min(deviceMax, maxBindingBytes ?? Infinity);
    this.chunkElems = Math.max(64, Math.floor(this.maxBindingBytes / 4 / 64) * 64);
    const closeScope = (describe: (message: string) => Error) => scopes.close(describe);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    this.pool = new BufferPool(device, usage, deviceMax, "qalign storage", closeScope);
    this.staging = new BufferPool(device, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, limits.maxBufferSize - BUFFER_SLACK, "qalign readback", closeScope);
  }

  /** The buffer pool of storages (counters: in use, allocated, peak). */
  get buffers(): BufferPool {
    return this.pool;
  }

  /**
   * A new storage of `n` elements. Above the binding limit it is split into chunks when the op
   * accepts them (`chunkable`). `fresh[i]` says chunk i is a new (zeroed) buffer.
   * @throws DTypeError for f64; ShapeError for a bad count; DeviceLimitError above 2^31 - 1
   *   elements, or above one binding when not chunkable
   */
  allocate(op: string, dtype: DType, n: number, chunkable: boolean): { storage: WebGpuStorage; fresh: boolean[] } {
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

  /** An output that may be chunked (the elementwise kernels). */
  chunked(op: string, dtype: DType, n: number): WebGpuStorage {
    return this.allocate(op, dtype, n, true).storage;
  }

  /** An output that must fit one binding. */
  output(op: string, dtype: DType, n: number): WebGpuStorage {
    return this.allocate(op, dtype, n, false).storage;
  }

  /** A zero-filled storage: new buffers are zero already (WebGPU zero-initializes); reused ones are cleared in order. */
  zeros(dtype: DType, n: number): WebGpuStorage {
    const { storage, fresh } = this.allocate("zeros", dtype, n, true);
    storage.chunks.forEach((ch, i) => {
      if (!fresh[i]) this.queue.clear(ch.buf);
    });
    return storage;
  }

  /** @throws DTypeError for Float64Array (webgpu has no f64). */
  upload(data: HostArray): WebGpuStorage {
    const { storage, fresh } = this.allocate("upload", dtypeOf(data), data.length, true);
    storage.chunks.forEach((ch, i) => {
      // writeBuffer runs before unsubmitted commands: submit those first if they may use this buffer.
      if (!fresh[i]) this.queue.flush();
      if (ch.len > 0) this.device.queue.writeBuffer(ch.buf.buffer, 0, data, ch.base, ch.len);
    });
    return storage;
  }

  /**
   * Copies elements [offset, offset + numel) to the host: submits pending work, copies each
   * chunk's part into a MAP_READ staging buffer, maps them, and throws any error Dawn reported.
   * @throws RangeError when the range is outside the storage.
   */
  async read(storage: Storage, offset: number, numel: number): Promise<HostArray> {
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
      this.queue.copy(ch.buf.buffer, bytesOf(lo - ch.base), staging.buffer, 0, bytesOf(hi - lo));
      pieces.push({ staging, at: lo - offset, n: hi - lo });
    }
    this.queue.flush();
    try {
      await Promise.all(pieces.map((p) => p.staging.buffer.mapAsync(GPUMapMode.READ, 0, bytesOf(p.n))));
    } catch (e) {
      await this.scopes.settle(); // a recorded failure (device lost, validation) explains the failed map best
      throw new Error(`webgpu read: mapping the readback buffer failed: ${(e as Error).message}`);
    }
    for (const p of pieces) {
      const mapped = p.staging.buffer.getMappedRange(0, bytesOf(p.n));
      out.set(s.dtype === "f32" ? new Float32Array(mapped) : new Int32Array(mapped), p.at);
      p.staging.buffer.unmap();
      this.staging.release(p.staging);
    }
    await this.scopes.settle();
    return out;
  }

  /** @throws DisposedError when already freed. */
  free(storage: Storage): void {
    const s = this.live("free", storage);
    s.freed = true;
    for (const ch of s.chunks) this.pool.release(ch.buf);
  }

  /** `s` as a live storage of this space. @throws TypeError for another device's; DisposedError when freed. */
  live(op: string, s: Storage): WebGpuStorage {
    if (!(s instanceof WebGpuStorage) || s.owner !== this) throw new TypeError(`${op}: storage does not belong to this webgpu backend`);
    if (s.freed) throw new DisposedError(op);
    return s;
  }

  /** A live storage in one chunk. @throws DeviceLimitError naming the op, the size and the limit otherwise. */
  whole(op: string, what: string, s: Storage): WebGpuStorage {
    const w = this.live(op, s);
    if (w.chunks.length > 1) {
      throw new DeviceLimitError(op, `${what} of ${bytesOf(w.numel)} bytes exceeds the per-binding limit of ${this.maxBindingBytes} bytes`);
    }
    return w;
  }

  /** A live f32 storage. @throws DTypeError naming the op and operand otherwise. */
  float(op: string, what: string, s: Storage): WebGpuStorage {
    const w = this.live(op, s);
    if (w.dtype !== "f32") throw new DTypeError(op, `${what} must be f32, got ${w.dtype}`);
    return w;
  }

  /** A live f32 storage in one chunk (what every row and nn kernel reads). */
  wholeFloat(op: string, what: string, s: Storage): WebGpuStorage {
    return this.float(op, what, this.whole(op, what, s));
  }

  /** A live i32 storage in one chunk (ids, targets). @throws DTypeError naming the op and operand otherwise. */
  wholeInt(op: string, what: string, s: Storage): WebGpuStorage {
    const w = this.whole(op, what, s);
    if (w.dtype !== "i32") throw new DTypeError(op, `${what} must be i32, got ${w.dtype}`);
    return w;
  }
}
