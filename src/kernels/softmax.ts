import type { HostArray } from "../tensor/dtype.ts";
import { logSumExp } from "../tensor/logsumexp.ts";

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
