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
} from "../tensor/backend.ts";
import { assertViewInBounds, attentionSizes } from "./checks.ts";
import type { DType, HostArray } from "../tensor/dtype.ts";
import { dtypeOf, hostArray, isFloat } from "../tensor/dtype.ts";
import { DTypeError, DisposedError, ShapeError } from "../tensor/errors.ts";
import { numel } from "../tensor/shape.ts";
import { adamwRef } from "./adamw.ts";
import { attentionBackwardRef, attentionRef } from "./attention.ts";
import { crossEntropyBackwardRef, crossEntropyRef } from "./cross_entropy.ts";
import type { HostView } from "./elementwise.ts";
import { assignRef, binaryRef, castRef, unaryRef, whereRef } from "./elementwise.ts";
import { gatherRef, scatterAddRef } from "./embedding.ts";
import { matmulOperandNumel, matmulRef } from "./matmul.ts";
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

/** The host array of a live cpu storage; throws DisposedError naming `op` once it is freed. */
function hostData(op: string, s: Storage): HostArray {
  if (!(s instanceof CpuStorage)) throw new TypeError(`${op}: storage does not belong to the cpu backend`);
  if (s.freed) throw new DisposedError(op);
  return s.data;
}

/** Throws a ShapeError naming `op` and `what` when `s` holds fewer than `n` elements. */
function need(op: string, what: string, s: Storage, n: number): void {
  if (s.numel < n) throw new ShapeError(op, `${what} has ${s.numel} elements, needs ${n}`);
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
  assertViewInBounds(op, v, data.length);
  return { data, shape: v.shape, strides: v.strides, offset: v.offset };
}

/**
 * Checks the sizes of the inputs both attention passes share (q, k, v and the key mask, which
 * may have any dtype) and returns the mask's data.
 */
function attentionInputs(op: string, q: Storage, k: Storage, v: Storage, keyMask: Storage | null, g: AttentionGeometry): HostArray | null {
  const n = attentionSizes(op, g);
  need(op, "q", q, n.q);
  need(op, "k", k, n.kv);
  need(op, "v", v, n.kv);
  if (keyMask === null) return null;
  need(op, "keyMask", keyMask, n.keyMask);
  return hostData(op, keyMask);
}

/** The reference backend. `maxBindingBytes` is Infinity: host arrays have no binding limit. */
export class CpuBackend implements Backend {
  readonly name = "cpu";
  readonly maxBindingBytes = Infinity;
  private bytes = 0;

  /** Takes ownership of a host array as a new storage, counting its bytes as live. */
  private wrap(data: HostArray): CpuStorage {
    this.bytes += data.byteLength;
    return new CpuStorage(data);
  }

  zeros(dtype: DType, numel: number): Storage {
    return this.wrap(hostArray(dtype, numel));
  }

  upload(data: HostArray): Storage {
    return this.wrap(data.slice());
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
  free(storage: Storage): void {
    const data = hostData("free", storage);
    this.bytes -= data.byteLength;
    const s = storage as CpuStorage;
    s.freed = true;
    s.data = hostArray(s.dtype, 0);
  }

  fill(storage: Storage, value: number): void {
    hostData("fill", storage).fill(value);
  }

  unary(op: UnaryOp, x: View): Storage {
    const out = hostArray(x.storage.dtype, numel(x.shape));
    unaryRef(op, hostView(`unary ${op}`, x), out);
    return this.wrap(out);
  }

  binary(op: BinaryOp, a: View, b: View): Storage {
    const name = `binary ${op}`;
    const out = hostArray(a.storage.dtype, numel(a.shape));
    binaryRef(op, hostView(name, a), hostView(name, b), out);
    return this.wrap(out);
  }

  where(cond: View, a: View, b: View): Storage {
    const out = hostArray(a.storage.dtype, numel(a.shape));
    whereRef(hostView("where", cond), hostView("where", a), hostView("where", b), out);
    return this.wrap(out);
  }

  assign(dst: View, src: View): void {
    assignRef(hostView("assign", dst), hostView("assign", src));
  }

  cast(x: View, dtype: DType): Storage {
    const out = hostArray(dtype, numel(x.shape));
    castRef(hostView("cast", x), out);
    return this.wrap(out);
  }

  reduceRows(op: ReduceOp, x: Storage, rows: number, cols: number): Storage {
    const name = `reduce ${op}`;
    need(name, "x", x, rows * cols);
    const out = hostArray(x.dtype, rows);
    reduceRowsRef(op, hostData(name, x), out, rows, cols);
    return this.wrap(out);
  }

  matmul(a: Storage, b: Storage, g: MatmulGeometry): Storage {
    const [ha, hb] = floatArgs("matmul", [a, b]);
    need("matmul", "a", a, matmulOperandNumel(g.batch, g.batchStrideA, g.M, g.K));
    need("matmul", "b", b, matmulOperandNumel(g.batch, g.batchStrideB, g.K, g.N));
    const out = hostArray(a.dtype, g.batch * g.M * g.N);
    matmulRef(ha!, hb!, out, g);
    return this.wrap(out);
  }

  softmax(x: Storage, rows: number, cols: number, log: boolean): Storage {
    const [hx] = floatArgs("softmax", [x]);
    need("softmax", "x", x, rows * cols);
    const out = hostArray(x.dtype, rows * cols);
    softmaxRef(hx!, out, rows, cols, log);
    return this.wrap(out);
  }

  /** @throws RangeError when a target is outside [0, cols) and not ignoreIndex. */
  crossEntropy(logits: Storage, targets: Storage, rows: number, cols: number, ignoreIndex: number): Storage {
    const [hl] = floatArgs("crossEntropy", [logits]);
    expectDType("crossEntropy", "targets", targets, "i32");
    need("crossEntropy", "logits", logits, rows * cols);
    need("crossEntropy", "targets", targets, rows);
    const out = hostArray(logits.dtype, rows);
    crossEntropyRef(hl!, hostData("crossEntropy", targets) as Int32Array, out, rows, cols, ignoreIndex);
    return this.wrap(out);
  }

  /** @throws RangeError when a target is outside [0, cols) and not ignoreIndex. */
  crossEntropyBackward(
    logits: Storage,
    targets: Storage,
    gradLoss: Storage,
    rows: number,
    cols: number,
    ignoreIndex: number,
  ): Storage {
    const op = "crossEntropyBackward";
    const [hl, hg] = floatArgs(op, [logits, gradLoss]);
    expectDType(op, "targets", targets, "i32");
    need(op, "logits", logits, rows * cols);
    need(op, "targets", targets, rows);
    need(op, "gradLoss", gradLoss, rows);
    const out = hostArray(logits.dtype, rows * cols);
    crossEntropyBackwardRef(hl!, hostData(op, targets) as Int32Array, hg!, out, rows, cols, ignoreIndex);
    return this.wrap(out);
  }

  /** Ids outside [0, V) throw a RangeError naming the id, its index and V. */
  gather(table: Storage, ids: Storage, V: number, D: number): Storage {
    expectDType("gather", "ids", ids, "i32");
    need("gather", "table", table, V * D);
    const out = hostArray(table.dtype, ids.numel * D);
    gatherRef(hostData("gather", table), hostData("gather", ids) as Int32Array, out, V, D);
    return this.wrap(out);
  }

  /** Ids outside [0, V) throw a RangeError naming the id, its index and V. */
  scatterAdd(grad: Storage, ids: Storage, V: number, D: number): Storage {
    expectDType("scatterAdd", "ids", ids, "i32");
    need("scatterAdd", "grad", grad, ids.numel * D);
    const out = hostArray(grad.dtype, V * D);
    scatterAddRef(hostData("scatterAdd", grad), hostData("scatterAdd", ids) as Int32Array, out, V, D);
    return this.wrap(out);
  }

  rmsNorm(x: Storage, weight: Storage, rows: number, D: number, eps: number): Storage {
    const [hx, hw] = floatArgs("rmsNorm", [x, weight]);
    need("rmsNorm", "x", x, rows * D);
    need("rmsNorm", "weight", weight, D);
    const out = hostArray(x.dtype, rows * D);
    rmsNormRef(hx!, hw!, out, rows, D, eps);
    return this.wrap(out);
  }

  rope(x: Storage, cos: Storage, sin: Storage, B: number, H: number, T: number, Dh: number, Bc: number, inverse: boolean): Storage {
    const [hx, hc, hs] = floatArgs("rope", [x, cos, sin]);
    need("rope", "x", x, B * H * T * Dh);
    need("rope", "cos", cos, (Bc * T * Dh) / 2);
    need("rope", "sin", sin, (Bc * T * Dh) / 2);
    const out = hostArray(x.dtype, B * H * T * Dh);
    ropeRef(hx!, hc!, hs!, out, B, H, T, Dh, Bc, inverse);
    return this.wrap(out);
  }

  /** keyMask may have any dtype (nonzero = keep). Rows that see no key give out 0 and lse 0. */
  attention(q: Storage, k: Storage, v: Storage, keyMask: Storage | null, g: AttentionGeometry): { out: Storage; lse: Storage } {
    const [hq, hk, hv] = floatArgs("attention", [q, k, v]);
    const mask = attentionInputs("attention", q, k, v, keyMask, g);
    const out = hostArray(q.dtype, g.B * g.H * g.Tq * g.Dh);
    const lse = hostArray(q.dtype, g.B * g.H * g.Tq);
    attentionRef(hq!, hk!, hv!, mask, { out, lse }, g);
    return { out: this.wrap(out), lse: this.wrap(lse) };
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
    const [hq, hk, hv, ho, hdo, hlse] = floatArgs(op, [q, k, v, out, dOut, lse]);
    const mask = attentionInputs(op, q, k, v, keyMask, g);
    need(op, "out", out, g.B * g.H * g.Tq * g.Dh);
    need(op, "dOut", dOut, g.B * g.H * g.Tq * g.Dh);
    need(op, "lse", lse, g.B * g.H * g.Tq);
    const dq = hostArray(q.dtype, g.B * g.H * g.Tq * g.Dh);
    const dk = hostArray(q.dtype, g.B * g.Hkv * g.Tk * g.Dh);
    const dv = hostArray(q.dtype, g.B * g.Hkv * g.Tk * g.Dh);
    attentionBackwardRef(hq!, hk!, hv!, mask, ho!, hdo!, hlse!, { dq, dk, dv }, g);
    return { dq: this.wrap(dq), dk: this.wrap(dk), dv: this.wrap(dv) };
  }

  adamw(param: Storage, grad: Storage, m: Storage, v: Storage, h: AdamWStep): void {
    const [hp, hg, hm, hv] = floatArgs("adamw", [param, grad, m, v]);
    need("adamw", "grad", grad, param.numel);
    need("adamw", "m", m, param.numel);
    need("adamw", "v", v, param.numel);
    adamwRef(hp!, hg!, hm!, hv!, h);
  }

  async sync(): Promise<void> {}

  liveBytes(): number {
    return this.bytes;
  }
}
