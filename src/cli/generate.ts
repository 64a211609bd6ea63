import { generate } from "../model/generate.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { CliError, deviceOption, int, num, parse, required } from "./args.ts";
import { loadForCli } from "./model.ts";

/**
 * `qalign generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T]
 * [--top-p P] [--seed S]`: prints the continuation to stdout as tokens arrive.
 */
export async function run(args: string[]): Promise<void> {
  const v = parse("generate", args, {
    model: { type: "string" },
    prompt: { type: "string" },
    "max-new-tokens": { type: "string" },
    temperature: { type: "string" },
    "top-p": { type: "string" },
    seed: { type: "string" },
    adapter: { type: "string" },
    ...deviceOption,
  });
  const prompt = required("generate", v, "prompt");
  const dir = required("generate", v, "model");
  const tokenizer = await loadTokenizer(dir);
  if (!tokenizer) throw new CliError(`generate: ${dir} has no tokenizer.json; use "qalign logits --ids" for token ids`);
  // Options are checked before the (slow) model load.
  const sampling = {
    maxNewTokens: int("generate", v, "max-new-tokens", 32, 1),
    temperature: num("generate", v, "temperature", 0, 0),
    topP: num("generate", v, "top-p", 1, 0, 1, true), // (0, 1]
    seed: int("generate", v, "seed", 0),
  };
  const model = await loadForCli("generate", v);
  const promptIds = tokenizer.encode(prompt, { addSpecialTokens: true });
  // Decode the whole continuation each time and print what is new: multi-byte characters
  // split across byte-fallback tokens appear once complete.
  const ids: number[] = [];
  let printed = "";
  await generate(model, promptIds, {
    ...sampling,
    eosTokenIds: tokenizer.eosId !== null ? [tokenizer.eosId, ...model.config.eos_token_id] : undefined,
    onToken: (id) => {
      ids.push(id);
      const text = tokenizer.decode(ids);
      if (!text.endsWith("\uFFFD")) {
        process.stdout.write(text.slice(printed.length));
        printed = text;
      }
    },
  });
  process.stdout.write("\n");
}
