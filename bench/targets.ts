/**
 * The performance targets, evaluated on the cases of one run (ratios, so load from other
 * processes cancels out). Reported, never asserted: `met` is null when the run lacks the cases
 * (e.g. `--quick`, or no peer).
 */
import type { WebGpuBackend } from "../src/kernels/webgpu/backend.ts";
import type { CpuPeak } from "./cpu_peak.ts";
import type { SimdCeiling } from "./wasm_simd_ceiling.ts";
import type { CaseResult, Timing } from "./harness.ts";

export interface Target {
  name: string;
  /** The measured value behind `met`, in words with numbers. */
  measured: string;
  value: number | null;
  met: boolean | null;
}

const find = (cases: readonly CaseResult[], name: (n: string) => boolean, pick: (t: Timing) => boolean) =>
  cases.filter((c) => name(c.name)).flatMap((c) => c.results.filter(pick).map((t) => ({ c, t })));

const fmt = (x: number, d = 2) => x.toFixed(d);

export function targets(cases: readonly CaseResult[], gpu: WebGpuBackend | null, peak: CpuPeak | null, ceiling: SimdCeiling): Target[] {
  const out: Target[] = [];
  out.push(...wasmTargets(cases, peak, ceiling));
  out.push(...weightTargets(cases));
  const qalignGpu = (t: Timing) => t.engine === "qalign webgpu";

  // matmul: at least 5x TensorFlow.js's throughput, at 1024^3 and at the Qwen1.5-1.8B shapes.
  // The decode row reads each weight once: its time is bounded by the adapter's read rate.
  const readRate = cases.find((c) => c.name.startsWith("read rate over "));
  const bestRead = Math.max(0, ...(readRate?.results ?? []).map((r) => r.throughput ?? 0));
  for (const { c, t } of find(cases, (n) => n === "1024^3" || n.startsWith("Qwen1.5-1.8B "), qalignGpu)) {
    const v = t.vsPeer;
    const peerError = c.results.find((r) => r.engine !== t.engine && r.error)?.error;
    let measured = v === null ? `no peer timing (${peerError ?? c.note ?? "no peer"})` : `${fmt(v)}x (${fmt(t.throughput!)} GFLOP/s)`;
    if (c.params["M"] === 1 && bestRead > 0 && t.medianMs) {
      const bytes = 4 * (c.params["N"] as number) * (c.params["K"] as number);
      const gbs = (ms: number) => bytes / ms / 1e6;
      const peer = c.results.find((r) => r.engine !== t.engine && r.medianMs)?.medianMs;
      measured += `; reads W at ${fmt(gbs(t.medianMs))} GB/s, ${fmt((100 * gbs(t.medianMs)) / bestRead, 0)}% of the adapter's read rate (${fmt(bestRead)} GB/s)`;
      if (peer) measured += `; the peer reads at ${fmt(gbs(peer))} GB/s, so no kernel can be more than ${fmt(bestRead / gbs(peer))}x faster here`;
    }
    out.push({ name: `matmul ${c.name}: >= 5x TensorFlow.js WebGPU`, measured, value: v, met: v === null ? null : v >= 5 });
  }

  // attention: fused >= 2x unfused at seq 2048, and fused memory linear in the sequence length.
  const att = cases.filter((c) => c.group === "attention");
  const at2048 = att.find((c) => c.params["T"] === 2048);
  const fusedOf = (c: CaseResult) => c.results.find((r) => r.variant.startsWith("fused") && r.extra?.["speedupVsUnfused"] !== undefined);
  const f2048 = at2048 ? fusedOf(at2048) : undefined;
  const s = f2048?.extra?.["speedupVsUnfused"] as number | undefined;
  out.push({
    name: "attention T=2048: fused >= 2x the unfused ops path",
    measured: s === undefined ? "no T=2048 case in this run" : `${fmt(s)}x`,
    value: s ?? null,
    met: s === undefined ? null : s >= 2,
  });
  if (att.length >= 2) {
    const [lo, hi] = [att[0]!, att[att.length - 1]!];
    const bytes = (c: CaseResult, prefix: string) => c.results.find((r) => r.variant.startsWith(prefix) && r.extra?.["deviceBytes"] !== undefined)?.extra?.["deviceBytes"] as number;
    const growth = hi.params["T"] as number / (lo.params["T"] as number);
    const fusedGrowth = bytes(hi, "fused") / bytes(lo, "fused");
    const unfusedGrowth = bytes(hi, "unfused") / bytes(lo, "unfused");
    out.push({
      name: `attention memory grows linearly in T (T x${growth} from ${lo.params["T"]} to ${hi.params["T"]})`,
      measured: `fused bytes x${fmt(fusedGrowth)}, unfused x${fmt(unfusedGrowth)}`,
      value: fusedGrowth,
      met: fusedGrowth <= growth * 1.25,
    });
  }

  // end to end: prefill reaches >= 50% of the matmul throughput at the same shapes.
  for (const { c, t } of find(cases, (n) => n.includes("prefill"), (t) => t.variant === "forward prefill" && t.extra?.["fractionOfMatmulThroughput"] !== undefined)) {
    const v = t.extra!["fractionOfMatmulThroughput"] as number;
    out.push({ name: `${c.name}: >= 50% of its matmuls' throughput`, measured: `${fmt(100 * v, 0)}%`, value: v, met: v >= 0.5 });
  }

  // loader: transient host memory below the largest tensor plus a small constant (32 MiB).
  for (const { c, t } of find(cases, () => true, (t) => t.variant === "loadModel")) {
    const e = t.extra!;
    const over = (e["transientHostBytes"] as number) - (e["largestTensorBytes"] as number);
    out.push({
      name: `${c.name}: transient host memory <= largest tensor + 32 MiB`,
      measured: `peak ArrayBuffers ${fmt((e["transientHostBytes"] as number) / 2 ** 20, 0)} MiB above start for a ${fmt((e["largestTensorBytes"] as number) / 2 ** 20, 0)} MiB tensor (rss +${fmt((e["peakRssAboveStartBytes"] as number) / 2 ** 20, 0)} MiB)`,
      value: over,
      met: over <= 32 * 2 ** 20,
    });
  }

  // merge: streams tensor by tensor, so transient host memory stays near the largest tensor
  // (its bytes, plus an adapted weight's f32 copy and encoded output: at most 2x, plus 32 MiB).
  for (const { c, t } of find(cases, () => true, (t) => t.variant === "mergeCheckpoint")) {
    const e = t.extra!;
    const largest = e["largestTensorBytes"] as number;
    const transient = e["transientHostBytes"] as number;
    out.push({
      name: `${c.name}: transient host memory <= 2 x largest tensor + 32 MiB`,
      measured: `peak ArrayBuffers ${fmt(transient / 2 ** 20, 0)} MiB above start for a ${fmt(largest / 2 ** 20, 0)} MiB tensor in a ${fmt((e["checkpointBytes"] as number) / 2 ** 20, 0)} MiB checkpoint`,
      value: transient - 2 * largest,
      met: transient <= 2 * largest + 32 * 2 ** 20,
    });
  }

  // Real GPU: % of FP32 peak at 4096^3 needs a GPU and its datasheet peak; recorded as null here.
  const fallback = gpu?.device.adapterInfo.isFallbackAdapter ?? true;
  out.push({
    name: "real GPU: % of FP32 peak at 4096^3",
    measured: fallback ? "null: no GPU (the adapter is a CPU emulation, or --device cpu), so there is no FP32 peak to compare with" : "null: not measured (needs the GPU's FP32 peak, which the adapter does not report)",
    value: null,
    met: null,
  });
  return out;
}

/** Time of `engine` in case `c`, or null (absent or failed). */
const medianOf = (c: CaseResult, engine: string) => c.results.find((r) => r.engine === engine)?.medianMs ?? null;

/**
 * The wasm device's matmul at 1024^3 and the Qwen1.5-1.8B shapes: >= 2x jax-js wasm, within 2x
 * of ONNX Runtime CPU (>= 0.5x its speed), >= 25% of the CPU's FP32 peak (with the share of the
 * measured WebAssembly SIMD ceiling beside it: what is left for a wasm kernel to gain); and the
 * end-to-end prefill of the Qwen1.5-0.5B-shaped model within 3x of ONNX Runtime CPU, and its
 * LoRA step >= 5x the fastest other qalign device, where the run has those cases.
 */
function wasmTargets(cases: readonly CaseResult[], peak: CpuPeak | null, ceiling: SimdCeiling): Target[] {
  const out: Target[] = [];
  const ratio = (c: CaseResult, peerEngine: string, goal: number, label: string) => {
    const [q, p] = [medianOf(c, "qalign wasm"), medianOf(c, peerEngine)];
    const v = q && p ? p / q : null;
    const why = c.results.find((r) => r.engine === peerEngine)?.error ?? "no timing";
    out.push({ name: `wasm matmul ${c.name}: ${label}`, measured: v === null ? `no ratio (${why})` : `${fmt(v)}x ${peerEngine}'s speed`, value: v, met: v === null ? null : v >= goal });
  };
  for (const c of cases.filter((c) => c.group === "matmul" && (c.name === "1024^3" || c.name.startsWith("Qwen1.5-1.8B ")))) {
    ratio(c, "jax-js wasm", 2, ">= 2x jax-js wasm");
    ratio(c, "onnxruntime cpu", 0.5, "within 2x of ONNX Runtime CPU");
    const t = c.results.find((r) => r.engine === "qalign wasm");
    const pct = (t?.extra?.["pctOfCpuFp32Peak"] as number | undefined) ?? null;
    out.push({
      name: `wasm matmul ${c.name}: >= 25% of the CPU's FP32 peak`,
      measured:
        pct === null
          ? `not measured (${peak ? "no wasm timing" : "peak unknown"})`
          : `${fmt(pct, 1)}% (${fmt(t!.throughput!)} of ${fmt(peak!.gflops, 1)} GFLOP/s); ${fmt(t!.extra!["pctOfWasmSimdCeiling"] as number, 1)}% of the measured wasm SIMD ceiling (${fmt(ceiling.gflops, 1)} GFLOP/s on ${ceiling.threads} threads)`,
      value: pct,
      met: pct === null ? null : pct >= 25,
    });
  }
  const qwen = (c: CaseResult) => c.group === "end to end" && c.name.startsWith("Qwen1.5-0.5B shapes");
  for (const c of cases.filter((c) => qwen(c) && c.name.includes("prefill") && c.results.some((r) => r.engine === "onnxruntime cpu"))) {
    const [q, p] = [medianOf(c, "qalign wasm"), medianOf(c, "onnxruntime cpu")];
    const v = q && p ? p / q : null;
    out.push({ name: `${c.name}: wasm within 3x of ONNX Runtime CPU`, measured: v === null ? "no ratio (a timing failed)" : `${fmt(v)}x its speed`, value: v, met: v === null ? null : v >= 1 / 3 });
  }
  // The LoRA step: >= 5x the fastest other qalign device in the same run (webgpu, cpu).
  // Each device's timing may sit in a case of its own under the same name: gather them by name.
  const steps = new Map<string, Timing[]>();
  for (const c of cases.filter((c) => qwen(c) && c.name.includes("LoRA train step"))) steps.set(c.name, [...(steps.get(c.name) ?? []), ...c.results]);
  for (const [name, results] of steps) {
    const q = results.find((r) => r.engine === "qalign wasm")?.medianMs ?? null;
    const others = results.filter((r) => r.engine.startsWith("qalign ") && r.engine !== "qalign wasm" && r.medianMs);
    const best = others.reduce<(typeof others)[number] | null>((b, r) => (b === null || r.medianMs! < b.medianMs! ? r : b), null);
    const v = q && best ? best.medianMs! / q : null;
    out.push({
      name: `${name}: wasm >= 5x the fastest other qalign device`,
      measured: v === null ? "no ratio (no other qalign device in this run: run without --device cpu)" : `${fmt(v)}x ${best!.engine}'s speed`,
      value: v,
      met: v === null ? null : v >= 5,
    });
  }
  return out;
}

/**
 * Packed weights (weights.ts): on the decode row, weights/s of bf16 >= 1.7x and of nf4 >= 3x
 * f32's; in every weights case, no dtype more than 10% slower than f32.
 */
function weightTargets(cases: readonly CaseResult[]): Target[] {
  const out: Target[] = [];
  for (const c of cases.filter((c) => c.group === "weights")) {
    const ms = (d: string) => c.results.find((r) => r.variant === d)?.medianMs ?? null;
    const f32 = ms("f32");
    for (const [d, goal] of [["bf16", 1.7], ["nf4", 3]] as const) {
      const t = ms(d);
      const v = f32 && t ? f32 / t : null;
      const decode = c.params["M"] === 1;
      const name = decode ? `${c.name}: ${d} >= ${goal}x f32's weights/s` : `${c.name}: ${d} no more than 10% slower than f32`;
      const met = v === null ? null : decode ? v >= goal : v >= 1 / 1.1;
      out.push({ name, measured: v === null ? "no timing in this run" : `${fmt(v)}x f32`, value: v, met });
    }
  }
  return out;
}
