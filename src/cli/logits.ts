import { noGrad } from "../tensor/autograd.ts";
import { tensor } from "../tensor/ops/create.ts";
import { loadForCli } from "./model.ts";
import { Progress, quietOption } from "./progress.ts";
import { adapterOption, CliError, deviceOption, intList, modelOption, type OptionTable, type Values } from "./args.ts";

export const options = {
  ...modelOption,
  ids: { type: "string", arg: "5,17,42", required: true, help: "the token ids, comma-separated (the sequence, batch 1)" },
  ...adapterOption,
  ...deviceOption,
  ...quietOption,
} as const satisfies OptionTable;

/**
 * `qalign logits --model DIR --ids 5,17,42 [--adapter DIR] [--device ...]`: one JSON object
 * {"logits": [[...V], ...T]} on stdout, nothing else.
 * @throws CliError for bad options, and when a logit is NaN or infinite (JSON would print null).
 */
export async function run(v: Values<typeof options>): Promise<void> {
  const ids = intList("logits", "ids", v.ids);
  const model = await loadForCli("logits", v, new Progress({ quiet: v.quiet }));
  const V = model.config.vocab_size;
  const outside = ids.findIndex((id) => id < 0 || id >= V);
  if (outside >= 0) throw new CliError(`logits: --ids[${outside}] = ${ids[outside]} is outside the vocabulary [0, ${V})`);
  const logits = noGrad(() => model.forward(tensor(Int32Array.from(ids), { device: model.device, shape: [1, ids.length] })).logits!);
  const flat = await logits.data();
  const bad = flat.findIndex((x) => !Number.isFinite(x));
  if (bad >= 0) {
    const weights = typeof v.adapter === "string" ? `the checkpoint ${v.model} or the adapter ${v.adapter}` : `the checkpoint ${v.model}`;
    throw new CliError(`logits: logit [${Math.floor(bad / V)}][${bad % V}] is not finite (${flat[bad]}); ${weights} may hold non-finite (NaN or Inf) weights`);
  }
  const rows = Array.from({ length: ids.length }, (_, t) => Array.from(flat.subarray(t * V, (t + 1) * V)));
  process.stdout.write(JSON.stringify({ logits: rows }) + "\n");
}
