import { noGrad } from "../tensor/autograd.ts";
import { tensor } from "../tensor/ops/create.ts";
import { loadForCli } from "./model.ts";
import { CliError, deviceOption, intList, parse, required } from "./args.ts";

/**
 * `qalign logits --model DIR --ids 5,17,42 [--adapter DIR] [--device ...]`: one JSON object
 * {"logits": [[...V], ...T]} on stdout, nothing else.
 */
export async function run(args: string[]): Promise<void> {
  const v = parse("logits", args, { model: { type: "string" }, ids: { type: "string" }, adapter: { type: "string" }, ...deviceOption });
  const ids = intList("logits", "ids", required("logits", v, "ids"));
  const model = await loadForCli("logits", v);
  const V = model.config.vocab_size;
  const bad = ids.findIndex((id) => id < 0 || id >= V);
  if (bad >= 0) throw new CliError(`logits: --ids[${bad}] = ${ids[bad]} is outside the vocabulary [0, ${V})`);
  const logits = noGrad(() => model.forward(tensor(Int32Array.from(ids), { device: model.device, shape: [1, ids.length] })).logits!);
  const flat = await logits.data();
  const rows = Array.from({ length: ids.length }, (_, t) => Array.from(flat.subarray(t * V, (t + 1) * V)));
  process.stdout.write(JSON.stringify({ logits: rows }) + "\n");
}
