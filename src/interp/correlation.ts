/**
 * How close each language's representation is to English's, layer by layer (Zhang et al. 2024,
 * Section 5): the Pearson correlation, across the D hidden dimensions, between the mean
 * last-token residual stream of a language's prompts and that of the parallel English prompts.
 * r near 1: the model places the two languages' questions at the same point of its space.
 */

/**
 * Pearson's r between two vectors: cov(a, b) / (sd(a) sd(b))
 *   = sum_d (a_d - mean a)(b_d - mean b) / sqrt(sum_d (a_d - mean a)^2 sum_d (b_d - mean b)^2),
 * accumulated in float64. Unitless, in [-1, 1].
 * @returns NaN when either vector is constant (its standard deviation is 0)
 * @throws RangeError when the lengths differ or are below 2.
 */
export function pearson(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = a.length;
  if (n !== b.length || n < 2) throw new RangeError(`pearson: needs two vectors of equal length >= 2, got ${a.length} and ${b.length}`);
  let ma = 0;
  let mb = 0;
  for (let i = 0; i < n; i++) {
    ma += a[i]!;
    mb += b[i]!;
  }
  ma /= n;
  mb /= n;
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < n; i++) {
    const da = a[i]! - ma;
    const db = b[i]! - mb;
    sab += da * db;
    saa += da * da;
    sbb += db * db;
  }
  return saa > 0 && sbb > 0 ? sab / Math.sqrt(saa * sbb) : NaN;
}

/** One point of the correlation-by-layer curve. */
export interface CorrelationPoint {
  lang: string;
  /** 0 = embedding output, l = after decoder layer l. */
  layer: number;
  /** Pearson r of the language's mean representation with the reference's (unitless). */
  r: number;
}

/**
 * Per layer, Pearson's r between each language's mean representation and the reference
 * language's (the reference itself is left out: its r is 1).
 * @param means per language, its mean last-token hidden state per layer: (L + 1) vectors [D]
 * @param reference the language compared against (default "en")
 * @throws RangeError when the reference is missing or the languages disagree on L or D.
 */
export function correlationByLayer(means: ReadonlyMap<string, readonly ArrayLike<number>[]>, reference = "en"): CorrelationPoint[] {
  const ref = means.get(reference);
  if (!ref) throw new RangeError(`correlationByLayer: no mean representations for the reference language "${reference}"`);
  const out: CorrelationPoint[] = [];
  for (const [lang, layers] of means) {
    if (lang === reference) continue;
    if (layers.length !== ref.length) throw new RangeError(`correlationByLayer: ${lang} has ${layers.length} layers, ${reference} has ${ref.length}`);
    layers.forEach((m, layer) => out.push({ lang, layer, r: pearson(m, ref[layer]!) }));
  }
  return out;
}
