/// <reference types="@webgpu/types" preserve="true" />
// (DeviceOptions names GPUDevice: the directive gives consumers of the .d.ts WebGPU's types with it.)
import type { Backend } from "../tensor/backend.ts";
import { setDefaultDevice } from "../tensor/device.ts";
import { DeviceError } from "../tensor/errors.ts";
import { CpuBackend } from "./cpu.ts";
import type { WasmBackend } from "./wasm/backend.ts";
import type { WebGpuBackend } from "./webgpu/backend.ts";

/**
 * Which device to use: "auto" picks webgpu when a hardware adapter exists, else wasm (SIMD
 * kernels on every core) with a notice; a software adapter such as SwiftShader is used only when
 * asked for by name, and cpu (the reference numerics, f64) too.
 */
export type DeviceKind = "cpu" | "wasm" | "webgpu" | "auto";

/** Every DeviceKind, in the order messages list them. */
export const DEVICE_KINDS: readonly DeviceKind[] = ["cpu", "wasm", "webgpu", "auto"];

/** Options of the devices that have any, and how device selection reports. */
export interface DeviceOptions {
  /** Threads of the wasm device, the caller's included (default: every core). */
  threads?: number;
  /**
   * A WebGPU device the caller opened (in a page, one it shares with other code): "webgpu" and
   * "auto" use it instead of opening one on the host's adapter.
   */
  gpuDevice?: GPUDevice;
  /** Receives the one-line notice saying which device "auto" chose and why (default: none). */
  onNotice?: (line: string) => void;
}

/** @throws DeviceError naming `op`, the kind and the accepted kinds when `kind` is not a DeviceKind. */
function assertDeviceKind(op: string, kind: unknown): asserts kind is DeviceKind {
  if ((DEVICE_KINDS as readonly unknown[]).includes(kind)) return;
  const accepted = DEVICE_KINDS.map((k) => `"${k}"`).join(", ");
  throw new DeviceError(op, `unknown device ${JSON.stringify(kind) ?? String(kind)}; expected one of ${accepted}`);
}

let cpu: CpuBackend | null = null;

/** The process-wide cpu device (the reference numerics). */
export function cpuDevice(): CpuBackend {
  cpu ??= new CpuBackend();
  return cpu;
}

const wasmByThreads = new Map<number, Promise<WasmBackend>>();

/**
 * The process-wide wasm device for a thread count (default: every core), started on first use.
 * @throws RangeError when threads is not a positive integer.
 */
export async function wasmDevice(threads?: number): Promise<WasmBackend> {
  // Loaded on demand, like webgpu: the cpu device alone never starts workers.
  const { coreCount } = await import("./wasm/pool.ts");
  const n = threads ?? (await coreCount());
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`wasm: threads must be a positive integer, got ${n}`);
  let device = wasmByThreads.get(n);
  if (!device) {
    const { createWasmBackend } = await import("./wasm/backend.ts");
    device = createWasmBackend({ threads: n });
    wasmByThreads.set(n, device);
  }
  return device;
}

/** The wasm device, with a notice saying why auto chose it. */
async function autoWasm(reason: string, opts: DeviceOptions): Promise<Backend> {
  const device = await wasmDevice(opts.threads);
  opts.onNotice?.(`qalign: ${reason}; using the wasm device (${device.threads} thread${device.threads === 1 ? "" : "s"})`);
  return device;
}

const byGpuDevice = new WeakMap<GPUDevice, WebGpuBackend>();

/** The webgpu backend of the caller's device (`gpuDevice`), else the process-wide one (null without an adapter). */
async function webgpuBackend(opts: DeviceOptions): Promise<WebGpuBackend | null> {
  // Loaded on demand: cpu-only use never loads Dawn's native module.
  const { webGpuBackendOn, getWebGpuBackend } = await import("./webgpu/device.ts");
  const given = opts.gpuDevice;
  if (!given) return getWebGpuBackend();
  let backend = byGpuDevice.get(given);
  if (!backend) {
    backend = webGpuBackendOn(given);
    byGpuDevice.set(given, backend);
  }
  return backend;
}

/**
 * Resolves a device by kind. "webgpu" throws when no adapter exists; "auto" falls back to wasm
 * and says which device it chose through `opts.onNotice`.
 * @throws DeviceError for a kind other than "cpu", "wasm", "webgpu", "auto" (before any adapter
 *   is requested); Error naming how to get an adapter on a machine without a GPU; RangeError for
 *   a bad thread count.
 */
export async function getDevice(kind: DeviceKind = "auto", opts: DeviceOptions = {}): Promise<Backend> {
  assertDeviceKind("getDevice", kind);
  if (kind === "cpu") return cpuDevice();
  if (kind === "wasm") return wasmDevice(opts.threads);
  const gpu = await webgpuBackend(opts);
  if (gpu && kind === "webgpu") return gpu;
  const info = gpu?.device.adapterInfo;
  const name = [info?.vendor, info?.architecture, info?.description].filter(Boolean).join(" ") || "unnamed adapter";
  if (gpu && !info?.isFallbackAdapter) {
    opts.onNotice?.(`qalign: using the webgpu device (${name})`);
    return gpu;
  }
  if (gpu) {
    // A software adapter (SwiftShader) runs WGSL on the CPU, several times slower than the wasm
    // device's SIMD kernels; it stays available explicitly.
    return autoWasm(`the WebGPU adapter is a CPU emulation (${name}; --device webgpu to use it)`, opts);
  }
  if (kind === "webgpu") {
    throw new Error(
      "webgpu: no WebGPU adapter found. Without a GPU, install SwiftShader (Debian: apt-get install libvulkan1 chromium) " +
        "and set VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json",
    );
  }
  return autoWasm("no WebGPU adapter found", opts);
}

/**
 * Selects the default device for tensor creation and returns it.
 * @throws DeviceError for an unknown kind, as getDevice (the default device stays unchanged).
 */
export async function init(kind: DeviceKind = "auto", opts: DeviceOptions = {}): Promise<Backend> {
  assertDeviceKind("init", kind);
  const device = await getDevice(kind, opts);
  setDefaultDevice(device);
  return device;
}

/**
 * What a results file records about a device: its name; for webgpu the adapter's identity
 * (GPUAdapterInfo vendor, architecture, device, description) and the device's features; for
 * wasm its thread count and whether relaxed SIMD is used.
 */
export function describeDevice(b: Backend): Record<string, unknown> {
  if (b.name === "webgpu") {
    const gpu = (b as unknown as { device: GPUDevice }).device;
    const { vendor, architecture, device, description } = gpu.adapterInfo;
    return { name: b.name, adapter: { vendor, architecture, device, description }, features: [...gpu.features].sort() };
  }
  if (b.name === "wasm") {
    const w = b as WasmBackend;
    return { name: b.name, threads: w.threads, relaxedSimd: w.relaxedSimd };
  }
  return { name: b.name };
}
