import { Rng } from "../../src/tensor/random.ts";

/** Deterministic uniform values in [-1, 1) from the project's seeded generator, so test data follows from a drawn seed. */
export function random(seed: number): () => number {
  const rng = new Rng(seed);
  return () => rng.uniform() * 2 - 1;
}
