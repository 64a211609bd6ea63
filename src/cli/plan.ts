import { LORA_DEFAULTS, LORA_MODULES } from "../lora/layer.ts";
import { deviceLimits, formatPlan, planForDir } from "../model/plan.ts";
import { checkLoraRank, loraTargets } from "./model.ts";
import { CliError, device, deviceOption, int, listOption, modelOption, required, weightDType, type OptionTable, type Values } from "./args.ts";

export const options = {
  ...modelOption,
  train: { type: "boolean", help: "plan LoRA training (activations kept for backward, the adapter and its AdamW state) instead of inference" },
  "batch-size": { type: "string", arg: "B", help: "sequences per forward pass", default: "1" },
  seq: { type: "string", arg: "T", help: "tokens per sequence", default: "512" },
  r: { type: "string", arg: "N", help: "with --train: the LoRA rank", default: String(LORA_DEFAULTS.r) },
  "target-modules": { type: "string", arg: "q_proj,v_proj|all-linear", help: "with --train: the adapted Linear layers", default: (LORA_DEFAULTS.target_modules as string[]).join(",") },
  "gradient-checkpointing": { type: "boolean", help: "with --train: keep only each layer's input and recompute the rest in backward" },
  device: {
    ...deviceOption.device,
    help: "check the largest packed weight against this device's per-binding limit and the total against its memory (wasm: one WebAssembly memory), starting the device (Dawn for webgpu; auto as in the other commands)",
    default: "none: no device starts and no limit is checked",
  },
  // wasm's memory limit depends on it: 4 GiB shared between threads, 1 GiB on one thread.
  threads: deviceOption.threads,
} as const satisfies OptionTable;

/**
 * `qalign plan --model DIR [--dtype ...] [--train --batch-size B --seq T]`: the device memory a
 * model needs (weights, KV cache or activations, LoRA and AdamW state), one line each on stdout;
 * with --device, the largest packed weight against that device's per-binding limit and the total
 * against its memory where it has one (wasm), each misfit said on its line (no device starts
 * without it; a misfit is the plan's answer, not a failure: the exit status is 0). Reads config.json and the safetensors headers
 * only (a folder with config.json alone is planned in its torch_dtype).
 * @throws CliError for bad options; CheckpointError for a bad config or header.
 */
export async function run(v: Values<typeof options>): Promise<void> {
  const dir = required("plan", v, "model");
  const targets = v["target-modules"] ?? (LORA_DEFAULTS.target_modules as string[]).join(",");
  const names = loraTargets({ target_modules: targets === "all-linear" ? targets : listOption("plan", "target-modules", targets) }).targets;
  const unknown = names.find((n) => !(LORA_MODULES as readonly string[]).includes(n));
  if (unknown !== undefined) throw new CliError(`plan: --target-modules names "${unknown}", not one of ${LORA_MODULES.join(", ")}`);
  const r = int("plan", v, "r", LORA_DEFAULTS.r, 1);
  if (v.train) await checkLoraRank("plan", dir, { r, target_modules: names });
  // A device starts only when asked for: planning reads config.json and headers, nothing else.
  const be = v.device === undefined ? undefined : await device("plan", v);
  const plan = await planForDir(dir, {
    dtype: weightDType("plan", v),
    quantizeEmbeddings: v["quantize-embeddings"],
    batch: int("plan", v, "batch-size", 1, 1),
    seq: int("plan", v, "seq", 512, 1),
    ...(v.train ? { train: { r, targets: names, gradientCheckpointing: v["gradient-checkpointing"] } } : {}),
    ...(be ? { limit: deviceLimits(be) } : {}),
  });
  process.stdout.write(formatPlan(plan).join("\n") + "\n");
}
