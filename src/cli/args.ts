import { parseArgs, type ParseArgsConfig } from "node:util";
import { DEVICE_KINDS, getDevice, type DeviceKind } from "../kernels/devices.ts";
import type { Backend } from "../tensor/backend.ts";

/** A usage error: printed as one line, exit status 1. */
export class CliError extends Error {
  override name = "CliError";
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/**
 * Parses `args` with node:util parseArgs (strict: unknown options and stray positionals fail),
 * naming the command in errors.
 */
export function parse<O extends Options>(command: string, args: string[], options: O) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    throw new CliError(`${command}: ${(e as Error).message}`);
  }
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

/** Comma-separated integers, e.g. token ids "5,17,42". */
export function intList(command: string, name: string, text: string): number[] {
  const parts = text.split(",").map((s) => s.trim());
  const ids = parts.map(Number);
  const bad = parts.findIndex((p, i) => !INTEGER.test(p) || !Number.isSafeInteger(ids[i]));
  if (bad >= 0) throw new CliError(`${command}: --${name} must be comma-separated integers, got "${parts[bad]}" at position ${bad}`);
  return ids;
}

/** The common --device option, and --threads of the wasm device. */
export const deviceOption = { device: { type: "string", default: "auto" }, threads: { type: "string" } } as const;

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
  return getDevice(kind as DeviceKind, { threads });
}
