import { hostFiles, type Files } from "../io/files.ts";
import type { Backend } from "../tensor/backend.ts";
import { weightBytes, type WeightDType } from "../tensor/weight.ts";
import { loadConfig, type LlamaConfig } from "./config.ts";
import { deviceDType, storedDType, validateCheckpoint, type LoadOptions } from "./load.ts";
import { checkpointTensors, moduleName } from "./params.ts";
import { INDEX_FILE, SINGLE_FILE, isWeightsFile, openCheckpoint } from "./safetensors.ts";

/**
 * The memory plan of a model: device bytes of its weights (exactly as the loader stores them,
 * src/tensor/weight.ts's weightBytes), of the KV cache, of activations, and, for LoRA training,
 * of the adapter and its AdamW state, against the device's per-binding limit and, where it has
 * one (the wasm device's single WebAssembly memory), its total memory. Activations are
 * estimates (f32, what the autograd graph keeps per token), stated per line.
 *
 * Shape letters: B batch, T tokens per sequence, D hidden_size, F intermediate_size, H / Hkv
 * heads, Dh head_dim, V vocab_size, L num_hidden_layers.
 */

export interface PlanOptions extends Pick<LoadOptions, "dtype" | "quantizeEmbeddings"> {
  /** Sequences per forward pass. */
  batch: number;
  /** Tokens per sequence. */
  seq: number;
  /** LoRA training: rank, target module names (PEFT short names), and activation checkpointing. */
  train?: { r: number; targets: readonly string[]; gradientCheckpointing: boolean };
  /**
   * The device limits checked, and the device they are of. Absent: no limit is checked
   * (planning needs no device; `largest.fits` and `fits` are then undefined).
   */
  limit?: DeviceLimits;
}

/**
 * A device's limits (Backend's maxBindingBytes and maxMemoryBytes): `bytes` per binding
 * (Infinity on cpu), `memoryBytes` for all its storages together (Infinity where the device
 * states none: cpu, webgpu), and the device's name ("wasm").
 */
export interface DeviceLimits {
  bytes: number;
  memoryBytes: number;
  device: string;
}

/** One line of the plan. */
export interface PlanLine {
  what: "weights" | "kv cache" | "activations" | "lora" | "adamw";
  bytes: number;
  /** How it was counted. */
  note: string;
}

export interface MemoryPlan {
  lines: PlanLine[];
  total: number;
  /** Parameters of the model, and bytes of weights by device dtype. */
  params: number;
  byDType: Partial<Record<WeightDType, number>>;
  /** The largest part of a packed weight (which must fit one binding; f32 tensors may be split) and whether it fits. */
  largest: { name: string; bytes: number; fits?: boolean };
  /** Whether `total` fits the device's memory (`limit.memoryBytes`), when a limit was given. */
  fits?: boolean;
  /** The limits `largest` and `total` were checked against, when given. */
  limit?: DeviceLimits;
}

/**
 * The plan of `config` with tensors stored as `stored(name)` in the checkpoint.
 * @param stored the checkpoint dtype of each tensor (bf16, f16, f32, or nf4 for a 4-bit one)
 */
export function memoryPlan(config: LlamaConfig, stored: (name: string) => WeightDType, opts: PlanOptions): MemoryPlan {
  const { hidden_size: D, intermediate_size: F, num_attention_heads: H, num_key_value_heads: Hkv, head_dim: Dh, vocab_size: V, num_hidden_layers: L } = config;
  const byDType: Partial<Record<WeightDType, number>> = {};
  let weights = 0;
  let params = 0;
  let loraParams = 0;
  let largest = { name: "", bytes: 0 };
  for (const t of checkpointTensors(config)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const dtype = deviceDType(t.key, t.shape, stored(t.key), opts);
    const bytes = weightBytes(dtype, n);
    // The biggest binding of a packed weight: an NF4 weight's packed part, a 16-bit one whole.
    const binding = dtype === "f32" ? 0 : dtype === "nf4" ? bytes - 4 * Math.ceil(n / 64) : bytes;
    if (binding > largest.bytes) largest = { name: t.key, bytes: binding };
    byDType[dtype] = (byDType[dtype] ?? 0) + bytes;
    weights += bytes;
    params += n;
    if (opts.train && t.layer !== null && t.part === "weight" && t.module.kind === "linear" && opts.train.targets.includes(moduleName(t.module.path))) {
      loraParams += opts.train.r * (t.shape[0]! + t.shape[1]!);
    }
  }
  const { batch: B, seq: T } = opts;
  const tokens = B * T;
  const f32 = 4;
  const lines: PlanLine[] = [{ what: "weights", bytes: weights, note: Object.entries(byDType).map(([d, b]) => `${d} ${gb(b!)}`).join(", ") }];
  // One layer's forward, live at once: x, h, q, k, v, attention out, gate, up, act(gate) * up.
  const layerForward = tokens * (3 * D + 2 * (H + Hkv) * Dh + 3 * F) * f32;
  if (!opts.train) {
    lines.push({ what: "kv cache", bytes: 2 * L * B * Hkv * T * Dh * f32, note: `2 L B Hkv T Dh f32, B ${B} x T ${T}` });
    lines.push({ what: "activations", bytes: layerForward + B * V * f32, note: "one layer's forward at a time, and the last position's logits [B, V]" });
  } else {
    const { r, gradientCheckpointing } = opts.train;
    // What backward keeps per token of one layer: both norms' inputs and outputs (4D), q, k, v
    // and rotated q, k ((2H + 3Hkv) Dh), attention out and its log-sum-exp (H), gate, up,
    // silu(gate) and the product (4F), and each adapted module's dropped-out input and x A^T.
    const perLayer = 4 * D + (2 * H + 3 * Hkv) * Dh + H + 4 * F + opts.train.targets.length * (D + r);
    const kept = gradientCheckpointing ? L * tokens * D + tokens * perLayer : L * tokens * perLayer;
    const head = 2 * tokens * V; // logits and their gradient, every position a target (an upper bound)
    lines.push({
      what: "activations",
      bytes: (kept + head) * f32,
      note: gradientCheckpointing
        ? `layer inputs L B T D + one layer recomputed, + logits and grad 2 B T V; B ${B} x T ${T}`
        : `kept for backward, ~${perLayer} floats per token per layer, + logits and grad 2 B T V; B ${B} x T ${T}`,
    });
    lines.push({ what: "lora", bytes: 2 * loraParams * f32, note: `${loraParams} parameters (r ${r}, ${opts.train.targets.join(",")}) and their gradients` });
    lines.push({ what: "adamw", bytes: 2 * loraParams * f32, note: "first and second moments" });
  }
  const total = lines.reduce((a, l) => a + l.bytes, 0);
  const limit = opts.limit;
  if (!limit) return { lines, total, params, byDType, largest };
  return { lines, total, params, byDType, largest: { ...largest, fits: largest.bytes <= limit.bytes }, fits: total <= limit.memoryBytes, limit };
}

/**
 * The plan of the checkpoint folder `dir`: its tensors' stored dtypes from the safetensors
 * headers, or, for a folder with only config.json, every tensor in its `torch_dtype`.
 * @throws CheckpointError for a bad config.json or safetensors header, or a checkpoint that
 *   disagrees with its config (see validateCheckpoint).
 * @param files where `dir` is (default: the host's, io/files.ts)
 */
export async function planForDir(dir: string, opts: PlanOptions, files?: Files): Promise<MemoryPlan> {
  files ??= await hostFiles();
  const config = await loadConfig(dir, files);
  if (!(await isWeightsFile(files.join(dir, SINGLE_FILE), files)) && !(await isWeightsFile(files.join(dir, INDEX_FILE), files))) {
    const d = config.torch_dtype === "bfloat16" ? "bf16" : config.torch_dtype === "float16" ? "f16" : "f32";
    return memoryPlan(config, () => d, opts);
  }
  const ckpt = await openCheckpoint(dir, files);
  try {
    // Checked first: the plan walks every tensor the config implies, which the files bound.
    validateCheckpoint(config, ckpt, dir);
    return memoryPlan(config, (name) => storedDType(ckpt, name), opts);
  } finally {
    await ckpt.close();
  }
}

/** Bytes in decimal units: GB (2 decimals) from 0.1 GB, MB (1 decimal) from 0.1 MB, else KB. */
export function gb(bytes: number): string {
  if (bytes >= 1e8) return `${(bytes / 1e9).toFixed(2)} GB`;
  return bytes >= 1e5 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} KB`;
}

/**
 * Why the plan's total does not fit the device's memory, as a clause ("total 14.75 GB is above
 * the 4.29 GB of memory all tensors of the wasm device share"), or null
 * when it fits or no memory limit was checked.
 */
export function memoryMisfit(p: MemoryPlan): string | null {
  if (p.fits !== false || !p.limit) return null;
  return `total ${gb(p.total)} is above the ${gb(p.limit.memoryBytes)} of memory all tensors of the ${p.limit.device} device share`;
}

/** The limits of a started device, for PlanOptions.limit. */
export function deviceLimits(be: Backend): DeviceLimits {
  return { bytes: be.maxBindingBytes, memoryBytes: be.maxMemoryBytes, device: be.name };
}

/**
 * The plan as lines for a terminal: one per part, the total (with the memory check where the
 * device has a memory limit), and the largest packed weight with the binding check, naming the
 * device whose limit it is (or saying that none was checked).
 */
export function formatPlan(p: MemoryPlan): string[] {
  const lines = p.lines.map((l) => `${l.what.padEnd(12)} ${gb(l.bytes).padStart(10)}  ${l.note}`);
  const l = p.limit;
  const memory = l && Number.isFinite(l.memoryBytes) ? ` (memory limit ${gb(l.memoryBytes)} on the ${l.device} device)${p.fits === false ? `: too large for the ${l.device} device` : ""}` : "";
  lines.push(`${"total".padEnd(12)} ${gb(p.total).padStart(10)}  ${p.params >= 1e8 ? `${(p.params / 1e9).toFixed(2)} B` : `${(p.params / 1e6).toFixed(2)} M`} parameters, ${((p.lines[0]!.bytes) / p.params).toFixed(3)} bytes each${memory}`);
  if (p.largest.bytes > 0) {
    const check = !l ? "no device limit checked" : `limit ${Number.isFinite(l.bytes) ? gb(l.bytes) : "none"} on the ${l.device} device`;
    const verdict = l && p.largest.fits === false ? `: too large for the ${l.device} device` : "";
    lines.push(`${"largest".padEnd(12)} ${gb(p.largest.bytes).padStart(10)}  ${p.largest.name}, packed, in one binding (${check})${verdict}`);
  }
  return lines;
}
