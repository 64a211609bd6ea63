import { parseArgs, type ParseArgsConfig } from "node:util";
import { getDevice, type DeviceKind } from "../kernels/devices.ts";
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

/** The value of a required option. */
export function required(command: string, values: Record<string, unknown>, name: string): string {
  const v = values[name];
  if (typeof v !== "string" || v === "") throw new CliError(`${command}: --${name} is required`);
  return v;
}

/** Decimal integers only: "0x10", "1e2" and "1.5" are not token ids or counts. */
const INTEGER = /^[+-]?\d+$/;

/** An integer option within [min, max], or its default. */
export function int(command: string, values: Record<string, unknown>, name: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = values[name];
  if (v === undefined) return fallback;
  const n = Number(v);
  if (typeof v !== "string" || !INTEGER.test(v.trim()) || n < min || n > max) throw new CliError(`${command}: --${name} must be an integer in [${min}, ${max}], got "${v}"`);
  return n;
}

/** A finite number option within [min, max], or its default. */
export function num(command: string, values: Record<string, unknown>, name: string, fallback: number, min = -Infinity, max = Infinity): number {
  const v = values[name];
  if (v === undefined) return fallback;
  const n = Number(v);
  if (typeof v !== "string" || v.trim() === "" || !Number.isFinite(n) || n < min || n > max) {
    throw new CliError(`${command}: --${name} must be a number in [${min}, ${max}], got "${v}"`);
  }
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

/** The common --device option. */
export const deviceOption = { device: { type: "string", default: "auto" } } as const;

/** Resolves --device (cpu | webgpu | auto). */
export async function device(command: string, values: Record<string, unknown>): Promise<Backend> {
  const kind = (values.device ?? "auto") as string;
  if (!["cpu", "webgpu", "auto"].includes(kind)) throw new CliError(`${command}: --device must be cpu, webgpu or auto, got "${kind}"`);
  return getDevice(kind as DeviceKind);
}
