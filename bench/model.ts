/**
 * End-to-end cases: forward prefill and decode tokens/s, LoRA training-step tokens/s and peak host
 * and device memory, for the default tiny model and for a random model with Qwen1.5-0.5B's shapes
 * cut to 4 layers; and the loader's peak host memory against its largest tensor.
 *
 * End-to-end times are wall clock and include everything a user waits for (host work, uploads,
 * reading the next token's logits back). The prefill is also compared with its own matmuls timed
 * alone on the GPU clock (same shapes, same variant): the "prefill / matmul" ratio says how close
 * the whole forward comes to the matmul throughput.
 */
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { applyLora } from "../src/lora/layer.ts";
import { optimizerStep } from "../src/lora/trainer.ts";
import { parseConfig, type LlamaConfig } from "../src/model/config.ts";
import { expectedWeights } from "../src/model/params.ts";
import type { LlamaModel } from "../src/model/llama.ts";
import { loadModel } from "../src/model/load.ts";
import { DTYPE_SIZE, writeSafetensors, type TensorToWrite } from "../src/model/safetensors.ts";
import { ensureTinyModel } from "../src/model/tiny.ts";
import type { WebGpuBackend } from "../src/kernels/webgpu/backend.ts";
import { noGrad } from "../src/tensor/autograd.ts";
import type { Backend, Storage } from "../src/tensor/backend.ts";
import { tensor } from "../src/tensor/ops/create.ts";
import { matmulOp } from "../src/tensor/ops/matmul.ts";
import { AdamW } from "../src/tensor/optim.ts";
import { Rng } from "../src/tensor/random.ts";
import { tidy } from "../src/tensor/scope.ts";
import { Tensor } from "../src/tensor/tensor.ts";
import type { CaseResult, Contender, Work } from "./harness.ts";
import { attempt, gpuTimer, measure, wallTime } from "./harness.ts";
import type { BenchContext } from "./kernels.ts";
import { hostRandom } from "./peer.ts";
import type { OrtEndToEnd } from "./ort_model.ts";
import { ortEndToEnd } from "./ort_model.ts";
import { WEIGHT_CASE_DTYPES } from "./weights.ts";

/** Qwen1.5-0.5B's config.json with 4 of its 24 layers. */
const QWEN05_4L = {
  architectures: ["Qwen2ForCausalLM"],
  model_type: "qwen2",
  vocab_size: 151936,
  hidden_size: 1024,
  intermediate_size: 2816,
  num_hidden_layers: 4,
  num_attention_heads: 16,
  num_key_value_heads: 16,
  hidden_act: "silu",
  max_position_embeddings: 32768,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  tie_word_embeddings: true,
  torch_dtype: "float32",
  bos_token_id: 151643,
  eos_token_id: 151643,
};

/**
 * Writes a random checkpoint of `config` (weights uniform in +-0.02, norms 1) into a temp folder,
 * every tensor stored in `dtype` (rounded to nearest even from float32 for BF16/F16).
 * @returns the folder and the byte size of its largest tensor
 */
export async function writeRandomCheckpoint(config: Record<string, unknown>, seed: number, dtype: TensorToWrite["dtype"] = "F32"): Promise<{ dir: string; largestBytes: number }> {
  const parsed = parseConfig(config, "bench config");
  const dir = await mkdtemp(join(tmpdir(), "qalign-bench-"));
  const tensors: Record<string, TensorToWrite> = {};
  let largestBytes = 0;
  let s = seed;
  for (const [name, shape] of expectedWeights(parsed)) {
    const n = shape.reduce((a, b) => a * b, 1);
    largestBytes = Math.max(largestBytes, DTYPE_SIZE[dtype] * n);
    const data = name.endsWith("norm.weight") ? new Float32Array(n).fill(1) : hostRandom(n, s++).map((u) => 0.02 * u);
    tensors[name] = { dtype, shape, data };
  }
  await writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt" });
  await writeFile(join(dir, "config.json"), JSON.stringify(config));
  return { dir, largestBytes };
}

/**
 * Runs V8's garbage collector (exposed at run time, so the benchmark needs no node flag) twice,
 * 100 ms apart: ArrayBuffer memory is released by a background sweeper after a collection.
 */
export async function collectGarbage(): Promise<void> {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  gc();
  await new Promise((resolve) => setTimeout(resolve, 100));
  gc();
}

/** Samples process memory every few ms until stopped: the peak rss and JS ArrayBuffer bytes. */
export function memorySampler(): { stop(): { rss: number; arrayBuffers: number } } {
  const peak = { rss: 0, arrayBuffers: 0 };
  const sample = () => {
    const m = process.memoryUsage();
    peak.rss = Math.max(peak.rss, m.rss);
    peak.arrayBuffers = Math.max(peak.arrayBuffers, m.arrayBuffers);
  };
  sample();
  const timer = setInterval(sample, 2);
  return {
    stop() {
      clearInterval(timer);
      sample();
      return peak;
    },
  };
}

/** FLOPs of one prefill of T tokens (logits for the last one only): linears, attention, lm_head. */
function prefillFlops(c: LlamaConfig, T: number): { linear: number; total: number } {
  const { hidden_size: D, intermediate_size: F, num_attention_heads: H, num_key_value_heads: Hkv, head_dim: Dh, num_hidden_layers: L } = c;
  const perToken = D * H * Dh + 2 * D * Hkv * Dh + H * Dh * D + 3 * D * F;
  const linear = 2 * T * perToken * L + 2 * D * c.vocab_size;
  const attention = 4 * H * Dh * ((T * (T + 1)) / 2) * L;
  return { linear, total: linear + attention };
}

/**
 * The matmuls of one prefill alone, in the shapes and layout the model runs them ([T, D] @ W^T per
 * Linear, then one row through lm_head), recorded on `gpu`.
 */
function prefillMatmuls(gpu: WebGpuBackend, model: LlamaModel, T: number): { record: () => void; dispose: () => void } {
  const c = model.config;
  const { hidden_size: D, intermediate_size: F, num_attention_heads: H, num_key_value_heads: Hkv, head_dim: Dh } = c;
  const x = gpu.upload(hostRandom(T * Math.max(D, F, H * Dh), 21));
  const shapes: [number, number, number][] = [
    [T, H * Dh, D],
    [T, Hkv * Dh, D],
    [T, Hkv * Dh, D],
    [T, D, H * Dh],
    [T, F, D],
    [T, F, D],
    [T, D, F],
  ];
  const weights = shapes.map(([, N, K]) => gpu.upload(hostRandom(N * K, N + K)));
  if (!(model.lm_head instanceof Tensor)) throw new Error("prefillMatmuls: expects an f32 model (load it with dtype f32)");
  const head = model.lm_head.storage;
  const record = () => {
    const outs: Storage[] = [];
    for (let l = 0; l < c.num_hidden_layers; l++) {
      shapes.forEach(([M, N, K], i) => outs.push(gpu.run(matmulOp, x, weights[i]!, { batch: 1, M, N, K, transA: false, transB: true, batchStrideA: 0, batchStrideB: 0 })));
    }
    outs.push(gpu.run(matmulOp, x, head, { batch: 1, M: 1, N: c.vocab_size, K: D, transA: false, transB: true, batchStrideA: 0, batchStrideB: 0 }));
    outs.forEach((s) => gpu.free(s));
  };
  return { record, dispose: () => [x, ...weights].forEach((s) => gpu.free(s)) };
}

/** Token ids in [3, V) from a seed. */
const randomIds = (n: number, V: number, rng: Rng) => Array.from({ length: n }, () => 3 + rng.int(V - 3));

interface E2eSizes {
  prefill: number;
  decode: number;
  trainBatch: number;
  trainLen: number;
}

/**
 * Prefill, decode and LoRA train-step cases for one loaded model on one device.
 * @param label names the model in the case names
 * @param peer ONNX Runtime CPU on the same weights, timed in the same prefill and decode cases
 */
async function endToEnd(ctx: BenchContext, label: string, model: LlamaModel, device: Backend, sizes: E2eSizes, peer: OrtEndToEnd | null = null): Promise<CaseResult[]> {
  const gpu = device.name === "webgpu" ? (device as WebGpuBackend) : null;
  const engine = `qalign ${device.name}`;
  const V = model.config.vocab_size;
  const rng = new Rng(3);
  const out: CaseResult[] = [];
  /** Runs `phase` once with memory sampling: peak host rss over the phase start, and the device pool's peak. */
  const memoryOf = async (phase: () => Promise<void>) => {
    await gpu?.sync();
    const before = process.memoryUsage().rss;
    const inUse = gpu?.memoryStats().inUseBytes ?? 0;
    gpu?.resetPeakBytes();
    const sampler = memorySampler();
    await phase();
    const peak = sampler.stop();
    return { peakHostRssBytes: peak.rss, hostRssAboveStartBytes: peak.rss - before, ...(gpu ? { devicePeakBytes: gpu.memoryStats().peakBytes + gpu.memoryStats().weightBytes, deviceBytesAboveStart: gpu.memoryStats().peakBytes - inUse } : {}) };
  };

  // Prefill: the prompt through a fresh KV cache, logits of the last token read back.
  ctx.log(`${label} prefill ${sizes.prefill} tokens on ${device.name}`);
  const prompt = randomIds(sizes.prefill, V, rng);
  const prefillOnce = async () => {
    const cache = model.newCache(1);
    const logits = noGrad(() => tidy(() => model.forward(tensor(Int32Array.from(prompt), { device, shape: [1, prompt.length] }), { cache, logits: "last" }).logits!));
    await logits.data();
    logits.dispose();
    cache.dispose();
  };
  const flops = prefillFlops(model.config, sizes.prefill);
  const prefill: Contender = {
    engine,
    variant: "forward prefill",
    time: (n) => wallTime(async () => {
      for (let i = 0; i < n; i++) await prefillOnce();
    }),
  };
  const contenders: Contender[] = [prefill, ...(peer ? [peer.prefill(prompt)] : [])];
  let matmuls: ReturnType<typeof prefillMatmuls> | null = null;
  // The matmuls-alone contender times f32 weights; a packed model's are timed in the "weights" group.
  if (gpu && [...model.namedWeights().values()].every((w) => w instanceof Tensor)) {
    matmuls = prefillMatmuls(gpu, model, sizes.prefill);
    const m = matmuls;
    // Same work, same unit (tokens), so the two throughputs compare directly.
    contenders.push({ engine, variant: "its matmuls alone", time: (n) => gpuTimer(gpu, n, m.record) });
  }
  const prefillMemory = await memoryOf(prefillOnce);
  const pre = await measure(contenders, { tokens: sizes.prefill }, ctx.opts);
  matmuls?.dispose();
  const pf = pre.find((t) => t.variant === "forward prefill");
  const mm = pre.find((t) => t.variant === "its matmuls alone");
  pf!.extra = { ...prefillMemory, gflops: pf!.medianMs ? flops.total / pf!.medianMs / 1e6 : null };
  if (mm?.medianMs && pf?.medianMs) {
    const matmulGflops = flops.linear / mm.medianMs / 1e6;
    mm.extra = { gflops: matmulGflops };
    pf.extra = { ...pf.extra, fractionOfMatmulThroughput: flops.total / pf.medianMs / 1e6 / matmulGflops };
  }
  out.push({ group: "end to end", name: `${label} prefill ${sizes.prefill} tokens`, params: { tokens: sizes.prefill, flops: flops.total }, work: { tokens: sizes.prefill }, results: pre });

  // Decode: after the prompt, one token per step (greedy), each step's logits read back.
  ctx.log(`${label} decode ${sizes.decode} tokens on ${device.name}`);
  const decodeRun = async () => {
    const cache = model.newCache(1);
    let next: number[] = prompt;
    let timed = 0;
    for (let step = 0; step <= sizes.decode; step++) {
      const t0 = performance.now();
      const logits = noGrad(() => tidy(() => model.forward(tensor(Int32Array.from(next), { device, shape: [1, next.length] }), { cache, logits: "last" }).logits!));
      const row = await logits.data();
      logits.dispose();
      let best = 0;
      for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
      next = [best];
      if (step > 0) timed += performance.now() - t0; // step 0 is the prefill
    }
    cache.dispose();
    return timed;
  };
  const decodeMemory = await memoryOf(async () => void (await decodeRun()));
  const dec = await measure(
    [
      { engine, variant: "forward decode (KV cache)", time: async (n) => {
        let ms = 0;
        for (let i = 0; i < n; i++) ms += await decodeRun();
        return { ms, clock: "wall" };
      } },
      ...(peer ? [peer.decode(prompt, sizes.decode)] : []),
    ],
    { tokens: sizes.decode },
    ctx.opts,
  );
  dec[0]!.extra = decodeMemory;
  out.push({ group: "end to end", name: `${label} decode ${sizes.decode} tokens after ${sizes.prefill}`, params: { prompt: sizes.prefill, tokens: sizes.decode }, work: { tokens: sizes.decode }, results: dec });

  // LoRA training step (formerly bench/train_step.ts): q_proj and v_proj, r 8; each sequence is
  // random tokens whose second half are targets (a question and its translation).
  const { trainBatch: B, trainLen: T } = sizes;
  ctx.log(`${label} LoRA train step ${B}x${T} on ${device.name}`);
  const adapter = applyLora(model, { seed: 0 });
  adapter.setDropoutRng(new Rng(1));
  const opt = new AdamW(adapter.params, { lr: 5e-5, weightDecay: 0 });
  const window = [Array.from({ length: B }, () => ({ ids: randomIds(T, V, rng), promptLen: T / 2 }))];
  const step = async () => void (await optimizerStep(model, opt, window, 5e-5, 1.0));
  const trainMemory = await memoryOf(step); // also allocates AdamW's moments
  const train = await measure(
    [{ engine, variant: "LoRA step (fwd+bwd+AdamW)", time: (n) => wallTime(async () => {
      for (let i = 0; i < n; i++) await step();
    }) }],
    { tokens: B * T },
    ctx.opts,
  );
  train[0]!.extra = trainMemory;
  out.push({ group: "end to end", name: `${label} LoRA train step ${B}x${T}`, params: { batch: B, len: T, lora: "q_proj,v_proj r 8" }, work: { tokens: B * T } as Work, results: train });
  for (const p of adapter.params) p.dispose();
  return out;
}

/**
 * ONNX Runtime CPU on checkpoint `dir`, keyed in the cache by `name` and the weights' SHA-256, so
 * an export is reused exactly while the weights are the same.
 */
async function ortOn(ctx: BenchContext, name: string, dir: string, model: LlamaModel): Promise<OrtEndToEnd> {
  const digest = createHash("sha256").update(await readFile(join(dir, "model.safetensors"))).digest("hex").slice(0, 16);
  return ortEndToEnd(dir, `${name}-${digest}`, model.config, ctx.wasm.threads, ctx.log);
}

/**
 * End-to-end cases: the tiny model on every device, the Qwen1.5-0.5B-shaped model on webgpu and
 * wasm (quick runs: cut, wasm only), each with f32, bf16 and NF4 weights on webgpu and wasm (the
 * devices with packed-weight kernels; LoRA on NF4 weights is QLoRA); ONNX Runtime CPU on the same
 * f32 weights beside the wasm device.
 */
export async function endToEndCases(ctx: BenchContext, devices: Backend[]): Promise<CaseResult[]> {
  const out: CaseResult[] = [];
  const tinySizes: E2eSizes = ctx.quick ? { prefill: 32, decode: 4, trainBatch: 2, trainLen: 32 } : { prefill: 128, decode: 32, trainBatch: 4, trainLen: 64 };
  /** The cases of one model, or one case carrying the error when they fail. */
  const guarded = async (label: string, f: () => Promise<CaseResult[]>) => {
    let cases: CaseResult[] = [];
    const failed = await attempt("end to end", label, async () => {
      cases = await f();
      return cases[0]!;
    });
    out.push(...(failed.results.length === 0 ? [failed] : cases));
  };
  for (const device of devices) {
    // Weight dtypes on webgpu and wasm, where the packed kernels are; f32 on cpu.
    for (const dtype of device === ctx.cpu ? (["f32"] as const) : WEIGHT_CASE_DTYPES) {
      const label = dtype === "f32" ? "tiny llama" : `tiny llama ${dtype}`;
      await guarded(`${label} on ${device.name}`, async () => {
        const dir = await ensureTinyModel();
        const model = await loadModel(dir, { device, dtype });
        const peer = device === ctx.wasm && dtype === "f32" ? await ortOn(ctx, "tiny-llama", dir, model) : null;
        const cases = await endToEnd(ctx, label, model, device, tinySizes, peer);
        peer?.dispose();
        model.dispose();
        return cases;
      });
    }
  }
  {
    // Quick runs cut the model (one layer, an 8192-token vocabulary) and run it on wasm only.
    const label = ctx.quick ? "Qwen1.5-0.5B shapes / cut to 1 layer, vocab 8192" : "Qwen1.5-0.5B shapes, 4 layers";
    const config = ctx.quick ? { ...QWEN05_4L, num_hidden_layers: 1, vocab_size: 8192 } : QWEN05_4L;
    const sizes: E2eSizes = ctx.quick ? { prefill: 64, decode: 4, trainBatch: 1, trainLen: 32 } : { prefill: 128, decode: 4, trainBatch: 1, trainLen: 64 };
    for (const device of [ctx.quick ? null : ctx.gpu, ctx.wasm].filter((d) => d !== null)) {
      await guarded(`${label} on ${device.name}`, async () => {
        ctx.log(`writing a random checkpoint: ${label}`);
        const { dir } = await writeRandomCheckpoint(config, 100);
        try {
          const cases: CaseResult[] = [];
          // Each weight dtype (the same checkpoint, loaded again); ONNX Runtime beside wasm's f32.
          for (const dtype of WEIGHT_CASE_DTYPES) {
            const model = await loadModel(dir, { device, dtype });
            const peer = device === ctx.wasm && dtype === "f32" ? await ortOn(ctx, ctx.quick ? "qwen1.5-0.5b-cut" : "qwen1.5-0.5b-4-layers", dir, model) : null;
            cases.push(...(await endToEnd(ctx, dtype === "f32" ? label : `${label}, ${dtype}`, model, device, sizes, peer)));
            peer?.dispose();
            model.dispose();
          }
          return cases;
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      });
    }
  }
  return out;
}

/**
 * A case result of one timed run: wall clock `ms` over `bytes` of work (GB/s), with its measured
 * `extra` numbers (the memory cases run once: a repeat would measure a warm cache).
 */
export function singleRun(engine: string, variant: string, ms: number, bytes: number, extra: Record<string, number>) {
  return {
    engine,
    variant,
    clock: "wall" as const,
    iterations: 1,
    samples: 1,
    medianMs: ms,
    minMs: ms,
    maxMs: ms,
    spreadPct: 0,
    throughput: bytes / ms / 1e6,
    unit: "GB/s" as const,
    vsPeer: null,
    extra,
  };
}

/**
 * A Llama config whose largest tensor is its tied embedding [V, 1024] of `largestMiB` MiB in f32,
 * with `layers` decoder layers of MLP width `intermediate`: the checkpoint of the memory cases.
 */
export function largeEmbeddingConfig(largestMiB: number, layers: number, intermediate: number) {
  const D = 1024;
  return {
    model_type: "llama",
    vocab_size: (largestMiB * 2 ** 20) / 4 / D,
    hidden_size: D,
    intermediate_size: intermediate,
    num_hidden_layers: layers,
    num_attention_heads: 16,
    num_key_value_heads: 16,
    hidden_act: "silu",
    max_position_embeddings: 2048,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    tie_word_embeddings: true,
  };
}

/**
 * Peak host memory while loading a checkpoint whose largest tensor is `largestMiB` (an embedding
 * [V, 1024] in f32, tied; one small layer): process.memoryUsage() sampled every 2 ms during
 * `loadModel`, reported above the level before it. The claim under test: the loader reads one
 * tensor at a time, so the transient host memory stays below the largest tensor plus a small
 * constant. JS ArrayBuffers hold the host copies; on a CPU adapter rss also includes the "device"
 * memory the weights move into.
 */
export async function loaderCase(ctx: BenchContext, device: Backend): Promise<CaseResult> {
  const largestMiB = ctx.quick ? 16 : 256;
  const config = largeEmbeddingConfig(largestMiB, 1, 256);
  const { hidden_size: D, vocab_size: V } = config;
  ctx.log(`loader: checkpoint with a ${largestMiB} MiB tensor`);
  const { dir, largestBytes } = await writeRandomCheckpoint(config, 200);
  const totalBytes = [...expectedWeights(parseConfig(config, "bench config"))].reduce((s, [, sh]) => s + 4 * sh.reduce((a, b) => a * b, 1), 0);
  try {
    await collectGarbage(); // so garbage from earlier cases neither inflates the baseline nor vanishes mid-load
    const base = process.memoryUsage();
    const sampler = memorySampler();
    const t0 = performance.now();
    const model = await loadModel(dir, { device });
    const ms = performance.now() - t0;
    const peak = sampler.stop();
    const after = process.memoryUsage();
    model.dispose();
    const arrayBuffersAbove = peak.arrayBuffers - base.arrayBuffers;
    // On the cpu device the loaded weights themselves stay in host ArrayBuffers: not transient.
    const retained = device.name === "cpu" ? totalBytes : 0;
    const result = singleRun(`qalign ${device.name}`, "loadModel", ms, totalBytes, {
      largestTensorBytes: largestBytes,
      checkpointBytes: totalBytes,
      peakArrayBuffersAboveStartBytes: arrayBuffersAbove,
      transientHostBytes: arrayBuffersAbove - retained,
      peakRssAboveStartBytes: peak.rss - base.rss,
      rssAfterAboveStartBytes: after.rss - base.rss,
      transientOverLargest: (arrayBuffersAbove - retained) / largestBytes,
    });
    return { group: "loader", name: `load checkpoint, largest tensor ${largestMiB} MiB`, params: { largestMiB, D, V }, work: { bytes: totalBytes }, results: [result] };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
