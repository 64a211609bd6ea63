import { hostArray } from "../dtype.ts";
import type { Rng } from "../random.ts";
import type { Tensor } from "../tensor.ts";
import { tensor } from "./create.ts";

/** Dropout, composed of a host-drawn mask and a multiply: no kernel of its own. */

/**
 * Inverted dropout (Srivastava et al. 2014): each element is kept with probability 1 - p and
 * scaled by 1 / (1 - p), so the expectation is unchanged. The mask is drawn on the host from
 * `rng` (seeded, reproducible on every device). Identity when p = 0.
 */
export function dropout(x: Tensor, p: number, rng: Rng): Tensor {
  if (p <= 0) return x;
  if (p >= 1) throw new RangeError(`dropout: p must be in [0, 1), got ${p}`);
  const keep = hostArray(x.dtype, x.size);
  for (let i = 0; i < keep.length; i++) keep[i] = rng.uniform() >= p ? 1 / (1 - p) : 0;
  const mask = tensor(keep, { device: x.backend, shape: x.shape });
  const y = x.mul(mask);
  if (y.node) y.node.owned = [mask];
  else mask.dispose();
  return y;
}
