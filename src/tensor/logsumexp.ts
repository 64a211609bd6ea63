/**
 * The stable log-sum-exp of a row of host numbers, the normaliser of softmax:
 * logsumexp(x) = m + log sum_c exp(x_c - m) with m = max_c x_c, the same value as
 * log sum_c exp(x_c), but no exp overflows (every exponent is <= 0 and the largest term is
 * exactly 1, so the sum is in [1, n]). Computed in JS doubles. The CPU references of softmax and
 * cross-entropy use it, and so do evaluation (class probabilities from logits) and Logit Lens.
 */

/**
 * log sum_c exp(row[start + c]) over c in [0, n).
 * @param row host numbers (a typed array of logits [.., V] or a plain array)
 * @returns -Infinity for an empty row or a row of -Infinity (the log of an empty sum)
 */
export function logSumExp(row: ArrayLike<number>, start: number, n: number): number {
  let m = -Infinity;
  for (let c = 0; c < n; c++) m = Math.max(m, row[start + c]!);
  if (m === -Infinity) return -Infinity;
  let sum = 0;
  for (let c = 0; c < n; c++) sum += Math.exp(row[start + c]! - m);
  return m + Math.log(sum);
}
