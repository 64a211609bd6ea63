import type { Backend, DeviceOp } from "../tensor/backend.ts";
import { DeviceError } from "../tensor/errors.ts";
import type { CpuBackend } from "./cpu.ts";
import type { WasmBackend } from "./wasm/backend.ts";
import type { WebGpuBackend } from "./webgpu/backend.ts";

/**
 * The kernel registry, in the spirit of TensorFlow.js's `registerKernel({kernelName,
 * backendName, kernelFunc})`: each kernel file registers its device implementation of a fused
 * op under the op's `DeviceOp` (declared by the tensor-level op, src/tensor/ops/*.ts), and
 * `Backend.run(op, ...args)` looks it up here. No backend lists the fused ops: the cpu
 * implementation sits beside its reference (src/kernels/<op>.ts), the webgpu one beside its
 * WGSL (<op>.wgsl.ts), the wasm ones beside their WebAssembly kernels (wasm/*.wasm.ts).
 * A host-memory device looks through several names: the wasm device runs its own kernel
 * where one is registered and the cpu one otherwise (its storages are host arrays too).
 */

/** The device class each backend name's kernels receive (the wasm device is a cpu device too). */
export interface KernelDevices {
  cpu: CpuBackend;
  wasm: WasmBackend;
  webgpu: WebGpuBackend;
}

/** One device's implementation of `op`: the device it runs on, then the op's operands. */
export type KernelFunc<Args extends readonly unknown[], Out, D> = (device: D, ...args: Args) => Out;

/** The kernel type of a declared op on device class D, e.g. `KernelOf<typeof rmsNormOp, CpuBackend>`. */
export type KernelOf<Op, D> = Op extends DeviceOp<infer Args, infer Out> ? KernelFunc<Args, Out, D> : never;

/** A registered kernel with its types erased; `runKernel` restores them from the op. */
type ErasedKernel = (device: never, ...args: never) => unknown;

const kernels = new Map<DeviceOp<never, unknown>, Map<Backend["name"], ErasedKernel>>();

/**
 * Registers `kernelFunc` as `op` on the devices named `backendName`; called once per op and
 * device, at the top level of the kernel file.
 * @throws Error when that op already has a kernel on that device (two files claim it)
 */
export function registerKernel<Args extends readonly unknown[], Out, N extends Backend["name"]>(
  op: DeviceOp<Args, Out>,
  backendName: N,
  kernelFunc: KernelFunc<Args, Out, KernelDevices[N]>,
): void {
  let byDevice = kernels.get(op);
  if (!byDevice) kernels.set(op, (byDevice = new Map()));
  if (byDevice.has(backendName)) throw new Error(`registerKernel: ${op.name} already has a kernel on ${backendName}`);
  byDevice.set(backendName, kernelFunc);
}

/**
 * Runs `op` on `device` with the kernel of the first of `names` that has one (the device's own
 * name first: ["wasm", "cpu"] for the wasm device).
 * @throws DeviceError naming the op and the device when none of them has a kernel for it
 */
export function runKernel<Args extends readonly unknown[], Out, N extends Backend["name"]>(
  op: DeviceOp<Args, Out>,
  device: KernelDevices[N],
  names: readonly N[],
  args: Args,
): Out {
  const byDevice = kernels.get(op);
  for (const name of names) {
    const k = byDevice?.get(name);
    // registerKernel stored it for this op and name, so it has these types; `device` is of
    // that name's class or a subclass (wasm extends cpu).
    if (k) return (k as KernelFunc<Args, Out, KernelDevices[N]>)(device, ...args);
  }
  const others = byDevice ? [...byDevice.keys()].join(", ") : "none";
  throw new DeviceError(op.name, `no kernel on the ${device.name} device (kernels exist for: ${others})`);
}
