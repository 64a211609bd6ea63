import { describeToken } from "../eval/label_tokens.ts";
import { buildPrompts, classTokenIds, promptIds } from "../eval/protocol.ts";
import { resolveDataSource } from "../eval/default_data.ts";
import { CliError, int, type OptionTable, type Values } from "./args.ts";
import { dataOption, langsOption, PROMPT_OPTIONS, PROTOCOL_OPTIONS, protocolOptions, taskOption, tokenizerFor } from "./eval.ts";

export const options = {
  ...PROTOCOL_OPTIONS,
  task: PROMPT_OPTIONS.task,
  lang: { type: "string", arg: "L", required: true, help: "the language of the test file (one code)" },
  index: { type: "string", arg: "I", required: true, help: "the item's 0-based index in the test file" },
  model: { type: "string", arg: "DIR", help: "a checkpoint folder whose tokenizer gives the token ids and class token sets (the weights are not read)" },
  json: { type: "boolean", help: "print one JSON object {prompt, input_ids, label_token_ids} instead of text" },
  ...dataOption,
} as const satisfies OptionTable;

/**
 * `qalign prompt --task T --lang L --index I [--protocol paper|qalign] [--labels english|native]
 * [--shots K] [--seed S] [--model DIR] [--json] [--data DIR]`: the exact prompt of item I (its
 * 0-based index in the test file) as evaluation builds it, for auditing a run. With --model (only
 * its tokenizer is read) also the token ids the model runs and each class's token set, ids and
 * pieces (a token that ends inside a character is shown as its bytes). Plain output is the
 * prompt and a newline, then the tokens; --json prints one object {"prompt", "input_ids",
 * "label_token_ids": {"<English class word>": [...]}} (the last two with --model).
 * @throws CliError for bad options, an index outside the file, or an item that the qalign
 *   protocol uses as a demonstration; DataError for bad data.
 */
export async function run(v: Values<typeof options>): Promise<void> {
  const task = taskOption("prompt", v);
  const langs = langsOption("prompt", v, "lang", v.lang);
  if (langs.length !== 1) throw new CliError("prompt: --lang takes one language");
  const lang = langs[0]!;
  const index = int("prompt", v, "index", 0, 0);
  const chosen = protocolOptions("prompt", v, task);
  const tokenizer = typeof v.model === "string" ? await tokenizerFor("prompt", v.model) : null;
  const source = await resolveDataSource(v.data);
  const built = await buildPrompts(source, task, lang, chosen);
  const k = built.items.findIndex((it) => it.index === index);
  if (k < 0) {
    const n = built.data.items.length + built.data.skipped.length;
    if (built.demos.includes(index)) throw new CliError(`prompt: item ${index} of ${built.data.file} is a demonstration under --protocol qalign (seed ${chosen.seed}), not a scored item`);
    throw new CliError(`prompt: --index ${index} is not an item of ${built.data.file} (0-based, ${n} items)`);
  }
  const prompt = built.prompts[k]!;
  if (!tokenizer) {
    process.stdout.write(v.json ? JSON.stringify({ prompt }) + "\n" : `${prompt}\n`);
    return;
  }
  const ids = promptIds(tokenizer, built, prompt);
  const sets = classTokenIds(tokenizer, built);
  if (v.json) {
    const labelTokenIds = Object.fromEntries(task.classes.map((c, i) => [c, sets[i]!]));
    process.stdout.write(JSON.stringify({ prompt, input_ids: ids, label_token_ids: labelTokenIds }) + "\n");
    return;
  }
  const lines = [
    prompt,
    "",
    `protocol ${built.protocol}, ${built.labels} answer words, ${built.shots}-shot, ${built.tokenRule === "authors" ? "the authors' token sets" : "qalign's byte-level token sets"}; item ${index} of ${built.data.file}, class ${task.classes[built.items[k]!.label]}`,
    ...(built.continuation ? [`the prompt's tokens are followed by the tokens of "${built.continuation}" (the authors' rule for answer words that begin alike)`] : []),
    `input_ids (${ids.length}): ${ids.join(",")}`,
    ...task.classes.map((c, i) => `${c} ("${built.scoredWords[i]}", ${sets[i]!.length} tokens): ${sets[i]!.map((id) => `${id} ${describeToken(tokenizer, id)}`).join(", ")}`),
  ];
  process.stdout.write(lines.join("\n") + "\n");
}
