/**
 * The adapter's streaming read rate: how fast any kernel can read a buffer once, which bounds a
 * matrix-vector product (every weight is read once and used once). Two probe kernels read the
 * same buffer, summing what they read so the loads cannot be dropped:
 *
 * - "runs": each invocation reads its own contiguous run of 4 KiB (256 vec4s), eight independent
 *   accumulators (the pattern of a CPU thread; on SwiftShader the faster one);
 * - "coalesced": neighbouring invocations read neighbouring vec4s, the whole grid sweeping the
 *   buffer (the pattern GPUs need).
 *
 * The case reports both; the bound is the faster. This is a measurement of the adapter, not a
 * qalign kernel, so it lives with the benchmark.
 */
import type { WebGpuBackend, WebGpuStorage } from "../src/kernels/webgpu/backend.ts";
import { groups, kernel, single } from "../src/kernels/webgpu/program.ts";
import type { CaseResult, Contender } from "./harness.ts";
import { gpuTimer, measure } from "./harness.ts";
import type { BenchContext } from "./kernels.ts";

/** vec4s each invocation reads. */
const PER_INVOCATION = 256;
const WG = 64;
/** Independent loads per loop step (as many as the matrix-vector kernel's 8 weight rows). */
const UNROLL = [0, 1, 2, 3, 4, 5, 6, 7];

const probe = (pattern: "runs" | "coalesced") =>
  kernel(`bench.read.${pattern}`, () => ({
    params: [{ name: "n4", type: "u32" }],
    buffers: [
      { name: "x", type: "vec4<f32>", access: "read" },
      { name: "y", type: "f32", access: "read_write" },
    ],
    body: () => {
      const at = (u: number) => (pattern === "runs" ? `g * ${PER_INVOCATION}u + i + ${u}u` : `(i + ${u}u) * total + g`);
      return `
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let g = wg_linear(wid, nwg) * ${WG}u + lid;
  let total = P.n4 / ${PER_INVOCATION}u;
  if (g >= total) { return; }
  ${UNROLL.map((u) => `var s${u} = vec4<f32>();`).join(" ")}
  for (var i = 0u; i < ${PER_INVOCATION}u; i += ${UNROLL.length}u) {
    ${UNROLL.map((u) => `s${u} += x[${at(u)}];`).join(" ")}
  }
  y[g] = dot(${UNROLL.map((u) => `s${u}`).join(" + ")}, vec4<f32>(1.0));
}`;
    },
  }));

/**
 * Times both probes over a buffer of `bytes` (rounded down to whole 4 KiB runs, at most one
 * binding) on the webgpu backend.
 * @param name the case name (says what the rate bounds)
 */
export async function readRateCase(ctx: BenchContext, name: string, bytes: number): Promise<CaseResult> {
  const gpu = ctx.gpu as WebGpuBackend;
  ctx.log(name);
  const run = 16 * PER_INVOCATION;
  const n = Math.floor(Math.min(bytes, gpu.maxBindingBytes) / run) * (run / 4);
  const x = gpu.zeros("f32", n) as WebGpuStorage;
  const y = gpu.zeros("f32", n / 4 / PER_INVOCATION) as WebGpuStorage;
  const contenders: Contender[] = (["runs", "coalesced"] as const).map((pattern) => ({
    engine: "adapter",
    variant: `read probe: ${pattern}`,
    time: (iterations) =>
      gpuTimer(gpu, iterations, () => gpu.dispatch(probe(pattern), { n4: n / 4 }, [single(x), single(y)], groups(n / 4 / PER_INVOCATION, WG))),
  }));
  const results = await measure(contenders, { bytes: 4 * n }, ctx.opts);
  gpu.free(x);
  gpu.free(y);
  return { group: "matmul", name, params: { bytes: 4 * n }, work: { bytes: 4 * n }, results };
}
