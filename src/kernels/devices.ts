import type { Backend } from "../tensor/backend.ts";
import { setDefaultDevice } from "../tensor/device.ts";
import { DeviceError } from "../tensor/errors.ts";
import { CpuBackend } from "./cpu.ts";

/**
 * Which device to use: "auto" picks webgpu when a hardware adapter exists, else cpu with a
 * notice (a software adapter such as SwiftShader is used only when asked for by name).
 */
export type DeviceKind = "cpu" | "webgpu" | "auto";

/** Every DeviceKind, in the order messages list them. */
export const DEVICE_KINDS: readonly DeviceKind[] = ["cpu", "webgpu", "auto"];

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

/**
 * Resolves a device by kind. "webgpu" throws when no adapter exists; "auto" falls back to cpu
 * and prints a notice on stderr (stdout stays clean for machine-readable output).
 * @throws DeviceError for a kind other than "cpu", "webgpu", "auto" (before any adapter is
 *   requested); Error naming how to get an adapter on a machine without a GPU.
 */
export async function getDevice(kind: DeviceKind = "auto"): Promise<Backend> {
  assertDeviceKind("getDevice", kind);
  if (kind === "cpu") return cpuDevice();
  // Loaded on demand: cpu-only use never loads Dawn's native module.
  const { getWebGpuBackend } = await import("./webgpu/device.ts");
  const gpu = await getWebGpuBackend();
  if (gpu && kind === "webgpu") return gpu;
  const info = gpu?.device.adapterInfo;
  const name = [info?.vendor, info?.architecture, info?.description].filter(Boolean).join(" ") || "unnamed adapter";
  if (gpu && !info?.isFallbackAdapter) {
    process.stderr.write(`qalign: using the webgpu device (${name})\n`);
    return gpu;
  }
  if (gpu) {
    // A software adapter (SwiftShader) runs WGSL on the CPU, slower than the cpu device's plain
    // loops for the small models such a machine can hold; it stays available explicitly.
    process.stderr.write(`qalign: the WebGPU adapter is a CPU emulation (${name}); using the cpu device (--device webgpu to use it)\n`);
    return cpuDevice();
  }
  if (kind === "webgpu") {
    throw new Error(
      "webgpu: no WebGPU adapter found. Without a GPU, install SwiftShader (Debian: apt-get install libvulkan1 chromium) " +
        "and set VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json",
    );
  }
  process.stderr.write("qalign: no WebGPU adapter found, using the cpu device\n");
  return cpuDevice();
}

/**
 * Selects the default device for tensor creation and returns it.
 * @throws DeviceError for an unknown kind, as getDevice (the default device stays unchanged).
 */
export async function init(kind: DeviceKind = "auto"): Promise<Backend> {
  assertDeviceKind("init", kind);
  const device = await getDevice(kind);
  setDefaultDevice(device);
  return device;
}
