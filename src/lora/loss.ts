import type { LlamaModel } from "../model/llama.ts";
import type { Backend } from "../tensor/backend.ts";
import { noGrad } from "../tensor/autograd.ts";
import { tensor } from "../tensor/ops/create.ts";
import { crossEntropy } from "../tensor/ops/cross_entropy.ts";
import { embedding } from "../tensor/ops/embedding.ts";
import { tidy } from "../tensor/scope.ts";
import type { Tensor } from "../tensor/tensor.ts";

/**
 * The question-alignment objective (Zhang et al. 2024, §3): the causal-LM cross-entropy of the
 * English question given the source-language question and the instruction line. As in Hugging
 * Face training code, the prompt carries label -100: only target tokens count.
 *
 * For a sequence s_0 .. s_{n-1} whose first P tokens are the prompt, the loss is
 *   (1 / (n - P)) * sum_{j = P}^{n-1} -log p(s_j | s_0 .. s_{j-1}),
 * and for a batch, or an accumulation of batches, the mean over all its target tokens.
 */

/** One training sequence: `ids` = prompt tokens then target tokens; the loss covers ids[promptLen:]. */
export interface Example {
  ids: number[];
  /** Number of prompt (context) tokens, at least 1: the first token is never predicted. */
  promptLen: number;
}

/**
 * A batch of examples, right-padded. Position t of row b predicts ids[b][t + 1], so the model
 * reads every token but the last of each sequence: T = max length - 1.
 *
 * Right padding needs no attention mask: under the causal mask a real token attends only to
 * earlier positions, which are all real, and its rotary position is its index, as unpadded. The
 * outputs at padded positions are never read.
 */
export interface Batch {
  /** i32 [B, T], padding id 0. */
  inputIds: Tensor;
  /** i32 [N]: flat index b * T + t of each position whose next token is a target. */
  rows: Tensor;
  /** i32 [N]: the target token each of those positions predicts. */
  targets: Tensor;
  /** N, the number of target tokens. */
  targetCount: number;
  /** Real (unpadded) tokens fed to the model, for throughput. */
  tokenCount: number;
}

/**
 * Builds a right-padded batch on `device` (the tensors belong to the caller; create it inside
 * `tidy`).
 * @throws RangeError when examples is empty, or an example has promptLen < 1 or no target token.
 */
export function collate(examples: readonly Example[], device: Backend): Batch {
  if (examples.length === 0) throw new RangeError("collate: no examples");
  for (const [i, e] of examples.entries()) {
    if (!(e.promptLen >= 1 && e.promptLen < e.ids.length)) {
      throw new RangeError(`collate: example ${i} has promptLen ${e.promptLen} and ${e.ids.length} tokens; need 1 <= promptLen < length`);
    }
  }
  const T = Math.max(...examples.map((e) => e.ids.length)) - 1;
  const ids = new Int32Array(examples.length * T);
  const rows: number[] = [];
  const targets: number[] = [];
  let tokenCount = 0;
  examples.forEach((e, b) => {
    ids.set(e.ids.slice(0, -1), b * T);
    tokenCount += e.ids.length - 1;
    // Target s_j (j >= promptLen) is predicted at position j - 1.
    for (let j = e.promptLen; j < e.ids.length; j++) {
      rows.push(b * T + j - 1);
      targets.push(e.ids[j]!);
    }
  });
  return {
    inputIds: tensor(ids, { device, shape: [examples.length, T] }),
    rows: tensor(Int32Array.from(rows), { device }),
    targets: tensor(Int32Array.from(targets), { device }),
    targetCount: targets.length,
    tokenCount,
  };
}

/**
 * Sum over the batch's target tokens of -log p(target | preceding tokens): a scalar with the
 * model's gradient graph. Divide by the number of target tokens (of the batch, or of a whole
 * accumulation window) for the mean.
 *
 * Only the N target positions go through the final norm and lm_head: the last hidden states
 * [B*T, D] are gathered to [N, D] first (`embedding` of rows is a row gather whose gradient
 * scatters back), which skips the [B*T - N, V] logits that the loss would ignore anyway.
 */
export function targetNllSum(model: LlamaModel, batch: Batch): Tensor {
  const { hiddenStates } = model.forward(batch.inputIds, { logits: "none", outputHiddenStates: true });
  const last = hiddenStates![hiddenStates!.length - 1]!;
  const picked = embedding(last.reshape([-1, model.config.hidden_size]), batch.rows);
  const logits = model.unembed(model.finalNorm(picked)); // [N, V]
  return crossEntropy(logits, batch.targets, { reduction: "sum" });
}

/**
 * The mean loss over all target tokens of `examples` (token-weighted across batches), without
 * gradients, in batches of `batchSize`; memory is released after each batch.
 * @returns the mean negative log-likelihood (nats per token) and the number of target tokens
 */
export async function meanTargetLoss(model: LlamaModel, examples: readonly Example[], batchSize: number): Promise<{ loss: number; tokens: number }> {
  let sum = 0;
  let tokens = 0;
  for (let i = 0; i < examples.length; i += batchSize) {
    const { nll, count } = noGrad(() =>
      tidy(() => {
        const batch = collate(examples.slice(i, i + batchSize), model.device);
        return { nll: targetNllSum(model, batch), count: batch.targetCount };
      }),
    );
    sum += await nll.item();
    nll.dispose();
    tokens += count;
  }
  return { loss: tokens > 0 ? sum / tokens : NaN, tokens };
}
