import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { loadModel } from "../src/model/load.ts";
import type { LlamaModel } from "../src/model/llama.ts";
import { CheckpointError } from "../src/model/safetensors.ts";
import { loadTokenizer } from "../src/model/tokenizer.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import type { Provenance } from "../src/io/provenance.ts";
import { runCli } from "./helpers/cli.ts";
import { fixtureDir } from "./helpers/fixtures.ts";
import { expectClose } from "./helpers/close.ts";
import { sharedDataOrSkip } from "./helpers/shared_data.ts";

/**
 * The trainer: schedule, accumulation, a real (small) question-alignment run, and checkpoints
 * that resume bit for bit. Fast cases use the fixture llama-untied (vocab 320) and synthetic
 * token sequences; the real run uses the tiny checkpoint (vocab 32000) on the shared data.
 */
const cpu = qa.cpuDevice();
const tmp = mkdtempSync(join(tmpdir(), "qalign-train-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Seeded synthetic sequences of 5-11 tokens over the fixture vocabulary. */
function synthetic(n: number, seed: number): qa.Example[] {
  const rng = new qa.Rng(seed);
  return Array.from({ length: n }, () => {
    const len = 5 + rng.int(7);
    return { ids: Array.from({ length: len }, () => 3 + rng.int(300)), promptLen: 1 + rng.int(len - 2) };
  });
}

async function fixtureModel(): Promise<LlamaModel> {
  return loadModel(fixtureDir("llama-untied"), { device: cpu });
}

describe("cosine schedule with warmup", () => {
  test("matches transformers' get_cosine_schedule_with_warmup", () => {
    expect(qa.warmupSteps(15, 0.1)).toBe(2); // ceil(1.5)
    const lr = (s: number) => qa.cosineWithWarmup(s, 1e-3, 10, 2);
    expect([lr(0), lr(1), lr(2)]).toEqual([0, 5e-4, 1e-3]);
    // 15 digits: the same closed form in float64, up to the rounding of its few operations.
    expect(lr(6)).toBeCloseTo(1e-3 * 0.5 * (1 + Math.cos((Math.PI * 4) / 8)), 15);
    expect(lr(10)).toBeCloseTo(0, 15);
    expect(qa.cosineWithWarmup(0, 1e-3, 10, 0)).toBe(1e-3);
  });
});

describe("gradient accumulation", () => {
  test("one step is the same however the window is split into micro-batches", async () => {
    const examples = synthetic(5, 1);
    const params: Float32Array[][] = [];
    for (const window of [[examples], [examples.slice(0, 2), examples.slice(2)], examples.map((e) => [e])]) {
      const model = await fixtureModel();
      const adapter = qa.applyLora(model, { lora_dropout: 0, seed: 4 });
      for (const m of adapter.modules.values()) cpu.assign(m.lora_B, qa.randn(m.lora_B.shape, { device: cpu, seed: 2, std: 0.1 }));
      const opt = new qa.AdamW(adapter.params, { lr: 0, weightDecay: 0 });
      await qa.optimizerStep(model, opt, window, 1e-2, 1.0);
      params.push(await Promise.all(adapter.params.map(async (p) => (await p.data()) as Float32Array)));
    }
    // The splits sum the same gradients in f32 in other orders and paddings (agreeing to ~1e-6
    // relative), and AdamW's first step moves each parameter by lr g / (|g| + eps), about +-lr
    // whatever g's rounding: the parameters (|p| <= 0.5) agree to a few f32 ulps. 1e-5 (abs +
    // rel) is a wide margin; a window normalised per micro-batch flips the sign of small
    // gradients and moves those parameters by 2 lr = 0.02.
    for (const other of params.slice(1)) other.forEach((p, i) => expectClose(p, params[0]![i]!, 1e-5, `parameter ${i}`));
  });
});

describe("question alignment on the shared data", () => {
  test("training the tiny model on a zh slice lowers the validation loss", async (ctx) => {
    const ZH = join(sharedDataOrSkip(ctx), "snli", "snli_zh10k_train_question.json");
    const dir = await ensureTinyModel();
    const model = await loadModel(dir, { device: cpu });
    const tokenizer = (await loadTokenizer(dir))!;
    const { pairs } = await qa.readQuestionPairs([ZH]);
    const split = qa.splitPairs(pairs, { maxSamples: 64, valSize: 0.05, seed: 0 });
    // The test's own settings, for speed: 16-token pairs, lr 1e-3, one epoch of 15 steps.
    const encode = (p: qa.QuestionPair[]) => qa.encodePairs(p, tokenizer, { eosId: tokenizer.eosId!, maxLength: 16 }).examples;
    const adapter = qa.applyLora(model, { seed: 0 });
    const result = await qa.train(model, adapter, { train: encode(split.train), val: encode(split.val) }, { outDir: null, lr: 1e-3, epochs: 1, gradAccum: 1 });
    const [before, after] = result.history.val.map((e) => e.loss) as [number, number];
    console.log(`tiny model, 60 zh pairs, 1 epoch: validation loss ${before.toFixed(4)} -> ${after.toFixed(4)}`);
    expect(result.steps).toBe(15);
    // Seeded, so the drop is the same on every run (0.079 nats when written). Without learning it
    // is 0 (lora_B starts at zero, so the model is unchanged) and a wrong gradient raises the
    // loss; 0.05 asserts learning with room for legitimate numeric changes.
    expect(after).toBeLessThan(before - 0.05);
  });
});

describe("qalign train", () => {
  test("trains the tiny model on a pairs file, skipping a malformed item, and prints where the adapter went", async () => {
    const dir = await ensureTinyModel();
    const file = join(tmp, "pairs.json");
    const pairs = ["hola", "gracias", "adiós", "sí", "buenos días", "por favor"].map((q, i) => ({ input: `¿${q} ${i}?\nTranslate the input from Spanish to English:\n`, answer: `question ${i}?` }));
    writeFileSync(file, JSON.stringify([...pairs, { input: "sin respuesta" }]));
    const out = join(tmp, "cli-adapter");
    const r = runCli(["train", "--model", dir, "--data", file, "--out", out, "--epochs", "1", "--max-length", "32", "--device", "cpu"]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain(`skipped: ${file}: item 6: field "answer": missing\n`);
    // 6 usable pairs, ceil(0.05 * 6) = 1 held out; the 5 left make 2 micro-batches of at most 4,
    // fewer than the 4 micro-batches of one accumulation window: one optimizer step per epoch.
    expect(r.stderr).toContain("6 pairs from 1 file(s); 5 train, 1 validation\n");
    expect(JSON.parse(r.stdout)).toMatchObject({ adapter: out, steps: 1 });
    // One step, and warmup makes step 1's learning rate 0: the run trains nothing, and says so.
    expect(r.stderr).toContain("warning: 1 optimizer step, at learning rate 0 (the warmup starts at 0): nothing will be trained");
    // The step's progress line on a piped stderr.
    expect(r.stderr).toMatch(/^training: 1\/1 steps \| [\d.]+ steps\/s \| done \| epoch 1\.00 \| loss [\d.]+ \| lr 0\.00e\+0 \| \d+ tok\/s$/m);
    expect(readdirSync(out).sort()).toEqual(["adapter_config.json", "adapter_model.safetensors", "provenance.json", "training.json"]);
    const provenance = JSON.parse(readFileSync(join(out, "provenance.json"), "utf8")) as Provenance;
    expect(provenance.data).toEqual({ source: "files", sha256: { [file]: createHash("sha256").update(readFileSync(file)).digest("hex") } });
    expect(provenance.model!.sha256["config.json"]).toBe(createHash("sha256").update(readFileSync(join(dir, "config.json"))).digest("hex"));
  });
});

describe("checkpoints", () => {
  // 10 examples, batch 2, accumulation 2: windows of 2, 2, 1 micro-batches per epoch, 6 steps.
  const data = { train: synthetic(10, 7), val: synthetic(3, 8) };
  const opts = { lr: 1e-2, epochs: 2, batchSize: 2, gradAccum: 2, saveSteps: 2, seed: 3 };
  const run = async (outDir: string, extra: Partial<qa.RunOptions> = {}) => {
    const model = await fixtureModel();
    const adapter = qa.applyLora(model, { target_modules: ["q_proj", "v_proj", "down_proj"], lora_dropout: 0.1, seed: 5 });
    return qa.train(model, adapter, data, { ...opts, outDir, ...extra });
  };
  const adapterBytes = (dir: string) => readFileSync(join(dir, "adapter_model.safetensors"));
  /** The uninterrupted run, which both tests compare against: run once, by whichever test needs it first. */
  let wholeRun: Promise<{ dir: string; result: qa.TrainResult; live: number[] }> | undefined;
  const whole = () =>
    (wholeRun ??= (async () => {
      const dir = join(tmp, "whole");
      const live: number[] = [];
      const result = await run(dir, { onStep: () => live.push(cpu.liveBytes()) });
      return { dir, result, live };
    })());

  test("a run stopped after step 5 and resumed from its step-4 checkpoint ends with identical adapter bytes", async () => {
    const { dir: wholeDir, result: reference, live } = await whole();
    expect(reference.steps).toBe(6);
    // Device memory is flat from step to step (each micro-batch runs in tidy; AdamW's moments
    // appear at step 1).
    expect(new Set(live).size).toBe(1);
    expect(reference.history.val.map((e) => e.step)).toEqual([0, 3, 6]);
    expect(existsSync(join(wholeDir, "checkpoint"))).toBe(false); // removed once the adapter is written
    expect(readdirSync(wholeDir).sort()).toEqual(["adapter_config.json", "adapter_model.safetensors"]);

    const split = join(tmp, "split");
    const stop = new Error("killed");
    await expect(run(split, { onStep: (s) => { if (s.step === 5) throw stop; } })).rejects.toBe(stop);
    const ckpt = join(split, "checkpoint");
    expect(readdirSync(ckpt).sort()).toEqual(["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"]);
    expect(JSON.parse(readFileSync(join(ckpt, "trainer_state.json"), "utf8"))).toMatchObject({ step: 4, epoch: 1, microBatch: 2, adamStep: 4 });

    await expect(run(split)).rejects.toThrow(CheckpointError); // no --resume: the checkpoint is not clobbered
    const resumed = await run(split, { resume: true });
    expect(adapterBytes(split).equals(adapterBytes(wholeDir))).toBe(true);
    expect(resumed.history).toEqual(reference.history);
  });

  test("resuming survives a crash between the checkpoint's renames, and refuses other settings", async () => {
    const dir = join(tmp, "crash");
    await expect(run(dir, { onStep: (s) => { if (s.step === 3) throw new Error("killed"); } })).rejects.toThrow("killed");
    renameSync(join(dir, "checkpoint"), join(dir, "checkpoint.old"));
    const model = await fixtureModel();
    const adapter = qa.applyLora(model, { target_modules: ["q_proj", "v_proj", "down_proj"], lora_dropout: 0.1, seed: 5 });
    await expect(qa.train(model, adapter, data, { ...opts, lr: 2e-2, outDir: dir, resume: true })).rejects.toThrow(/was written with lr = 0.01, this run has 0.02/);
    const resumed = await run(dir, { resume: true });
    expect(resumed.steps).toBe(6);
    expect(adapterBytes(dir).equals(adapterBytes((await whole()).dir))).toBe(true);
    expect(existsSync(join(dir, "checkpoint.old"))).toBe(false);
  });
});
