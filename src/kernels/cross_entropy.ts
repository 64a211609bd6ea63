import type { HostArray } from "../tensor/dtype.ts";
import { logSumExp } from "../tensor/logsumexp.ts";
import type { CrossEntropyGeometry } from "../tensor/ops/cross_entropy.ts";
import { crossEntropyBackwardOp, crossEntropyOp } from "../tensor/ops/cross_entropy.ts";
import type { Sized } from "./checks.ts";
import { need } from "./checks.ts";
import type { CpuBackend } from "./cpu.ts";
import { expectDType, floatArgs, hostData } from "./host.ts";
import type { KernelOf } from "./registry.ts";
import { registerKernel } from "./registry.ts";

/**
 * Cross-entropy of logits against integer targets, fused with its log-softmax so that the
 * [rows, cols] probabilities (cols = V, the vocabulary) are never stored between the two.
 *
 * loss_r = -log softmax(z_r)_t = logsumexp(z_r) - z_{r,t}   (t = target of row r)
 * d loss_r / d z_{r,c} = softmax(z_r)_c - [c = t]
 * Source: PyTorch `F.cross_entropy(..., ignore_index=-100, reduction="none")`, whose default
 * ignore index marks prompt and padding tokens in Hugging Face causal-LM labels.
 */

/** The target of row r, or null when the row is ignored; throws on a class outside [0, cols). */
export function crossEntropyTarget(targets: Int32Array, r: number, cols: number, ignoreIndex: number): number | null {
  const t = targets[r]!;
  if (t === ignoreIndex) return null;
  if (t < 0 || t >= cols) {
    throw new RangeError(`crossEntropy: target ${t} at row ${r} is outside [0, ${cols}) and is not ignoreIndex ${ignoreIndex}`);
  }
  return t;
}

/**
 * loss[r] = logsumexp(logits[r]) - logits[r, targets[r]], or 0 where targets[r] == ignoreIndex.
 * @param logits contiguous float [rows, cols]
 * @param targets i32 [rows]
 * @param out [rows], dtype of logits
 * @throws RangeError naming the target and row when a target is outside [0, cols) and not ignored.
 */
export function crossEntropyRef(logits: HostArray, targets: Int32Array, out: HostArray, g: CrossEntropyGeometry): void {
  const { rows, cols, ignoreIndex } = g;
  for (let r = 0; r < rows; r++) {
    const t = crossEntropyTarget(targets, r, cols, ignoreIndex);
    out[r] = t === null ? 0 : logSumExp(logits, r * cols, cols) - logits[r * cols + t]!;
  }
}

/**
 * dLogits[r, c] = (softmax(logits[r])_c - [c = targets[r]]) * gradLoss[r]; a zero row where
 * targets[r] == ignoreIndex (its loss is the constant 0).
 * @param logits contiguous float [rows, cols]
 * @param targets i32 [rows]
 * @param gradLoss [rows], dtype of logits: d(total loss) / d loss[r]
 * @param out [rows, cols], dtype of logits
 * @throws RangeError as crossEntropyRef.
 */
export function crossEntropyBackwardRef(logits: HostArray, targets: Int32Array, gradLoss: HostArray, out: HostArray, g: CrossEntropyGeometry): void {
  const { rows, cols, ignoreIndex } = g;
  for (let r = 0; r < rows; r++) {
    const start = r * cols;
    const t = crossEntropyTarget(targets, r, cols, ignoreIndex);
    if (t === null) {
      out.fill(0, start, start + cols);
      continue;
    }
    const lse = logSumExp(logits, start, cols);
    const g = gradLoss[r]!;
    for (let c = 0; c < cols; c++) {
      const p = Math.exp(logits[start + c]! - lse);
      out[start + c] = (p - (c === t ? 1 : 0)) * g;
    }
  }
}

/**
 * The size check of cross-entropy's forward (gradLoss null) or backward: logits [rows, cols],
 * targets [rows], gradLoss [rows].
 * @returns the element count of the backward's output [rows, cols]
 */
export function checkCrossEntropy(op: string, logits: Sized, targets: Sized, gradLoss: Sized | null, g: CrossEntropyGeometry): number {
  need(op, "logits", logits, g.rows * g.cols);
  need(op, "targets", targets, g.rows);
  if (gradLoss) need(op, "gradLoss", gradLoss, g.rows);
  return g.rows * g.cols;
}

/**
 * crossEntropy on a host-memory device: float logits, i32 targets, the size check, the output
 * [rows], then `compute` (the reference on cpu; the row kernels on wasm, wasm/rows.wasm.ts).
 * Targets outside [0, cols) other than ignoreIndex throw a RangeError (crossEntropyTarget).
 */
export function crossEntropyOnHost<D extends CpuBackend>(
  compute: (device: D, logits: HostArray, targets: Int32Array, out: HostArray, g: CrossEntropyGeometry) => void,
): KernelOf<typeof crossEntropyOp, D> {
  return (device, logits, targets, g) => {
    const op = "crossEntropy";
    const [hl] = floatArgs(op, [logits]);
    expectDType(op, "targets", targets, "i32");
    checkCrossEntropy(op, logits, targets, null, g);
    const out = device.allocate(logits.dtype, g.rows);
    compute(device, hl!, hostData(op, targets) as Int32Array, out, g);
    return device.wrap(out);
  };
}

/** crossEntropyBackward on a host-memory device, as crossEntropyOnHost; out [rows, cols]. */
export function crossEntropyBackwardOnHost<D extends CpuBackend>(
  compute: (device: D, logits: HostArray, targets: Int32Array, gradLoss: HostArray, out: HostArray, g: CrossEntropyGeometry) => void,
): KernelOf<typeof crossEntropyBackwardOp, D> {
  return (device, logits, targets, gradLoss, g) => {
    const op = "crossEntropyBackward";
    const [hl, hg] = floatArgs(op, [logits, gradLoss]);
    expectDType(op, "targets", targets, "i32");
    const out = device.allocate(logits.dtype, checkCrossEntropy(op, logits, targets, gradLoss, g));
    compute(device, hl!, hostData(op, targets) as Int32Array, hg!, out, g);
    return device.wrap(out);
  };
}

registerKernel(crossEntropyOp, "cpu", crossEntropyOnHost((_cpu, ...args) => crossEntropyRef(...args)));
registerKernel(crossEntropyBackwardOp, "cpu", crossEntropyBackwardOnHost((_cpu, ...args) => crossEntropyBackwardRef(...args)));
