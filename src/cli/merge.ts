import { DEFAULT_MAX_SHARD_BYTES, mergeCheckpoint, type MergeDType } from "../lora/merge_checkpoint.ts";
import { CliError, modelOption, type OptionTable, type Values } from "./args.ts";
import { prepareOutDir } from "./output.ts";
import { baseModelMismatch } from "./model.ts";
import { Progress, quietOption } from "./progress.ts";

/** --dtype of merge: the on-disk dtypes a merged checkpoint can take. */
const MERGE_DTYPES: Record<string, MergeDType> = { f32: "F32", bf16: "BF16", f16: "F16" };

/** Units of --max-shard-size as transformers' `convert_file_size_to_int` reads them. */
const SIZE_UNITS: Record<string, number> = { "": 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30 };

/**
 * Parses a size as transformers writes `max_shard_size`: "5GB" (decimal), "200MiB" (binary), or
 * a plain count of bytes. @throws CliError for anything else or a size of 0.
 */
export function parseSize(command: string, name: string, text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  const bytes = m && unit !== undefined ? Math.floor(Number(m[1]) * unit) : NaN;
  if (!(bytes >= 1)) throw new CliError(`${command}: --${name} must be a size such as 5GB, 200MiB or 1000000 (bytes), got "${text}"`);
  return bytes;
}

export const options = {
  model: modelOption.model,
  adapter: { type: "string", arg: "DIR", required: true, help: "the PEFT LoRA adapter folder to fold into the model's weights" },
  out: { type: "string", arg: "DIR", required: true, help: "the merged checkpoint folder (must not exist or be empty): shards, index, config, tokenizer and generation files" },
  dtype: { type: "string", arg: Object.keys(MERGE_DTYPES).join("|"), help: "write every float tensor in this dtype", default: "each tensor's own dtype in the checkpoint" },
  "max-shard-size": { type: "string", arg: "SIZE", help: "largest safetensors shard, as transformers' max_shard_size (5GB, 200MiB, or bytes)", default: `${DEFAULT_MAX_SHARD_BYTES / 1e9}GB` },
  ...quietOption,
} as const satisfies OptionTable;

/**
 * `qalign merge --model DIR --adapter DIR --out DIR [--dtype bf16|f16|f32] [--max-shard-size 5GB]`:
 * W + scaling B A for every adapted Linear, tensor by tensor from disk to disk (src/lora/
 * merge_checkpoint.ts); one JSON line on stdout: {"out": DIR, "files": [...], "merged": n}.
 */
export async function run(v: Values<typeof options>): Promise<void> {
  const dtype = v.dtype === undefined ? undefined : MERGE_DTYPES[v.dtype];
  if (v.dtype !== undefined && dtype === undefined) throw new CliError(`merge: --dtype must be f32, bf16 or f16, got "${v.dtype}"`);
  const maxShardBytes = v["max-shard-size"] === undefined ? DEFAULT_MAX_SHARD_BYTES : parseSize("merge", "max-shard-size", v["max-shard-size"]);
  await prepareOutDir("merge", v.out);
  const progress = new Progress({ quiet: v.quiet });
  const mismatch = await baseModelMismatch(v.adapter, v.model);
  if (mismatch) progress.say(`warning: ${mismatch}`);
  const r = await mergeCheckpoint(v.model, v.adapter, v.out, { dtype, maxShardBytes, onProgress: progress.counter("merging", "bytes") });
  if (r.dequantized > 0) progress.say(`merge: the base stores ${r.dequantized} weights in 4 bits (bitsandbytes NF4); a merged update has no 4-bit form, so they are written as ${dtype ?? "BF16"}`);
  progress.say(`merge: ${r.merged} LoRA modules merged; ${r.files.length} shard(s), ${(r.totalBytes / 1e6).toFixed(1)} MB in ${v.out}`);
  process.stdout.write(JSON.stringify({ out: v.out, files: r.files, merged: r.merged }) + "\n");
}
