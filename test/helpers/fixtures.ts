import { join } from "node:path";
import { openSafetensors } from "../../src/model/safetensors.ts";

/** The committed reference checkpoints written by scripts/make_fixtures.py. */
export const FIXTURE_MODELS = ["llama-untied", "mistral-sliding", "qwen2-tied", "qwen2-sharded"] as const;

export function fixtureDir(name: string): string {
  return join(import.meta.dirname, "..", "fixtures", "models", name);
}

/** The reference outputs of a fixture model (see the docstring of scripts/make_fixtures.py). */
export interface Expected {
  inputIds: number[][];
  attentionMask: number[][];
  /** [L + 1][B][T][D], no final norm. */
  residual: Float32Array;
  logits: Float32Array;
  B: number;
  T: number;
  D: number;
  V: number;
  L: number;
}

export async function loadExpected(name: string): Promise<Expected> {
  const f = await openSafetensors(join(fixtureDir(name), "expected.safetensors"));
  try {
    const [B, T] = f.info("input_ids").shape as [number, number];
    const [, , V] = f.info("logits").shape as [number, number, number];
    const [L1, , , D] = f.info("hidden_states_residual").shape as [number, number, number, number];
    const rows = (a: Int32Array) => Array.from({ length: B }, (_, b) => Array.from(a.subarray(b * T, (b + 1) * T)));
    return {
      inputIds: rows(await f.readI32("input_ids")),
      attentionMask: rows(await f.readI32("attention_mask")),
      residual: await f.readF32("hidden_states_residual"),
      logits: await f.readF32("logits"),
      B,
      T,
      D,
      V,
      L: L1 - 1,
    };
  } finally {
    await f.close();
  }
}

/** Max |a - b| over the positions where mask is 1, for [B, T, C] arrays. */
export function maxDiffAtTokens(a: ArrayLike<number>, b: ArrayLike<number>, mask: number[][], C: number): number {
  let worst = 0;
  mask.forEach((row, bi) =>
    row.forEach((m, t) => {
      if (!m) return;
      const base = (bi * row.length + t) * C;
      for (let c = 0; c < C; c++) worst = Math.max(worst, Math.abs(a[base + c]! - b[base + c]!));
    }),
  );
  return worst;
}

/** Max |x| of an array. */
export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}
