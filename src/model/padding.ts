/**
 * Left padding (Hugging Face tokenizers' padding_side = "left") of token rows into one batch:
 * each row is right-aligned, so its last token sits at the last position of every row, and the
 * slots before it are padding the attention mask hides. Positions come from the mask
 * (rope.ts's positionIds), so a padded row computes what it would alone.
 *
 *     keys:  [ cached (P) | pad ... pad | row tokens ]      attention_mask 1...1 0...0 1...1
 */

/**
 * @param rows token ids per row (B rows)
 * @param cached tokens before every row in a KV cache (all attended), 0 without a cache
 * @returns ids i32 [B, T], T the longest row, padding slots holding id 0 (never attended); the
 *   attention_mask [B][cached + T] (1 attended, 0 padding); and T
 */
export function leftPad(rows: readonly (readonly number[])[], cached = 0): { ids: Int32Array; mask: number[][]; T: number } {
  const T = Math.max(0, ...rows.map((r) => r.length));
  const ids = new Int32Array(rows.length * T);
  const mask = rows.map((r, b) => {
    ids.set(r, b * T + T - r.length);
    return Array.from({ length: cached + T }, (_, j) => (j >= cached && j < cached + T - r.length ? 0 : 1));
  });
  return { ids, mask, T };
}
