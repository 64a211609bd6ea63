import { loadModel } from "../model/load.ts";
import type { LlamaModel } from "../model/llama.ts";
import { CliError, device, required } from "./args.ts";

/**
 * Loads --model (and --adapter, when given) on --device for a command.
 * @throws CliError when --model is missing; CheckpointError for a bad checkpoint.
 */
export async function loadForCli(command: string, values: Record<string, unknown>): Promise<LlamaModel> {
  const dir = required(command, values, "model");
  const model = await loadModel(dir, { device: await device(command, values) });
  if (typeof values.adapter === "string") {
    throw new CliError(`${command}: --adapter is not supported yet`);
  }
  return model;
}
