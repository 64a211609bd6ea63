/**
 * `npm run bench [-- --quick] [-- --json FILE] [-- --device webgpu|cpu] [-- --threads N] [-- --only GROUPS] [-- --help]`
 *
 * qalign's benchmark: kernels (matmul, attention, RMSNorm, softmax, cross-entropy), end to end
 * (prefill, decode, LoRA training step) and the loader's host memory, each against TensorFlow.js's
 * WebGPU backend on the same adapter where it has the op (matmul, softmax) and the cpu device for
 * scale; matmuls also on the wasm device and against jax-js (wasm, webgpu) and ONNX Runtime (cpu,
 * webgpu EP), as percentages of the CPU's FP32 peak. Prints a table and the targets, and writes JSON with the adapter, its limits, the
 * versions, and per case the median and spread over repeats, the throughput and the ratio to the
 * peer. `--quick` is CI's smoke test: small sizes, few repeats, every kind of case; targets are
 * printed, never enforced. Each run writes its own JSON file (see USAGE).
 * Nothing here is a test: numbers are printed, never asserted.
 */
import { mergeCase } from "./merge.ts";
import { mkdir, writeFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { cpuDevice, wasmDevice } from "../src/kernels/devices.ts";
import { coreCount } from "../src/kernels/wasm/pool.ts";
import type { WebGpuBackend } from "../src/kernels/webgpu/backend.ts";
import { RAISED_LIMITS, createWebGpuBackend } from "../src/kernels/webgpu/device.ts";
import type { Backend } from "../src/tensor/backend.ts";
import type { CaseResult, MeasureOptions } from "./harness.ts";
import { attempt, table } from "./harness.ts";
import type { BenchContext } from "./kernels.ts";
import { attentionCases, matmulCases, rowCases } from "./kernels.ts";
import { endToEndCases, loaderCase } from "./model.ts";
import { weightCases } from "./weights.ts";
import { cpuPeak } from "./cpu_peak.ts";
import { wasmSimdCeiling } from "./wasm_simd_ceiling.ts";
import { startCpuSidePeers } from "./jax_ort.ts";
import { packageVersions, startPeer } from "./peer.ts";
import { targets } from "./targets.ts";

const GROUPS = ["matmul", "weights", "attention", "rows", "e2e", "loader", "merge"] as const;

const USAGE = `usage: npm run bench [-- --quick] [-- --json FILE] [-- --device webgpu|cpu] [-- --threads N] [-- --only GROUP,...]
  --quick   small sizes and few repeats (CI's smoke test; targets are printed, never enforced)
  --json    where to write the results (default runs/bench/<full|quick>-<date and time>.json)
  --device  webgpu (default) or cpu (no adapter); the wasm device runs in both
  --threads threads of the wasm device and of ONNX Runtime (default: every core)
  --only    a comma-separated subset of ${GROUPS.join(", ")}`;

/** Prints `message` and the usage on stderr and exits 2 (a bad command line, not a failure of the run). */
function usageError(message: string): never {
  process.stderr.write(`bench: ${message}\n${USAGE}\n`);
  process.exit(2);
}

const parsed = (() => {
  try {
    return parseArgs({
      options: {
        quick: { type: "boolean", default: false },
        json: { type: "string" },
        device: { type: "string", default: "webgpu" },
        threads: { type: "string" },
        only: { type: "string", default: GROUPS.join(",") },
        help: { type: "boolean", default: false },
      },
    }).values;
  } catch (e) {
    return usageError((e as Error).message);
  }
})();
if (parsed.help) {
  console.log(USAGE);
  process.exit(0);
}
const quick = parsed.quick!;
const only = new Set(parsed.only!.split(",").filter((g) => g !== ""));
const unknown = [...only].filter((g) => !(GROUPS as readonly string[]).includes(g));
if (unknown.length > 0 || only.size === 0) usageError(`--only ${parsed.only}: ${unknown.length > 0 ? `unknown group ${unknown.join(", ")}` : "no group"}`);
if (parsed.device !== "webgpu" && parsed.device !== "cpu") usageError(`--device must be webgpu or cpu, got ${parsed.device}`);
// A new file per run, so no run overwrites another's results.
const started = new Date();
const jsonPath = parsed.json ?? `runs/bench/${quick ? "quick" : "full"}-${started.toISOString().replace(/:/g, "-").replace(/\.\d+Z$/, "Z")}.json`;
const log = (msg: string) => process.stderr.write(`bench: ${msg}\n`);

if (parsed.device === "webgpu" && process.env["VK_ICD_FILENAMES"] === undefined) {
  log("VK_ICD_FILENAMES is not set: without a GPU, see the README (SwiftShader)");
}
const gpu: WebGpuBackend | null = parsed.device === "webgpu" ? await createWebGpuBackend() : null;
if (parsed.device === "webgpu" && !gpu) {
  process.stderr.write("bench: --device webgpu: no WebGPU adapter found (without a GPU, see the README: SwiftShader)\n");
  process.exit(1);
}
const cpu = cpuDevice();
const threads = parsed.threads === undefined ? await coreCount() : Number(parsed.threads);
if (!Number.isInteger(threads) || threads < 1) usageError(`--threads must be a positive integer, got ${parsed.threads}`);
const wasm = await wasmDevice(threads);
const peak = cpuPeak();
log(peak ? `CPU FP32 peak: ${peak.how}` : "CPU FP32 peak: unknown (no FMA flag or clock in /proc/cpuinfo)");
const simdCeiling = await wasmSimdCeiling(wasm.threads, wasm.relaxedSimd);
log(`wasm SIMD ceiling: ${simdCeiling.how}`);

// createWebGpuBackend() opened the device itself, so gpu.gpu (the GPU object) is set.
const peer = gpu?.gpu ? await startPeer(gpu.gpu) : ({ ok: false, error: "not started: --device cpu", version: null } as const);
if (!peer.ok) log(`peer unavailable, going on without it: ${peer.error}`);

const opts: MeasureOptions = quick ? { repeats: 2, minSampleMs: 20, maxIterations: 10 } : { repeats: 3, minSampleMs: 300, maxIterations: 50 };
const cpuSidePeers = await startCpuSidePeers(gpu?.gpu ?? null, threads);
for (const p of cpuSidePeers) if (p.error) log(`peer ${p.engine} unavailable, reported as failed in each case: ${p.error}`);
const ctx: BenchContext = { gpu, cpu, wasm, peer, cpuSidePeers, cpuPeak: peak, simdCeiling, quick, opts, log };

/** The adapter as JSON: identity, features and the limits that matter to kernels. */
function adapterJson(b: WebGpuBackend) {
  const info = b.device.adapterInfo;
  const limitNames = [
    ...RAISED_LIMITS,
    "maxComputeWorkgroupSizeZ",
    "maxComputeWorkgroupsPerDimension",
    "maxStorageBuffersPerShaderStage",
    "maxUniformBufferBindingSize",
    "minUniformBufferOffsetAlignment",
    "minStorageBufferOffsetAlignment",
  ] as const;
  return {
    vendor: info.vendor,
    architecture: info.architecture,
    device: info.device,
    description: info.description,
    isFallbackAdapter: info.isFallbackAdapter,
    subgroupMinSize: info.subgroupMinSize,
    subgroupMaxSize: info.subgroupMaxSize,
    features: [...b.device.features].sort(),
    limits: Object.fromEntries(limitNames.map((n) => [n, b.device.limits[n]])),
    kernelVariants: { matmul: b.matmulVariant, attention: b.attentionVariant, rowWorkgroup: b.rowWorkgroup },
  };
}

const cases: CaseResult[] = [];
const run = async (group: (typeof GROUPS)[number], f: () => Promise<CaseResult[]>) => {
  if (!only.has(group)) return;
  const t0 = performance.now();
  cases.push(...(await f()));
  log(`${group} done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
};
await run("matmul", () => matmulCases(ctx));
await run("weights", () => weightCases(ctx));
await run("attention", () => attentionCases(ctx));
await run("rows", () => rowCases(ctx));
await run("e2e", () => endToEndCases(ctx, gpu ? [gpu, wasm, cpu] : [wasm, cpu]));
await run("loader", async () => [await attempt("loader", "loadModel", () => loaderCase(ctx, (gpu ?? cpu) as Backend))]);
await run("merge", async () => [await attempt("merge", "mergeCheckpoint", () => mergeCase(ctx))]);

const goals = targets(cases, gpu, peak, simdCeiling);
const report = {
  schema: "qalign-bench/1",
  date: started.toISOString(),
  durationS: Math.round((Date.now() - started.getTime()) / 1000),
  quick,
  device: parsed.device,
  timing: gpu?.device.features.has("timestamp-query") ? "gpu-timestamps (webgpu), wall (cpu, end to end)" : "wall",
  protocol: { ...opts, note: "one untimed warm-up per contender, then repeats rounds visiting contenders in turn; per-iteration times" },
  environment: {
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? null,
    memoryBytes: totalmem(),
    packages: await packageVersions(),
    adapter: gpu ? adapterJson(gpu) : null,
  },
  peer: peer.ok ? { name: "TensorFlow.js WebGPU", version: peer.version, status: "ok", timestamps: peer.timestamps } : { name: "TensorFlow.js WebGPU", version: peer.version, status: `unavailable: ${peer.error}` },
  peers: cpuSidePeers.map((p) => ({ name: p.engine, version: p.version, status: p.error ? `unavailable: ${p.error}` : "ok" })),
  wasm: { threads: wasm.threads, relaxedSimd: wasm.relaxedSimd },
  cpuFp32Peak: peak,
  wasmSimdCeiling: simdCeiling,
  targets: goals,
  cases,
};
await mkdir(dirname(jsonPath), { recursive: true });
await writeFile(jsonPath, JSON.stringify(report, null, 2) + "\n");

console.log(table(cases));
console.log(`\nCPU FP32 peak: ${peak?.how ?? "unknown"}`);
console.log(`wasm SIMD ceiling: ${simdCeiling.how}`);
console.log("\nTargets (ratios measured in this run):");
for (const t of goals) console.log(`- ${t.met === null ? "n/a " : t.met ? "met " : "MISS"} ${t.name}: ${t.measured}`);
console.log(`\n${quick ? "quick run (cut sizes; targets printed, not enforced); " : ""}JSON: ${jsonPath} (${report.durationS} s)`);
await gpu?.destroy();
wasm.destroy();
