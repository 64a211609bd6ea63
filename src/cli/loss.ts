import { meanTargetLoss } from "../lora/loss.ts";
import { adapterOption, CliError, deviceOption, int, intList, modelOption, type OptionTable, type Values } from "./args.ts";
import { loadForCli } from "./model.ts";
import { Progress, quietOption } from "./progress.ts";

export const options = {
  ...modelOption,
  ids: { type: "string", arg: "5,17,42,...", required: true, help: "the token ids, comma-separated: the prompt, then the tokens whose loss is taken" },
  "prompt-len": { type: "string", arg: "P", required: true, help: "how many leading ids are the prompt (no loss on them), in [1, ids - 1]" },
  ...adapterOption,
  ...deviceOption,
  ...quietOption,
} as const satisfies OptionTable;

/**
 * `qalign loss --model DIR [--adapter DIR] --ids 5,17,42,... --prompt-len P`: one JSON line
 * {"loss": x}, the mean negative log-likelihood (nats per token) of ids[P:], each token given
 * all tokens before it; the training objective of `qalign train` for one sequence.
 * @throws CliError for bad options, and when the loss is NaN or infinite (non-finite weights).
 */
export async function run(v: Values<typeof options>): Promise<void> {
  const ids = intList("loss", "ids", v.ids);
  if (ids.length < 2) throw new CliError("loss: --ids needs at least 2 tokens");
  const promptLen = int("loss", v, "prompt-len", 0, 1, ids.length - 1);
  const model = await loadForCli("loss", v, new Progress({ quiet: v.quiet }));
  const V = model.config.vocab_size;
  const bad = ids.findIndex((id) => id < 0 || id >= V);
  if (bad >= 0) throw new CliError(`loss: --ids[${bad}] = ${ids[bad]} is outside the vocabulary [0, ${V})`);
  const { loss } = await meanTargetLoss(model, [{ ids, promptLen }], 1);
  // JSON has no NaN or Infinity: {"loss": null} with exit 0 would pass for a result.
  if (!Number.isFinite(loss)) {
    const weights = typeof v.adapter === "string" ? `the checkpoint ${v.model} or the adapter ${v.adapter}` : `the checkpoint ${v.model}`;
    throw new CliError(`loss: the loss is not finite (${loss}); ${weights} may hold non-finite (NaN or Inf) weights`);
  }
  process.stdout.write(JSON.stringify({ loss }) + "\n");
}
