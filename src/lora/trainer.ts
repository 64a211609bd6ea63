import type { LlamaModel } from "../model/llama.ts";
import { CheckpointError } from "../model/safetensors.ts";
import { AdamW, clipGradNorm } from "../tensor/optim.ts";
import type { HostArray } from "../tensor/dtype.ts";
import { Rng } from "../tensor/random.ts";
import { tidy } from "../tensor/scope.ts";
import { hostFiles, type Files } from "../io/files.ts";
import { loadCheckpoint, saveCheckpoint, type TrainerState } from "./checkpoint.ts";
import { peftKey, type LoraAdapter } from "./layer.ts";
import { collate, meanTargetLoss, targetNllSum, type Example } from "./loss.ts";
import { saveAdapter } from "./peft.ts";
import { cosineWithWarmup, warmupSteps } from "./schedule.ts";

/**
 * The LoRA training loop of the paper's runs (Hugging Face Trainer semantics): AdamW, cosine
 * schedule with linear warmup, gradient accumulation, gradient clipping, a validation loss
 * before training and after every epoch, seeded shuffling per epoch, and atomic checkpoints that
 * resume bit for bit.
 */

/** Hyper-parameters. Defaults follow the paper (Zhang et al. 2024, §4.1) and HF Trainer. */
export interface TrainOptions {
  /** Peak learning rate (paper: 5e-5). */
  lr: number;
  epochs: number;
  /** Examples per forward/backward pass (micro-batch). */
  batchSize: number;
  /** Micro-batches per optimizer step; the effective batch is batchSize * gradAccum (paper: 4 x 4). */
  gradAccum: number;
  /** Share of optimizer steps spent in linear warmup (paper: 0.1). */
  warmupRatio: number;
  /** AdamW decoupled weight decay: 0, the default of HF TrainingArguments and of LLaMA-Factory. */
  weightDecay: number;
  /** Global L2 norm the gradients are clipped to (HF `max_grad_norm` 1.0). */
  maxGradNorm: number;
  /** Seeds each epoch's order and the dropout masks. */
  seed: number;
  /** Write a checkpoint every this many optimizer steps. */
  saveSteps: number;
  /**
   * Recompute each decoder layer's activations in backward instead of keeping them
   * (LlamaModel.gradientCheckpointing): memory for L x tokens x D instead of every intermediate,
   * at the cost of a second forward; the gradients are the same bit for bit.
   */
  gradientCheckpointing: boolean;
}

/** The folder inside a run's outDir that holds its resumable checkpoint. */
export const CHECKPOINT_DIR = "checkpoint";

/**
 * The options that leave a run's numbers as they are: the checkpoint interval (training resumes
 * bit for bit whatever it is) and gradient checkpointing (it recomputes the same activations).
 */
export const NON_DECIDING_OPTIONS = ["saveSteps", "gradientCheckpointing"] as const;
type NonDeciding = (typeof NON_DECIDING_OPTIONS)[number];

/** `options` less {@link NON_DECIDING_OPTIONS}: what two runs must share to give the same numbers. */
export function decidingOptions<T extends Partial<Record<NonDeciding, unknown>>>(options: T): Omit<T, NonDeciding> {
  return Object.fromEntries(Object.entries(options).filter(([k]) => !(NON_DECIDING_OPTIONS as readonly string[]).includes(k))) as Omit<T, NonDeciding>;
}

/** The paper's hyper-parameters (lr 5e-5, 3 epochs, batch 4 x accumulation 4, 10% warmup) and HF's defaults. */
export const TRAIN_DEFAULTS: TrainOptions = {
  lr: 5e-5,
  epochs: 3,
  batchSize: 4,
  gradAccum: 4,
  warmupRatio: 0.1,
  weightDecay: 0,
  maxGradNorm: 1.0,
  seed: 0,
  saveSteps: 50,
  gradientCheckpointing: false,
};

/** Progress after one optimizer step. */
export interface StepInfo {
  step: number;
  totalSteps: number;
  /** Epochs done, fractional. */
  epoch: number;
  /** Mean loss over the step's target tokens (nats per token). */
  loss: number;
  lr: number;
  /** Tokens (prompt and target, no padding) through forward and backward per second of this step. */
  tokensPerSecond: number;
  /** Estimated seconds to the end, from this session's mean step time. */
  etaSeconds: number;
}

/** Where results go and how progress is reported. */
export interface RunOptions {
  /**
   * The final adapter is written here (PEFT layout), and `<outDir>/checkpoint/` every
   * `saveSteps` steps while training; null writes nothing. The caller logs where the adapter
   * ends up (it may move the folder).
   */
  outDir: string | null;
  /** Continue from `<outDir>/checkpoint/` (start afresh, with a notice, when there is none). */
  resume?: boolean;
  /** `base_model_name_or_path` of the saved adapter config. */
  baseModel?: string | null;
  /** Where outDir is (default: the host's files, io/files.ts; in a browser, the OPFS's). */
  files?: Files;
  /** Receives progress lines (e.g. write them to stderr). */
  log?: (line: string) => void;
  /** Called after every optimizer step (and after its checkpoint, if one is due): the progress. */
  onStep?: (info: StepInfo) => void;
}

/** What {@link train} returns: optimizer steps taken and the loss history (training per step, validation per epoch). */
export interface TrainResult {
  steps: number;
  history: TrainerState["history"];
}

/**
 * What a schedule does that a user may not expect: linear warmup starts at lr 0 (HF's
 * get_cosine_schedule_with_warmup), so the first optimizer step changes nothing, and a run of
 * fewer than two steps trains nothing at all (the LoRA B matrices stay 0: the model is the base).
 * @returns a "warning: ..." line when nothing will be trained, a note when only step 1 is idle,
 *   null when step 1 already has a learning rate
 */
export function scheduleNote(lr: number, totalSteps: number, warmup: number): string | null {
  if (cosineWithWarmup(0, lr, totalSteps, warmup) !== 0) return null;
  if (totalSteps < 2) {
    return `warning: ${totalSteps} optimizer step, at learning rate 0 (the warmup starts at 0): nothing will be trained; give more pairs or epochs, or a smaller batch-size x grad-accum`;
  }
  return `step 1 runs at learning rate 0: the linear warmup over ${warmup} step(s) starts at 0, as HF's scheduler does`;
}

/** FNV-1a, 32 bits, of a sequence of integers: a cheap fingerprint of data and seeds. */
function fnv1a(values: Iterable<number>): number {
  let h = 0x811c9dc5;
  for (const v of values) {
    for (let k = 0; k < 4; k++) {
      h ^= (v >>> (8 * k)) & 0xff;
      h = Math.imul(h, 0x01000193) >>> 0;
    }
  }
  return h;
}

/** An independent seed for one random stream of a run (dropout, the order of epoch e). */
function streamSeed(seed: number, stream: number): number {
  return fnv1a([seed, stream]);
}
const DROPOUT_STREAM = -1;

/** The order of the training examples in epoch `epoch`: a seeded permutation of [0, n). */
function epochOrder(seed: number, epoch: number, n: number): number[] {
  return new Rng(streamSeed(seed, epoch)).shuffle(Array.from({ length: n }, (_, i) => i));
}

/** Number of tokens the model reads for `examples` (all but the last of each sequence) and their target count. */
function counts(examples: readonly Example[]): { tokens: number; targets: number } {
  let tokens = 0;
  let targets = 0;
  for (const e of examples) {
    tokens += e.ids.length - 1;
    targets += e.ids.length - e.promptLen;
  }
  return { tokens, targets };
}

/**
 * One optimizer step over an accumulation window of micro-batches. Each micro-batch's loss is
 * its summed target NLL divided by the window's target-token count N, so the accumulated
 * gradient is that of the mean over all N tokens, however the window is split (transformers
 * >= 4.46 `num_items_in_batch`; older versions averaged per-micro-batch means). Then the
 * gradients are clipped to `maxGradNorm`, AdamW steps at `lr`, and the gradients are cleared.
 * Each micro-batch runs inside `tidy`, so device memory returns to its level after every one.
 * @param opt AdamW over the trainable parameters (`adapter.params`)
 * @param window the micro-batches of this step, each a list of examples collated into one batch
 * @param lr learning rate of this step (from the schedule)
 * @param maxGradNorm global L2 norm the gradients are clipped to
 * @returns the window's mean loss (nats per target token), the gradients' global norm before
 *   clipping, and the tokens read. When the loss or the norm is not finite (NaN or infinite) no
 *   update is made: the gradients are cleared and the weights and moments stay as they were.
 */
export async function optimizerStep(
  model: LlamaModel,
  opt: AdamW,
  window: readonly (readonly Example[])[],
  lr: number,
  maxGradNorm: number,
): Promise<{ loss: number; gradNorm: number; tokens: number }> {
  const { tokens, targets: N } = counts(window.flat());
  let loss = 0;
  for (const examples of window) {
    const part = tidy(() => {
      const l = targetNllSum(model, collate(examples, model.device)).div(N);
      l.backward();
      return l;
    });
    loss += await part.item();
    part.dispose();
  }
  const norm = clipGradNorm(opt.params, maxGradNorm);
  const gradNorm = await norm.item();
  norm.dispose();
  if (Number.isFinite(loss) && Number.isFinite(gradNorm)) {
    opt.opts.lr = lr;
    opt.step();
  }
  opt.zeroGrad();
  return { loss, gradNorm, tokens };
}

/**
 * Training met a NaN or infinite loss or gradient norm: it stopped before that step changed the
 * adapter, so the last checkpoint holds the last good weights. The message names the step.
 */
export class NonFiniteTrainingError extends Error {
  override name = "NonFiniteTrainingError";
  constructor(
    /** The optimizer step (1-based) or validation that gave the value. */
    readonly step: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Trains `adapter` (already applied to `model`) on `data.train`, validating on `data.val`.
 *
 * Steps: each epoch shuffles the training examples (seeded per epoch), cuts them into
 * micro-batches of `batchSize` and those into windows of `gradAccum` (the last window of an
 * epoch may be shorter), one optimizer step per window ({@link optimizerStep}): total steps =
 * epochs * ceil(ceil(n / batchSize) / gradAccum). The learning rate follows
 * {@link cosineWithWarmup}. Dropout is on while training, off for validation.
 *
 * Checkpoints: every `saveSteps` steps (not after the last) `<outDir>/checkpoint/` is replaced
 * atomically with the adapter, AdamW moments and step count, the position in the data (epoch
 * order and next micro-batch), the dropout Rng state and the history; a run killed at any
 * moment loses at most `saveSteps` steps, and `resume` continues it with identical numerics on
 * the cpu device. On success the adapter is written to `outDir` and the checkpoint removed.
 *
 * @throws RangeError for empty training data or bad options; CheckpointError when a checkpoint
 *   exists without `resume`, or was made with other settings or data; NonFiniteTrainingError at
 *   the first step whose loss or gradient norm, or validation whose loss, is not finite, or
 *   when a LoRA weight to be saved is not finite: the adapter is not written and the last
 *   checkpoint is kept.
 */
export async function train(
  model: LlamaModel,
  adapter: LoraAdapter,
  data: { train: readonly Example[]; val: readonly Example[] },
  options: Partial<TrainOptions> & RunOptions,
): Promise<TrainResult> {
  const o: TrainOptions = { ...TRAIN_DEFAULTS };
  for (const k of Object.keys(o) as (keyof TrainOptions)[]) (o as Record<keyof TrainOptions, number | boolean>)[k] = options[k] ?? o[k];
  const { outDir, log = () => {} } = options;
  for (const k of ["epochs", "batchSize", "gradAccum", "saveSteps"] as const) {
    if (!Number.isInteger(o[k]) || o[k] < 1) throw new RangeError(`train: ${k} must be a positive integer, got ${o[k]}`);
  }
  if (data.train.length === 0) throw new RangeError("train: no training examples");

  const nTrain = data.train.length;
  const microPerEpoch = Math.ceil(nTrain / o.batchSize);
  const totalSteps = o.epochs * Math.ceil(microPerEpoch / o.gradAccum);
  const warmup = warmupSteps(totalSteps, o.warmupRatio);
  const opt = new AdamW(adapter.params, { lr: o.lr, weightDecay: o.weightDecay, beta1: 0.9, beta2: 0.999, eps: 1e-8 });
  const dropoutRng = new Rng(streamSeed(o.seed, DROPOUT_STREAM));
  // What a resumed run must share with the original (saveSteps may change).
  const hyper = decidingOptions(o);
  const settings = {
    lora: adapter.config,
    ...hyper,
    data: { train: nTrain, val: data.val.length, fingerprint: fnv1a([...data.train, ...data.val].flatMap((e) => [e.promptLen, ...e.ids])) },
  };
  const files = options.files ?? (await hostFiles());
  const checkpointDir = outDir === null ? null : files.join(outDir, CHECKPOINT_DIR);

  let state: TrainerState = {
    step: 0,
    epoch: 0,
    microBatch: 0,
    order: epochOrder(o.seed, 0, nTrain),
    dropoutRng: dropoutRng.state(),
    history: { train: [], val: [] },
  };
  const restored = checkpointDir && options.resume ? await loadCheckpoint(checkpointDir, model, adapter, opt, settings, files) : null;
  if (restored) {
    state = restored;
    dropoutRng.restore(state.dropoutRng);
    log(`resumed from ${checkpointDir} at step ${state.step}/${totalSteps}`);
  } else if (checkpointDir && (await files.latestDir(checkpointDir)) !== null) {
    throw new CheckpointError(checkpointDir, "a checkpoint exists: pass --resume (resume: true) to continue it, or remove it");
  } else if (options.resume) {
    log(`no checkpoint in ${checkpointDir ?? "(no output folder)"}; starting from scratch`);
  }
  log(`${nTrain} training and ${data.val.length} validation examples; ${totalSteps} optimizer steps (warmup ${warmup}), ${adapter.params.length} LoRA tensors`);
  const note = scheduleNote(o.lr, totalSteps, warmup);
  if (note) log(note);

  let lastCheckpoint: number | null = restored ? state.step : null;
  /** Stops training at a non-finite value, naming the step and the checkpoint to go back to. */
  const stop = (step: number, what: string): never => {
    opt.dispose();
    adapter.setDropoutRng(null);
    const kept =
      lastCheckpoint === null ? "no checkpoint was saved yet" : `the last good checkpoint, after step ${lastCheckpoint}, is kept in ${checkpointDir}`;
    throw new NonFiniteTrainingError(
      step,
      `train: ${what}; stopped without writing the adapter (${kept}). A learning rate too high (--lr ${o.lr}) or non-finite weights in the model or data are the usual causes`,
    );
  };
  /**
   * Before anything is saved: an update with a finite gradient can still overflow (a huge lr).
   * Returns the values read, by PEFT key, for the save to write without reading them again.
   */
  const checkWeights = async (step: number): Promise<Map<string, HostArray>> => {
    const values = new Map<string, HostArray>();
    for (const [path, m] of adapter.modules) {
      for (const [name, which, w] of [["lora_A", "A", m.lora_A], ["lora_B", "B", m.lora_B]] as const) {
        const host = await w.data();
        const bad = host.find((x) => !Number.isFinite(x));
        if (bad !== undefined) stop(step, `step ${step}/${totalSteps}: the updated ${path}.${name} holds ${bad}, not finite`);
        values.set(peftKey(path, which), host);
      }
    }
    return values;
  };
  const validate = async (): Promise<void> => {
    if (data.val.length === 0) return;
    adapter.setDropoutRng(null);
    const { loss } = await meanTargetLoss(model, data.val, o.batchSize);
    if (!Number.isFinite(loss)) stop(state.step, `the validation loss after step ${state.step} is ${loss}`);
    state.history.val.push({ step: state.step, epoch: state.epoch, loss });
    log(`validation after step ${state.step} (epoch ${state.epoch}): loss ${loss.toFixed(4)}`);
  };
  if (state.step === 0) await validate();

  const started = performance.now();
  const firstStep = state.step;
  model.gradientCheckpointing = o.gradientCheckpointing ? { rngs: [dropoutRng] } : null;
  while (state.step < totalSteps) {
    const t0 = performance.now();
    const end = Math.min(state.microBatch + o.gradAccum, microPerEpoch);
    const window: Example[][] = [];
    for (let k = state.microBatch; k < end; k++) {
      window.push(state.order.slice(k * o.batchSize, (k + 1) * o.batchSize).map((i) => data.train[i]!));
    }
    const lr = cosineWithWarmup(state.step, o.lr, totalSteps, warmup);
    adapter.setDropoutRng(dropoutRng);
    const { loss, gradNorm, tokens } = await optimizerStep(model, opt, window, lr, o.maxGradNorm);
    if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
      stop(state.step + 1, `step ${state.step + 1}/${totalSteps}: the loss is ${loss} and the gradient norm ${gradNorm}, not finite`);
    }
    state.step++;
    state.microBatch = end;
    state.history.train.push({ step: state.step, loss, lr });

    const now = performance.now();
    const info: StepInfo = {
      step: state.step,
      totalSteps,
      epoch: state.epoch + end / microPerEpoch,
      loss,
      lr,
      tokensPerSecond: tokens / ((now - t0) / 1000),
      etaSeconds: (((now - started) / 1000) * (totalSteps - state.step)) / (state.step - firstStep),
    };
    if (state.microBatch === microPerEpoch) {
      state.epoch++;
      await validate();
      state.microBatch = 0;
      state.order = state.epoch < o.epochs ? epochOrder(o.seed, state.epoch, nTrain) : [];
    }
    if (checkpointDir && state.step % o.saveSteps === 0 && state.step < totalSteps) {
      const values = await checkWeights(state.step);
      state.dropoutRng = dropoutRng.state();
      await saveCheckpoint(checkpointDir, adapter, opt, state, settings, options.baseModel ?? null, files, values);
      lastCheckpoint = state.step;
      log(`checkpoint at step ${state.step}: ${checkpointDir}`);
    }
    options.onStep?.(info);
  }
  const finalValues = outDir !== null ? await checkWeights(state.step) : null;
  adapter.setDropoutRng(null);
  model.gradientCheckpointing = null;
  opt.dispose();
  if (outDir !== null && checkpointDir !== null && finalValues !== null) {
    await saveAdapter(adapter, outDir, options.baseModel ?? null, files, finalValues);
    // The checkpoint, then the complete copy a crash mid-swap may have left beside it.
    await files.remove(checkpointDir);
    const left = await files.latestDir(checkpointDir);
    if (left !== null) await files.remove(left);
    // No "adapter written" line here: callers may move outDir (qalign align renames it), so
    // they name the adapter's final place.
  }
  return { steps: state.step, history: state.history };
}
