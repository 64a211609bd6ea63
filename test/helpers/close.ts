import { expect } from "vitest";

/**
 * The bound on |actual - expected| for one element, in one of three forms:
 * - a number `tol`: tol (1 + |expected|), absolute and relative at once (the README's
 *   convention: absolute near zero, relative for large values);
 * - `{ atol, rtol }`: atol + rtol |expected|;
 * - a function of the expected value and its index, for bounds that vary per element (an error
 *   bound computed from the inputs).
 * Every call site states why its bound holds (the arithmetic it covers).
 */
export type Tolerance = number | { atol: number; rtol: number } | ((expected: number, i: number) => number);

function bound(tol: Tolerance, expected: number, i: number): number {
  if (typeof tol === "number") return tol * (1 + Math.abs(expected));
  if (typeof tol === "function") return tol(expected, i);
  return tol.atol + tol.rtol * Math.abs(expected);
}

/**
 * Asserts that `actual` and `expected` have the same length and every element is within the
 * tolerance (a NaN on either side never is; equal infinities are). On failure prints how many
 * elements are out, the first ones side by side, and the max difference.
 * @param what names the compared values in the failure message
 */
export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: Tolerance, what = "values"): void {
  expect(actual.length, `${what}: lengths`).toBe(expected.length);
  let first = -1;
  let bad = 0;
  let maxDiff = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    const d = a === e ? 0 : Math.abs(a - e);
    if (!(d <= maxDiff)) maxDiff = Math.max(maxDiff, d); // NaN, once seen, stays
    if (!(d <= bound(tol, e, i))) {
      if (first < 0) first = i;
      bad++;
    }
  }
  if (first < 0) return;
  const lo = Math.max(0, first - 2);
  const rows = Array.from({ length: Math.min(5, expected.length - lo) }, (_, k) => {
    const i = lo + k;
    return `  [${i}] got ${actual[i]} want ${expected[i]} (bound ${bound(tol, expected[i]!, i)})`;
  });
  expect.fail(`${what}: ${bad} of ${expected.length} out of tolerance, first at [${first}], max |diff| ${maxDiff}\n${rows.join("\n")}`);
}
