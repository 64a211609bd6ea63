import { loadModel } from "../model/load.ts";
import type { LlamaModel } from "../model/llama.ts";
import { loadAdapter } from "../lora/peft.ts";
import { device, required, weightDType } from "./args.ts";

/**
 * Loads --model (and --adapter, a PEFT LoRA adapter folder, when given) on --device for a
 * command, its weights stored as --dtype (with --quantize-embeddings).
 * @throws CliError when --model is missing or --dtype unknown; CheckpointError for a bad checkpoint or adapter.
 */
export async function loadForCli(command: string, values: Record<string, unknown>): Promise<LlamaModel> {
  const dir = required(command, values, "model");
  const dtype = weightDType(command, values);
  const model = await loadModel(dir, { device: await device(command, values), dtype, quantizeEmbeddings: values["quantize-embeddings"] === true });
  if (typeof values.adapter === "string") await loadAdapter(model, values.adapter);
  return model;
}
