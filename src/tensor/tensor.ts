import { backward as runBackward, releaseNode, type GradNode } from "./autograd.ts";
import type { Backend, Storage, View } from "./backend.ts";
import type { DType, HostArray } from "./dtype.ts";
import { DisposedError } from "./errors.ts";
import { contiguousStrides, isContiguous, numel } from "./shape.ts";
import { track, type Disposable } from "./scope.ts";
import * as pw from "./ops/pointwise.ts";
import { BINARY_OPS, UNARY_OPS, unaryDef, type BinaryOp, type UnaryMethod } from "./ops/pointwise_table.ts";
import * as red from "./ops/reduce.ts";
import * as vw from "./ops/views.ts";
import * as mm from "./ops/matmul.ts";
import * as sm from "./ops/softmax.ts";
import { fullLike } from "./ops/create.ts";

/**
 * An n-dimensional array on a device: a view (shape, strides, offset, in elements) of a
 * reference-counted `Storage`, in the manner of candle's storage + layout. Views (reshape,
 * permute, slice, expand) share the storage and copy nothing; `dispose()` releases this view,
 * and the storage is freed when its last view goes. Ops record an autograd node when an input
 * requires grad (see autograd.ts). Values stay on the device until `await data()`.
 */
export class Tensor implements Disposable, View {
  readonly backend: Backend;
  readonly storage: Storage;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
  /** Whether gradients flow to this tensor. Set it on parameters (leaves). */
  requiresGrad = false;
  /** Accumulated d loss / d this, for leaves, after `backward()`. */
  grad: Tensor | null = null;
  /** The op that produced this tensor, while the graph is alive. */
  node: GradNode | null = null;
  /** Set once backward() has consumed and released this tensor's node. */
  graphReleased = false;
  disposed = false;

  constructor(backend: Backend, storage: Storage, shape: readonly number[], strides?: readonly number[], offset = 0) {
    this.backend = backend;
    this.storage = storage;
    this.shape = shape;
    this.strides = strides ?? contiguousStrides(shape);
    this.offset = offset;
    storage.refs++;
    track(this);
  }

  /** A new tensor that owns a fresh contiguous storage (refs 0 -> 1). */
  static fromStorage(backend: Backend, storage: Storage, shape: readonly number[]): Tensor {
    return new Tensor(backend, storage, shape);
  }

  get dtype(): DType {
    return this.storage.dtype;
  }
  /** Device name: "cpu" or "webgpu". */
  get device(): Backend["name"] {
    return this.backend.name;
  }
  /** Number of elements. */
  get size(): number {
    return numel(this.shape);
  }
  get rank(): number {
    return this.shape.length;
  }

  /** Throws DisposedError naming `op` when this tensor (or its storage) was released. */
  assertAlive(op: string): this {
    if (this.disposed || this.storage.freed) throw new DisposedError(op);
    return this;
  }

  /** Row-major and starting at element 0 of a storage of exactly this size: kernels may take the bare storage. */
  isDense(): boolean {
    return this.offset === 0 && this.storage.numel === this.size && isContiguous(this.shape, this.strides);
  }

  /** A view of the same storage with another layout (no autograd; ops in views.ts wrap this). */
  view(shape: readonly number[], strides: readonly number[], offset: number): Tensor {
    this.assertAlive("view");
    return new Tensor(this.backend, this.storage, shape, strides, offset);
  }

  /** Copies the elements to the host, in row-major order. */
  async data(): Promise<HostArray> {
    this.assertAlive("data");
    if (this.offset + this.size <= this.storage.numel && isContiguous(this.shape, this.strides)) {
      return this.backend.read(this.storage, this.offset, this.size);
    }
    const dense = this.backend.unary("copy", this);
    try {
      return await this.backend.read(dense);
    } finally {
      this.backend.free(dense);
    }
  }

  /** The single value of a one-element tensor. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new RangeError(`item: tensor of shape [${this.shape}] has ${this.size} elements, not 1`);
    return (await this.data())[0]!;
  }

  /** Nested JS arrays in the tensor's shape (a number for a scalar). */
  async toArray(): Promise<unknown> {
    const flat = Array.from(await this.data());
    const build = (dim: number, start: number): unknown => {
      if (dim === this.rank) return flat[start];
      const step = numel(this.shape.slice(dim + 1));
      return Array.from({ length: this.shape[dim]! }, (_, i) => build(dim + 1, start + i * step));
    };
    return build(0, 0);
  }

  /** Releases this view (idempotent); frees the storage when no view uses it, and drops `.grad`. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    // A disposed intermediate cuts the graph: a later backward() through it must fail, not
    // mistake it for a leaf.
    if (this.node !== null) this.graphReleased = true;
    releaseNode(this);
    this.grad?.dispose();
    this.grad = null;
    if (--this.storage.refs === 0 && !this.storage.freed) this.backend.free(this.storage);
  }

  /** Back-propagates from this scalar (or with an explicit `grad` of this shape). See autograd.ts. */
  backward(grad?: Tensor): void {
    runBackward(this, grad);
  }

  /** The same values, cut from the graph (shares the storage). */
  detach(): Tensor {
    return this.view(this.shape, this.strides, this.offset);
  }

  /**
   * This tensor's values on `device` (e.g. `await x.to(qa.cpuDevice())`), as a new dense tensor
   * that owns its storage; on the same device, a new view of the same storage. Ops take all
   * operands from one device and never copy implicitly, since a copy between devices costs a
   * readback to the host and an upload. The copy is cut from the graph (a leaf, no grad).
   * @throws DTypeError when `device` cannot hold this dtype (webgpu has no f64: cast first).
   */
  async to(device: Backend): Promise<Tensor> {
    this.assertAlive("to");
    if (device === this.backend) return this.detach();
    const host = await this.data();
    return Tensor.fromStorage(device, device.upload(host), this.shape.slice());
  }

  /** Marks this tensor as a parameter (a leaf that accumulates `.grad`). Returns this. */
  requireGrad(on = true): this {
    this.requiresGrad = on;
    return this;
  }

  // ---- creation helpers on the same device and dtype ----
  zerosLike(): Tensor {
    return fullLike(this, 0);
  }
  onesLike(): Tensor {
    return fullLike(this, 1);
  }

  // ---- pointwise: one method per row of the pointwise table, installed below the class ----

  /** Converts to another dtype (f32/f64 <-> i32 truncates toward zero). */
  cast(dtype: DType): Tensor {
    return pw.cast(this, dtype);
  }

  // ---- reductions (ops/reduce.ts) ----
  sum(axes?: number | number[], keepdim = false): Tensor {
    return red.sum(this, axes, keepdim);
  }
  mean(axes?: number | number[], keepdim = false): Tensor {
    return red.mean(this, axes, keepdim);
  }
  max(axes?: number | number[], keepdim = false): Tensor {
    return red.max(this, axes, keepdim);
  }

  // ---- views (ops/views.ts) ----
  reshape(shape: readonly number[]): Tensor {
    return vw.reshape(this, shape);
  }
  permute(axes: readonly number[]): Tensor {
    return vw.permute(this, axes);
  }
  transpose(a = -2, b = -1): Tensor {
    return vw.transpose(this, a, b);
  }
  /** Elements [start, end) of `axis`, a view; out-of-range bounds throw (see ops/views.ts). */
  slice(axis: number, start: number, end: number): Tensor {
    return vw.slice(this, axis, start, end);
  }
  expand(shape: readonly number[]): Tensor {
    return vw.expand(this, shape);
  }
  unsqueeze(axis: number): Tensor {
    return vw.unsqueeze(this, axis);
  }
  squeeze(axis: number): Tensor {
    return vw.squeeze(this, axis);
  }
  /** A row-major tensor with its own storage when this one is strided (or always, with force). */
  contiguous(force = false): Tensor {
    return vw.contiguous(this, force);
  }

  // ---- linear algebra and softmax (ops/matmul.ts, ops/softmax.ts) ----
  matmul(b: Tensor): Tensor {
    return mm.matmul(this, b);
  }
  softmax(): Tensor {
    return sm.softmax(this);
  }
  logSoftmax(): Tensor {
    return sm.logSoftmax(this);
  }
}

/**
 * The pointwise methods: `x.exp()` for each unary row of the pointwise table (but the internal
 * copy) and `a.add(b)` for each binary row, b a tensor or a number (see ops/pointwise.ts). The
 * interface merges their types into the class; the loops give them their bodies, so a new row
 * of the table is a new method with nothing else written.
 */
type PointwiseMethods = { [K in UnaryMethod]: () => Tensor } & { [K in BinaryOp]: (b: Tensor | number) => Tensor };
// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export interface Tensor extends PointwiseMethods {}

for (const op of UNARY_OPS) {
  if (unaryDef(op).internal) continue;
  Object.defineProperty(Tensor.prototype, op, { value: function (this: Tensor) { return pw.unary(op, this); }, writable: true, configurable: true });
}
for (const op of BINARY_OPS) {
  Object.defineProperty(Tensor.prototype, op, { value: function (this: Tensor, b: Tensor | number) { return pw.binary(op, this, b); }, writable: true, configurable: true });
}
