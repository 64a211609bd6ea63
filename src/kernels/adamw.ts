import type { HostArray } from "../tensor/dtype.ts";
import type { AdamWStep } from "../tensor/optim.ts";
import { adamwOp } from "../tensor/optim.ts";
import type { Sized } from "./checks.ts";
import { need } from "./checks.ts";
import { floatArgs } from "./host.ts";
import type { CpuBackend } from "./cpu.ts";
import type { KernelOf } from "./registry.ts";
import { registerKernel } from "./registry.ts";

/**
 * One AdamW step, in place (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization",
 * Algorithm 2, with the weight decay multiplied by lr as in PyTorch's `torch.optim.AdamW`):
 *   m = beta1 m + (1 - beta1) g              first moment (running mean of the gradient)
 *   v = beta2 v + (1 - beta2) g^2            second moment (running mean of its square)
 *   mhat = m / (1 - beta1^t),  vhat = v / (1 - beta2^t)   bias correction: m, v start at 0
 *   p = p - lr (mhat / (sqrt(vhat) + eps) + weightDecay p)
 * The decay term uses p before the step and never passes through the moments ("decoupled").
 * @param param, grad, m, v float arrays of one dtype and length; param, m and v are updated
 */
export function adamwRef(param: HostArray, grad: HostArray, m: HostArray, v: HostArray, h: AdamWStep): void {
  const bc1 = 1 - Math.pow(h.beta1, h.step);
  const bc2 = 1 - Math.pow(h.beta2, h.step);
  for (let i = 0; i < param.length; i++) {
    const g = grad[i]!;
    const mi = h.beta1 * m[i]! + (1 - h.beta1) * g;
    const vi = h.beta2 * v[i]! + (1 - h.beta2) * g * g;
    const update = mi / bc1 / (Math.sqrt(vi / bc2) + h.eps);
    param[i] = param[i]! - h.lr * (update + h.weightDecay * param[i]!);
    m[i] = mi;
    v[i] = vi;
  }
}

/** The size check of AdamW: grad, m and v as large as param. */
export function checkAdamW(param: Sized, others: { grad: Sized; m: Sized; v: Sized }): void {
  for (const [what, s] of Object.entries(others)) need("adamw", what, s, param.numel);
}

/**
 * adamw on a host-memory device: param, grad, m and v of one float dtype, the size check, then
 * `compute` on the host arrays in place (the reference on cpu; the wasm device's kernel, wasm/adamw.wasm.ts).
 */
export function adamwOnHost<D extends CpuBackend>(
  compute: (device: D, param: HostArray, grad: HostArray, m: HostArray, v: HostArray, h: AdamWStep) => void,
): KernelOf<typeof adamwOp, D> {
  return (device, param, grad, m, v, h) => {
    const [hp, hg, hm, hv] = floatArgs("adamw", [param, grad, m, v]);
    checkAdamW(param, { grad, m, v });
    compute(device, hp!, hg!, hm!, hv!, h);
  };
}

registerKernel(adamwOp, "cpu", adamwOnHost((_cpu, ...args) => adamwRef(...args)));
