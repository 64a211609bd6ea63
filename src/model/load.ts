import type { Backend } from "../tensor/backend.ts";
import { defaultDevice } from "../tensor/device.ts";
import { tensor } from "../tensor/ops/create.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { loadConfig, type LlamaConfig } from "./config.ts";
import { DecoderLayer, Linear, LlamaModel, type LayerModules } from "./llama.ts";
import { LAYER_MODULES, expectedShape, expectedWeights, layerPrefix } from "./params.ts";
import { CheckpointError, openCheckpoint, type Checkpoint } from "./safetensors.ts";

/**
 * Loads a Hugging Face Llama-family checkpoint folder (config.json + model.safetensors or a
 * sharded index) onto a device, strictly: every expected weight must exist with its expected
 * shape, checked for all tensors before any is read (nanoGPT's and MLX's loaders do the same).
 * Weights are read one at a time by byte range and converted to f32, so peak host memory is
 * about the largest tensor.
 */

/** Keys that HF checkpoints may carry and that the model does not use. */
const IGNORED = [/\.rotary_emb\.inv_freq$/];

/**
 * Checks the checkpoint against the config: missing tensors, shape mismatches, unexpected keys.
 * @throws CheckpointError naming the file, the tensor, and the expected and found shapes.
 */
export function validateCheckpoint(config: LlamaConfig, ckpt: Checkpoint, dir: string): void {
  for (const [name, shape] of expectedWeights(config)) {
    if (!ckpt.has(name)) throw new CheckpointError(dir, `missing tensor (expected shape [${shape}])`, name);
    const info = ckpt.info(name);
    if (info.shape.join() !== shape.join()) {
      throw new CheckpointError(info.file, `shape [${info.shape}] disagrees with config.json, which implies [${shape}]`, name);
    }
  }
  for (const name of ckpt.names()) {
    if (expectedShape(config, name) !== null || IGNORED.some((re) => re.test(name))) continue;
    // A tied checkpoint may still store lm_head.weight (a copy of the embedding); HF ignores it.
    if (name === "lm_head.weight" && config.tie_word_embeddings) continue;
    throw new CheckpointError(ckpt.info(name).file, "unexpected tensor: not part of this architecture", name);
  }
}

export interface LoadOptions {
  device?: Backend;
}

/**
 * Loads `dir` into a LlamaModel on `opts.device` (default: the default device).
 * @throws CheckpointError for a bad config.json, a malformed or truncated safetensors file, a
 *   missing shard or tensor, or a shape that disagrees with the config; all before any compute.
 */
export async function loadModel(dir: string, opts: LoadOptions = {}): Promise<LlamaModel> {
  const device = opts.device ?? defaultDevice();
  const config = await loadConfig(dir);
  const ckpt = await openCheckpoint(dir);
  // Weights uploaded so far, freed if a later read fails (a short read, an I/O error).
  const loaded: Tensor[] = [];
  try {
    validateCheckpoint(config, ckpt, dir);
    // Validated: every key below exists with the shape expectedShape gives.
    const load = async (name: string): Promise<Tensor> => {
      const t = tensor(await ckpt.readF32(name), { device, shape: expectedShape(config, name)! });
      loaded.push(t);
      return t;
    };
    const maybe = (name: string) => (expectedShape(config, name) !== null ? load(name) : Promise.resolve(null));

    const embed = await load("model.embed_tokens.weight");
    const layers: DecoderLayer[] = [];
    for (let i = 0; i < config.num_hidden_layers; i++) {
      const p = layerPrefix(i);
      const modules: Record<string, Linear | Tensor> = {};
      for (const m of LAYER_MODULES) {
        const weight = await load(`${p}${m.path}.weight`);
        modules[m.path] = m.kind === "linear" ? new Linear(weight, await maybe(`${p}${m.path}.bias`)) : weight;
      }
      layers.push(DecoderLayer.fromModules(config, i, modules as unknown as LayerModules)); // every table path is set
    }
    const norm = await load("model.norm.weight");
    const head = config.tie_word_embeddings ? embed : await load("lm_head.weight");
    return new LlamaModel(config, device, embed, layers, norm, head);
  } catch (err) {
    for (const t of loaded) t.dispose();
    throw err;
  } finally {
    await ckpt.close();
  }
}
