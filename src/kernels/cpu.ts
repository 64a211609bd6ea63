import type { Backend, BinaryOp, DeviceOp, Storage, UnaryOp, View } from "../tensor/backend.ts";
import type { DType, HostArray } from "../tensor/dtype.ts";
import { dtypeOf, hostArray } from "../tensor/dtype.ts";
import { numel } from "../tensor/shape.ts";
import type { HostWeight, WeightStorage } from "../tensor/weight.ts";
import { assignRef, binaryRef, castRef, unaryRef, whereRef } from "./elementwise.ts";
import "./families.ts";
import { CpuStorage, CpuWeightStorage, hostData, hostView, weightData } from "./host.ts";
import { runKernel } from "./registry.ts";
import { decodeWeight } from "./weights.ts";

export { CpuStorage, CpuWeightStorage } from "./host.ts";

/**
 * The `cpu` device: every kernel is its plain TypeScript reference from this folder, computed
 * in JS doubles and stored in the storage's typed array. It holds f32, f64 and i32; f64 exists
 * so that gradients can be checked by finite differences. This file holds the storages, the
 * elementwise kernels of the pointwise table and packed-weight storage; each fused op's cpu
 * kernel (dtype and size checks, then the reference) is registered beside its reference, in
 * src/kernels/<op>.ts, and `run` finds it (src/kernels/registry.ts).
 */

/**
 * The elementwise kernels a host-memory backend runs. The cpu device uses the references; the
 * wasm device (src/kernels/wasm) replaces them with WebAssembly kernels over its shared memory
 * where they apply. (Fused ops choose their kernel by device name instead: `kernelNames`.)
 */
export interface HostKernels {
  unary: typeof unaryRef;
  binary: typeof binaryRef;
  assign: typeof assignRef;
  cast: typeof castRef;
}

/**
 * The reference backend. `maxBindingBytes` is Infinity: host arrays have no binding limit.
 * Subclasses keep its argument checks and change where storages live (`allocate`, `release`)
 * and which kernels run (`kernels`, `kernelNames`).
 */
export class CpuBackend implements Backend {
  readonly name: Backend["name"] = "cpu";
  readonly maxBindingBytes: number = Infinity;
  readonly maxMemoryBytes: number = Infinity;
  protected readonly kernels: HostKernels = { unary: unaryRef, binary: binaryRef, assign: assignRef, cast: castRef };
  /** The device names whose registered kernels run the fused ops here, first found first. */
  protected readonly kernelNames: readonly ("cpu" | "wasm")[] = ["cpu"];
  private bytes = 0;

  /** Takes ownership of a host array (from `allocate`) as a new storage, counting its bytes as live. For kernels. */
  wrap(data: HostArray): CpuStorage {
    this.bytes += data.byteLength;
    return new CpuStorage(data);
  }

  /** A zero-filled host array in this device's memory for a new storage (kernels' outputs). */
  allocate(dtype: DType, numel: number): HostArray {
    return hostArray(dtype, numel);
  }

  /** Gives an array from `allocate` back (the garbage collector does it for plain arrays). */
  release(_data: HostArray): void {}

  zeros(dtype: DType, numel: number): Storage {
    return this.wrap(this.allocate(dtype, numel));
  }

  upload(data: HostArray): Storage {
    const out = this.allocate(dtypeOf(data), data.length);
    out.set(data);
    return this.wrap(out);
  }

  /** @throws RangeError when [offset, offset + numel) is not inside the storage. */
  async read(storage: Storage, offset = 0, numel = storage.numel - offset): Promise<HostArray> {
    const data = hostData("read", storage);
    if (offset < 0 || numel < 0 || offset + numel > data.length) {
      throw new RangeError(`read: elements [${offset}, ${offset + numel}) are outside a storage of ${data.length}`);
    }
    return data.slice(offset, offset + numel);
  }

  /** @throws DisposedError when the storage was already freed. */
  peek(storage: Storage): HostArray {
    return hostData("peek", storage);
  }

  /** @throws DisposedError when the storage was already freed. */
  free(storage: Storage): void {
    const data = hostData("free", storage);
    this.bytes -= data.byteLength;
    const s = storage as CpuStorage;
    s.freed = true;
    this.release(s.data);
    s.data = hostArray(s.dtype, 0);
  }

  fill(storage: Storage, value: number): void {
    hostData("fill", storage).fill(value);
  }

  unary(op: UnaryOp, x: View): Storage {
    const out = this.allocate(x.storage.dtype, numel(x.shape));
    this.kernels.unary(op, hostView(`unary ${op}`, x), out);
    return this.wrap(out);
  }

  binary(op: BinaryOp, a: View, b: View): Storage {
    const name = `binary ${op}`;
    const out = this.allocate(a.storage.dtype, numel(a.shape));
    this.kernels.binary(op, hostView(name, a), hostView(name, b), out);
    return this.wrap(out);
  }

  where(cond: View, a: View, b: View): Storage {
    const out = this.allocate(a.storage.dtype, numel(a.shape));
    whereRef(hostView("where", cond), hostView("where", a), hostView("where", b), out);
    return this.wrap(out);
  }

  assign(dst: View, src: View): void {
    this.kernels.assign(hostView("assign", dst), hostView("assign", src));
  }

  cast(x: View, dtype: DType): Storage {
    const out = this.allocate(dtype, numel(x.shape));
    this.kernels.cast(hostView("cast", x), out);
    return this.wrap(out);
  }

  /** A fused op on the kernel registered for the first of `kernelNames` that has one. */
  run<Args extends readonly unknown[], Out>(op: DeviceOp<Args, Out>, ...args: Args): Out {
    return runKernel(op, this, this.kernelNames, args);
  }

  /** Keeps the host weight itself (no copy): the loader hands over arrays it made for the purpose. */
  uploadWeight(w: HostWeight, rows: number, cols: number): WeightStorage {
    const s = new CpuWeightStorage(w, rows, cols);
    this.bytes += s.bytes;
    return s;
  }

  async readWeight(w: WeightStorage): Promise<Float32Array> {
    const s = weightData("readWeight", w);
    return decodeWeight(s.data, s.rows, s.cols);
  }

  freeWeight(w: WeightStorage): void {
    const s = weightData("freeWeight", w);
    this.bytes -= s.bytes;
    s.freed = true;
    s.data = { dtype: "f16", bits: new Uint16Array(0) };
  }

  async sync(): Promise<void> {}

  liveBytes(): number {
    return this.bytes;
  }
}
