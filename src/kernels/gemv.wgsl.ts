import { MATMUL_PARAMS, storeC } from "./matmul_params.ts";
import type { Kernel } from "./webgpu/program.ts";
import { ints, kernel } from "./webgpu/program.ts";

/**
 * WGSL matrix-vector product: the matmul with one row, y [1, N] = x [1, K] @ W [N, K]^T, as in
 * every Linear layer while decoding one token (the lm_head against the whole vocabulary is the
 * largest). Specified by matmulRef (src/kernels/matmul.ts) with M = 1 and transB; dispatched by
 * encodeMatmul (matmul.wgsl.ts) in place of the tiled kernels, which would compute 3 of every 4
 * rows of their tile for nothing and read W once per tile column instead of streaming it.
 *
 * Each weight is used once, so the kernel is bound by reading W: the work is arranged so that W
 * is read exactly once, 16 bytes (vec4) at a time along K, where it is contiguous.
 *
 * An output block is TN adjacent columns, computed by `lanes` invocations that split K between
 * them (lane l takes k4 = l, l + lanes, ...: on a GPU neighbouring lanes then read neighbouring
 * 16-byte words of each row, which coalesces), then add their partial sums with a tree reduction
 * in workgroup memory. With lanes = 1 an invocation owns its TN columns and runs the whole of K:
 * no reduction and no barrier, the arrangement for CPU emulations such as SwiftShader, where a
 * barrier costs a thread switch, loads are the bottleneck and register pressure caps TN at 8
 * (measured there: TN 8 streams about 2.4x faster than the 4 x 16 quad tile's decode path; TN 16
 * spills and falls back to the speed of TN 4).
 *
 * Requires the vec4 layout (checked by the caller): A contiguous along K, K, the offsets and
 * W's row stride multiples of 4.
 */

/** How one GEMV dispatch is cut: invocations per output block, columns per block, blocks per workgroup. */
export interface GemvShape {
  lanes: number;
  tn: number;
  blocksPerWorkgroup: number;
}

/**
 * The shape for `lanes` invocations per block (KernelHost.rowWorkgroup: 256 on a GPU, 1 on a CPU
 * emulation): 8 columns per block for a single lane, 4 when lanes split K. A workgroup holds at
 * least 64 invocations.
 */
export function gemvShape(lanes: number): GemvShape {
  return { lanes, tn: lanes === 1 ? 8 : 4, blocksPerWorkgroup: Math.max(1, Math.floor(64 / lanes)) };
}

/**
 * WGSL shared by the kernels arranged as GemvShape says (this one and the packed-weight decoding
 * of weights.wgsl.ts): the workgroup memory, the entry point with `lane`, `blk` and `n0` (the
 * block's first column), the tree reduction of the lanes' partial sums `${acc}0..` and their
 * collection into lane 0's `${acc}c`.
 */
export function laneReduction(s: GemvShape, acc: string): { decl: string; entry: string; reduce: string; collect: string } {
  const { lanes, tn, blocksPerWorkgroup: G } = s;
  const cols = ints(tn);
  // Partial sum of column c of this block by this lane, before the reduction.
  const slot = (c: number) => `(blk * ${tn}u + ${c}u) * ${lanes}u`;
  const entry = `@compute @workgroup_size(${lanes * G}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let lane = lid.x % ${lanes}u;
  let blk = lid.x / ${lanes}u;
  let n0 = (wid.x * ${G}u + blk) * ${tn}u;`;
  if (lanes === 1) return { decl: "", entry, reduce: "", collect: "" };
  return {
    decl: `var<workgroup> part: array<f32, ${lanes * tn * G}>;`,
    entry,
    reduce: `${cols.map((c) => `part[${slot(c)} + lane] = ${acc}${c};`).join(" ")}
  // Tree reduction over the lanes: after the step with stride s, lanes < s hold sums of 2 lanes / s.
  for (var s = ${lanes / 2}u; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (lane < s) {
      ${cols.map((c) => `part[${slot(c)} + lane] += part[${slot(c)} + lane + s];`).join("\n      ")}
    }
  }`,
    collect: cols.map((c) => `${acc}${c} = part[${slot(c)}];`).join(" "),
  };
}

/**
 * The kernel for one shape. Grid: [ceil(N / (tn * blocksPerWorkgroup)), 1, batch]; batch b reads
 * A at aOff + b * sAb and W at bOff + b * sBb (0 broadcasts one W), and writes C at
 * cOff + b * sCb; `accumulate` adds to C.
 */
export function gemvKernel(s: GemvShape): Kernel {
  const { lanes, tn, blocksPerWorkgroup: G } = s;
  return kernel(`matmul.gemv.${lanes}x${tn}x${G}`, () => ({
    params: MATMUL_PARAMS,
    buffers: [
      { name: "A", type: "vec4<f32>", access: "read" },
      { name: "B", type: "vec4<f32>", access: "read" },
      { name: "C", type: "f32", access: "read_write" },
    ],
    body: () => {
      const cols = ints(tn);
      const r = laneReduction(s, "acc");
      return `
${r.decl}
${r.entry}
  let bt = wid.z + P.batch0;
  // vec4 indices: offsets and row lengths are multiples of 4. Columns past N are clamped (read,
  // never stored), so every invocation reaches the barriers.
  let K4 = P.K / 4u;
  let ldb4 = P.sBn / 4u;
  let aBase = (P.aOff + bt * P.sAb) / 4u;
  let bBase = (P.bOff + bt * P.sBb) / 4u;
  ${cols.map((c) => `let bc${c} = bBase + min(n0 + ${c}u, P.N - 1u) * ldb4;`).join("\n  ")}
  ${cols.map((c) => `var acc${c} = 0.0;`).join(" ")}
  for (var k4 = lane; k4 < K4; k4 += ${lanes}u) {
    let a = A[aBase + k4];
    ${cols.map((c) => `acc${c} += dot(a, B[bc${c} + k4]);`).join("\n    ")}
  }
  ${r.reduce}
  if (lane == 0u) {
    ${r.collect}
    let cBase = P.cOff + bt * P.sCb;
    ${cols.map((c) => `if (n0 + ${c}u < P.N) { ${storeC(`cBase + n0 + ${c}u`, `acc${c}`)} }`).join("\n    ")}
  }
}`;
    },
  }));
}
