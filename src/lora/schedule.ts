/**
 * The learning-rate schedule of the paper's runs: linear warmup, then cosine decay to zero, as
 * transformers' `get_cosine_schedule_with_warmup` (optimization.py, num_cycles 0.5) with the
 * warmup length of `TrainingArguments.get_warmup_steps`: ceil(warmupRatio * totalSteps).
 */

/** Warmup steps for a ratio of the optimizer steps: ceil(ratio * total), as HF. */
export function warmupSteps(totalSteps: number, warmupRatio: number): number {
  return Math.ceil(totalSteps * warmupRatio);
}

/**
 * The learning rate of optimizer step `step` (0-based; HF steps the scheduler after the
 * optimizer, so step 0 runs at the first value):
 *   lr * step / warmup                                       for step < warmup
 *   lr * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))   after, floored at 0
 * so with warmup > 0 the first update has lr 0, as in HF.
 * @param lr the peak learning rate
 * @param totalSteps optimizer steps of the whole run
 * @param warmup from {@link warmupSteps}
 */
export function cosineWithWarmup(step: number, lr: number, totalSteps: number, warmup: number): number {
  if (step < warmup) return (lr * step) / Math.max(1, warmup);
  const progress = (step - warmup) / Math.max(1, totalSteps - warmup);
  return lr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}
