/**
 * Kernel cases: matmul (square, a real model's shapes, and the variant lab), fused vs unfused
 * attention, RMSNorm, softmax, cross-entropy forward + backward. Each case times qalign on its
 * device, TensorFlow.js's WebGPU backend (matmul, softmax) and the cpu device (small sizes) in one
 * interleaved run (see harness.ts).
 */
import { freemem } from "node:os";
import type { CpuBackend } from "../src/kernels/cpu.ts";
import type { WasmBackend } from "../src/kernels/wasm/backend.ts";
import { readRateCase } from "./bandwidth.ts";
import { matmulRef } from "../src/kernels/matmul.ts";
import { MATMUL_VARIANTS, matmulKernelKey } from "../src/kernels/matmul.wgsl.ts";
import type { WebGpuBackend } from "../src/kernels/webgpu/backend.ts";
import { createWebGpuBackend } from "../src/kernels/webgpu/device.ts";
import type { AttentionVariant } from "../src/kernels/webgpu/program.ts";
import { noGrad } from "../src/tensor/autograd.ts";
import type { Backend, Storage } from "../src/tensor/backend.ts";
import { tensor } from "../src/tensor/ops/create.ts";
import type { MatmulGeometry } from "../src/tensor/ops/matmul.ts";
import { matmulOp } from "../src/tensor/ops/matmul.ts";
import { attention } from "../src/tensor/ops/attention.ts";
import { crossEntropyBackwardOp, crossEntropyOp } from "../src/tensor/ops/cross_entropy.ts";
import { rmsNormOp } from "../src/tensor/ops/rmsnorm.ts";
import { softmax, softmaxOp } from "../src/tensor/ops/softmax.ts";
import { tidy } from "../src/tensor/scope.ts";
import type { CaseResult, Contender, MeasureOptions, Work } from "./harness.ts";
import { attempt, gpuTimer, measure, relErr, wallTime } from "./harness.ts";
import type { Peer, PeerCase } from "./peer.ts";
import { checkPeer, hostRandom, peerMatmul, peerSoftmax } from "./peer.ts";
import type { CpuPeak } from "./cpu_peak.ts";
import type { SimdCeiling } from "./wasm_simd_ceiling.ts";
import type { CpuSidePeer } from "./jax_ort.ts";
import { failedContender, peerLinearContenders } from "./jax_ort.ts";

/** What every case needs: the devices, the peer, the size regime and the sampling options. */
export interface BenchContext {
  /** The webgpu backend, or null when benchmarking the cpu device only. */
  gpu: WebGpuBackend | null;
  cpu: CpuBackend;
  /** The wasm device (SIMD kernels on every core), benchmarked in every run. */
  wasm: WasmBackend;
  peer: Peer;
  /** jax-js and ONNX Runtime, each ready or with its error. */
  cpuSidePeers: CpuSidePeer[];
  /** The CPU's FP32 peak, or null where it cannot be computed. */
  cpuPeak: CpuPeak | null;
  /** The measured throughput ceiling of WebAssembly SIMD on the wasm device's threads. */
  simdCeiling: SimdCeiling;
  quick: boolean;
  opts: MeasureOptions;
  /** Progress on stderr. */
  log(msg: string): void;
}

/** A contender that runs `op` on a backend and frees its outputs each iteration. */
function backendContender(engine: string, variant: string, backend: Backend, op: () => Storage[]): Contender {
  const once = () => {
    for (const s of op()) backend.free(s);
  };
  if (backend.name === "webgpu") {
    const gpu = backend as WebGpuBackend;
    return { engine, variant, time: (n) => gpuTimer(gpu, n, once) };
  }
  return { engine, variant, time: (n) => wallTime(() => {
    for (let i = 0; i < n; i++) once();
  }) };
}

const nt = (M: number, N: number, K: number): MatmulGeometry => ({ batch: 1, M, N, K, transA: false, transB: true, batchStrideA: 0, batchStrideB: 0 });

/**
 * y [M, N] = x [M, K] @ w [N, K]^T (the Linear layout) on the default webgpu variant, the wasm
 * device, the peers (TensorFlow.js webgpu, jax-js wasm and webgpu, ONNX Runtime cpu and webgpu)
 * and, when `withCpu`, the cpu device. Each peer's result is checked against qalign's once. Every
 * timing carries its throughput as a percentage of the CPU's FP32 peak (all of them run on it
 * when the adapter is a CPU emulation).
 */
async function matmulCase(ctx: BenchContext, name: string, M: number, N: number, K: number, withCpu: boolean): Promise<CaseResult> {
  ctx.log(`matmul ${name}`);
  const x = hostRandom(M * K, 1);
  const w = hostRandom(N * K, 2);
  const g = nt(M, N, K);
  const work: Work = { flops: 2 * M * N * K };
  const contenders: Contender[] = [];
  const cleanup: (() => void)[] = [];
  let qalignOut: Float32Array | null = null;
  let note: string | undefined;
  if (ctx.gpu) {
    const gpu = ctx.gpu;
    const [a, b] = [gpu.upload(x), gpu.upload(w)];
    cleanup.push(() => [a, b].forEach((s) => gpu.free(s)));
    contenders.push(backendContender("qalign webgpu", matmulKernelKey(gpu, g).replace(/^matmul\./, ""), gpu, () => [gpu.run(matmulOp, a, b, g)]));
    if (M * N <= 1 << 22) {
      const y = gpu.run(matmulOp, a, b, g);
      qalignOut = (await gpu.read(y)) as Float32Array;
      gpu.free(y);
    }
  }
  {
    const wasm = ctx.wasm;
    const [a, b] = [wasm.upload(x), wasm.upload(w)];
    cleanup.push(() => [a, b].forEach((s) => wasm.free(s)));
    contenders.push(backendContender("qalign wasm", `simd, ${wasm.threads} threads`, wasm, () => [wasm.run(matmulOp, a, b, g)]));
    if (!qalignOut && M * N <= 1 << 22) {
      const y = wasm.run(matmulOp, a, b, g);
      qalignOut = (await wasm.read(y)) as Float32Array;
      wasm.free(y);
    }
  }
  // Each CPU-side peer holds its own copies of w (ONNX Runtime: the model bytes and its
  // initializer); on a machine short of memory they are reported as not run instead of risking
  // the out-of-memory killer.
  const peerBytes = 3 * 4 * N * K * ctx.cpuSidePeers.length;
  const others = peerBytes < freemem()
    ? await peerLinearContenders(ctx.cpuSidePeers, x, w, M, N, K)
    : {
        contenders: ctx.cpuSidePeers.map((p) => failedContender(p.engine, `not run: the peers' copies of w need about ${(peerBytes / 2 ** 30).toFixed(1)} GiB, ${(freemem() / 2 ** 30).toFixed(1)} GiB are free`)),
        check: async () => {},
        dispose: () => {},
      };
  contenders.push(...others.contenders);
  cleanup.push(others.dispose);
  let peerCase: PeerCase | null = null;
  const peerErrors = ctx.peer.ok ? ctx.peer.deviceErrors.length : 0;
  if (ctx.peer.ok) {
    const limit = ctx.peer.backend.device.limits.maxStorageBufferBindingSize;
    peerCase = peerMatmul(ctx.peer, x, w, M, N, K, limit);
    contenders.push(peerCase.contender);
    cleanup.push(() => peerCase!.dispose());
    if (4 * N * K > limit) note = `w is ${4 * N * K} bytes, above the ${limit}-byte binding limit: TensorFlow.js ran it as row blocks (see its variant)`;
  }
  if (withCpu) {
    const [a, b] = [ctx.cpu.upload(x), ctx.cpu.upload(w)];
    cleanup.push(() => [a, b].forEach((s) => ctx.cpu.free(s)));
    contenders.push(backendContender("qalign cpu", "reference", ctx.cpu, () => [ctx.cpu.run(matmulOp, a, b, g)]));
  }
  const results = await measure(contenders, work, ctx.opts);
  if (peerCase && ctx.peer.ok) await checkPeer(ctx.peer, peerErrors, peerCase, qalignOut, results);
  await others.check(results, qalignOut);
  for (const t of results) {
    if (t.throughput === null) continue;
    t.extra = { ...t.extra, pctOfWasmSimdCeiling: (100 * t.throughput) / ctx.simdCeiling.gflops };
    if (ctx.cpuPeak) t.extra.pctOfCpuFp32Peak = (100 * t.throughput) / ctx.cpuPeak.gflops;
  }
  cleanup.forEach((f) => f());
  return { group: "matmul", name, params: { M, N, K, layout: "x @ w^T" }, work, results, ...(note ? { note } : {}) };
}

/**
 * The matmul lab: every variant at one shape, each on its own backend, first checked against the
 * cpu reference (matmulRef in float64) at that shape, then timed interleaved.
 */
async function matmulLab(ctx: BenchContext, S: number, transB: boolean): Promise<CaseResult> {
  const layout = transB ? "x @ w^T" : "x @ w";
  ctx.log(`matmul lab ${S}^3 ${layout}`);
  const x = hostRandom(S * S, 3);
  const w = hostRandom(S * S, 4);
  const g: MatmulGeometry = { ...nt(S, S, S), transB };
  const ref = new Float64Array(S * S);
  matmulRef(x, w, ref, g);
  const variants = MATMUL_VARIANTS.filter((v) => v !== "quad" || ctx.gpu!.device.features.has("subgroups"));
  const backends = await Promise.all(variants.map(async (v) => (await createWebGpuBackend({ matmulVariant: v }))!));
  const contenders: Contender[] = [];
  const checks: Record<string, number> = {};
  for (const [i, v] of variants.entries()) {
    const gpu = backends[i]!;
    const [a, b] = [gpu.upload(x), gpu.upload(w)];
    const y = gpu.run(matmulOp, a, b, g);
    checks[v] = relErr(await gpu.read(y), ref);
    gpu.free(y);
    contenders.push({ ...backendContender("qalign webgpu", v, gpu, () => [gpu.run(matmulOp, a, b, g)]), extra: () => ({ maxRelErrVsReference: checks[v] }) });
  }
  const results = await measure(contenders, { flops: 2 * S * S * S }, ctx.opts);
  await Promise.all(backends.map((b) => b.destroy()));
  return { group: "matmul variants", name: `lab ${S}^3 ${layout}`, params: { M: S, N: S, K: S, layout }, work: { flops: 2 * S * S * S }, results };
}

/** All matmul cases: square sizes, the Qwen1.5-1.8B shapes (quick: scaled down), the variant lab. */
export async function matmulCases(ctx: BenchContext): Promise<CaseResult[]> {
  const out: CaseResult[] = [];
  const cpuMax = ctx.quick ? 128 : 256;
  // Without webgpu only the sizes the cpu device finishes in seconds.
  const squares = ctx.quick ? [128, 256] : [256, 512, 1024, 2048];
  const shape = (name: string, M: number, N: number, K: number, withCpu: boolean) => attempt("matmul", name, () => matmulCase(ctx, name, M, N, K, withCpu));
  for (const S of squares) out.push(await shape(`${S}^3`, S, S, S, S <= cpuMax));
  // Qwen1.5-1.8B: hidden 2048, intermediate 5504, vocab 151936; a 512-token prefill and one decode row.
  const [T, D, F, V] = ctx.quick ? [64, 512, 1376, 8192] : [512, 2048, 5504, 151936];
  const model = ctx.quick ? "Qwen1.5-1.8B / 4" : "Qwen1.5-1.8B";
  out.push(await shape(`${model} q_proj ${T}x${D}x${D}`, T, D, D, false));
  out.push(await shape(`${model} gate/up ${T}x${F}x${D}`, T, F, D, false));
  out.push(await shape(`${model} down ${T}x${D}x${F}`, T, D, F, false));
  out.push(await shape(`${model} lm_head decode 1x${V}x${D}`, 1, V, D, false));
  if (!ctx.gpu) return out;
  out.push(await attempt("matmul", "read rate", () => readRateCase(ctx, `read rate over ${model} lm_head's ${4 * V * D} bytes (the decode row's bound)`, 4 * V * D)));
  const lab = ctx.quick ? [128] : [256, 512];
  for (const S of lab) for (const transB of [true, false]) out.push(await attempt("matmul variants", `lab ${S}^3`, () => matmulLab(ctx, S, transB)));
  return out;
}

// ---- attention ----

/**
 * Causal GQA attention [B, H, T, Dh] with Hkv kv heads: qalign's fused kernel (each variant) vs the
 * unfused path built from qalign's own ops (QK^T matmul, causal mask bias, softmax, PV matmul),
 * which stores the [B, H, T, T] score matrix. Reports the device bytes each allocates (pool peak
 * during one call above what was in use before).
 */
async function attentionCase(ctx: BenchContext, T: number): Promise<CaseResult> {
  const gpu = ctx.gpu!;
  const [B, H, Hkv, Dh] = [1, 16, 4, 64];
  ctx.log(`attention T=${T}`);
  const scale = 1 / Math.sqrt(Dh);
  const q = tensor(hostRandom(B * H * T * Dh, 5), { device: gpu, shape: [B, H, T, Dh] });
  const k = tensor(hostRandom(B * Hkv * T * Dh, 6), { device: gpu, shape: [B, Hkv, T, Dh] });
  const v = tensor(hostRandom(B * Hkv * T * Dh, 7), { device: gpu, shape: [B, Hkv, T, Dh] });
  // 0 where key j is visible from query i (j <= i), else -1e30: HF's additive causal mask.
  const bias = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) bias[i * T + j] = -1e30;
  const maskBias = tensor(bias, { device: gpu, shape: [T, T] });
  const group = H / Hkv;
  const unfused = () => {
    const rep = (t: typeof k) => t.unsqueeze(2).expand([B, Hkv, group, T, Dh]).reshape([B, H, T, Dh]);
    const scores = q.matmul(rep(k).transpose(2, 3)).mul(scale).add(maskBias);
    return softmax(scores).matmul(rep(v));
  };
  /** Bytes the pool peaked at during one call, above what was in use before it. */
  const bytesOf = async (backend: WebGpuBackend, f: () => void) => {
    await backend.sync();
    const before = backend.memoryStats().inUseBytes;
    backend.resetPeakBytes();
    f();
    await backend.sync();
    return backend.memoryStats().peakBytes - before;
  };
  const run = (f: () => { dispose(): void }) => () => noGrad(() => tidy(f).dispose());
  const fusedVariants: AttentionVariant[] = gpu.device.features.has("subgroups") ? ["quad", "rows"] : ["rows"];
  // The "rows" variant is the GPU design; on a CPU adapter it is only timed at short sequences.
  const variants = fusedVariants.filter((v) => v === gpu.attentionVariant || T <= 512);
  const others = await Promise.all(variants.map(async (v) => (v === gpu.attentionVariant ? gpu : (await createWebGpuBackend({ attentionVariant: v }))!)));
  const contenders: Contender[] = [];
  for (const [i, variant] of variants.entries()) {
    const be = others[i]!;
    const [qq, kk, vv] = be === gpu ? [q, k, v] : [q, k, v].map((t) => tensor(hostRandom(t.size, 8), { device: be, shape: t.shape }));
    const call = run(() => attention(qq!, kk!, vv!));
    const bytes = await bytesOf(be, call);
    contenders.push({ engine: "qalign webgpu", variant: `fused ${variant}`, time: (n) => gpuTimer(be, n, call), extra: () => ({ deviceBytes: bytes }) });
  }
  const unfusedBytes = await bytesOf(gpu, run(unfused));
  contenders.push({ engine: "qalign webgpu", variant: "unfused ops", time: (n) => gpuTimer(gpu, n, run(unfused)), extra: () => ({ deviceBytes: unfusedBytes }) });
  // Useful work: QK^T and PV over the T (T + 1) / 2 visible pairs, 2 flops per multiply-add.
  const work: Work = { flops: 4 * B * H * Dh * ((T * (T + 1)) / 2) };
  const results = await measure(contenders, work, ctx.opts);
  const fused = results.find((r) => r.variant === `fused ${gpu.attentionVariant}`);
  const unf = results.find((r) => r.variant === "unfused ops");
  if (fused?.medianMs && unf?.medianMs) fused.extra = { ...fused.extra, speedupVsUnfused: unf.medianMs / fused.medianMs };
  for (const t of [q, k, v, maskBias]) t.dispose();
  await Promise.all(others.filter((b) => b !== gpu).map((b) => b.destroy()));
  return { group: "attention", name: `causal B=${B} H=${H} Hkv=${Hkv} Dh=${Dh} T=${T}`, params: { B, H, Hkv, T, Dh }, work, results };
}

export async function attentionCases(ctx: BenchContext): Promise<CaseResult[]> {
  if (!ctx.gpu) return [];
  const seqs = ctx.quick ? [64, 128] : [128, 512, 1024, 2048];
  const out: CaseResult[] = [];
  for (const T of seqs) out.push(await attempt("attention", `T=${T}`, () => attentionCase(ctx, T)));
  return out;
}

// ---- row kernels ----

/** Row-kernel contenders on the webgpu backend and, for small sizes, the cpu device. */
function rowContenders(ctx: BenchContext, withCpu: boolean, make: (be: Backend) => () => Storage[]): Contender[] {
  const list: Contender[] = [];
  if (ctx.gpu) list.push(backendContender("qalign webgpu", `lanes ${ctx.gpu.rowWorkgroup}`, ctx.gpu, make(ctx.gpu)));
  if (withCpu || !ctx.gpu) list.push(backendContender("qalign cpu", "reference", ctx.cpu, make(ctx.cpu)));
  return list;
}

/** Uploads host arrays to a backend and frees them later. */
function inputs(be: Backend, arrays: (Float32Array | Int32Array)[], frees: (() => void)[]): Storage[] {
  const ss = arrays.map((a) => be.upload(a));
  frees.push(() => ss.forEach((s) => be.free(s)));
  return ss;
}

/** RMSNorm over rows [rows, D]: bytes = read x and w, write y. */
async function rmsNormCase(ctx: BenchContext, rows: number, D: number, withCpu: boolean): Promise<CaseResult> {
  ctx.log(`rmsnorm ${rows}x${D}`);
  const x = hostRandom(rows * D, 9);
  const w = hostRandom(D, 10);
  const frees: (() => void)[] = [];
  const contenders = rowContenders(ctx, withCpu, (be) => {
    const [xs, ws] = inputs(be, [x, w], frees);
    return () => [be.run(rmsNormOp, xs!, ws!, { rows, D, eps: 1e-6 })];
  });
  const work = { bytes: 4 * (2 * rows * D + D) };
  const results = await measure(contenders, work, ctx.opts);
  frees.forEach((f) => f());
  return { group: "rmsnorm", name: `rmsnorm ${rows}x${D}`, params: { rows, D }, work, results };
}

/** Softmax over rows [rows, cols], with the peer: bytes = read x, write y. */
async function softmaxCase(ctx: BenchContext, rows: number, cols: number, withCpu: boolean): Promise<CaseResult> {
  ctx.log(`softmax ${rows}x${cols}`);
  const x = hostRandom(rows * cols, 11).map((u) => 4 * u);
  const frees: (() => void)[] = [];
  const contenders = rowContenders(ctx, withCpu, (be) => {
    const [xs] = inputs(be, [x], frees);
    return () => [be.run(softmaxOp, xs!, rows, cols, false)];
  });
  let peerCase: PeerCase | null = null;
  const peerErrors = ctx.peer.ok ? ctx.peer.deviceErrors.length : 0;
  if (ctx.peer.ok) {
    peerCase = peerSoftmax(ctx.peer, x, rows, cols);
    contenders.push(peerCase.contender);
  }
  const work = { bytes: 4 * 2 * rows * cols };
  const results = await measure(contenders, work, ctx.opts);
  if (peerCase && ctx.peer.ok && ctx.gpu) {
    const xs = ctx.gpu.upload(x);
    const y = ctx.gpu.run(softmaxOp, xs, rows, cols, false);
    await checkPeer(ctx.peer, peerErrors, peerCase, (await ctx.gpu.read(y)) as Float32Array, results);
    [xs, y].forEach((s) => ctx.gpu!.free(s));
  }
  peerCase?.dispose();
  frees.forEach((f) => f());
  return { group: "softmax", name: `softmax ${rows}x${cols}`, params: { rows, cols }, work, results };
}

/**
 * Cross-entropy forward + backward over logits [rows, V] (a quarter of the targets ignored):
 * bytes = read the logits twice, write the gradient.
 */
async function crossEntropyCase(ctx: BenchContext, rows: number, V: number, withCpu: boolean): Promise<CaseResult> {
  ctx.log(`cross-entropy ${rows}x${V}`);
  const logits = hostRandom(rows * V, 12).map((u) => 4 * u);
  const targets = Int32Array.from({ length: rows }, (_, r) => (r % 4 === 3 ? -100 : (r * 7919) % V));
  const grad = new Float32Array(rows).fill(1 / rows);
  const frees: (() => void)[] = [];
  const contenders = rowContenders(ctx, withCpu, (be) => {
    const [ls, ts, gs] = inputs(be, [logits, targets, grad], frees);
    return () => [be.run(crossEntropyOp, ls!, ts!, { rows, cols: V, ignoreIndex: -100 }), be.run(crossEntropyBackwardOp, ls!, ts!, gs!, { rows, cols: V, ignoreIndex: -100 })];
  });
  const work = { bytes: 4 * 3 * rows * V };
  const results = await measure(contenders, work, ctx.opts);
  frees.forEach((f) => f());
  return { group: "cross-entropy", name: `cross-entropy fwd+bwd ${rows}x${V}`, params: { rows, V }, work, results };
}

export async function rowCases(ctx: BenchContext): Promise<CaseResult[]> {
  const q = ctx.quick;
  type Case = [string, () => Promise<CaseResult>];
  const full = (c: Case): Case[] => (q ? [] : [c]);
  const cases: Case[] = [
    ["rmsnorm", () => rmsNormCase(ctx, q ? 64 : 512, q ? 512 : 2048, true)],
    ...full(["rmsnorm", () => rmsNormCase(ctx, 2048, 2048, false)]),
    ["softmax", () => softmaxCase(ctx, q ? 64 : 512, q ? 512 : 2048, true)],
    ...full(["softmax", () => softmaxCase(ctx, 16 * 512, 512, false)]),
    ["cross-entropy", () => crossEntropyCase(ctx, q ? 16 : 512, q ? 4096 : 151936, q)],
  ];
  const out: CaseResult[] = [];
  for (const [group, f] of cases) out.push(await attempt(group, group, f));
  return out;
}

