import { DeviceLimitError } from "../../tensor/errors.ts";

/** A pooled buffer. */
export interface PooledBuffer {
  readonly buffer: GPUBuffer;
  /** Bytes (the size class, >= the request). */
  readonly size: number;
}

/** The size class of a request of `bytes`: the next 1/8 step between powers of two, capped at `max`. */
function sizeClass(bytes: number, max: number): number {
  if (bytes <= 256) return 256;
  const p = 2 ** Math.floor(Math.log2(bytes));
  const step = p / 8;
  return Math.min(Math.ceil(bytes / step) * step, max);
}

/**
 * A pool of GPUBuffers of one usage, keyed by size class. Training and decoding allocate the
 * same shapes every step, so after the first step every allocation is a map lookup instead of
 * a `createBuffer` (which zero-fills and, on Dawn, may allocate device memory).
 *
 * Size classes are 1/8 steps between powers of two (at most 12.5% waste), at least 256 bytes.
 * Counters: `inUseBytes` (handed out and not yet released), `allocatedBytes` (every buffer the
 * pool created and still holds, free or not), `peakBytes` (the highest `inUseBytes` seen).
 */
export class BufferPool {
  private readonly free = new Map<number, PooledBuffer[]>();
  private inUse = 0;
  private allocated = 0;
  private peak = 0;

  /**
   * @param device the device that owns the buffers
   * @param usage GPUBufferUsage flags of every buffer of this pool
   * @param maxBytes largest buffer the device accepts (maxBufferSize)
   * @param label buffer label prefix, shown in Dawn's messages
   * @param closeScope pops the error scope opened around createBuffer, describing an error it caught
   */
  constructor(
    private readonly device: GPUDevice,
    private readonly usage: GPUBufferUsageFlags,
    private readonly maxBytes: number,
    private readonly label: string,
    private readonly closeScope: (describe: (message: string) => Error) => void,
  ) {}

  /**
   * A buffer of at least `bytes` bytes (`bytes` <= maxBytes). `fresh` is true when it was just
   * created, so its contents are zero (WebGPU zero-initializes new buffers); reused buffers hold
   * stale data.
   */
  acquire(bytes: number): { pb: PooledBuffer; fresh: boolean } {
    const size = sizeClass(bytes, this.maxBytes);
    const list = this.free.get(size);
    const reused = list?.pop();
    this.inUse += size;
    this.peak = Math.max(this.peak, this.inUse);
    if (reused) return { pb: reused, fresh: false };
    this.device.pushErrorScope("out-of-memory");
    const buffer = this.device.createBuffer({ size, usage: this.usage, label: `${this.label}[${size}]` });
    this.closeScope((m) => new DeviceLimitError("allocate", `a buffer of ${size} bytes does not fit in device memory: ${m}`));
    this.allocated += size;
    return { pb: { buffer, size }, fresh: true };
  }

  /** Returns a buffer to the pool; it may be handed out again by the next `acquire`. */
  release(pb: PooledBuffer): void {
    this.inUse -= pb.size;
    let list = this.free.get(pb.size);
    if (!list) {
      list = [];
      this.free.set(pb.size, list);
    }
    list.push(pb);
  }

  /** Bytes handed out and not yet released. */
  get inUseBytes(): number {
    return this.inUse;
  }
  /** Bytes of every buffer this pool created and still holds (in use or free). */
  get allocatedBytes(): number {
    return this.allocated;
  }
  /** Highest `inUseBytes` since creation or the last `resetPeak`. */
  get peakBytes(): number {
    return this.peak;
  }

  /** Starts a new peak measurement from the bytes in use now. */
  resetPeak(): void {
    this.peak = this.inUse;
  }
}
