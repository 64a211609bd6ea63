import type { Storage } from "./backend.ts";
import { deviceOp } from "./backend.ts";
import { noGrad } from "./autograd.ts";
import { DTypeError, ShapeError, fmt } from "./errors.ts";
import { keep, tidy } from "./scope.ts";
import { Tensor } from "./tensor.ts";
import { zeros } from "./ops/create.ts";

/**
 * Optimizers over leaf parameters (tensors with requiresGrad). Steps run without recording a
 * graph and write the parameters in place, so views and references to them stay valid.
 */

/** Checks a hyper-parameter: finite and >= 0 (a negative learning rate would ascend the loss). */
export function assertNonNegative(op: string, name: string, value: number): void {
  if (!(Number.isFinite(value) && value >= 0)) throw new RangeError(`${op}: ${name} must be a finite number >= 0, got ${value}`);
}

/** Checks that `p` can be optimised: a live float parameter, dense so kernels may update it in place. */
function assertParam(op: string, p: Tensor): void {
  p.assertAlive(op);
  if (p.dtype === "i32") throw new DTypeError(op, `parameter ${fmt(p.shape)} is i32`);
  if (!p.isDense()) throw new ShapeError(op, `parameter ${fmt(p.shape)} must be dense (own its storage)`);
}

/** Sets every parameter's `.grad` to null (disposing it). */
export function zeroGrad(params: readonly Tensor[]): void {
  for (const p of params) {
    p.grad?.dispose();
    p.grad = null;
  }
}

export interface SgdOptions {
  lr: number;
  momentum?: number;
  weightDecay?: number;
}

/**
 * Stochastic gradient descent with optional momentum and L2 weight decay, as torch.optim.SGD:
 * g' = g + wd p; buf = momentum buf + g' (buf = g' at the first step); p -= lr buf.
 */
export class SGD {
  readonly params: readonly Tensor[];
  opts: Required<SgdOptions>;
  private buffers = new Map<Tensor, Tensor>();

  constructor(params: readonly Tensor[], opts: SgdOptions) {
    for (const p of params) assertParam("SGD", p);
    this.params = params;
    this.opts = { momentum: 0, weightDecay: 0, ...opts };
    for (const [k, v] of Object.entries(this.opts)) assertNonNegative("SGD", k, v);
  }

  /** One update from the current `.grad`s (parameters without a grad are skipped). */
  step(): void {
    const { lr, momentum, weightDecay } = this.opts;
    for (const p of this.params) {
      const grad = p.grad;
      if (grad === null) continue;
      noGrad(() =>
        tidy(() => {
          let d = weightDecay !== 0 ? grad.add(p.mul(weightDecay)) : grad;
          if (momentum !== 0) {
            const prev = this.buffers.get(p);
            const buf = keep(prev ? prev.mul(momentum).add(d) : d.contiguous(true));
            prev?.dispose();
            this.buffers.set(p, buf);
            d = buf;
          }
          p.backend.assign(p, p.sub(d.mul(lr)));
        }),
      );
    }
  }

  zeroGrad(): void {
    zeroGrad(this.params);
  }
}

/** Hyper-parameters of one AdamW step (Loshchilov & Hutter, decoupled weight decay). */
export interface AdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step count, for bias correction. */
  step: number;
}

/**
 * In place: one AdamW step on param, with moments m and v, given grad (all contiguous, same
 * size). Kernels: src/kernels/adamw.ts, adamw.wgsl.ts.
 */
export const adamwOp = deviceOp<[param: Storage, grad: Storage, m: Storage, v: Storage, h: AdamWStep], void>("adamw");

export interface AdamWOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
}

/**
 * AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), as
 * torch.optim.AdamW: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
 * p -= lr (wd p + m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)). One fused kernel per
 * parameter (src/kernels/adamw.ts). `lr` may be changed between steps (schedules).
 */
export class AdamW {
  readonly params: readonly Tensor[];
  opts: Required<AdamWOptions>;
  /** Steps taken so far (t in the bias corrections). */
  stepCount = 0;
  private moments = new Map<Tensor, { m: Tensor; v: Tensor }>();

  constructor(params: readonly Tensor[], opts: AdamWOptions) {
    for (const p of params) assertParam("AdamW", p);
    this.params = params;
    this.opts = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, ...opts };
    for (const [k, v] of Object.entries(this.opts)) assertNonNegative("AdamW", k, v);
  }

  /** First and second moments of `p` (zeros before its first update). */
  state(p: Tensor): { m: Tensor; v: Tensor } {
    let s = this.moments.get(p);
    if (!s) {
      s = { m: keep(zeros(p.shape, { device: p.backend, dtype: p.dtype })), v: keep(zeros(p.shape, { device: p.backend, dtype: p.dtype })) };
      this.moments.set(p, s);
    }
    return s;
  }

  step(): void {
    assertNonNegative("AdamW", "lr", this.opts.lr);
    this.stepCount++;
    const { lr, beta1, beta2, eps, weightDecay } = this.opts;
    for (const p of this.params) {
      if (p.grad === null) continue;
      const { m, v } = this.state(p);
      const g = p.grad.isDense() ? p.grad : p.grad.contiguous(true);
      p.backend.run(adamwOp, p.storage, g.storage, m.storage, v.storage, { lr, beta1, beta2, eps, weightDecay, step: this.stepCount });
      if (g !== p.grad) g.dispose();
    }
  }

  zeroGrad(): void {
    zeroGrad(this.params);
  }

  /** Frees the moment buffers. */
  dispose(): void {
    for (const { m, v } of this.moments.values()) {
      m.dispose();
      v.dispose();
    }
    this.moments.clear();
  }
}

/**
 * Scales all gradients so that their global L2 norm is at most `maxNorm`, as
 * torch.nn.utils.clip_grad_norm_: factor = min(1, maxNorm / (norm + 1e-6)). Computed on the
 * device without a readback. Returns the norm before clipping (a scalar tensor; the caller
 * disposes it).
 */
export function clipGradNorm(params: readonly Tensor[], maxNorm: number): Tensor {
  const grads = params.flatMap((p) => (p.grad ? [p.grad] : []));
  if (grads.length === 0) return zeros([], { device: params[0]?.backend });
  return noGrad(() =>
    tidy(() => {
      const norm = grads.map((g) => g.square().sum()).reduce((a, b) => a.add(b)).sqrt();
      const factor = norm.add(1e-6).reciprocal().mul(maxNorm).minimum(1);
      for (const g of grads) g.backend.assign(g, g.mul(factor));
      return norm;
    }),
  );
}
