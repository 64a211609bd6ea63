import type { HostArray } from "../tensor/dtype.ts";

/**
 * Row softmax and log-softmax through the row's log-sum-exp:
 * log softmax(x)_c = x_c - logsumexp(x), softmax(x)_c = exp(x_c - logsumexp(x)).
 * logsumexp is made stable by subtracting the row maximum m before exp:
 * logsumexp(x) = m + log sum_c exp(x_c - m), the same value, but no exp overflows (every
 * exponent is <= 0 and the largest term is exactly 1, so the sum is in [1, cols]).
 */

/**
 * log sum_c exp(x[start + c]) over `cols` elements, as m + log(sum_c exp(x_c - m)) with m the
 * maximum. Returns -Infinity for an empty row or a row of -Infinity (log of an empty sum).
 */
export function rowLogSumExp(x: HostArray, start: number, cols: number): number {
  let m = -Infinity;
  for (let c = 0; c < cols; c++) m = Math.max(m, x[start + c]!);
  if (m === -Infinity) return -Infinity;
  let sum = 0;
  for (let c = 0; c < cols; c++) sum += Math.exp(x[start + c]! - m);
  return m + Math.log(sum);
}

/**
 * out[r, c] = softmax(x[r])_c, or log-softmax x[r, c] - logsumexp(x[r]) when `log`.
 * A row of only -Infinity (every class masked) has no distribution: it gives NaN, as in PyTorch.
 * @param x contiguous float [rows, cols]
 * @param out [rows, cols], same dtype
 */
export function softmaxRef(x: HostArray, out: HostArray, rows: number, cols: number, log: boolean): void {
  for (let r = 0; r < rows; r++) {
    const start = r * cols;
    const lse = rowLogSumExp(x, start, cols);
    for (let c = 0; c < cols; c++) {
      const logP = x[start + c]! - lse;
      out[start + c] = log ? logP : Math.exp(logP);
    }
  }
}
