import type { CrossEntropyGeometry } from "../tensor/ops/cross_entropy.ts";
import { crossEntropyBackwardOp, crossEntropyOp } from "../tensor/ops/cross_entropy.ts";
import { checkCrossEntropy } from "./cross_entropy.ts";
import { registerKernel } from "./registry.ts";
import type { GpuData, KernelHost } from "./webgpu/program.ts";
import { kernel, single } from "./webgpu/program.ts";
import { isNanWgsl } from "./nan.wgsl.ts";
import { ROW_MAIN_ARGS, dispatchRows, rowPrologue, rowWorkgroupSize } from "./reduce.wgsl.ts";
import { rowLse } from "./softmax.wgsl.ts";

/**
 * WGSL cross-entropy over rows of logits, forward and backward, specified by crossEntropyRef and
 * crossEntropyBackwardRef in src/kernels/cross_entropy.ts:
 *   loss_r = lse(z_r) - z_{r,t},   d loss_r / d z_{r,c} = (softmax(z_r)_c - [c = t]) * gradLoss_r
 * Fused with the log-softmax, so the [rows, V] probabilities are never stored.
 *
 * Technique: the row kernels' layout (reduce.wgsl.ts), the row's log-sum-exp by the shared
 * reduction (softmax.wgsl.ts); the backward then writes the whole gradient row in one strided
 * pass.
 *
 * Targets: ignoreIndex gives loss 0 and a zero gradient row. Unlike the reference, which throws,
 * a target outside [0, cols) is treated the same way (a kernel cannot throw); the tensor layer
 * validates targets on the host where it matters.
 */

const params = [
  { name: "rows", type: "u32" },
  { name: "cols", type: "u32" },
  { name: "ignore", type: "i32" },
] as const;

/** WGSL: whether row `row` has a target inside [0, cols) that is not ignoreIndex. */
const HAS_TARGET = `fn has_target(t: i32) -> bool { return t != P.ignore && t >= 0 && u32(t) < P.cols; }`;

const forwardKernel = (lanes: number) =>
  kernel(`crossEntropy.lanes${lanes}`, () => ({
    params,
    buffers: [
      { name: "x", type: "f32", access: "read" },
      { name: "targets", type: "i32", access: "read" },
      { name: "y", type: "f32", access: "read_write" },
    ],
    body: () => `${rowLse(lanes)}
${HAS_TARGET}
@compute @workgroup_size(${rowWorkgroupSize(lanes)})
fn main(${ROW_MAIN_ARGS}) {
  ${rowPrologue(lanes)}
  let base = row * P.cols;
  let lse = row_lse(base, P.cols, lane);
  let t = targets[row];
  if (lane == 0u) {
    var loss = 0.0;
    if (has_target(t)) { loss = lse - x[base + u32(t)]; }
    y[row] = loss;
  }
}`,
  }));

const backwardKernel = (lanes: number) =>
  kernel(`crossEntropyBackward.lanes${lanes}`, () => ({
    params,
    buffers: [
      { name: "x", type: "f32", access: "read" },
      { name: "targets", type: "i32", access: "read" },
      { name: "gradLoss", type: "f32", access: "read" },
      { name: "y", type: "f32", access: "read_write" },
    ],
    body: () => `${rowLse(lanes)}
${HAS_TARGET}
@compute @workgroup_size(${rowWorkgroupSize(lanes)})
fn main(${ROW_MAIN_ARGS}) {
  ${rowPrologue(lanes)}
  let base = row * P.cols;
  // Computed for ignored rows too: row_lse may have barriers, so every row's invocations call it.
  let lse = row_lse(base, P.cols, lane);
  let t = targets[row];
  let g = select(0.0, gradLoss[row], has_target(t));
  for (var c = lane; c < P.cols; c += ${lanes}u) {
    let onehot = select(0.0, 1.0, i32(c) == t);
    let logp = x[base + c] - lse;
    // softmax - onehot; a NaN row's gradient stays NaN (exp(NaN) is inf on SwiftShader).
    y[base + c] = (select(exp(logp), logp, ${isNanWgsl("logp")}) - onehot) * g;
  }
}`,
  }));

/**
 * loss[r] for each row.
 * @param logits f32 contiguous [rows, cols], one chunk
 * @param targets i32 [rows]
 * @param out f32 [rows]
 */
function encodeCrossEntropy(host: KernelHost, logits: GpuData, targets: GpuData, out: GpuData, g: CrossEntropyGeometry): void {
  const { rows, cols, ignoreIndex } = g;
  dispatchRows(host, forwardKernel(host.rowWorkgroup), { rows, cols, ignore: ignoreIndex }, [single(logits), single(targets), single(out)], rows);
}

/**
 * d loss / d logits, scaled per row by gradLoss.
 * @param logits f32 contiguous [rows, cols], one chunk
 * @param targets i32 [rows]
 * @param gradLoss f32 [rows]
 * @param out f32 [rows, cols]
 */
function encodeCrossEntropyBackward(
  host: KernelHost,
  logits: GpuData,
  targets: GpuData,
  gradLoss: GpuData,
  out: GpuData,
  g: CrossEntropyGeometry,
): void {
  const { rows, cols, ignoreIndex } = g;
  dispatchRows(
    host,
    backwardKernel(host.rowWorkgroup),
    { rows, cols, ignore: ignoreIndex },
    [single(logits), single(targets), single(gradLoss), single(out)],
    rows,
  );
}

// The webgpu kernels: f32 logits, i32 targets, one chunk each. Targets outside [0, cols) other
// than ignoreIndex give loss 0 and a zero gradient row here; the cpu device throws.
registerKernel(crossEntropyOp, "webgpu", (gpu, logits, targets, g) => {
  const op = "crossEntropy";
  const ls = gpu.space.wholeFloat(op, "logits", logits);
  const ts = gpu.space.wholeInt(op, "targets", targets);
  checkCrossEntropy(op, ls, ts, null, g);
  const out = gpu.space.output(op, "f32", g.rows);
  encodeCrossEntropy(gpu, ls, ts, out, g);
  return out;
});

registerKernel(crossEntropyBackwardOp, "webgpu", (gpu, logits, targets, gradLoss, g) => {
  const op = "crossEntropyBackward";
  const ls = gpu.space.wholeFloat(op, "logits", logits);
  const ts = gpu.space.wholeInt(op, "targets", targets);
  const gs = gpu.space.wholeFloat(op, "gradLoss", gradLoss);
  const out = gpu.space.output(op, "f32", checkCrossEntropy(op, ls, ts, gs, g));
  encodeCrossEntropyBackward(gpu, ls, ts, gs, out, g);
  return out;
});
