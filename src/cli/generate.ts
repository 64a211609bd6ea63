import { generate } from "../model/generate.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { adapterOption, CliError, deviceOption, int, modelOption, num, type OptionTable, type Values } from "./args.ts";
import { loadForCli } from "./model.ts";
import { Progress, quietOption } from "./progress.ts";

/** Defaults of the sampling options. */
const SAMPLING = { maxNewTokens: 32, temperature: 0, topP: 1, seed: 0 };

export const options = {
  ...modelOption,
  prompt: { type: "string", arg: "TEXT", required: true, help: "the text to continue (the tokenizer adds its start token)" },
  "max-new-tokens": { type: "string", arg: "N", help: "tokens to generate at most (fewer when an end-of-sequence token comes)", default: String(SAMPLING.maxNewTokens) },
  temperature: { type: "string", arg: "T", help: "softmax temperature of sampling; 0 is greedy (always the most likely token)", default: String(SAMPLING.temperature) },
  "top-p": { type: "string", arg: "P", help: "nucleus sampling: draw from the smallest set of tokens whose probability reaches P, in (0, 1]; 1 cuts nothing", default: String(SAMPLING.topP) },
  seed: { type: "string", arg: "S", help: "seeds the sampler (with temperature > 0)", default: String(SAMPLING.seed) },
  ...adapterOption,
  ...deviceOption,
  ...quietOption,
} as const satisfies OptionTable;

/**
 * `qalign generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T]
 * [--top-p P] [--seed S]`: prints the continuation to stdout as tokens arrive.
 */
export async function run(v: Values<typeof options>): Promise<void> {
  const prompt = v.prompt;
  const dir = v.model;
  const tokenizer = await loadTokenizer(dir);
  if (!tokenizer) throw new CliError(`generate: ${dir} has no tokenizer.json; use "qalign logits --ids" for token ids`);
  // Options are checked before the (slow) model load.
  const sampling = {
    maxNewTokens: int("generate", v, "max-new-tokens", SAMPLING.maxNewTokens, 1),
    temperature: num("generate", v, "temperature", SAMPLING.temperature, 0),
    topP: num("generate", v, "top-p", SAMPLING.topP, 0, 1, true), // (0, 1]
    seed: int("generate", v, "seed", SAMPLING.seed),
  };
  const model = await loadForCli("generate", v, new Progress({ quiet: v.quiet }));
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
