import { loadModel } from "../model/load.ts";
import type { LlamaModel } from "../model/llama.ts";
import { loadAdapter } from "../lora/peft.ts";
import { device, required } from "./args.ts";

/**
 * Loads --model (and --adapter, a PEFT LoRA adapter folder, when given) on --device for a command.
 * @throws CliError when --model is missing; CheckpointError for a bad checkpoint or adapter.
 */
export async function loadForCli(command: string, values: Record<string, unknown>): Promise<LlamaModel> {
  const dir = required(command, values, "model");
  const model = await loadModel(dir, { device: await device(command, values) });
  if (typeof values.adapter === "string") await loadAdapter(model, values.adapter);
  return model;
}
