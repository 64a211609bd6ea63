import { basename } from "node:path";
import { loadModel } from "../model/load.ts";
import type { LlamaModel } from "../model/llama.ts";
import { loadAdapter } from "../lora/peft.ts";
import { device, required, weightDType } from "./args.ts";
import type { Progress } from "./progress.ts";

/**
 * Loads --model (and --adapter, a PEFT LoRA adapter folder, when given) on --device for a
 * command, its weights stored as --dtype (with --quantize-embeddings), drawing the bytes read on
 * `progress`.
 * @throws CliError when --model is missing or --dtype unknown; CheckpointError for a bad checkpoint or adapter.
 */
export async function loadForCli(command: string, values: Record<string, unknown>, progress?: Progress): Promise<LlamaModel> {
  const dir = required(command, values, "model");
  const dtype = weightDType(command, values);
  const model = await loadModel(dir, {
    device: await device(command, values),
    dtype,
    quantizeEmbeddings: values["quantize-embeddings"] === true,
    onProgress: progress?.counter(`loading ${basename(dir)}`, "bytes"),
  });
  if (typeof values.adapter === "string") await loadAdapter(model, values.adapter);
  return model;
}
