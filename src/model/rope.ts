import type { Backend } from "../tensor/backend.ts";
import { tensor } from "../tensor/ops/create.ts";
import type { Tensor } from "../tensor/tensor.ts";
import type { Fields, LlamaConfig } from "./config.ts";
import { CheckpointError } from "./safetensors.ts";

/**
 * Rotary position embedding (RoPE, Su et al. 2021) from config to kernel, in one place. The
 * angle of the pair (d, d + Dh/2) at position p is p * inv_freq[d]; it takes these forms on
 * its way to the WGSL:
 * 1. config.json's `rope_theta` and `rope_scaling` (`parseRope`, called by config.ts) give
 *    inv_freq [Dh/2] (`ropeInvFreq`, float64, scaling applied);
 * 2. the attention mask gives each new token's position (`positionIds`, [B][T]);
 * 3. `ropeTables` turns both into cos and sin [Bc, T, Dh/2] f32 on the device, which the
 *    tensor op `rope` (src/tensor/ops/rope.ts, with its backward) applies to q and k
 *    [B, H, T, Dh] through the backend's `rope` kernel (RopeGeometry; src/kernels/rope.ts is
 *    the reference, rope.wgsl.ts the WGSL).
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
/** RoPE scaling, from HF `rope_scaling` (`rope_type`, or the legacy key `type`). */
export type RopeScaling =
  | { rope_type: "linear"; factor: number }
  | {
      rope_type: "llama3";
      factor: number;
      low_freq_factor: number;
      high_freq_factor: number;
      original_max_position_embeddings: number;
    };

/**
 * Parses the RoPE scaling of a config: `rope_scaling` (transformers 4.x), or `rope_parameters`
 * (transformers 5, which also carries `rope_theta`). Type "default" means none.
 * @param f config.json's fields (see parseConfig)
 * @throws CheckpointError naming the file and field: a bad number, high_freq_factor not above
 *   low_freq_factor, or an unsupported type
 */
export function parseRope(f: Fields): { rope_theta: number; rope_scaling: RopeScaling | null } {
  const params = f.object("rope_parameters");
  const rope_theta = params?.has("rope_theta") ? params.num("rope_theta") : f.num("rope_theta", 10000);
  const s = f.has("rope_scaling") ? f.object("rope_scaling") : params;
  if (s === null) return { rope_theta, rope_scaling: null };
  const kind = s.string("rope_type") ?? s.string("type") ?? "default";
  if (kind === "default") return { rope_theta, rope_scaling: null };
  if (kind === "linear") return { rope_theta, rope_scaling: { rope_type: "linear", factor: s.num("factor") } };
  if (kind === "llama3") {
    const low = s.num("low_freq_factor");
    const high = s.num("high_freq_factor");
    if (high <= low) s.fail("high_freq_factor", `(${high}) must exceed low_freq_factor (${low})`);
    return {
      rope_theta,
      rope_scaling: {
        rope_type: "llama3",
        factor: s.num("factor"),
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: s.int("original_max_position_embeddings"),
      },
    };
  }
  throw new CheckpointError(
    f.file,
    `rope_scaling type '${kind}' is not supported; supported: default, linear, llama3`,
  );
}

/**
 * RoPE inverse frequencies `inv_freq[i] = θ^(-2i/Dh)`, i = 0..Dh/2-1, in radians per position,
 * with scaling applied. Computed in float64 (HF computes in float32).
 *
 * Source: transformers `modeling_rope_utils.py`: `_compute_default_rope_parameters`;
 * `_compute_linear_scaling_rope_parameters` (positions / factor, i.e. inv_freq / factor);
 * `_compute_llama3_parameters` (wavelength 2π/inv_freq above `original / low_freq_factor`:
 * divide by factor; below `original / high_freq_factor`: keep; between: blend with
 * s = (original / wavelength - low) / (high - low), result (1 - s) * inv / factor + s * inv).
 * @returns Float64Array [Dh / 2]
 */
export function ropeInvFreq(config: LlamaConfig): Float64Array {
  const dim = config.head_dim;
  const inv = new Float64Array(dim / 2);
  for (let i = 0; i < inv.length; i++) inv[i] = 1 / config.rope_theta ** ((2 * i) / dim);
  const s = config.rope_scaling;
  if (s === null) return inv;
  if (s.rope_type === "linear") return inv.map((x) => x / s.factor);
  const lowWavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const highWavelen = s.original_max_position_embeddings / s.high_freq_factor;
  return inv.map((x) => {
    const wavelen = (2 * Math.PI) / x;
    if (wavelen < highWavelen) return x;
    if (wavelen > lowWavelen) return x / s.factor;
    const smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    return ((1 - smooth) * x) / s.factor + smooth * x;
  });
}

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
