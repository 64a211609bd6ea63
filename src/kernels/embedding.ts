import type { HostArray } from "../tensor/dtype.ts";
import type { EmbeddingGeometry } from "../tensor/ops/embedding.ts";
import { gatherOp, scatterAddOp } from "../tensor/ops/embedding.ts";
import type { Sized } from "./checks.ts";
import { need } from "./checks.ts";
import type { CpuBackend } from "./cpu.ts";
import { expectDType, hostData } from "./host.ts";
import type { KernelOf } from "./registry.ts";
import { registerKernel } from "./registry.ts";

/**
 * Embedding lookup and its transpose. gather is the forward of `nn.Embedding`; scatterAdd is its
 * backward: d table[v] = sum over positions n with ids[n] = v of d out[n], so a token that
 * appears twice gets both gradients added.
 */

/** ids[n], checked to be a row of the table. */
function rowOf(op: string, ids: Int32Array, n: number, V: number): number {
  const id = ids[n]!;
  if (id < 0 || id >= V) throw new RangeError(`${op}: id ${id} at index ${n} is outside [0, ${V})`);
  return id;
}

/**
 * Checks every id before anything is computed (kernels that cannot throw midway, as the wasm
 * ones, call it first). No id is ignored: there is no padding index.
 * @throws RangeError naming the first id outside [0, V), its index and V (the references' error).
 */
export function checkIds(op: string, ids: Int32Array, V: number): void {
  for (let n = 0; n < ids.length; n++) rowOf(op, ids, n, V);
}

/**
 * out[n, :] = table[ids[n], :].
 * @param table contiguous [V, D], any dtype
 * @param ids i32 [N]
 * @param out [N, D], dtype of table
 * @throws RangeError naming the id, its index n and V when an id is outside [0, V).
 */
export function gatherRef(table: HostArray, ids: Int32Array, out: HostArray, g: EmbeddingGeometry): void {
  const { V, D } = g;
  for (let n = 0; n < ids.length; n++) {
    const row = rowOf("gather", ids, n, V);
    out.set(table.subarray(row * D, row * D + D), n * D);
  }
}

/**
 * out[v, :] = sum over n with ids[n] = v of grad[n, :]; rows no id points at are 0. It is the
 * transpose (adjoint) of gather: <gather(T), G> = <T, scatterAdd(G)> for all T [V, D], G [N, D].
 * @param grad contiguous [N, D], any dtype
 * @param ids i32 [N]
 * @param out [V, D], dtype of grad; overwritten
 * @throws RangeError as gatherRef.
 */
export function scatterAddRef(grad: HostArray, ids: Int32Array, out: HostArray, g: EmbeddingGeometry): void {
  const { V, D } = g;
  // Sum in doubles, then round once into out's dtype.
  const sum = new Float64Array(V * D);
  for (let n = 0; n < ids.length; n++) {
    const row = rowOf("scatterAdd", ids, n, V);
    for (let d = 0; d < D; d++) sum[row * D + d]! += grad[n * D + d]!;
  }
  out.set(sum);
}

/**
 * The size check of gather: table [V, D], ids [N].
 * @returns the element count of out [N, D]
 */
export function checkGather(table: Sized, ids: Sized, g: EmbeddingGeometry): number {
  need("gather", "table", table, g.V * g.D);
  return ids.numel * g.D;
}

/**
 * The size check of scatterAdd: grad [N, D], ids [N].
 * @returns the element count of out [V, D]
 */
export function checkScatterAdd(grad: Sized, ids: Sized, g: EmbeddingGeometry): number {
  need("scatterAdd", "grad", grad, ids.numel * g.D);
  return g.V * g.D;
}

/** The compute of an embedding kernel on a host-memory device: the operand's host array ([V, D] table or [N, D] grad), the checked ids, the zero-filled output. */
type EmbeddingCompute<D> = (device: D, x: HostArray, ids: Int32Array, out: HostArray, g: EmbeddingGeometry) => void;

/**
 * An embedding op on a host-memory device: i32 ids, the size check, every id checked (checkIds,
 * before the output is allocated, so a bad id leaves nothing behind), an output of x's dtype,
 * then `compute` on the host arrays (the reference on cpu; the wasm device's kernels,
 * wasm/embedding.wasm.ts).
 */
function embeddingOnHost<D extends CpuBackend>(
  op: "gather" | "scatterAdd",
  check: (x: Sized, ids: Sized, g: EmbeddingGeometry) => number,
  compute: EmbeddingCompute<D>,
): KernelOf<typeof gatherOp, D> {
  return (device, x, ids, g) => {
    expectDType(op, "ids", ids, "i32");
    const numel = check(x, ids, g);
    const hids = hostData(op, ids) as Int32Array;
    checkIds(op, hids, g.V);
    const out = device.allocate(x.dtype, numel);
    compute(device, hostData(op, x), hids, out, g);
    return device.wrap(out);
  };
}

/** gather on a host-memory device (embeddingOnHost): table [V, D] any dtype, out [N, D]. */
export const gatherOnHost = <D extends CpuBackend>(compute: EmbeddingCompute<D>): KernelOf<typeof gatherOp, D> => embeddingOnHost("gather", checkGather, compute);

/** scatterAdd on a host-memory device (embeddingOnHost): grad [N, D] any dtype, out [V, D] zero-filled. */
export const scatterAddOnHost = <D extends CpuBackend>(compute: EmbeddingCompute<D>): KernelOf<typeof scatterAddOp, D> => embeddingOnHost("scatterAdd", checkScatterAdd, compute);

// The cpu kernels: any table dtype, i32 ids; ids outside [0, V) throw a RangeError naming the id, its index and V.
registerKernel(gatherOp, "cpu", gatherOnHost((_cpu, ...args) => gatherRef(...args)));
registerKernel(scatterAddOp, "cpu", scatterAddOnHost((_cpu, ...args) => scatterAddRef(...args)));
