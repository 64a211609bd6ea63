/**
 * `npx tsx bench/qlora_mistral.ts [--layers N] [--tokens T] [--threads N]`
 *
 * QLoRA at Mistral-7B's full width on a machine without a GPU: writes a random BF16 checkpoint
 * with Mistral-7B's config.json (bench/configs/mistral-7b) cut to N decoder layers (default 2),
 * loads it on the wasm device with every weight matrix in NF4 (`dtype: "nf4"`,
 * `quantizeEmbeddings`), and runs one QLoRA optimizer step (LoRA r 8 on q_proj and v_proj,
 * AdamW) on a batch of T random tokens (default 16, the second half targets). Prints one JSON
 * object: device bytes per parameter (live, and the plan's weights line), the memory plan of the
 * full 32-layer model, load and step times, the loss. A measurement, never a test.
 */
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { wasmDevice } from "../src/kernels/devices.ts";
import { applyLora } from "../src/lora/layer.ts";
import { optimizerStep } from "../src/lora/trainer.ts";
import { parseConfig } from "../src/model/config.ts";
import { loadModel } from "../src/model/load.ts";
import { gb, memoryPlan } from "../src/model/plan.ts";
import { AdamW } from "../src/tensor/optim.ts";
import { Rng } from "../src/tensor/random.ts";
import { writeRandomCheckpoint } from "./model.ts";

const { values } = parseArgs({ options: { layers: { type: "string", default: "2" }, tokens: { type: "string", default: "16" }, threads: { type: "string" } } });
const layers = Number(values.layers);
const T = Number(values.tokens);
const log = (m: string) => process.stderr.write(`qlora_mistral: ${m}\n`);

const full = JSON.parse(await readFile(join(import.meta.dirname, "configs", "mistral-7b", "config.json"), "utf8")) as Record<string, unknown>;
const cut = { ...full, num_hidden_layers: layers };
const config = parseConfig(cut, "mistral-7b cut");

// The checkpoint, in BF16 as Mistral-7B is published (weights uniform in +-0.02, norms 1).
log(`writing a random BF16 checkpoint, ${layers} layers`);
const { dir } = await writeRandomCheckpoint(cut, 1, "BF16");
try {
  const device = await wasmDevice(values.threads === undefined ? undefined : Number(values.threads));
  const opts = { dtype: "nf4", quantizeEmbeddings: true } as const;
  const before = device.liveBytes();
  const t0 = performance.now();
  const model = await loadModel(dir, { device, ...opts });
  const loadS = (performance.now() - t0) / 1000;
  const live = device.liveBytes() - before;
  const plan = memoryPlan(config, () => "bf16", { ...opts, batch: 1, seq: T });
  const plan32 = memoryPlan(parseConfig(full, "mistral-7b"), () => "bf16", { ...opts, batch: 1, seq: T, train: { r: 8, targets: ["q_proj", "v_proj"], gradientCheckpointing: false } });
  log(`loaded in ${loadS.toFixed(1)} s: ${gb(live)} live for ${plan.params} parameters (${(live / plan.params).toFixed(4)} bytes each)`);

  const adapter = applyLora(model, { seed: 0 });
  adapter.setDropoutRng(new Rng(1));
  const opt = new AdamW(adapter.params, { lr: 5e-5, weightDecay: 0 });
  const rng = new Rng(2);
  const ids = Array.from({ length: T }, () => rng.int(config.vocab_size));
  const t1 = performance.now();
  const { loss } = await optimizerStep(model, opt, [[{ ids, promptLen: T / 2 }]], 5e-5, 1.0);
  const stepS = (performance.now() - t1) / 1000;
  log(`one QLoRA step on ${T} tokens in ${stepS.toFixed(1)} s, loss ${loss.toFixed(4)}`);

  process.stdout.write(
    JSON.stringify(
      {
        model: `Mistral-7B shapes, ${layers} of 32 layers, random BF16 weights`,
        device: `wasm, ${device.threads} threads (packed weights: its NF4 kernels, wasm/weights.wasm.ts)`,
        parameters: plan.params,
        liveDeviceBytes: live,
        bytesPerParameter: live / plan.params,
        planWeightsBytes: plan.lines[0]!.bytes,
        loadSeconds: loadS,
        qloraStep: { tokens: T, seconds: stepS, loss, lora: "r 8, q_proj,v_proj", loraParameters: adapter.params.reduce((a, p) => a + p.size, 0) },
        plan32Layers: Object.fromEntries([...plan32.lines.map((l) => [l.what, gb(l.bytes)]), ["total", gb(plan32.total)], ["bytesPerParameter", (plan32.lines[0]!.bytes / plan32.params).toFixed(4)]]),
      },
      null,
      2,
    ) + "\n",
  );
  opt.dispose();
  model.dispose();
  device.destroy();
} finally {
  await rm(dir, { recursive: true, force: true });
}
