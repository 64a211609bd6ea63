import type {
  AdamWStep,
  AttentionBackwardInputs,
  AttentionGeometry,
  AttentionGrads,
  AttentionInputs,
  Backend,
  BinaryOp,
  CrossEntropyGeometry,
  EmbeddingGeometry,
  MatmulGeometry,
  ReduceOp,
  RmsNormGeometry,
  RopeGeometry,
  Storage,
  UnaryOp,
  View,
} from "../tensor/backend.ts";
import * as checks from "./checks.ts";
import type { DType, HostArray } from "../tensor/dtype.ts";
import { dtypeOf, hostArray, isFloat } from "../tensor/dtype.ts";
import { DTypeError, DisposedError } from "../tensor/errors.ts";
import { numel } from "../tensor/shape.ts";
import { adamwRef } from "./adamw.ts";
import { attentionBackwardRef, attentionRef } from "./attention.ts";
import { crossEntropyBackwardRef, crossEntropyRef } from "./cross_entropy.ts";
import type { HostView } from "./elementwise.ts";
import { assignRef, binaryRef, castRef, unaryRef, whereRef } from "./elementwise.ts";
import { gatherRef, scatterAddRef } from "./embedding.ts";
import type { HostWeight, PackedDType, WeightStorage } from "../tensor/weight.ts";
import { decodeWeight, gatherWeightRef, matmulWeightRef } from "./weights.ts";
import { matmulRef } from "./matmul.ts";
import { reduceRowsRef } from "./reduce.ts";
import { rmsNormRef } from "./rmsnorm.ts";
import { ropeRef } from "./rope.ts";
import { softmaxRef } from "./softmax.ts";

/**
 * The `cpu` device: every kernel is its plain TypeScript reference from this folder, computed
 * in JS doubles and stored in the storage's typed array. It holds f32, f64 and i32; f64 exists
 * so that gradients can be checked by finite differences. This file only checks arguments and
 * wires storages to the references.
 */

/** A storage in host memory. `data` is dropped (emptied) when the storage is freed. */
export class CpuStorage implements Storage {
  readonly dtype: DType;
  readonly numel: number;
  refs = 0;
  freed = false;
  data: HostArray;

  constructor(data: HostArray) {
    this.data = data;
    this.dtype = dtypeOf(data);
    this.numel = data.length;
  }
}

/** A packed weight in host memory: the stored form itself (16-bit weights as a Uint16Array, NF4 as bytes + absmax). */
export class CpuWeightStorage implements WeightStorage {
  readonly dtype: PackedDType;
  readonly bytes: number;
  freed = false;

  constructor(
    public data: HostWeight,
    readonly rows: number,
    readonly cols: number,
  ) {
    this.dtype = data.dtype;
    this.bytes = data.dtype === "nf4" ? data.packed.byteLength + data.absmax.byteLength : data.bits.byteLength;
  }
}

/** The stored form of a live cpu weight; throws DisposedError naming `op` once it is freed. */
function weightData(op: string, w: WeightStorage): CpuWeightStorage {
  if (!(w instanceof CpuWeightStorage)) throw new TypeError(`${op}: weight does not belong to the cpu backend`);
  if (w.freed) throw new DisposedError(op);
  return w;
}

/** The host array of a live cpu storage; throws DisposedError naming `op` once it is freed. */
function hostData(op: string, s: Storage): HostArray {
  if (!(s instanceof CpuStorage)) throw new TypeError(`${op}: storage does not belong to the cpu backend`);
  if (s.freed) throw new DisposedError(op);
  return s.data;
}

/** Throws a DTypeError naming `op` and `what` unless `s` has dtype `dtype`. */
function expectDType(op: string, what: string, s: Storage, dtype: DType): void {
  if (s.dtype !== dtype) throw new DTypeError(op, `${what} must be ${dtype}, got ${s.dtype}`);
}

/**
 * The host arrays of storages that must share one float dtype, the op's working dtype; throws a
 * DTypeError naming `op` otherwise.
 */
function floatArgs(op: string, storages: readonly Storage[]): HostArray[] {
  const dtype = storages[0]!.dtype;
  if (!isFloat(dtype)) throw new DTypeError(op, `needs a float dtype, got ${dtype}`);
  for (const s of storages) {
    if (s.dtype !== dtype) throw new DTypeError(op, `dtypes differ: ${dtype} vs ${s.dtype}`);
  }
  return storages.map((s) => hostData(op, s));
}

/**
 * A `View` with its host data, after checking that every element it addresses lies inside its
 * storage (the lowest and highest reachable indices take each axis at 0 or at its end).
 */
function hostView(op: string, v: View): HostView {
  const data = hostData(op, v.storage);
  checks.assertViewInBounds(op, v, data.length);
  return { data, shape: v.shape, strides: v.strides, offset: v.offset };
}

/**
 * The kernels a host-memory backend runs, by op. The cpu device uses the references; the wasm
 * device (src/kernels/wasm) replaces some with WebAssembly kernels over its shared memory.
 */
export interface HostKernels {
  softmax: typeof softmaxRef;
  crossEntropy: typeof crossEntropyRef;
  crossEntropyBackward: typeof crossEntropyBackwardRef;
  rmsNorm: typeof rmsNormRef;
  unary: typeof unaryRef;
  binary: typeof binaryRef;
  assign: typeof assignRef;
  matmul: typeof matmulRef;
  attention: typeof attentionRef;
  attentionBackward: typeof attentionBackwardRef;
}

/**
 * The reference backend. `maxBindingBytes` is Infinity: host arrays have no binding limit.
 * Subclasses keep its argument checks and change where storages live (`allocate`, `release`)
 * and which kernels run (`kernels`).
 */
export class CpuBackend implements Backend {
  readonly name: Backend["name"] = "cpu";
  readonly maxBindingBytes: number = Infinity;
  protected readonly kernels: HostKernels = {
    softmax: softmaxRef,
    crossEntropy: crossEntropyRef,
    crossEntropyBackward: crossEntropyBackwardRef,
    rmsNorm: rmsNormRef,
    unary: unaryRef,
    binary: binaryRef,
    assign: assignRef,
    matmul: matmulRef,
    attention: attentionRef,
    attentionBackward: attentionBackwardRef,
  };
  private bytes = 0;

  /** Takes ownership of a host array as a new storage, counting its bytes as live. */
  protected wrap(data: HostArray): CpuStorage {
    this.bytes += data.byteLength;
    return new CpuStorage(data);
  }

  /** A zero-filled host array for a new storage. */
  protected allocate(dtype: DType, numel: number): HostArray {
    return hostArray(dtype, numel);
  }

  /** Gives a freed storage's memory back (the garbage collector does it for plain arrays). */
  protected release(_data: HostArray): void {}

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
    castRef(hostView("cast", x), out);
    return this.wrap(out);
  }

  reduceRows(op: ReduceOp, x: Storage, rows: number, cols: number): Storage {
    const name = `reduce ${op}`;
    checks.rowOp(name, x, rows, cols);
    const out = this.allocate(x.dtype, rows);
    reduceRowsRef(op, hostData(name, x), out, rows, cols);
    return this.wrap(out);
  }

  matmul(a: Storage, b: Storage, g: MatmulGeometry): Storage {
    const [ha, hb] = floatArgs("matmul", [a, b]);
    const out = this.allocate(a.dtype, checks.matmul("matmul", a, b, g));
    this.kernels.matmul(ha!, hb!, out, g);
    return this.wrap(out);
  }

  softmax(x: Storage, rows: number, cols: number, log: boolean): Storage {
    const [hx] = floatArgs("softmax", [x]);
    const out = this.allocate(x.dtype, checks.rowOp("softmax", x, rows, cols));
    this.kernels.softmax(hx!, out, rows, cols, log);
    return this.wrap(out);
  }

  /** @throws RangeError when a target is outside [0, cols) and not ignoreIndex. */
  crossEntropy(logits: Storage, targets: Storage, g: CrossEntropyGeometry): Storage {
    const op = "crossEntropy";
    const [hl] = floatArgs(op, [logits]);
    expectDType(op, "targets", targets, "i32");
    checks.crossEntropy(op, logits, targets, null, g);
    const out = this.allocate(logits.dtype, g.rows);
    this.kernels.crossEntropy(hl!, hostData(op, targets) as Int32Array, out, g);
    return this.wrap(out);
  }

  /** @throws RangeError when a target is outside [0, cols) and not ignoreIndex. */
  crossEntropyBackward(logits: Storage, targets: Storage, gradLoss: Storage, g: CrossEntropyGeometry): Storage {
    const op = "crossEntropyBackward";
    const [hl, hg] = floatArgs(op, [logits, gradLoss]);
    expectDType(op, "targets", targets, "i32");
    const out = this.allocate(logits.dtype, checks.crossEntropy(op, logits, targets, gradLoss, g));
    this.kernels.crossEntropyBackward(hl!, hostData(op, targets) as Int32Array, hg!, out, g);
    return this.wrap(out);
  }

  /** Ids outside [0, V) throw a RangeError naming the id, its index and V. */
  gather(table: Storage, ids: Storage, g: EmbeddingGeometry): Storage {
    expectDType("gather", "ids", ids, "i32");
    const out = this.allocate(table.dtype, checks.gather("gather", table, ids, g));
    gatherRef(hostData("gather", table), hostData("gather", ids) as Int32Array, out, g);
    return this.wrap(out);
  }

  /** Ids outside [0, V) throw a RangeError naming the id, its index and V. */
  scatterAdd(grad: Storage, ids: Storage, g: EmbeddingGeometry): Storage {
    expectDType("scatterAdd", "ids", ids, "i32");
    const out = this.allocate(grad.dtype, checks.scatterAdd("scatterAdd", grad, ids, g));
    scatterAddRef(hostData("scatterAdd", grad), hostData("scatterAdd", ids) as Int32Array, out, g);
    return this.wrap(out);
  }

  rmsNorm(x: Storage, weight: Storage, g: RmsNormGeometry): Storage {
    const [hx, hw] = floatArgs("rmsNorm", [x, weight]);
    const out = this.allocate(x.dtype, checks.rmsNorm("rmsNorm", x, weight, g));
    this.kernels.rmsNorm(hx!, hw!, out, g);
    return this.wrap(out);
  }

  /** @throws ShapeError when Dh is odd or Bc is neither 1 nor B. */
  rope(x: Storage, cos: Storage, sin: Storage, g: RopeGeometry): Storage {
    const [hx, hc, hs] = floatArgs("rope", [x, cos, sin]);
    const out = this.allocate(x.dtype, checks.rope("rope", x, cos, sin, g));
    ropeRef(hx!, hc!, hs!, out, g);
    return this.wrap(out);
  }

  /** keyMask may have any dtype (nonzero = keep). Rows that see no key give out 0 and lse 0. */
  attention(ins: AttentionInputs<Storage>, g: AttentionGeometry): { out: Storage; lse: Storage } {
    const op = "attention";
    const [q, k, v] = floatArgs(op, [ins.q, ins.k, ins.v]);
    const n = checks.attention(op, ins, g);
    const keyMask = ins.keyMask && hostData(op, ins.keyMask);
    const out = this.allocate(ins.q.dtype, n.q);
    const lse = this.allocate(ins.q.dtype, n.lse);
    this.kernels.attention({ q: q!, k: k!, v: v!, keyMask }, { out, lse }, g);
    return { out: this.wrap(out), lse: this.wrap(lse) };
  }

  attentionBackward(ins: AttentionBackwardInputs<Storage>, g: AttentionGeometry): AttentionGrads<Storage> {
    const op = "attentionBackward";
    const [q, k, v, out, dOut, lse] = floatArgs(op, [ins.q, ins.k, ins.v, ins.out, ins.dOut, ins.lse]);
    const n = checks.attentionBackward(op, ins, g);
    const keyMask = ins.keyMask && hostData(op, ins.keyMask);
    const dq = this.allocate(ins.q.dtype, n.q);
    const dk = this.allocate(ins.q.dtype, n.kv);
    const dv = this.allocate(ins.q.dtype, n.kv);
    this.kernels.attentionBackward({ q: q!, k: k!, v: v!, keyMask, out: out!, dOut: dOut!, lse: lse! }, { dq, dk, dv }, g);
    return { dq: this.wrap(dq), dk: this.wrap(dk), dv: this.wrap(dv) };
  }

  adamw(param: Storage, grad: Storage, m: Storage, v: Storage, h: AdamWStep): void {
    const [hp, hg, hm, hv] = floatArgs("adamw", [param, grad, m, v]);
    checks.adamw("adamw", param, { grad, m, v });
    adamwRef(hp!, hg!, hm!, hv!, h);
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

  matmulWeight(x: Storage, w: WeightStorage, M: number, form: "nt" | "nn"): Storage {
    const s = weightData("matmulWeight", w);
    expectDType("matmulWeight", "x", x, "f32");
    const out = this.allocate("f32", checks.matmulWeight("matmulWeight", x, s, M, form)) as Float32Array;
    matmulWeightRef(hostData("matmulWeight", x) as Float32Array, s.data, s.rows, s.cols, M, form, out);
    return this.wrap(out);
  }

  gatherWeight(w: WeightStorage, ids: Storage): Storage {
    const s = weightData("gatherWeight", w);
    expectDType("gatherWeight", "ids", ids, "i32");
    const out = this.allocate("f32", ids.numel * s.cols) as Float32Array;
    gatherWeightRef(s.data, s.rows, s.cols, hostData("gatherWeight", ids) as Int32Array, out);
    return this.wrap(out);
  }

  async sync(): Promise<void> {}

  liveBytes(): number {
    return this.bytes;
  }
}
