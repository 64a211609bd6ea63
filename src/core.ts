/**
 * qalign's host-neutral core: tensors, autograd, optimizers and the devices (cpu, wasm, webgpu
 * on Dawn in Node or on the page's navigator.gpu in a browser), with nothing that needs Node.
 * Both entries re-export it: the Node one (index.ts, `qalign`) and the browser one (browser.ts,
 * what `qalign` resolves to under the `browser` condition).
 *
 * Exports grouped by layer, in the layer order of the README's Layout table.
 */
import { setDefaultDevice } from "./tensor/device.ts";
import { cpuDevice } from "./kernels/devices.ts";

setDefaultDevice(cpuDevice());

// io
export { DataError, formatIssue, type DataIssue } from "./io/data_error.ts";

// tensor
export { Tensor } from "./tensor/tensor.ts";
export type { Backend, Storage, View } from "./tensor/backend.ts";
export type { DType, HostArray } from "./tensor/dtype.ts";
export { ShapeError, DTypeError, DeviceError, DeviceLimitError, DisposedError, AutogradError } from "./tensor/errors.ts";
export { backward, noGrad, isGradEnabled } from "./tensor/autograd.ts";
export { tidy, keep } from "./tensor/scope.ts";
export { Rng } from "./tensor/random.ts";
export { defaultDevice, setDefaultDevice } from "./tensor/device.ts";
export { tensor, zeros, ones, full, fullLike, arange, randn, rand, type CreateOptions } from "./tensor/ops/create.ts";
export { unary, binary, where, cast } from "./tensor/ops/pointwise.ts";
export { UNARY, BINARY, UNARY_OPS, BINARY_OPS, unaryDef, binaryDef, type UnaryDef, type BinaryDef, type UnaryOp, type BinaryOp, type PointwiseTol } from "./tensor/ops/pointwise_table.ts";
export { sum, mean, max } from "./tensor/ops/reduce.ts";
export { reshape, permute, transpose, slice, expand, unsqueeze, squeeze, contiguous, concat } from "./tensor/ops/views.ts";
export { matmul } from "./tensor/ops/matmul.ts";
export {
  softmax,
  logSoftmax,
  crossEntropy,
  embedding,
  linear,
  rmsNorm,
  rope,
  attention,
  dropout,
  type CrossEntropyOptions,
  type AttentionOptions,
} from "./tensor/ops/nn.ts";
export { SGD, AdamW, clipGradNorm, zeroGrad, type SgdOptions, type AdamWOptions } from "./tensor/optim.ts";

// kernels
export { init, getDevice, cpuDevice, wasmDevice, type DeviceKind, type DeviceOptions } from "./kernels/devices.ts";
