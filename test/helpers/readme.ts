import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./cli.ts";

/**
 * The README's library example: its autograd part as written there, the values it prints, and
 * the same quantities in closed form, for the tests that run it where users do (an installed
 * tarball on plain Node, a browser page).
 */

/** The README's library example up to its checkpoint part (the autograd part), TypeScript as written. */
export function readmeExample(): string {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const block = /```ts\n(import \* as qa from "qalign";[\s\S]*?)```/.exec(readme)?.[1];
  if (!block) throw new Error("README.md has no ```ts block starting with the qalign import");
  return block.split("\n\n// A checkpoint folder")[0]!;
}

/** The lines the example prints, from its comments: the loss (4 decimals) and the gradient list. */
export function readmePrinted(): { loss: string; grads: string } {
  const example = readmeExample();
  const loss = /\/\/ (\d+\.\d{4}) \(seeded/.exec(example)?.[1];
  const grads = /\/\/ (\[ '.*' \])/.exec(example)?.[1];
  if (!loss || !grads) throw new Error("README.md's example no longer shows its printed loss and gradients");
  return { loss, grads };
}

/**
 * The example's loss and dloss/dw in float64 from w ([3, 2] row-major) and x = [1, 2, 3]:
 * z = x w, loss = sum_j silu(z_j), dloss/dw_ij = x_i silu'(z_j) with
 * silu'(z) = s(z) (1 + z (1 - s(z))), s the logistic sigmoid.
 */
export function exampleClosedForm(w: readonly number[]): { loss: number; grad: number[] } {
  const x = [1, 2, 3];
  const z = [0, 1].map((j) => x.reduce((a, xi, i) => a + xi * w[2 * i + j]!, 0));
  const s = z.map((v) => 1 / (1 + Math.exp(-v)));
  const dz = z.map((v, j) => s[j]! * (1 + v * (1 - s[j]!)));
  return { loss: z[0]! * s[0]! + z[1]! * s[1]!, grad: x.flatMap((xi) => dz.map((d) => xi * d)) };
}
