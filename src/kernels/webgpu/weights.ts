import { DeviceLimitError, DisposedError } from "../../tensor/errors.ts";
import type { HostWeight, PackedDType, WeightStorage } from "../../tensor/weight.ts";
import { decodeWeight } from "../weights.ts";
import type { GpuWeight } from "../weights.wgsl.ts";
import type { PooledBuffer } from "./pool.ts";
import type { CommandQueue } from "./queue.ts";
import type { ErrorScopes } from "./scopes.ts";
import { WebGpuStorage, type StorageSpace } from "./storage.ts";

/**
 * A packed weight (src/tensor/weight.ts) in GPUBuffers of exactly its size, rounded up to whole
 * words: the packed words, and NF4's f32 absmax. Not pooled: a weight lives as long as its
 * model, and the pool's size classes would waste up to 1/8 of it.
 */
export class WebGpuWeight implements WeightStorage, GpuWeight {
  freed = false;
  readonly bytes: number;

  constructor(
    readonly dtype: PackedDType,
    readonly rows: number,
    readonly cols: number,
    readonly data: PooledBuffer,
    readonly absmax: PooledBuffer | null,
    /** The weight space that owns the buffers. */
    readonly owner: WeightSpace,
  ) {
    this.bytes = data.size + (absmax?.size ?? 0);
  }
}

/** The webgpu device's packed weights: upload, readback (decoded on the host), release, and their byte count. */
export class WeightSpace {
  /** Bytes held by live weights. */
  liveBytes = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly queue: CommandQueue,
    private readonly scopes: ErrorScopes,
    private readonly space: StorageSpace,
  ) {}

  /** @throws DeviceLimitError when a part exceeds the per-binding limit (now) or the device's memory (at the next sync). */
  upload(w: HostWeight, rows: number, cols: number): WebGpuWeight {
    const parts = w.dtype === "nf4" ? [w.packed, w.absmax] : [w.bits];
    const [data, absmax] = parts.map((a) => this.buffer(a, `a ${w.dtype} weight [${rows},${cols}]`));
    const s = new WebGpuWeight(w.dtype, rows, cols, data!, absmax ?? null, this);
    this.liveBytes += s.bytes;
    return s;
  }

  /** The stored words read back (through the storage space's readback) and decoded on the host. */
  async read(w: WeightStorage): Promise<Float32Array> {
    const s = this.live("readWeight", w);
    const words = async (pb: PooledBuffer): Promise<ArrayBuffer> => {
      const n = pb.size / 4;
      const raw = new WebGpuStorage("i32", n, [{ buf: pb, base: 0, len: n }], this.space);
      return (await this.space.read(raw, 0, n)).buffer as ArrayBuffer;
    };
    const n = s.rows * s.cols;
    const host: HostWeight =
      s.dtype === "nf4"
        ? { dtype: "nf4", packed: new Uint8Array(await words(s.data), 0, n / 2), absmax: new Float32Array(await words(s.absmax!), 0, Math.ceil(n / 64)) }
        : { dtype: s.dtype, bits: new Uint16Array(await words(s.data), 0, n) };
    return decodeWeight(host, s.rows, s.cols);
  }

  /** Destroys the buffers once the work recorded so far, which may still read them, is done. */
  free(w: WeightStorage): void {
    const s = this.live("freeWeight", w);
    s.freed = true;
    this.liveBytes -= s.bytes;
    this.queue.flush();
    const bufs = [s.data.buffer, s.absmax?.buffer];
    void this.device.queue.onSubmittedWorkDone().then(() => bufs.forEach((b) => b?.destroy()));
  }

  /** `w` as a live weight of this space. @throws TypeError for another device's; DisposedError when freed. */
  live(op: string, w: WeightStorage): WebGpuWeight {
    if (!(w instanceof WebGpuWeight) || w.owner !== this) throw new TypeError(`${op}: weight does not belong to this webgpu backend`);
    if (w.freed) throw new DisposedError(op);
    return w;
  }

  /** One part of a weight in a new buffer (fresh, so writeBuffer cannot overtake a reader). */
  private buffer(a: Uint8Array | Uint16Array | Float32Array, what: string): PooledBuffer {
    const size = Math.max(4, Math.ceil(a.byteLength / 4) * 4);
    if (size > this.space.maxBindingBytes) {
      throw new DeviceLimitError("uploadWeight", `${what} needs ${size} bytes in one binding, above the limit of ${this.space.maxBindingBytes} bytes`);
    }
    this.device.pushErrorScope("out-of-memory");
    const buffer = this.device.createBuffer({ label: `qalign ${what}`, size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    const live = this.liveBytes + this.space.buffers.inUseBytes;
    this.scopes.close((m) => new DeviceLimitError("uploadWeight", `allocating ${size} bytes for ${what} failed with ${live} bytes already allocated: ${m}`));
    const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    const whole = bytes.byteLength - (bytes.byteLength % 4);
    if (whole > 0) this.device.queue.writeBuffer(buffer, 0, bytes, 0, whole);
    if (whole < bytes.byteLength) {
      const tail = new Uint8Array(4);
      tail.set(bytes.subarray(whole));
      this.device.queue.writeBuffer(buffer, whole, tail);
    }
    return { buffer, size };
  }
}
