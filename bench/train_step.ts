/**
 * Throughput of one LoRA training step (forward, backward, clipping, AdamW) on the tiny model,
 * cpu device: tokens read per second, median over repeats after one warm-up step. Printed, not
 * asserted.
 *
 *   npx tsx bench/train_step.ts [--batch 4] [--len 64] [--repeats 3]
 *
 * Each sequence is `len` random tokens, the second half of them targets (as in a question and
 * its translation); LoRA on q_proj and v_proj (r 8), batch x 1 micro-batch per step.
 */
import { parseArgs } from "node:util";
import * as qa from "../src/index.ts";
import { loadModel } from "../src/model/load.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";

const { values } = parseArgs({
  options: { batch: { type: "string", default: "4" }, len: { type: "string", default: "64" }, repeats: { type: "string", default: "3" } },
});
const [B, T, repeats] = [values.batch, values.len, values.repeats].map(Number) as [number, number, number];

const device = qa.cpuDevice();
const model = await loadModel(await ensureTinyModel(), { device });
const adapter = qa.applyLora(model, { seed: 0 });
adapter.setDropoutRng(new qa.Rng(1));
const opt = new qa.AdamW(adapter.params, { lr: 5e-5, weightDecay: 0 });
const rng = new qa.Rng(2);
const window = [Array.from({ length: B }, () => ({ ids: Array.from({ length: T }, () => 3 + rng.int(31000)), promptLen: T / 2 }))];

const rates: number[] = [];
for (let i = 0; i <= repeats; i++) {
  const t0 = performance.now();
  const { tokens } = await qa.optimizerStep(model, opt, window, 5e-5, 1.0);
  const rate = tokens / ((performance.now() - t0) / 1000);
  if (i > 0) rates.push(rate); // step 0 warms up the JIT and allocates AdamW's moments
}
rates.sort((a, b) => a - b);
const median = rates[Math.floor(rates.length / 2)]!;
console.log(`train_step (tiny llama, cpu, batch ${B} x ${T} tokens, LoRA q_proj,v_proj r 8): ${median.toFixed(0)} tokens/s (median of ${repeats})`);
