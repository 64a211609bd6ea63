import { backward, isGradEnabled, noGrad, withGrad } from "./autograd.ts";
import type { Rng } from "./random.ts";
import { tidy } from "./scope.ts";
import type { Tensor } from "./tensor.ts";

/**
 * Activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost";
 * PyTorch's `torch.utils.checkpoint`): y = fn(x) is computed without recording the graph, and
 * its intermediates are freed at once; only x and y stay alive. Backward runs fn(x) again, this
 * time recording, and back-propagates the incoming gradient through that: the parameters fn
 * uses get their gradients then (added into their `.grad` as usual), and x's is returned. A
 * decoder layer so checkpointed keeps [B, T, D] for backward instead of every intermediate.
 *
 * The recomputation must see the values the first run saw: `rngs` (dropout's sources) are
 * rewound to their state before the first run and put back afterwards, so the masks are the
 * same and later draws are unchanged. The gradients are those of running fn directly, bit for
 * bit (the same ops in the same order).
 *
 * @param fn a function of x and of tensors fixed during backward (parameters, masks)
 * @param x [any shape]; need not require grad (parameters inside fn may)
 */
export function checkpoint(fn: (x: Tensor) => Tensor, x: Tensor, rngs: readonly Rng[] = []): Tensor {
  if (!isGradEnabled()) return fn(x);
  const before = rngs.map((r) => r.state());
  const y = tidy(() => noGrad(() => fn(x)));
  // Recorded unconditionally: whether fn's parameters require grad is known only by running it.
  y.requiresGrad = true;
  y.node = {
    op: "checkpoint",
    inputs: [x],
    backward: (g) => {
      const after = rngs.map((r) => r.state());
      rngs.forEach((r, i) => r.restore(before[i]!));
      const xr = x.detach().requireGrad(x.requiresGrad);
      let yr: Tensor;
      try {
        yr = withGrad(() => fn(xr));
      } finally {
        rngs.forEach((r, i) => r.restore(after[i]!));
      }
      if (!yr.requiresGrad) return [null];
      backward(yr, g);
      const dx = xr.grad;
      xr.grad = null;
      return [dx];
    },
  };
  return y;
}
