/**
 * qalign's host-neutral core, with nothing that needs Node: tensors, autograd, optimizers, the
 * devices (cpu, wasm, webgpu on Dawn in Node or on the page's navigator.gpu in a browser), the
 * I/O interface (io/files.ts) with its browser implementations, one-file HTML reports (charts
 * are `qalign/plot`'s: vega stays out of a page that draws none), checkpoint and tokenizer
 * loading through it (Hub ids downloaded into the host's cache), the Llama-family model,
 * generation, LoRA layers, question pairs, the training loss, the trainer with its
 * checkpoints, PEFT adapters and merging (all through Files).
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
export { hostFiles, setDefaultFiles, type Files, type ByteReader } from "./io/files.ts";
export { urlFiles, blobFiles } from "./io/web_files.ts";
export { mountedFiles } from "./io/mounted_files.ts";
export { reportHtml } from "./io/html.ts";

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
export { softmax, logSoftmax } from "./tensor/ops/softmax.ts";
export { crossEntropy, type CrossEntropyOptions } from "./tensor/ops/cross_entropy.ts";
export { embedding } from "./tensor/ops/embedding.ts";
export { linear } from "./tensor/ops/weights.ts";
export { rmsNorm } from "./tensor/ops/rmsnorm.ts";
export { rope } from "./tensor/ops/rope.ts";
export { attention, type AttentionOptions } from "./tensor/ops/attention.ts";
export { dropout } from "./tensor/ops/dropout.ts";
export { SGD, AdamW, clipGradNorm, zeroGrad, type SgdOptions, type AdamWOptions } from "./tensor/optim.ts";

// kernels
export { init, getDevice, cpuDevice, wasmDevice, type DeviceKind, type DeviceOptions } from "./kernels/devices.ts";

// model
export { loadModel, validateCheckpoint, type LoadOptions } from "./model/load.ts";
export { resolveModel, downloadCheckpoint, isHubId, hubUrl, DOWNLOAD_MARKER, OPFS_HUB_CACHE, type HubOptions, type DownloadStore, type ModelSource } from "./model/hub.ts";
export { filesStore } from "./model/hub_files.ts";
export { LlamaModel, KVCache, Linear, Attention, Mlp, DecoderLayer, type LinearLike, type ForwardOptions, type ForwardOutput } from "./model/llama.ts";
export { loadConfig, parseConfig, MODEL_TYPES, type LlamaConfig, type ModelType } from "./model/config.ts";
export { LAYER_MODULES, TOP_MODULES, checkpointTensors, expectedWeights, expectedWeightCount, expectedShape, type ModuleSpec } from "./model/params.ts";
export { loadTokenizer, Tokenizer } from "./model/tokenizer.ts";
export { generate, sampleToken, type GenerateOptions } from "./model/generate.ts";
export { openSafetensors, openCheckpoint, writeSafetensors, CheckpointError, type Checkpoint, type TensorToWrite } from "./model/safetensors.ts";
export { positionIds, ropeInvFreq, ropeTables } from "./model/rope.ts";

// lora
export {
  LoraLinear,
  LoraAdapter,
  applyLora,
  loraModules,
  loraScaling,
  LORA_DEFAULTS,
  LORA_MODULES,
  type LoraConfig,
  type LoraModuleName,
  type ApplyLoraOptions,
} from "./lora/layer.ts";
export { saveAdapter, loadAdapter, readAdapterConfig, peftConfigJson, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, IMPLEMENTED_ADAPTER_KEYS, REFUSED_ADAPTER_KEYS } from "./lora/peft.ts";
export { collate, targetNllSum, meanTargetLoss, type Example, type Batch } from "./lora/loss.ts";
export { cosineWithWarmup, warmupSteps } from "./lora/schedule.ts";
export { mergeLora, saveMergedModel } from "./lora/merge.ts";
export {
  readQuestionPairs,
  splitPairs,
  encodePairs,
  truncatedLengths,
  type QuestionPair,
  type SplitOptions,
} from "./lora/data.ts";
export { train, optimizerStep, NonFiniteTrainingError, TRAIN_DEFAULTS, type TrainOptions, type RunOptions, type StepInfo, type TrainResult } from "./lora/trainer.ts";
export { trainOnPairs, type TrainingRecipe, type RecipeData, type RecipeResult } from "./lora/recipe.ts";

// interp
export { lensLogits, softmaxRow, entropyOf, topK, type LensToken } from "./interp/lens.ts";
