import type { HostArray } from "../tensor/dtype.ts";
import { ShapeError } from "../tensor/errors.ts";
import type { ReduceOp } from "../tensor/ops/reduce.ts";
import { reduceRowsOp } from "../tensor/ops/reduce.ts";
import type { Sized } from "./checks.ts";
import { need } from "./checks.ts";
import { hostData } from "./host.ts";
import type { CpuBackend } from "./cpu.ts";
import type { KernelOf } from "./registry.ts";
import { registerKernel } from "./registry.ts";

/**
 * Row reductions, the one reduction kernel: the tensor layer permutes the reduced axes to the
 * end and makes the input contiguous, so every sum or max over axes is a reduction of rows.
 */

/**
 * out[r] = sum_c x[r, c] (0 for an empty row) or max_c x[r, c], accumulated in doubles.
 * @param x contiguous [rows, cols], any dtype
 * @param out [rows], same dtype as x
 * Max over empty rows has no value: checkReduceRows, which every device runs first, rejects it.
 */
export function reduceRowsRef(op: ReduceOp, x: HostArray, out: HostArray, rows: number, cols: number): void {
  for (let r = 0; r < rows; r++) {
    let acc = op === "sum" ? 0 : -Infinity;
    for (let c = 0; c < cols; c++) {
      const v = x[r * cols + c]!;
      acc = op === "sum" ? acc + v : Math.max(acc, v);
    }
    out[r] = acc;
  }
}

/**
 * The checks of reduceRows: max needs a value per row, and x holds [rows, cols].
 * @throws ShapeError naming `reduce <op>` for max over empty rows (cols = 0, rows > 0), or when x is smaller
 */
export function checkReduceRows(op: ReduceOp, x: Sized, rows: number, cols: number): void {
  if (op === "max" && cols === 0 && rows > 0) throw new ShapeError(`reduce ${op}`, "rows are empty (cols = 0)");
  need(`reduce ${op}`, "x", x, rows * cols);
}

/**
 * reduceRows on a host-memory device: the size check, out [rows] of x's dtype (any), then
 * `compute` on the host arrays (the reference on cpu; the wasm device's kernels, wasm/reduce.wasm.ts).
 */
export function reduceRowsOnHost<D extends CpuBackend>(
  compute: (device: D, op: ReduceOp, x: HostArray, out: HostArray, rows: number, cols: number) => void,
): KernelOf<typeof reduceRowsOp, D> {
  return (device, op, x, rows, cols) => {
    checkReduceRows(op, x, rows, cols);
    const out = device.allocate(x.dtype, rows);
    compute(device, op, hostData(`reduce ${op}`, x), out, rows, cols);
    return device.wrap(out);
  };
}

registerKernel(reduceRowsOp, "cpu", reduceRowsOnHost((_cpu, ...args) => reduceRowsRef(...args)));
