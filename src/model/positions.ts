import type { Backend } from "../tensor/backend.ts";
import { tensor } from "../tensor/ops/create.ts";
import type { Tensor } from "../tensor/tensor.ts";

/**
 * Token positions and the rotary tables built from them.
 *
 * Positions follow Hugging Face `generate` (utils.py, `prepare_inputs_for_generation`): with an
 * attention mask, position_ids = cumsum(attention_mask) - 1, with padded slots set to 1 in HF
 * but never attended; here they are clamped to 0 (any value works, as nothing attends them).
 * So a left-padded row starts at position 0 at its first real token.
 */

/**
 * Positions [B][T] of the new tokens of each row, given the mask over all keys [B][past + T]
 * (or, without a mask, past .. past + T - 1 for every row).
 */
export function positionIds(B: number, T: number, past: number, attentionMask: readonly (readonly number[])[] | null): number[][] {
  return Array.from({ length: B }, (_, b) => {
    if (attentionMask === null) return Array.from({ length: T }, (_, t) => past + t);
    const row = attentionMask[b]!;
    const pos: number[] = [];
    let seen = 0;
    for (let j = 0; j < past + T; j++) {
      if (row[j]) seen++;
      if (j >= past) pos.push(Math.max(seen - 1, 0));
    }
    return pos;
  });
}

/**
 * cos and sin of position x inverse frequency, the rotary angles of RoPE (Su et al. 2021):
 * [Bc, T, Dh/2] f32, with Bc = 1 when every row has the same positions. As in HF
 * LlamaRotaryEmbedding, the inverse frequencies and the angles are rounded to float32 (at
 * position 4096 that rounding moves an angle by ~1e-4 rad, so matching it matters).
 * @param invFreq [Dh/2] from ropeInvFreq(config) (includes linear/llama3 scaling)
 * @param positions [B][T]
 */
export function ropeTables(invFreq: Float64Array, positions: readonly (readonly number[])[], device: Backend): { cos: Tensor; sin: Tensor } {
  const same = positions.every((row) => row.join() === positions[0]!.join());
  const rows = same ? positions.slice(0, 1) : positions;
  const T = positions[0]?.length ?? 0;
  const half = invFreq.length;
  const cos = new Float32Array(rows.length * T * half);
  const sin = new Float32Array(cos.length);
  rows.forEach((row, b) =>
    row.forEach((p, t) => {
      for (let i = 0; i < half; i++) {
        const angle = Math.fround(p * Math.fround(invFreq[i]!));
        cos[(b * T + t) * half + i] = Math.cos(angle);
        sin[(b * T + t) * half + i] = Math.sin(angle);
      }
    }),
  );
  const shape = [rows.length, T, half];
  return { cos: tensor(cos, { device, shape }), sin: tensor(sin, { device, shape }) };
}
