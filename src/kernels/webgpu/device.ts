import { importNodeOnly } from "../../io/host.ts";
import { WebGpuBackend } from "./backend.ts";
import type { AttentionVariant, MatmulVariant } from "./program.ts";

/** Options of `createWebGpuBackend`. */
export interface WebGpuOptions {
  /**
   * Lowers the per-binding limit below the adapter's (bytes, a multiple of 4). Storages larger
   * than it are split into chunks; tests set a few KB to exercise the large-tensor paths.
   */
  maxBindingBytes?: number;
  /**
   * Invocations per row in the row kernels and the matrix-vector kernel (a power of two).
   * Default: 256, or 1 on a fallback (CPU) adapter such as SwiftShader; tests set it to run the
   * GPU form there too.
   */
  rowWorkgroup?: number;
  /**
   * Forces a matmul variant (where the operands' layout allows it); default: $QALIGN_MATMUL, else
   * chosen by adapter (see WebGpuBackend).
   */
  matmulVariant?: MatmulVariant;
  /** Forces the fused attention forward variant; default chosen by adapter (see WebGpuBackend). */
  attentionVariant?: AttentionVariant;
  powerPreference?: GPUPowerPreference;
}

/**
 * Limits the backend needs above WebGPU's defaults: the defaults allow 128 MiB per binding,
 * far below a model's embedding table, so the adapter's own values are requested.
 */
export const RAISED_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
] as const;

/**
 * Features used when the adapter has them: `subgroups` (the matmul variant that shares loads
 * within a quad of invocations) and `timestamp-query` (GPU-side timing in the benchmark).
 */
const OPTIONAL_FEATURES: GPUFeatureName[] = ["subgroups", "timestamp-query"];

/**
 * The host's WebGPU entry point: the page's `navigator.gpu` in a browser (a secure context, with
 * WebGPU enabled), else Dawn, loaded here on first use so that importing qalign costs nothing on
 * machines that only use the cpu device.
 */
async function hostGpu(): Promise<GPU> {
  const fromPage = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (fromPage) return fromPage;
  // Node's provider, the `webgpu` package (Dawn), which a browser bundle must leave out.
  const { create, globals } = await importNodeOnly<typeof import("webgpu")>("webgpu");
  // Dawn's constants (GPUBufferUsage, GPUMapMode, GPUShaderStage) are not globals in Node.
  if (typeof (globalThis as { GPUBufferUsage?: unknown }).GPUBufferUsage === "undefined") {
    Object.assign(globalThis, globals);
  }
  return create([]);
}

/**
 * A backend on a device the caller opened (a page that shares its GPUDevice with other code),
 * used with the limits and features it was created with: tensors larger than its
 * maxStorageBufferBindingSize are split into chunks as usual.
 * @throws RangeError as WebGpuBackend's constructor (a forced variant the device cannot run).
 */
export function webGpuBackendOn(device: GPUDevice, opts: WebGpuOptions = {}): WebGpuBackend {
  return new WebGpuBackend(null, device, opts);
}

/**
 * Opens a WebGPU device on the host's adapter (see hostGpu), with the adapter's own limits and
 * optional features, and wraps it in a backend.
 * @returns the backend, or null when the host has no adapter (no GPU and no software Vulkan,
 *   or a browser with WebGPU disabled).
 * @throws Error when the adapter refuses the device (e.g. the requested limits).
 */
export async function createWebGpuBackend(opts: WebGpuOptions = {}): Promise<WebGpuBackend | null> {
  const gpu = await hostGpu();
  const adapter = await gpu.requestAdapter(opts.powerPreference ? { powerPreference: opts.powerPreference } : undefined);
  if (!adapter) return null;
  const requiredLimits: Record<string, number> = {};
  for (const name of RAISED_LIMITS) requiredLimits[name] = adapter.limits[name];
  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f));
  const device = await adapter.requestDevice({ label: "qalign", requiredLimits, requiredFeatures });
  return new WebGpuBackend(gpu, device, opts);
}

let shared: Promise<WebGpuBackend | null> | null = null;

/** The process-wide webgpu backend (created once, default options), or null without an adapter. */
export function getWebGpuBackend(): Promise<WebGpuBackend | null> {
  shared ??= createWebGpuBackend();
  return shared;
}
