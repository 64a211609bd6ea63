/**
 * Accuracy and its uncertainty. The paper reports accuracy per language (Acc_l) and their mean
 * over languages (Acc); with a few hundred items per language, a 95% interval tells which
 * base-vs-aligned differences are larger than sampling noise.
 */

/** z for a two-sided 95% interval: the 0.975 quantile of the standard normal. */
export const Z95 = 1.959963984540054;

/** An interval [low, high] of proportions in [0, 1]. */
export interface Interval {
  low: number;
  high: number;
}

/**
 * The Wilson score interval for k successes in n trials (Wilson 1927; Brown, Cai & DasGupta
 * 2001 recommend it over the normal interval, which collapses at 0 and 1):
 *   center = (p + z^2 / 2n) / (1 + z^2 / n)
 *   half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2),   p = k / n
 * @returns [0, 1] when n = 0 (nothing is known)
 * @throws RangeError unless 0 <= k <= n are integers
 */
export function wilsonInterval(k: number, n: number, z = Z95): Interval {
  if (!Number.isInteger(k) || !Number.isInteger(n) || k < 0 || k > n) throw new RangeError(`wilsonInterval: need integers 0 <= k <= n, got k = ${k}, n = ${n}`);
  if (n === 0) return { low: 0, high: 1 };
  const p = k / n;
  const z2 = z * z;
  const denom = 1 + z2 / n;
  const center = (p + z2 / (2 * n)) / denom;
  const half = (z / denom) * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n));
  return { low: Math.max(0, center - half), high: Math.min(1, center + half) };
}

/**
 * The confusion matrix of C classes: m[t][p] counts items of true class t predicted as p.
 * @throws RangeError when the arrays differ in length or hold a class outside [0, C).
 */
export function confusionMatrix(truth: readonly number[], pred: readonly number[], C: number): number[][] {
  if (truth.length !== pred.length) throw new RangeError(`confusionMatrix: ${truth.length} labels but ${pred.length} predictions`);
  const m = Array.from({ length: C }, () => new Array<number>(C).fill(0));
  truth.forEach((t, i) => {
    const p = pred[i]!;
    if (!(t >= 0 && t < C && p >= 0 && p < C)) throw new RangeError(`confusionMatrix: class out of range at ${i}: ${t} -> ${p}`);
    m[t]![p]!++;
  });
  return m;
}

/** Counts, accuracy (in [0, 1]) and its Wilson 95% interval. */
export interface Accuracy {
  n: number;
  correct: number;
  accuracy: number;
  ci95: Interval;
}

/**
 * Acc_l of one language: correct / n with its interval.
 * @param correct each item's verdict (whichever rule judged it)
 * @returns accuracy NaN when n = 0
 */
export function accuracyOf(correct: readonly boolean[]): Accuracy {
  const k = correct.filter(Boolean).length;
  const n = correct.length;
  return { n, correct: k, accuracy: n === 0 ? NaN : k / n, ci95: wilsonInterval(k, n) };
}

/**
 * Acc: the unweighted mean of per-language accuracies (every language counts the same, as in
 * the paper's averages, whatever its item count).
 * @returns NaN for no languages
 */
export function macroAverage(accuracies: readonly number[]): number {
  return accuracies.length === 0 ? NaN : accuracies.reduce((s, a) => s + a, 0) / accuracies.length;
}
