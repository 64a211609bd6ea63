import type { Tokenizer } from "../model/tokenizer.ts";
import type { LlamaModel } from "../model/llama.ts";
import { DataError } from "../io/data_error.ts";
import { encodePairs, splitPairs, type QuestionPair } from "./data.ts";
import { applyLora, type ApplyLoraOptions, type LoraAdapter } from "./layer.ts";
import { train, type RunOptions, type TrainOptions, type TrainResult } from "./trainer.ts";

/**
 * The question-alignment training recipe (Zhang et al. 2024, §3 and §4.1): from question pairs
 * to a trained LoRA adapter, in the order the paper's training code (LLaMA-Factory) takes:
 * seeded split into training and validation pairs, tokenisation with truncation, LoRA on the
 * frozen model, then the trainer. `qalign train` and the align experiment both run it.
 */

/** Everything that decides a training run's numbers besides the model and the pairs. */
export interface TrainingRecipe {
  /** LoRA on the base model (PEFT names: target_modules, r, lora_alpha, lora_dropout). */
  lora: Omit<ApplyLoraOptions, "seed">;
  /** Pairs kept in all, a seeded subset (see splitPairs); default all. */
  maxSamples?: number;
  /** Share of the kept pairs held out for the validation loss, in [0, 1). */
  valSize: number;
  /** Longest pair in tokens, prompt and target (longer ones are truncated, see encodePairs). */
  maxLength: number;
  /** Seeds lora_A's initialisation, the split, each epoch's order and the dropout masks. */
  seed: number;
  /** Trainer hyper-parameters; the unset ones are TRAIN_DEFAULTS (the paper's). */
  hyper: Partial<Omit<TrainOptions, "seed">>;
}

/** The recipe's defaults besides the trainer's and LoRA's: pairs up to 512 tokens, 5% held out. */
export const RECIPE_DEFAULTS = { maxLength: 512, valSize: 0.05 } as const;

/** The pairs a run trains on, for the caller to report. */
export interface RecipeData {
  /** Pairs given. */
  pairs: number;
  train: number;
  val: number;
  /** Pairs longer than maxLength tokens, truncated. */
  truncated: number;
}

/** What {@link trainOnPairs} produced. */
export interface RecipeResult {
  adapter: LoraAdapter;
  data: RecipeData;
  result: TrainResult;
}

/**
 * Trains a LoRA adapter on `model` (which must carry none) to translate each pair's `input`
 * into its `answer`: applies LoRA (so a bad LoRA setting fails before any tokenisation), splits
 * and tokenises the pairs (targets end with the eos token), reports their counts through
 * `run.onData`, then runs {@link train} with `run`'s output folder, resume switch and progress.
 * @throws DataError (naming run.baseModel) when neither tokenizer nor config defines an eos
 *   token; RangeError for a bad LoRA setting, split, maxLength or hyper-parameter (as applyLora,
 *   splitPairs, encodePairs and train do); CheckpointError as train does.
 */
export async function trainOnPairs(
  model: LlamaModel,
  tokenizer: Tokenizer,
  pairs: readonly QuestionPair[],
  recipe: TrainingRecipe,
  run: RunOptions & { onData?: (data: RecipeData) => void },
): Promise<RecipeResult> {
  const { onData, ...runOptions } = run;
  const eosId = tokenizer.eosId ?? model.config.eos_token_id[0];
  if (eosId === undefined) throw new DataError(run.baseModel ?? "the model", "defines no eos token (tokenizer_config.json or config.json), which ends every training target");
  const adapter = applyLora(model, { ...recipe.lora, seed: recipe.seed });
  const split = splitPairs(pairs, { maxSamples: recipe.maxSamples, valSize: recipe.valSize, seed: recipe.seed });
  const trainSet = encodePairs(split.train, tokenizer, { eosId, maxLength: recipe.maxLength });
  const valSet = encodePairs(split.val, tokenizer, { eosId, maxLength: recipe.maxLength });
  const data: RecipeData = { pairs: pairs.length, train: split.train.length, val: split.val.length, truncated: trainSet.truncated + valSet.truncated };
  onData?.(data);
  const result = await train(model, adapter, { train: trainSet.examples, val: valSet.examples }, { ...recipe.hyper, ...runOptions, seed: recipe.seed });
  return { adapter, data, result };
}
