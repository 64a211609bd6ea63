/**
 * `npm run bench [-- --quick] [-- --json FILE] [-- --device webgpu|cpu] [-- --only GROUPS]`
 *
 * qalign's benchmark: kernels (matmul, attention, RMSNorm, softmax, cross-entropy), end to end
 * (prefill, decode, LoRA training step) and the loader's host memory, each against TensorFlow.js's
 * WebGPU backend on the same adapter where it has the op (matmul, softmax) and the cpu device for
 * scale. Prints a table and the targets, and writes JSON with the adapter, its limits, the
 * versions, and per case the median and spread over repeats, the throughput and the ratio to the
 * peer. `--quick` is CI's smoke test: small sizes, few repeats, every kind of case, no thresholds.
 * Nothing here is a test: numbers are printed, never asserted.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { cpuDevice } from "../src/kernels/devices.ts";
import type { WebGpuBackend } from "../src/kernels/webgpu/backend.ts";
import { createWebGpuBackend } from "../src/kernels/webgpu/device.ts";
import type { Backend } from "../src/tensor/backend.ts";
import type { CaseResult, MeasureOptions } from "./harness.ts";
import { attempt, table } from "./harness.ts";
import type { BenchContext } from "./kernels.ts";
import { attentionCases, matmulCases, rowCases } from "./kernels.ts";
import { endToEndCases, loaderCase } from "./model.ts";
import { packageVersions, startPeer } from "./peer.ts";
import { targets } from "./targets.ts";

const GROUPS = ["matmul", "attention", "rows", "e2e", "loader"] as const;

const { values } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    json: { type: "string" },
    device: { type: "string", default: "webgpu" },
    only: { type: "string", default: GROUPS.join(",") },
  },
});
const quick = values.quick!;
const only = new Set(values.only!.split(","));
const jsonPath = values.json ?? `runs/bench/bench-${quick ? "quick" : "full"}.json`;
const log = (msg: string) => process.stderr.write(`bench: ${msg}\n`);

if (values.device !== "webgpu" && values.device !== "cpu") throw new Error(`--device must be webgpu or cpu, got ${values.device}`);
if (values.device === "webgpu" && process.env["VK_ICD_FILENAMES"] === undefined) {
  log("VK_ICD_FILENAMES is not set: without a GPU, see the README (SwiftShader)");
}
const gpu: WebGpuBackend | null = values.device === "webgpu" ? await createWebGpuBackend() : null;
if (values.device === "webgpu" && !gpu) throw new Error("--device webgpu: no WebGPU adapter found (see the README: SwiftShader)");
const cpu = cpuDevice();

const peer = gpu ? await startPeer(gpu.gpu) : ({ ok: false, error: "not started: --device cpu", version: null } as const);
if (!peer.ok) log(`peer unavailable, going on without it: ${peer.error}`);

const opts: MeasureOptions = quick ? { repeats: 2, minSampleMs: 20, maxIterations: 10 } : { repeats: 3, minSampleMs: 300, maxIterations: 50 };
const ctx: BenchContext = { gpu, cpu, peer, quick, opts, log };

/** The adapter as JSON: identity, features and the limits that matter to kernels. */
function adapterJson(b: WebGpuBackend) {
  const info = b.device.adapterInfo;
  const limitNames = [
    "maxStorageBufferBindingSize",
    "maxBufferSize",
    "maxComputeWorkgroupStorageSize",
    "maxComputeInvocationsPerWorkgroup",
    "maxComputeWorkgroupSizeX",
    "maxComputeWorkgroupSizeY",
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

const started = new Date();
const cases: CaseResult[] = [];
const run = async (group: (typeof GROUPS)[number], f: () => Promise<CaseResult[]>) => {
  if (!only.has(group)) return;
  const t0 = performance.now();
  cases.push(...(await f()));
  log(`${group} done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
};
await run("matmul", () => matmulCases(ctx));
await run("attention", () => attentionCases(ctx));
await run("rows", () => rowCases(ctx));
await run("e2e", () => endToEndCases(ctx, gpu ? [gpu, cpu] : [cpu]));
await run("loader", async () => [await attempt("loader", "loadModel", () => loaderCase(ctx, (gpu ?? cpu) as Backend))]);

const goals = targets(cases, gpu);
const report = {
  schema: "qalign-bench/1",
  date: started.toISOString(),
  durationS: Math.round((Date.now() - started.getTime()) / 1000),
  quick,
  device: values.device,
  timing: gpu?.device.features.has("timestamp-query") ? "gpu-timestamps (webgpu), wall (cpu, end to end)" : "wall",
  protocol: { ...opts, note: "one untimed warm-up per contender, then repeats rounds visiting contenders in turn; per-iteration times" },
  environment: {
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? null,
    memoryBytes: totalmem(),
    packages: packageVersions(),
    adapter: gpu ? adapterJson(gpu) : null,
  },
  peer: peer.ok ? { name: "TensorFlow.js WebGPU", version: peer.version, status: "ok", timestamps: peer.timestamps } : { name: "TensorFlow.js WebGPU", version: peer.version, status: `unavailable: ${peer.error}` },
  targets: goals,
  cases,
};
await mkdir(dirname(jsonPath), { recursive: true });
await writeFile(jsonPath, JSON.stringify(report, null, 2) + "\n");

console.log(table(cases));
console.log("\nTargets (ratios measured in this run):");
for (const t of goals) console.log(`- ${t.met === null ? "n/a " : t.met ? "met " : "MISS"} ${t.name}: ${t.measured}`);
console.log(`\n${quick ? "quick run, no thresholds; " : ""}JSON: ${jsonPath} (${report.durationS} s)`);
await gpu?.destroy();
