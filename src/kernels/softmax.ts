import type { HostArray } from "../tensor/dtype.ts";
import { logSumExp } from "../tensor/logsumexp.ts";
import { softmaxOp } from "../tensor/ops/softmax.ts";
import type { Sized } from "./checks.ts";
import { need } from "./checks.ts";
import type { CpuBackend } from "./cpu.ts";
import { floatArgs } from "./host.ts";
import type { KernelOf } from "./registry.ts";
import { registerKernel } from "./registry.ts";

/**
 * Row softmax and log-softmax through the row's log-sum-exp:
 * log softmax(x)_c = x_c - logsumexp(x), softmax(x)_c = exp(x_c - logsumexp(x)).
 * logsumexp is made stable by subtracting the row maximum (src/tensor/logsumexp.ts).
 */

/**
 * out[r, c] = softmax(x[r])_c, or log-softmax x[r, c] - logsumexp(x[r]) when `log`.
 * A row of only -Infinity (every class masked) has no distribution: it gives NaN, as in PyTorch.
 * @param x contiguous float [rows, cols]
 * @param out [rows, cols], same dtype
 */
export function softmaxRef(x: HostArray, out: HostArray, rows: number, cols: number, log: boolean): void {
  for (let r = 0; r < rows; r++) {
    const start = r * cols;
    const lse = logSumExp(x, start, cols);
    for (let c = 0; c < cols; c++) {
      const logP = x[start + c]! - lse;
      out[start + c] = log ? logP : Math.exp(logP);
    }
  }
}

/**
 * The size check of softmax: x holds [rows, cols].
 * @returns the element count of out [rows, cols]
 */
export function checkSoftmax(x: Sized, rows: number, cols: number): number {
  need("softmax", "x", x, rows * cols);
  return rows * cols;
}

/**
 * softmax on a host-memory device: a float dtype, the size check, the output, then `compute`
 * on the host arrays (the reference on cpu; the wasm device's row kernels, wasm/rows.wasm.ts).
 */
export function softmaxOnHost<D extends CpuBackend>(
  compute: (device: D, x: HostArray, out: HostArray, rows: number, cols: number, log: boolean) => void,
): KernelOf<typeof softmaxOp, D> {
  return (device, x, rows, cols, log) => {
    const [hx] = floatArgs("softmax", [x]);
    const out = device.allocate(x.dtype, checkSoftmax(x, rows, cols));
    compute(device, hx!, out, rows, cols, log);
    return device.wrap(out);
  };
}

registerKernel(softmaxOp, "cpu", softmaxOnHost((_cpu, ...args) => softmaxRef(...args)));
