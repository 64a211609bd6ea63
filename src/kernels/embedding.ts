import type { HostArray } from "../tensor/dtype.ts";
import type { EmbeddingGeometry } from "../tensor/ops/embedding.ts";
import { gatherOp, scatterAddOp } from "../tensor/ops/embedding.ts";
import type { Sized } from "./checks.ts";
import { need } from "./checks.ts";
import { expectDType, hostData } from "./host.ts";
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

// The cpu kernels: any table dtype, i32 ids; ids outside [0, V) throw a RangeError naming the id, its index and V.
registerKernel(gatherOp, "cpu", (cpu, table, ids, g) => {
  expectDType("gather", "ids", ids, "i32");
  const out = cpu.allocate(table.dtype, checkGather(table, ids, g));
  gatherRef(hostData("gather", table), hostData("gather", ids) as Int32Array, out, g);
  return cpu.wrap(out);
});

registerKernel(scatterAddOp, "cpu", (cpu, grad, ids, g) => {
  expectDType("scatterAdd", "ids", ids, "i32");
  const out = cpu.allocate(grad.dtype, checkScatterAdd(grad, ids, g));
  scatterAddRef(hostData("scatterAdd", grad), hostData("scatterAdd", ids) as Int32Array, out, g);
  return cpu.wrap(out);
});
