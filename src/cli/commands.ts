/** The registry of `qalign` commands. Each entry's module holds its options and its work. */
export interface Command {
  summary: string;
  usage: string;
  run(args: string[]): Promise<void>;
}

const lazy = (load: () => Promise<{ run(args: string[]): Promise<void> }>) => async (args: string[]) => (await load()).run(args);

export const COMMANDS: Record<string, Command> = {
  logits: {
    summary: "print the logits of a token sequence as JSON {\"logits\": [[...], ...]} ([seq, vocab])",
    usage: "--model DIR --ids 5,17,42 [--adapter DIR] [--device cpu|webgpu|auto]",
    run: lazy(() => import("./logits.ts")),
  },
  generate: {
    summary: "continue a text prompt, streaming tokens as they come",
    usage: "--model DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--adapter DIR] [--device ...]",
    run: lazy(() => import("./generate.ts")),
  },
};
