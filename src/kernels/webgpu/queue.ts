import { DeviceLimitError } from "../../tensor/errors.ts";
import type { PipelineCache } from "./pipelines.ts";
import type { PooledBuffer } from "./pool.ts";
import type { Kernel, ParamValues } from "./program.ts";
import { packParams } from "./program.ts";
import type { ErrorScopes } from "./scopes.ts";
import type { PassTimer } from "./timing.ts";

/**
 * Dispatches recorded before a batch is submitted: few, so the device starts on the first ones
 * while the host records the rest (TensorFlow.js's WebGPU backend submits every 15 commands).
 * Measured on SwiftShader, the tiny model's 128-token prefill took 34 ms with batches of 128 and
 * 29-32 ms with 8 or 16.
 */
const MAX_BATCH = 16;

/** Bytes of one uniform slot the host array reserves per dispatch (the largest alignment WebGPU allows). */
const UNIFORM_SLOT = 256;

/**
 * Recording and submission of GPU work.
 *
 * Dispatches are recorded into one command encoder (one compute pass) and submitted in batches
 * of up to MAX_BATCH, or earlier when the host needs results (`read`, `sync`) or writes into a
 * reused buffer (`flush`). Each dispatch's uniform block goes into a host-side array at a
 * minUniformBufferOffsetAlignment-aligned slot; the array is written to one uniform buffer right
 * before the batch is submitted (queue.writeBuffer and submit run in queue order, so the next
 * batch's parameters never overwrite this one's before it runs).
 *
 * Every batch runs inside a Dawn validation error scope; an error it catches names the kernels
 * of the batch (see ErrorScopes).
 */
export class CommandQueue {
  /** While a GPU-time measurement runs: the timer whose queries each compute pass writes. */
  timer: PassTimer | null = null;
  private readonly uniforms: GPUBuffer;
  private readonly uniformHost = new ArrayBuffer(MAX_BATCH * UNIFORM_SLOT);
  private readonly uniformView = new DataView(this.uniformHost);
  private readonly uniformAlign: number;
  private uniformUsed = 0;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private batchKernels = new Set<string>();
  private batchDispatches = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly scopes: ErrorScopes,
    private readonly pipelines: PipelineCache,
  ) {
    this.uniformAlign = device.limits.minUniformBufferOffsetAlignment;
    this.uniforms = device.createBuffer({
      label: "qalign uniforms",
      size: this.uniformHost.byteLength,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
  }

  /** Largest workgroup count in one grid dimension. */
  get maxGridDim(): number {
    return this.device.limits.maxComputeWorkgroupsPerDimension;
  }

  /**
   * Records one dispatch of `k` with its uniform `params` and storage `buffers` (in the kernel's
   * declared order); `grid` is a workgroup count (laid out as a 2-D grid) or [x, y, z].
   * @throws DeviceLimitError when a workgroup count exceeds a maxGridDim^2 grid
   */
  dispatch(k: Kernel, params: ParamValues, buffers: readonly PooledBuffer[], grid: number | readonly [number, number, number]): void {
    const [x, y, z] = typeof grid === "number" ? this.grid2d(k.key, grid) : grid;
    if (x === 0 || y === 0 || z === 0) return;
    if (buffers.length !== k.buffers.length) throw new Error(`${k.key}: ${buffers.length} buffers bound, ${k.buffers.length} declared`);
    const slot = Math.ceil(k.paramBytes / this.uniformAlign) * this.uniformAlign;
    if (this.uniformUsed + slot > this.uniformHost.byteLength || this.batchDispatches >= MAX_BATCH) this.flush();
    const pass = this.computePass();
    const compiled = this.pipelines.get(k);
    const at = this.uniformUsed;
    packParams(k, params, this.uniformView, at);
    this.uniformUsed += slot;
    const bindGroup = this.device.createBindGroup({
      label: k.key,
      layout: compiled.layout,
      entries: [
        { binding: 0, resource: { buffer: this.uniforms, offset: at, size: k.paramBytes } },
        ...buffers.map((b, i) => ({ binding: i + 1, resource: { buffer: b.buffer } })),
      ],
    });
    pass.setPipeline(compiled.pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(x, y, z);
    this.batchKernels.add(k.key);
    this.batchDispatches++;
  }

  /** Records a copy of `bytes` from `src` at `srcByte` to `dst` at `dstByte` (multiples of 4). */
  copy(src: GPUBuffer, srcByte: number, dst: GPUBuffer, dstByte: number, bytes: number): void {
    this.commandEncoder().copyBufferToBuffer(src, srcByte, dst, dstByte, bytes);
  }

  /** Records zero-filling the whole of `buf`. */
  clear(buf: PooledBuffer): void {
    this.commandEncoder().clearBuffer(buf.buffer, 0, buf.size);
  }

  /** Submits the batch: its uniforms first (queue order), then its commands; closes its error scope. */
  flush(): void {
    if (!this.encoder) return;
    if (this.pass) this.pass.end();
    if (this.uniformUsed > 0) this.device.queue.writeBuffer(this.uniforms, 0, this.uniformHost, 0, this.uniformUsed);
    this.device.queue.submit([this.encoder.finish()]);
    const kernels = [...this.batchKernels].join(", ") || "copies only";
    this.scopes.close((message) => new Error(`webgpu: ${message} [in a batch running: ${kernels}]`));
    this.encoder = null;
    this.pass = null;
    this.uniformUsed = 0;
    this.batchKernels = new Set();
    this.batchDispatches = 0;
  }

  /** Submits pending work, waits for the GPU, and throws any error Dawn reported. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    await this.scopes.settle();
  }

  /** A workgroup count as a 2-D grid within maxGridDim per dimension. */
  private grid2d(key: string, n: number): [number, number, number] {
    const max = this.maxGridDim;
    if (n <= max) return [n, 1, 1];
    const y = Math.ceil(n / max);
    if (y > max) throw new DeviceLimitError(key, `${n} workgroups exceed a ${max}^2 grid`);
    return [max, y, 1];
  }

  /** The open command encoder (starting a batch and its error scope if needed), outside any pass. */
  private commandEncoder(): GPUCommandEncoder {
    if (!this.encoder) {
      this.scopes.open();
      this.encoder = this.device.createCommandEncoder({ label: "qalign batch" });
    }
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    return this.encoder;
  }

  /** The open compute pass, starting one (with timestamps while a timer is attached) if needed. */
  private computePass(): GPUComputePassEncoder {
    if (this.pass) return this.pass;
    const timestampWrites = this.timer?.next();
    this.pass = this.commandEncoder().beginComputePass({ label: "qalign kernels", ...(timestampWrites ? { timestampWrites } : {}) });
    return this.pass;
  }
}
