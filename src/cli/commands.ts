import type { OptionSpec, OptionTable, Values } from "./args.ts";

/**
 * The registry of `qalign` commands. Each command's module exports its option table
 * (`options`: every option with its --help line) and `run(values)`; the runner (main.ts) parses
 * the arguments with that table, so --help lists exactly the options the parser accepts.
 */
export interface CommandModule {
  options: OptionTable;
  /** The command's work, on the parsed options (method syntax: each module narrows `values`). */
  run(values: Values<OptionTable>): Promise<void>;
}

export interface Command {
  summary: string;
  load(): Promise<CommandModule>;
}

export const COMMANDS: Record<string, Command> = {
  logits: {
    summary: "print the logits of a token sequence as JSON {\"logits\": [[...], ...]} ([seq, vocab])",
    load: () => import("./logits.ts"),
  },
  generate: {
    summary: "continue a text prompt, streaming tokens as they come",
    load: () => import("./generate.ts"),
  },
  train: {
    summary: "LoRA question alignment: tune a model to translate questions into English, writing a PEFT adapter",
    load: () => import("./train.ts"),
  },
  plan: {
    summary: "the device memory a model needs: weights per dtype, KV cache or training activations, LoRA and AdamW state, against the binding limit",
    load: () => import("./plan.ts"),
  },
  merge: {
    summary: "fold a PEFT LoRA adapter into a checkpoint's weights, tensor by tensor, as a sharded Hugging Face checkpoint",
    load: () => import("./merge.ts"),
  },
  loss: {
    summary: "print the mean next-token loss of ids[P:] as JSON {\"loss\": x}",
    load: () => import("./loss.ts"),
  },
  // interp
  lens: {
    summary: "Logit Lens: answer-word probability per layer (prompt language vs English), entropy and top tokens, as SVG charts + JSON/CSV",
    load: () => import("./lens.ts"),
  },
  pca: {
    summary: "PCA of last-token hidden states per layer, coloured by language, and their correlation with English, as SVG charts + JSON/CSV",
    load: () => import("./pca.ts"),
  },
  prompt: {
    summary: "print the exact prompt of one test item as evaluation builds it; with --model also its token ids and each class's token set",
    load: () => import("./prompt.ts"),
  },
  // eval
  eval: {
    summary: "k-shot accuracy per language (constrained decoding over the label words) with 95% intervals, as a table; JSON/CSV with --out",
    load: () => import("./eval.ts"),
  },
  align: {
    summary: "question alignment end to end: evaluate, LoRA-tune on question translation only, evaluate again, report (no --model: tiny demo)",
    load: () => import("./align.ts"),
  },
};

/** `--model DIR` or `--interp`: an option as the usage line and the help table write it. */
function flag(name: string, spec: OptionSpec): string {
  return spec.type === "boolean" ? `--${name}` : `--${name} ${spec.arg ?? "VALUE"}`;
}

/** Flags longer than this put their description on the next line. */
const FLAG_COLUMN = 26;

/**
 * The --help text of a command: its usage line (the required options), its summary, and one line
 * per option with what it does, its default and its old spellings.
 */
function formatHelp(name: string, summary: string, options: OptionTable): string {
  const entries = Object.entries(options);
  const needed = entries.filter(([, s]) => s.required).map(([n, s]) => flag(n, s));
  const flags = entries.map(([n, s]) => flag(n, s));
  const width = Math.min(FLAG_COLUMN, Math.max(...flags.map((f) => f.length)));
  const lines = entries.map(([, s], i) => {
    const notes = [s.required ? "required" : "", s.needs ? `only with --${s.needs.option} ${s.needs.value}` : "", s.conflicts?.length ? `not with ${s.conflicts.map((c) => `--${c}`).join(", ")}` : "", s.default !== undefined ? `default: ${s.default}` : "", s.was?.length ? `old spelling: ${s.was.map((w) => `--${w}`).join(", ")}` : ""].filter(Boolean);
    const text = `${s.help}${notes.length ? ` (${notes.join("; ")})` : ""}`;
    const f = flags[i]!;
    return f.length > width ? `  ${f}\n  ${" ".repeat(width)}  ${text}` : `  ${f.padEnd(width)}  ${text}`;
  });
  return `usage: qalign ${name} ${[...needed, "[options]"].join(" ")}\n\n${summary}\n\noptions:\n${lines.join("\n")}\n`;
}

/** `qalign <name> --help`. @throws RangeError for an unknown command. */
export async function helpText(name: string): Promise<string> {
  const c = COMMANDS[name];
  if (!c) throw new RangeError(`no command "${name}"`);
  return formatHelp(name, c.summary, (await c.load()).options);
}
