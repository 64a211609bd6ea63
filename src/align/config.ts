import type { DataIssue } from "../io/data_error.ts";
import type { Provenance } from "../io/provenance.ts";
import type { TrainingRecipe } from "../lora/recipe.ts";
import type { TrainOptions, TrainResult } from "../lora/trainer.ts";
import type { EvalOptions, LanguageResult } from "../eval/evaluate.ts";
import type { Lang } from "../eval/languages.ts";
import { TASKS, type TaskId } from "../eval/tasks.ts";

/**
 * The settings and results of one question-alignment run (Zhang et al. 2024, arXiv 2405.13816):
 * what run.ts runs, folder.ts fingerprints and report.ts writes.
 */

/**
 * Settings of the LoRA training: the training recipe of `qalign train` (PEFT's names in `lora`),
 * every trainer setting the CLI takes spelled out; its seed is the run's evaluation seed.
 */
export type AlignTraining = Omit<TrainingRecipe, "seed" | "hyper"> & { hyper: Pick<TrainOptions, "lr" | "epochs" | "batchSize" | "gradAccum" | "saveSteps" | "gradientCheckpointing"> };

export interface AlignConfig {
  /** The base checkpoint's folder. */
  modelDir: string;
  /** The model is the tiny random checkpoint: the report says its accuracy means nothing. */
  tiny: boolean;
  task: TaskId;
  /** Whose question files train the adapter (only snli has them in the release). */
  trainTask: TaskId;
  /** Question-translation source languages. */
  train: Lang[];
  /** The language questions are translated into (default en). */
  target: Lang;
  /** Evaluation languages. */
  langs: Lang[];
  evaluation: Pick<EvalOptions, "protocol" | "labels" | "limit" | "shots" | "mode" | "scoring" | "seed" | "batchSize" | "maxLength">;
  training: AlignTraining;
  interp: boolean;
  out: string;
}

/** What training produced, as saved in adapter/training.json. */
export interface TrainingSummary {
  pairs: number;
  train: number;
  val: number;
  truncated: number;
  issues: DataIssue[];
  steps: number;
  history: TrainResult["history"];
  seconds: number;
}

export interface AlignResults {
  config: AlignConfig;
  /** Every setting the evaluation protocol implies, in words (protocolSettings). */
  protocol: Record<string, string>;
  /** What ran, on what, from which files (src/io/provenance.ts); null when the caller gave none. */
  provenance: Provenance | null;
  data: string;
  base: LanguageResult[];
  aligned: LanguageResult[];
  training: TrainingSummary;
  /** Acc: the mean over languages, base and aligned. */
  average: { base: number; aligned: number };
  files: string[];
}

/** The only task whose question-translation files the release holds. */
export const QUESTION_TASK: TaskId = "snli";

/** Why `trainTask` cannot be trained on: the release has question files for snli only. */
export function trainTaskMessage(trainTask: TaskId): string {
  return (
    `question-translation files exist for snli only (snli/snli_<lang>10k_train_question.json for de es it sw zh); ` +
    `the paper's ${TASKS[trainTask].title} question files are not in the release, so --train-task ${trainTask} cannot be trained. ` +
    `Use --train-task snli (the default) to align on SNLI questions and evaluate --task ${trainTask}`
  );
}
