import type { EmbeddingGeometry } from "../tensor/ops/embedding.ts";
import { gatherOp, scatterAddOp } from "../tensor/ops/embedding.ts";
import { checkGather, checkScatterAdd } from "./embedding.ts";
import { registerKernel } from "./registry.ts";
import type { GpuData, KernelHost } from "./webgpu/program.ts";
import { groups, kernel, single } from "./webgpu/program.ts";

/**
 * WGSL embedding lookup (gather) and its transpose (scatterAdd), specified by gatherRef and
 * scatterAddRef in src/kernels/embedding.ts. Ids outside [0, V), which the reference rejects
 * with a RangeError, give zero rows in gather and are skipped by scatterAdd (a kernel cannot
 * throw).
 *
 * gather: one invocation per output element (n, d) copies table[ids[n], d]. The table may be a
 * chunked storage (a 151,936 x 2,048 vocabulary is 1.2 GB, above one binding): one dispatch per
 * chunk, each writing the elements whose source lies in its chunk; the first also writes the zeros
 * of out-of-range ids.
 *
 * scatterAdd without float atomics: one invocation per column d walks the N ids in order and adds
 * grad[n, d] into out[ids[n], d]. No two invocations write the same element, so the sums need no
 * atomics and are deterministic (the order is n = 0, 1, ...). Parallelism is D, enough for model
 * widths; the output is zeroed by the caller.
 */

const WG = 256;

const gatherKernel = (t: "f32" | "i32") =>
  kernel(`gather.${t}`, () => ({
    params: [
      { name: "n", type: "u32" },
      { name: "D", type: "u32" },
      { name: "V", type: "i32" },
      // Table position of element 0 relative to the bound chunk, and the chunk's length.
      { name: "tOff", type: "i32" },
      { name: "tLen", type: "u32" },
      { name: "first", type: "u32" },
    ],
    buffers: [
      { name: "table", type: t, access: "read" },
      { name: "ids", type: "i32", access: "read" },
      { name: "y", type: t, access: "read_write" },
    ],
    body: () => `
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let e = wg_linear(wid, nwg) * ${WG}u + lid;
  if (e >= P.n) { return; }
  let id = ids[e / P.D];
  let d = e % P.D;
  if (id < 0 || id >= P.V) {
    if (P.first == 1u) { y[e] = ${t}(0); }
    return;
  }
  let q = id * i32(P.D) + i32(d) + P.tOff;
  if (u32(q) < P.tLen) { y[e] = table[q]; }
}`,
  }));

const scatterAddKernel = (t: "f32" | "i32") =>
  kernel(`scatterAdd.${t}`, () => ({
    params: [
      { name: "N", type: "u32" },
      { name: "D", type: "u32" },
      { name: "V", type: "i32" },
    ],
    buffers: [
      { name: "grad", type: t, access: "read" },
      { name: "ids", type: "i32", access: "read" },
      { name: "y", type: t, access: "read_write" },
    ],
    body: () => `
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let d = wg_linear(wid, nwg) * ${WG}u + lid;
  if (d >= P.D) { return; }
  for (var n = 0u; n < P.N; n++) {
    let id = ids[n];
    if (id >= 0 && id < P.V) { y[u32(id) * P.D + d] += grad[n * P.D + d]; }
  }
}`,
  }));

/**
 * out[n, :] = table[ids[n], :].
 * @param table [V, D], f32 or i32, may be chunked
 * @param ids i32 [N]
 * @param out [N, D], dtype of table, one chunk
 */
function encodeGather(host: KernelHost, table: GpuData, ids: GpuData, out: GpuData, g: EmbeddingGeometry): void {
  const { V, D } = g;
  const n = ids.numel * D;
  if (n === 0) return;
  const k = gatherKernel(table.dtype);
  table.chunks.forEach((ch, c) => {
    const params = { n, D, V, tOff: -ch.base, tLen: ch.len, first: c === 0 ? 1 : 0 };
    host.dispatch(k, params, [ch.buf, single(ids), single(out)], groups(n, WG));
  });
}

/**
 * out[v, :] += grad[n, :] for every n with ids[n] = v.
 * @param grad [N, D], f32 or i32, one chunk
 * @param ids i32 [N]
 * @param out [V, D], dtype of grad, zero-filled, one chunk
 */
function encodeScatterAdd(host: KernelHost, grad: GpuData, ids: GpuData, out: GpuData, g: EmbeddingGeometry): void {
  host.dispatch(scatterAddKernel(grad.dtype), { N: ids.numel, D: g.D, V: g.V }, [single(grad), single(ids), single(out)], groups(g.D, WG));
}

// The webgpu kernels. gather: the table may be chunked; ids outside [0, V) give zero rows (the
// cpu device throws). scatterAdd: ids outside [0, V) are skipped.
registerKernel(gatherOp, "webgpu", (gpu, table, ids, g) => {
  const ts = gpu.space.live("gather", table);
  const is = gpu.space.wholeInt("gather", "ids", ids);
  const out = gpu.space.output("gather", ts.dtype, checkGather(ts, is, g));
  encodeGather(gpu, ts, is, out, g);
  return out;
});

registerKernel(scatterAddOp, "webgpu", (gpu, grad, ids, g) => {
  const gs = gpu.space.whole("scatterAdd", "grad", grad);
  const is = gpu.space.wholeInt("scatterAdd", "ids", ids);
  const out = gpu.space.output("scatterAdd", gs.dtype, checkScatterAdd(gs, is, g));
  gpu.clear(out);
  encodeScatterAdd(gpu, gs, is, out, g);
  return out;
});
