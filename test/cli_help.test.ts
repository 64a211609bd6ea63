import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { TINY_DEFAULTS } from "../src/cli/align.ts";
import { CliError, parse, type OptionSpec, type OptionTable } from "../src/cli/args.ts";
import { COMMANDS, helpText } from "../src/cli/commands.ts";
import { trainingRecipe, TRAINING_OPTIONS } from "../src/cli/train.ts";
import { DEFAULT_PROTOCOL } from "../src/eval/protocol.ts";
import { TASKS } from "../src/eval/tasks.ts";
import { LORA_DEFAULTS } from "../src/lora/layer.ts";
import { TRAIN_DEFAULTS } from "../src/lora/trainer.ts";
import { ROOT, runCli } from "./helpers/cli.ts";

/**
 * `--help` against the parser: every command's help lists exactly the options its parser accepts,
 * each with a description, and the defaults it shows are the values the parsers fall back to.
 * A command's options are one table (its module's `options`): an option added without a `help`
 * line fails to typecheck, and one whose line is empty fails here.
 */

/** `--flag` of each option line of a help text (lines that start with two spaces and --). */
const helpFlags = (text: string) => [...text.matchAll(/^ {2}--([a-z0-9-]+)/gm)].map((m) => m[1]!);

/** Arguments that give every option of `table` once (a flag, or a string option with a value). */
const everyOption = (table: OptionTable, conflicting = false) => {
  // An option another one needs (--device for --threads) gets the needed value; the others "1".
  const needed = new Map(Object.values(table).flatMap((spec) => (spec.needs ? [[spec.needs.option, spec.needs.value] as const] : [])));
  // One that contradicts another (--overwrite for --resume) is left out unless asked for.
  const conflicted = new Set(conflicting ? [] : Object.values(table).flatMap((spec) => spec.conflicts ?? []));
  return Object.entries(table).flatMap(([name, spec]) => (conflicted.has(name) ? [] : spec.type === "boolean" ? [`--${name}`] : [`--${name}`, needed.get(name) ?? "1"]));
};

/** The line of `--flag` in a help text, description included (it may wrap to the next line). */
function describedAs(text: string, flag: string): string {
  const m = new RegExp(`^ {2}--${flag}(?: \\S+)?\\n? +(.+)$`, "m").exec(text);
  if (!m) throw new Error(`--${flag} is not in the help`);
  return m[1]!;
}

/** The `(default: ...)` note of `--flag`. */
function defaultOf(text: string, flag: string): string | undefined {
  return /\(default: (.*?)(?:; old spelling: [^)]*)?\)$/.exec(describedAs(text, flag))?.[1];
}

describe("--help", () => {
  for (const [name, command] of Object.entries(COMMANDS)) {
    it(`${name}: lists every option the parser accepts, once, each with a description`, async () => {
      const { options } = await command.load();
      const text = await helpText(name);
      const flags = helpFlags(text);
      expect(flags.sort()).toEqual(Object.keys(options).sort());
      expect(new Set(flags).size).toBe(flags.length);
      for (const flag of flags) expect(describedAs(text, flag).trim().length, `--${flag}`).toBeGreaterThan(10);
      // The parser takes every listed option and nothing else.
      const values = parse(name, everyOption(options), options, () => {});
      expect(Object.keys(values).sort()).toEqual(Object.keys(options).sort());
      expect(() => parse(name, ["--no-such-option"], options)).toThrow(CliError);
      if (Object.values(options).some((spec: OptionSpec) => spec.conflicts)) expect(() => parse(name, everyOption(options, true), options, () => {})).toThrow(/contradict each other/);
      // Required options are in the usage line.
      const usage = text.split("\n")[0]!;
      for (const [flag, spec] of Object.entries(options)) if (spec.required) expect(usage, flag).toContain(`--${flag}`);
    });
  }

  it("is what `qalign <command> --help` prints", async () => {
    const r = runCli(["pca", "--help"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(await helpText("pca"));
  });

  it("shows the defaults the parsers fall back to", async () => {
    const generate = await helpText("generate");
    expect(defaultOf(generate, "max-new-tokens")).toBe("32");
    expect(defaultOf(generate, "top-p")).toBe("1");
    for (const command of ["eval", "align", "lens", "pca"]) {
      expect(defaultOf(await helpText(command), "shots"), command).toBe(`the task's: emotion ${TASKS.emotion.shots}, snli ${TASKS.snli.shots}, paws ${TASKS.paws.shots}`);
    }
    for (const command of ["eval", "align", "lens", "pca", "prompt"]) expect(defaultOf(await helpText(command), "protocol"), command).toBe(DEFAULT_PROTOCOL);
    const evalHelp = await helpText("eval");
    expect(defaultOf(evalHelp, "task")).toBe("snli");
    expect(defaultOf(evalHelp, "eval-batch-size")).toBe("8");
    const align = await helpText("align");
    for (const text of [align, await helpText("train")]) {
      expect(Number(defaultOf(text, "lr"))).toBe(TRAIN_DEFAULTS.lr);
      expect(Number(defaultOf(text, "epochs"))).toBe(TRAIN_DEFAULTS.epochs);
      expect(Number(defaultOf(text, "batch-size"))).toBe(TRAIN_DEFAULTS.batchSize);
      expect(Number(defaultOf(text, "r"))).toBe(LORA_DEFAULTS.r);
      expect(Number(defaultOf(text, "lora-alpha"))).toBe(LORA_DEFAULTS.lora_alpha);
      expect(defaultOf(text, "target-modules")).toBe("q_proj,v_proj");
    }
    const tiny = defaultOf(align, "model")!;
    expect(tiny).toContain(`--limit ${TINY_DEFAULTS.limit},`);
    expect(tiny).toContain(`--max-train-samples ${TINY_DEFAULTS.maxSamples},`);
    expect(tiny).toContain(`--epochs ${TINY_DEFAULTS.epochs},`);
    expect(Number(/--lr ([^,]+),/.exec(tiny)![1])).toBe(TINY_DEFAULTS.lr);
    expect(defaultOf(await helpText("pca"), "components")).toMatch(/^4 /);
    expect(defaultOf(await helpText("lens"), "top-k")).toBe("5");
  });
});

describe("the tiny demo's recipe", () => {
  it("caps the training pairs and sets the demo's schedule (npm start must stay a few minutes long)", () => {
    const recipe = trainingRecipe("align", parse("align", [], TRAINING_OPTIONS), 0, TINY_DEFAULTS);
    expect(recipe.maxSamples).toBeTypeOf("number");
    expect(recipe.maxSamples).toBe(TINY_DEFAULTS.maxSamples);
    expect(recipe.hyper).toMatchObject({ lr: TINY_DEFAULTS.lr, epochs: TINY_DEFAULTS.epochs, batchSize: TINY_DEFAULTS.batchSize, gradAccum: TINY_DEFAULTS.gradAccum });
  });
});

describe("option names", () => {
  it("accept the old spelling with a warning, and refuse both spellings at once", async () => {
    const { options } = await COMMANDS["eval"]!.load();
    const warnings: string[] = [];
    const v = parse("eval", ["--model", "m", "--batch-size", "4", "--max-length", "64"], options, (w) => warnings.push(w));
    expect(v["eval-batch-size"]).toBe("4");
    expect(v["eval-max-length"]).toBe("64");
    expect(v).not.toHaveProperty("batch-size");
    expect(warnings).toEqual([
      "eval: --batch-size is now called --eval-batch-size; the old spelling still works for now",
      "eval: --max-length is now called --eval-max-length; the old spelling still works for now",
    ]);
    expect(() => parse("eval", ["--model", "m", "--batch-size", "4", "--eval-batch-size", "2"], options, () => {})).toThrow("eval: --batch-size is the old spelling of --eval-batch-size; give only --eval-batch-size");
  });

  it("fail on a missing or empty required option before any work", async () => {
    const { options } = await COMMANDS["logits"]!.load();
    expect(() => parse("logits", ["--ids", "1"], options)).toThrow("logits: --model is required");
    expect(() => parse("logits", ["--ids", "", "--model", "m"], options)).toThrow("logits: --ids must not be empty");
  });

  it("align takes train's LoRA and trainer options under PEFT's names, and --batch-size is the training's", async () => {
    const { options } = await COMMANDS["align"]!.load();
    for (const flag of Object.keys(TRAINING_OPTIONS)) expect(options, flag).toHaveProperty(flag);
    const warnings: string[] = [];
    const v = parse("align", ["--r", "4", "--alpha", "8", "--lora-dropout", "0", "--target-modules", "q_proj,down_proj", "--batch-size", "2", "--eval-batch-size", "16", "--save-steps", "7"], options as typeof TRAINING_OPTIONS, (w) => warnings.push(w));
    expect(warnings).toEqual(["align: --alpha is now called --lora-alpha; the old spelling still works for now"]);
    const recipe = trainingRecipe("align", v, 3);
    expect(recipe.lora).toEqual({ r: 4, lora_alpha: 8, lora_dropout: 0, target_modules: ["q_proj", "down_proj"] });
    expect(recipe.hyper).toEqual({ lr: TRAIN_DEFAULTS.lr, epochs: TRAIN_DEFAULTS.epochs, batchSize: 2, gradAccum: TRAIN_DEFAULTS.gradAccum, saveSteps: 7, gradientCheckpointing: false });
    expect(recipe.seed).toBe(3);
    expect(trainingRecipe("align", parse("align", ["--target-modules", "all-linear"], TRAINING_OPTIONS), 0).lora.target_modules).toBe("all-linear");
    expect(() => trainingRecipe("align", parse("align", ["--lora-alpha", "0"], TRAINING_OPTIONS), 0)).toThrow('align: --lora-alpha must be a number > 0, got "0"');
  });
});

describe("README", () => {
  it("names exactly the commands whose option tables have --device, and the others as taking none", async () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8").replace(/\s*\n\s*/g, " ");
    const sentence = /The commands that take `--device` are (.+?) take none/.exec(readme)?.[1];
    expect(sentence, "the README's --device sentence").toBeDefined();
    const [take, none] = sentence!.split(";");
    const commandsIn = (text: string) => [...new Set([...text.matchAll(/`([a-z]+)`/g)].map((m) => m[1]!))].filter((c) => c in COMMANDS).sort();
    const withDevice: string[] = [];
    for (const [name, c] of Object.entries(COMMANDS)) if ("device" in (await c.load()).options) withDevice.push(name);
    expect(commandsIn(take!)).toEqual(withDevice.sort());
    expect(commandsIn(none!)).toEqual(Object.keys(COMMANDS).filter((c) => !withDevice.includes(c)).sort());
  });
});
