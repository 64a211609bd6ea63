import { parseArgs, type ParseArgsConfig } from "node:util";
import { DEVICE_KINDS, getDevice, type DeviceKind } from "../kernels/devices.ts";
import type { Backend } from "../tensor/backend.ts";
import { WEIGHT_DTYPES, type WeightDType } from "../tensor/weight.ts";

/** A usage error: printed as one line, exit status 1. */
export class CliError extends Error {
  override name = "CliError";
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/**
 * One command-line option: what node:util parseArgs needs (its type) and what `--help` says about
 * it. Every command declares its options in one table of these (its module's `options`); the
 * runner parses with that table and `--help` prints it, so no option goes undescribed.
 */
export interface OptionSpec {
  type: "string" | "boolean";
  /** One line for --help: what the option does, with its unit. */
  help: string;
  /** The value's placeholder in --help (DIR, N, LR, prefix|loglik); string options only. */
  arg?: string;
  /** The default as --help shows it (the parsers fall back to the same constant). */
  default?: string;
  /** The command fails without it (parse checks, before any work). */
  required?: boolean;
  /** Old spellings still accepted: each gives a warning naming this option. */
  was?: readonly string[];
  /**
   * The option means something only beside another option's value (--threads with --device
   * wasm): given without it, parse refuses both by name rather than ignore one silently.
   */
  needs?: { option: string; value: string };
  /** Options that contradict this one (--resume and --overwrite): given together, parse refuses them by name. */
  conflicts?: readonly string[];
}

/** A command's options by name (without the leading "--"). */
export type OptionTable = Record<string, OptionSpec>;

/** Parsed values: a boolean for a flag, a string for a required option, else string | undefined. */
export type Values<T extends OptionTable> = {
  [K in keyof T]: T[K]["type"] extends "boolean" ? boolean : T[K] extends { required: true } ? string : string | undefined;
};

/** A notice on stderr, one line. */
export const stderrLine = (line: string) => void process.stderr.write(`${line}\n`);

/** parseArgs, strict, with its tokens (which tell given options from defaults). @throws CliError */
function parseStrict(command: string, args: string[], options: Options) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false, tokens: true });
  } catch (e) {
    throw new CliError(`${command}: ${(e as Error).message}`);
  }
}

/** A negative number as people type one: "-1", "-0.5", "-.5", "-1e-3". */
const NEGATIVE_NUMBER = /^-(\d|\.\d)/;

/**
 * `--name -1` as `--name=-1` for every option that takes a value. node:util parseArgs refuses a
 * value that starts with "-" ("argument is ambiguous"), so a negative number would get the
 * parser's message instead of the option's own range check. No option name starts with a digit,
 * so a token like "-1" after a value option is always its value.
 * @param takesValue the option names (and old spellings) of type string
 */
function joinNegativeValues(args: readonly string[], takesValue: ReadonlySet<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const next = args[i + 1];
    if (a.startsWith("--") && !a.includes("=") && takesValue.has(a.slice(2)) && next !== undefined && NEGATIVE_NUMBER.test(next)) {
      out.push(`${a}=${next}`);
      i++;
    } else {
      out.push(a);
    }
  }
  return out;
}

/**
 * Parses `args` with node:util parseArgs against `table` (strict: unknown options and stray
 * positionals fail), naming the command in errors. A negative number is the value of the option
 * before it (`--lr -1`), so the option's own range check reports it. An old spelling (`was`) is moved to its new
 * name with a warning; flags default to false. Every option takes one value, so one given twice
 * (`--prompt hi --prompt bye`) is refused rather than the last one silently winning.
 * @param warn where the old-spelling warnings go (stderr)
 * @throws CliError for an unknown option, a missing or empty required one, an option given
 *   twice or under both its old and new spelling, or two that conflict; Error when the table
 *   names one option twice.
 */
export function parse<T extends OptionTable>(command: string, args: string[], table: T, warn: (line: string) => void = stderrLine): Values<T> {
  const config: Options = {};
  const renamed = new Map<string, string>();
  for (const [name, spec] of Object.entries(table)) {
    config[name] = spec.type === "boolean" ? { type: "boolean", default: false } : { type: "string" };
    for (const old of spec.was ?? []) {
      if (old in table || renamed.has(old)) throw new Error(`${command}: --${old} is both an option and an old spelling`);
      renamed.set(old, name);
      config[old] = { type: spec.type };
    }
  }
  const takesValue = new Set(Object.entries(config).flatMap(([name, c]) => (c.type === "string" ? [name] : [])));
  const parsed = parseStrict(command, joinNegativeValues(args, takesValue), config);
  const values = parsed.values as Record<string, unknown>;
  const names = parsed.tokens.flatMap((t) => (t.kind === "option" ? [t.name] : []));
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice !== undefined) throw new CliError(`${command}: --${twice} is given ${names.filter((n) => n === twice).length} times; give it once`);
  const given = new Set(names);
  for (const [old, name] of renamed) {
    if (!given.has(old)) continue;
    if (given.has(name)) throw new CliError(`${command}: --${old} is the old spelling of --${name}; give only --${name}`);
    warn(`${command}: --${old} is now called --${name}; the old spelling still works for now`);
    values[name] = values[old];
    delete values[old];
  }
  for (const [name, spec] of Object.entries(table)) if (spec.required) required(command, values, name);
  for (const [name, spec] of Object.entries(table)) if (spec.needs && given.has(name)) checkNeeds(command, values, name, spec.needs);
  for (const [name, spec] of Object.entries(table)) {
    const other = spec.conflicts?.find((o) => given.has(name) && given.has(o));
    if (other !== undefined) throw new CliError(`${command}: --${name} and --${other} contradict each other; give one of them`);
  }
  return values as Values<T>;
}

/** "--threads applies only with --device wasm, got --device webgpu". @throws CliError */
function checkNeeds(command: string, values: Record<string, unknown>, name: string, needs: { option: string; value: string }): void {
  const other = values[needs.option];
  if (other === needs.value) return;
  const got = other === undefined || other === false ? `no --${needs.option}` : other === true ? `--${needs.option}` : `--${needs.option} ${String(other)}`;
  throw new CliError(`${command}: --${name} applies only with --${needs.option} ${needs.value}, got ${got}`);
}

/** The value of a required option. @throws CliError when it is absent or empty. */
export function required(command: string, values: Record<string, unknown>, name: string): string {
  const v = values[name];
  if (v === "") throw new CliError(`${command}: --${name} must not be empty`);
  if (typeof v !== "string") throw new CliError(`${command}: --${name} is required`);
  return v;
}

/** Decimal integers only: "0x10", "1e2" and "1.5" are not token ids or counts. */
const INTEGER = /^[+-]?\d+$/;

/**
 * The bounds of a range as people write them: "in [1, 8]", ">= 1", "in (0, 1]", "<= 1", or "" when
 * unbounded (never Number.MAX_SAFE_INTEGER or Infinity).
 * @param minExclusive the lower bound itself is not allowed (written "(min, ..." or "> min")
 */
export function describeBounds(min: number, max: number, minExclusive = false): string {
  const hasMin = Number.isFinite(min);
  const hasMax = Number.isFinite(max) && max < Number.MAX_SAFE_INTEGER;
  if (hasMin && hasMax) return `in ${minExclusive ? "(" : "["}${min}, ${max}]`;
  if (hasMin) return `${minExclusive ? ">" : ">="} ${min}`;
  if (hasMax) return `<= ${max}`;
  return "";
}

/** "must be an integer >= 1, got "x"": the message of a value outside its kind or bounds. */
function outOfBounds(command: string, name: string, kind: string, bounds: string, v: unknown): CliError {
  return new CliError(`${command}: --${name} must be ${kind}${bounds ? ` ${bounds}` : ""}, got "${String(v)}"`);
}

/** An integer option within [min, max], or its default. @throws CliError naming the bounds. */
export function int(command: string, values: Record<string, unknown>, name: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = values[name];
  if (v === undefined) return fallback;
  const n = Number(v);
  if (typeof v !== "string" || !INTEGER.test(v.trim()) || n < min || n > max) throw outOfBounds(command, name, "an integer", describeBounds(min, max), v);
  return n;
}

/**
 * A finite number option within [min, max] (within (min, max] with `minExclusive`, e.g. --top-p),
 * or its default. @throws CliError naming the bounds.
 */
export function num(command: string, values: Record<string, unknown>, name: string, fallback: number, min = -Infinity, max = Infinity, minExclusive = false): number {
  const v = values[name];
  if (v === undefined) return fallback;
  const n = Number(v);
  const below = minExclusive ? n <= min : n < min;
  if (typeof v !== "string" || v.trim() === "" || !Number.isFinite(n) || below || n > max) throw outOfBounds(command, name, "a number", describeBounds(min, max, minExclusive), v);
  return n;
}

/**
 * The entries of a comma-separated list option (--data a.json,b.json, --train zh,es), trimmed,
 * empty ones dropped. An entry given twice would count twice (the same pairs in training and
 * validation), so it is refused.
 * @param key what makes two entries the same (for files: the resolved path), default the text
 * @throws CliError naming the option and the entry given twice
 */
export function listOption(command: string, name: string, text: string, key: (entry: string) => string = (e) => e): string[] {
  const entries = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  const seen = new Map<string, string>();
  for (const entry of entries) {
    const first = seen.get(key(entry));
    if (first !== undefined) throw new CliError(`${command}: --${name} names ${first === entry ? `"${entry}" twice` : `"${first}" twice (also as "${entry}")`}; give each once`);
    seen.set(key(entry), entry);
  }
  return entries;
}

/** Comma-separated integers, e.g. token ids "5,17,42". */
export function intList(command: string, name: string, text: string): number[] {
  const parts = text.split(",").map((s) => s.trim());
  const ids = parts.map(Number);
  const bad = parts.findIndex((p, i) => !INTEGER.test(p) || !Number.isSafeInteger(ids[i]));
  if (bad >= 0) throw new CliError(`${command}: --${name} must be comma-separated integers, got "${parts[bad]}" at position ${bad}`);
  return ids;
}

/** The checkpoint options of every command that loads a model: the folder and how its weights are stored on the device. */
export const modelOption = {
  model: { type: "string", arg: "DIR", required: true, help: "the base checkpoint: a folder in Hugging Face layout (config.json, *.safetensors, tokenizer.json)" },
  dtype: {
    type: "string",
    arg: WEIGHT_DTYPES.join("|"),
    help: "how weight matrices are stored on the device: f32 (4 bytes a weight), bf16 or f16 (2), nf4 (bitsandbytes 4-bit NormalFloat, 0.5625; embeddings and lm_head keep their dtype)",
    default: "the checkpoint's own (a bitsandbytes 4-bit checkpoint: nf4)",
  },
  "quantize-embeddings": { type: "boolean", help: "with --dtype nf4, quantize the embedding and lm_head too", needs: { option: "dtype", value: "nf4" } },
} as const satisfies OptionTable;

/** --dtype, checked. @throws CliError naming the choices. */
export function weightDType(command: string, values: Record<string, unknown>): WeightDType | undefined {
  const v = values.dtype;
  if (v === undefined) return undefined;
  if (typeof v !== "string" || !(WEIGHT_DTYPES as readonly string[]).includes(v)) {
    throw new CliError(`${command}: --dtype must be ${WEIGHT_DTYPES.slice(0, -1).join(", ")} or ${WEIGHT_DTYPES.at(-1)}, got "${String(v)}"`);
  }
  return v as WeightDType;
}

/** The LoRA adapter option of the commands that can apply one. */
export const adapterOption = {
  adapter: { type: "string", arg: "DIR", help: "a PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors) applied to the model" },
} as const satisfies OptionTable;

/** The --device option of every command that computes, and --threads of the wasm device. */
export const deviceOption = {
  device: {
    type: "string",
    arg: DEVICE_KINDS.join("|"),
    help: "where tensors live and kernels run: webgpu (WGSL through Dawn), wasm (WebAssembly SIMD on worker threads), cpu (plain TypeScript, the reference), or auto",
    default: "auto (webgpu on a hardware GPU, else wasm)",
  },
  threads: { type: "string", arg: "N", help: "worker threads of the wasm device, in [1, 256]", default: "every core", needs: { option: "device", value: "wasm" } },
} as const satisfies OptionTable;

/** Most threads --threads accepts (more than any machine's cores; the wasm memory is shared by all). */
const MAX_THREADS = 256;

/**
 * Resolves --device (cpu | wasm | webgpu | auto) and --threads (wasm's thread count, default every
 * core). @throws CliError for an unknown device or a thread count outside [1, 256].
 */
export async function device(command: string, values: Record<string, unknown>): Promise<Backend> {
  const kind = (values.device ?? "auto") as string;
  if (!(DEVICE_KINDS as readonly string[]).includes(kind)) {
    throw new CliError(`${command}: --device must be ${DEVICE_KINDS.slice(0, -1).join(", ")} or ${DEVICE_KINDS.at(-1)}, got "${kind}"`);
  }
  const threads = values.threads === undefined ? undefined : int(command, values, "threads", 1, 1, MAX_THREADS);
  return getDevice(kind as DeviceKind, { threads, onNotice: stderrLine });
}
