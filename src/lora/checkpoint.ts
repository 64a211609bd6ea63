import type { LlamaModel } from "../model/llama.ts";
import { CheckpointError, openSafetensors, writeSafetensors, type TensorToWrite } from "../model/safetensors.ts";
import type { HostArray } from "../tensor/dtype.ts";
import { tensor } from "../tensor/ops/create.ts";
import type { AdamW } from "../tensor/optim.ts";
import { hostFiles, type Files } from "../io/files.ts";
import type { LoraAdapter } from "./layer.ts";
import { readAdapterWeights, saveAdapter, setAdapterWeights } from "./peft.ts";

/**
 * Training checkpoints: everything a run needs to continue bit for bit on the cpu device.
 * A checkpoint is a folder, replaced atomically as a whole (`Files.replaceDir`, io/files.ts), holding
 *   adapter_config.json, adapter_model.safetensors   the adapter, in PEFT layout (loadable as is)
 *   optimizer.safetensors   AdamW moments, `<PEFT key>.exp_avg` and `.exp_avg_sq` (torch's names), F32
 *   trainer_state.json      {@link TrainerState} plus the AdamW step count and the run's settings
 */

const OPTIMIZER_FILE = "optimizer.safetensors";
const STATE_FILE = "trainer_state.json";

/** One logged training step: the mean loss over the window's target tokens, and the lr used. */
export interface TrainLogEntry {
  step: number;
  loss: number;
  lr: number;
}

/** One validation: after `step` optimizer steps (0: before training), at the end of epoch `epoch`. */
export interface EvalEntry {
  step: number;
  epoch: number;
  loss: number;
}

/** Where a run stands between two optimizer steps. */
export interface TrainerState {
  /** Optimizer steps done. */
  step: number;
  /** Current epoch, 0-based (equals the number of epochs once training is over). */
  epoch: number;
  /** Index of the next micro-batch within the epoch. */
  microBatch: number;
  /** This epoch's order of the training examples (a permutation of their indices). */
  order: number[];
  /** State of the dropout Rng (`Rng.state()`). */
  dropoutRng: number[];
  history: { train: TrainLogEntry[]; val: EvalEntry[] };
}

/**
 * Writes a checkpoint folder `dir` atomically.
 * @param settings the run's settings, compared on resume (see {@link loadCheckpoint})
 * @param files where to write (default: the host's, io/files.ts)
 * @param values the adapter's parameter values already read from the device (see {@link saveAdapter})
 */
export async function saveCheckpoint(
  dir: string,
  adapter: LoraAdapter,
  opt: AdamW,
  state: TrainerState,
  settings: Record<string, unknown>,
  baseModel: string | null,
  files?: Files,
  values?: ReadonlyMap<string, HostArray>,
): Promise<void> {
  const host = files ?? (await hostFiles());
  const moments: Record<string, TensorToWrite> = {};
  for (const [key, p] of adapter.namedParams()) {
    const { m, v } = opt.state(p);
    moments[`${key}.exp_avg`] = { dtype: "F32", shape: [...p.shape], data: Float32Array.from(await m.data()) };
    moments[`${key}.exp_avg_sq`] = { dtype: "F32", shape: [...p.shape], data: Float32Array.from(await v.data()) };
  }
  await host.replaceDir(dir, async (tmp) => {
    await saveAdapter(adapter, tmp, baseModel, host, values);
    await writeSafetensors(host.join(tmp, OPTIMIZER_FILE), moments, undefined, host);
    await host.writeAtomic(host.join(tmp, STATE_FILE), [JSON.stringify({ version: 1, adamStep: opt.stepCount, settings, ...state })]);
  });
}

/**
 * Restores the checkpoint in `dir` (or the `<dir>.old` a crash may have left) into `adapter`'s
 * parameters and `opt`'s moments and step count, in place.
 * @param settings this run's settings: each must equal the checkpoint's
 * @param files where `dir` is (default: the host's, io/files.ts)
 * @returns the trainer state, or null when there is no checkpoint
 * @throws CheckpointError naming the file (and setting or tensor) for a setting that differs, a
 *   missing or malformed file, or tensors that do not fit the adapter.
 */
export async function loadCheckpoint(
  dir: string,
  model: LlamaModel,
  adapter: LoraAdapter,
  opt: AdamW,
  settings: Record<string, unknown>,
  files?: Files,
): Promise<TrainerState | null> {
  const host = files ?? (await hostFiles());
  const src = await host.latestDir(dir);
  if (src === null) return null;
  const stateFile = host.join(src, STATE_FILE);
  let saved: TrainerState & { version: number; adamStep: number; settings: Record<string, unknown> };
  try {
    saved = JSON.parse(await host.readText(stateFile));
  } catch (e) {
    // A disk that filled up (or an edit) cut it short: without it the steps saved cannot continue.
    throw new CheckpointError(stateFile, `cannot be read back (${(e as Error).message}); remove ${src} to train again from the start`);
  }
  if (saved.version !== 1) throw new CheckpointError(stateFile, `unknown version ${saved.version}`);
  const counts = [saved.step, saved.epoch, saved.microBatch, saved.adamStep];
  if (!counts.every(Number.isInteger) || !Array.isArray(saved.order) || !Array.isArray(saved.dropoutRng) || saved.dropoutRng.length !== 4) {
    throw new CheckpointError(stateFile, "malformed: step, epoch, microBatch, adamStep, order or dropoutRng is missing or of the wrong type");
  }
  for (const [key, value] of Object.entries(settings)) {
    const was = JSON.stringify(saved.settings?.[key]);
    if (was !== JSON.stringify(value)) {
      throw new CheckpointError(stateFile, `was written with ${key} = ${was}, this run has ${JSON.stringify(value)}; resume with the same settings or remove ${dir}`);
    }
  }
  setAdapterWeights(adapter, await readAdapterWeights(src, model, adapter.config, host));
  const f = await openSafetensors(host.join(src, OPTIMIZER_FILE), host);
  try {
    for (const [key, p] of adapter.namedParams()) {
      const { m, v } = opt.state(p);
      for (const [suffix, t] of [["exp_avg", m], ["exp_avg_sq", v]] as const) {
        const name = `${key}.${suffix}`;
        if (!f.has(name) || f.info(name).shape.join() !== p.shape.join()) {
          throw new CheckpointError(f.file, `missing, or not of the parameter's shape [${p.shape}]`, name);
        }
        const stored = tensor(await f.readF32(name), { device: p.backend, shape: p.shape });
        t.backend.assign(t, stored);
        stored.dispose();
      }
    }
  } finally {
    await f.close();
  }
  opt.stepCount = saved.adamStep;
  const { step, epoch, microBatch, order, dropoutRng, history } = saved;
  return { step, epoch, microBatch, order, dropoutRng, history };
}
