import { hostEnv } from "../../io/host.ts";
import type { Kernel } from "./program.ts";

/** A kernel compiled for one device: its pipeline and the bind-group layout its dispatches use. */
export interface CompiledKernel {
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
}

/**
 * Compiles each kernel once per device, keyed by `Kernel.key` (sizes travel in uniforms, so the
 * key names only the WGSL variant). With `QALIGN_DEBUG_WGSL=1` each new kernel's WGSL is printed
 * to stderr once, the way tinygrad's DEBUG prints its generated code.
 *
 * Compilation runs inside a Dawn validation error scope; `closeScope` (the backend's) turns an
 * error into an Error naming the kernel key, thrown at the backend's next `sync`/`read`.
 */
export class PipelineCache {
  private readonly cache = new Map<string, CompiledKernel>();
  private readonly debug = hostEnv()["QALIGN_DEBUG_WGSL"] === "1";

  constructor(
    private readonly device: GPUDevice,
    private readonly closeScope: (describe: (message: string) => Error) => void,
  ) {}

  /** The compiled pipeline of `k`, compiling it on first use. */
  get(k: Kernel): CompiledKernel {
    const hit = this.cache.get(k.key);
    if (hit) return hit;
    const code = k.source();
    if (this.debug) process.stderr.write(`// ---- qalign kernel ${k.key} ----\n${code}\n`);
    this.device.pushErrorScope("validation");
    // Explicit layout (not "auto"): binding 0 is the uniform block, then the storage buffers in
    // declaration order, read-only ones as "read-only-storage" so Dawn can skip hazards on them.
    const layout = this.device.createBindGroupLayout({
      label: k.key,
      entries: [
        { binding: 0, visibility: GPUShaderStage.COMPUTE, buffer: { type: "uniform" } },
        ...k.buffers.map((b, i) => ({
          binding: i + 1,
          visibility: GPUShaderStage.COMPUTE,
          buffer: { type: b.access === "read" ? ("read-only-storage" as const) : ("storage" as const) },
        })),
      ],
    });
    const module = this.device.createShaderModule({ label: k.key, code });
    const pipeline = this.device.createComputePipeline({
      label: k.key,
      layout: this.device.createPipelineLayout({ label: k.key, bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: "main" },
    });
    this.closeScope((m) => new Error(`webgpu kernel ${k.key}: compilation failed: ${m}`));
    const compiled = { pipeline, layout };
    this.cache.set(k.key, compiled);
    return compiled;
  }

  /** Number of compiled kernels. */
  get size(): number {
    return this.cache.size;
  }
}
