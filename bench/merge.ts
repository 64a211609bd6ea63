import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LORA_DEFAULTS } from "../src/lora/layer.ts";
import { mergeCheckpoint } from "../src/lora/merge_checkpoint.ts";
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, peftConfigJson } from "../src/lora/peft.ts";
import { writeSafetensors, type TensorToWrite } from "../src/model/safetensors.ts";
import type { CaseResult } from "./harness.ts";
import type { BenchContext } from "./kernels.ts";
import { hostRandom } from "./peer.ts";
import { collectGarbage, largeEmbeddingConfig, memorySampler, singleRun, writeRandomCheckpoint } from "./model.ts";

/**
 * Peak host memory of `qalign merge` (src/lora/merge_checkpoint.ts) on a checkpoint whose largest
 * tensor is `largestMiB` (a tied embedding [V, 1024] in f32, copied; q_proj and v_proj updated by
 * a rank-8 adapter): process.memoryUsage() sampled every 2 ms during the merge, above the level
 * before it. The claim: merging streams tensor by tensor, so the transient host memory stays near
 * the largest tensor, not the checkpoint.
 */
export async function mergeCase(ctx: BenchContext): Promise<CaseResult> {
  const largestMiB = ctx.quick ? 16 : 256;
  const layers = 4;
  const config = largeEmbeddingConfig(largestMiB, layers, 2048);
  const { hidden_size: D, vocab_size: V } = config;
  ctx.log(`merge: checkpoint with a ${largestMiB} MiB tensor, ${layers} layers`);
  const { dir, largestBytes } = await writeRandomCheckpoint(config, 300);
  const adapterDir = await mkdtemp(join(tmpdir(), "qalign-bench-adapter-"));
  const out = join(await mkdtemp(join(tmpdir(), "qalign-bench-merged-")), "merged");
  try {
    const r = LORA_DEFAULTS.r;
    const tensors: Record<string, TensorToWrite> = {};
    let seed = 400;
    for (let l = 0; l < layers; l++) {
      for (const m of ["q_proj", "v_proj"]) {
        const path = `base_model.model.model.layers.${l}.self_attn.${m}`;
        tensors[`${path}.lora_A.weight`] = { dtype: "F32", shape: [r, D], data: hostRandom(r * D, seed++).map((u) => 0.02 * u) };
        tensors[`${path}.lora_B.weight`] = { dtype: "F32", shape: [D, r], data: hostRandom(D * r, seed++).map((u) => 0.02 * u) };
      }
    }
    await writeSafetensors(join(adapterDir, ADAPTER_WEIGHTS_FILE), tensors, { format: "pt" });
    await writeFile(join(adapterDir, ADAPTER_CONFIG_FILE), JSON.stringify(peftConfigJson(LORA_DEFAULTS, dir), null, 2));

    await collectGarbage();
    const base = process.memoryUsage();
    const sampler = memorySampler();
    const t0 = performance.now();
    const merged = await mergeCheckpoint(dir, adapterDir, out);
    const ms = performance.now() - t0;
    const peak = sampler.stop();
    const transient = peak.arrayBuffers - base.arrayBuffers;
    const result = singleRun("qalign", "mergeCheckpoint", ms, merged.totalBytes, {
      largestTensorBytes: largestBytes,
      checkpointBytes: merged.totalBytes,
      mergedModules: merged.merged,
      transientHostBytes: transient,
      peakRssAboveStartBytes: peak.rss - base.rss,
      transientOverLargest: transient / largestBytes,
    });
    return { group: "merge", name: `merge adapter into checkpoint, largest tensor ${largestMiB} MiB`, params: { largestMiB, D, V, layers }, work: { bytes: merged.totalBytes }, results: [result] };
  } finally {
    await Promise.all([rm(dir, { recursive: true, force: true }), rm(adapterDir, { recursive: true, force: true }), rm(join(out, ".."), { recursive: true, force: true })]);
  }
}
