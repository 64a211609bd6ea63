import { DeviceLimitError } from "../tensor/errors.ts";
import type { MatmulGeometry } from "../tensor/ops/matmul.ts";
import { matmulOp } from "../tensor/ops/matmul.ts";
import { checkMatmul } from "./matmul.ts";
import { registerKernel } from "./registry.ts";
import { bytesOf } from "./webgpu/storage.ts";
import { gemvKernel, gemvShape } from "./gemv.wgsl.ts";
import { MATMUL_PARAMS, storeC } from "./matmul_params.ts";
import type { PooledBuffer } from "./webgpu/pool.ts";
import type { Chunk, GpuData, Kernel, KernelHost, MatmulVariant, ParamValues } from "./webgpu/program.ts";
import { VEC4_LANES, groups, ints, kernel, single } from "./webgpu/program.ts";

/**
 * WGSL batched matrix product, specified by matmulRef in src/kernels/matmul.ts:
 * out[b] = opA(A[b]) @ opB(B[b]) with transA / transB and batch stride 0 for broadcast.
 *
 * Four variants from two templates, validated against the reference by test/kernels_webgpu.test.ts
 * and timed against each other by `npm run bench` (the "matmul variants" cases):
 *
 * - `strided` template, any layout (operands read through strides, so transposes cost nothing):
 *   - "naive": one output element per invocation, the plain dot-product loop. The readable
 *     reference; every load feeds one multiply-add.
 *   - "tiled": register tiling. Each invocation computes a 4 x 4 block of the output in
 *     registers; per step of k it loads 4 values of A's column k and 4 of B's row k and does 16
 *     multiply-adds, so each load feeds 4. No workgroup-memory staging: on SwiftShader (CPU
 *     Vulkan) barriers are expensive and the CPU caches already serve the reuse.
 * - `vec4` template, for A stored [M, K] (not transA) with K, offsets and strides multiples of 4,
 *   in two forms by B's layout: "nt" (transB, B [N, K]: the Linear weight, the hot layout) and
 *   "nn" (B [K, N], N a multiple of 4: dX = dY @ W in every Linear's backward):
 *   - "vec4": each invocation computes a TM x TN block, reading A and B 16 bytes (4 elements)
 *     at a time along their contiguous axis. nt: a_r = A[m_r, k..k+3] and b_c = B[n_c, k..k+3],
 *     acc[r][c] += dot(a_r, b_c). nn: a_r = A[m_r, k..k+3] and, for each of the 4 k, the
 *     4 outputs n..n+3 of B's row k: acc[r][n..n+3] += a_r[kk] * B[k + kk, n..n+3].
 *   - "quad": "vec4" where the four invocations of a quad (subgroup lanes 4q..4q+3, one
 *     workgroup) share one TM-row block and own 4 adjacent TN-column blocks. The A rows are the
 *     same for all four, so each lane loads only TM / 4 of them and `quadBroadcast` hands each row
 *     to the others: per 4 steps of k a lane does TM / 4 + TN 16-byte loads for 4 TM TN
 *     multiply-adds. Tiles are large (64 x 16 by default): SwiftShader runs the 4 lanes as one SIMD
 *     register and emulates every load whose address varies by lane as 4 scalar loads with
 *     bounds checks, which costs far more than the arithmetic, while the accumulators spill
 *     cheaply to the CPU's L1 cache. Only for CPU adapters: on a GPU this many accumulators
 *     would spill registers; GPUs get "vec4".
 *
 * One row (M = 1, decoding) in the "nt" layout with "vec4" or "quad" runs the matrix-vector
 * kernel of gemv.wgsl.ts instead, which streams W once.
 *
 * Edges: rows and columns past the matrix edge are clamped when loading (every read stays in
 * bounds) and skipped when storing, so M and N need not be multiples of the tile.
 *
 * Large B (the lm_head weight [V, D], above one binding): B may be a chunked storage. Its rows
 * (n rows of [N, K] when transB, k rows of [K, N] otherwise) are cut into runs of whole rows that
 * lie in one chunk, each a dispatch on that chunk; a row that straddles two chunks is first copied
 * into a scratch buffer. With transB a run fills its block of output columns; without, runs split
 * the sum over k and accumulate into the output. Each dispatch picks its variant on its own (a
 * piece whose offsets are not multiples of 4 runs "tiled").
 */

/**
 * The strided template: a TM x TN register tile per invocation on an 8 x 8 workgroup; 1 x 1 is
 * "naive", 4 x 4 is "tiled".
 */
function stridedKernel(tm: number, tn: number): Kernel {
  return kernel(`matmul.strided.${tm}x${tn}`, () => ({
    params: MATMUL_PARAMS,
    buffers: [
      { name: "A", type: "f32", access: "read" },
      { name: "B", type: "f32", access: "read" },
      { name: "C", type: "f32", access: "read_write" },
    ],
    body: () => {
      const [rows, cols] = [ints(tm), ints(tn)];
      const vec = (n: number) => (n === 1 ? "f32" : `vec${n}<f32>`);
      const lane = (n: number, i: number) => (n === 1 ? "" : `.${VEC4_LANES[i]}`);
      return `
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let m0 = gid.y * ${tm}u;
  let n0 = gid.x * ${tn}u;
  if (m0 >= P.M || n0 >= P.N) { return; }
  let bt = gid.z + P.batch0;
  let aBase = P.aOff + bt * P.sAb;
  let bBase = P.bOff + bt * P.sBb;
  // Element offsets of this block's rows of opA(A) and columns of opB(B), clamped to the edge.
  ${rows.map((r) => `let ar${r} = aBase + min(m0 + ${r}u, P.M - 1u) * P.sAm;`).join("\n  ")}
  ${cols.map((c) => `let bc${c} = bBase + min(n0 + ${c}u, P.N - 1u) * P.sBn;`).join("\n  ")}
  ${rows.map((r) => `var acc${r} = ${vec(tn)}();`).join("\n  ")}
  for (var k = 0u; k < P.K; k++) {
    let ka = k * P.sAk;
    let kb = k * P.sBk;
    let a = ${vec(tm)}(${rows.map((r) => `A[ar${r} + ka]`).join(", ")});
    let b = ${vec(tn)}(${cols.map((c) => `B[bc${c} + kb]`).join(", ")});
    ${rows.map((r) => `acc${r} += a${lane(tm, r)} * b;`).join("\n    ")}
  }
  let cBase = P.cOff + bt * P.sCb + n0;
  ${rows
    .map(
      (r) => `if (m0 + ${r}u < P.M) {
    let row = cBase + (m0 + ${r}u) * P.ldc;
    ${cols.map((c) => `if (n0 + ${c}u < P.N) { ${storeC(`row + ${c}u`, `acc${r}${lane(tn, c)}`)} }`).join("\n    ")}
  }`,
    )
    .join("\n  ")}
}`;
    },
  }));
}

/** Tile of one vec4 / quad kernel: TM rows x TN columns per invocation (TN a multiple of 4). */
interface Vec4Tile {
  form: "nt" | "nn";
  quad: boolean;
  tm: number;
  tn: number;
}

/**
 * The vec4 template ("vec4" and "quad"). A, B are bound as vec4 arrays: element offsets are
 * divided by 4. Without quad, the workgroup is 8 x 8 invocations; with quad, one quad (4 x 1),
 * its lane the subgroup invocation id mod 4.
 */
function vec4Kernel(t: Vec4Tile): Kernel {
  const { form, quad, tm, tn } = t;
  return kernel(`matmul.${form}.${quad ? "quad" : "vec4"}.${tm}x${tn}`, () => ({
    params: MATMUL_PARAMS,
    enables: quad ? ["subgroups"] : [],
    buffers: [
      { name: "A", type: "vec4<f32>", access: "read" },
      { name: "B", type: "vec4<f32>", access: "read" },
      { name: "C", type: "f32", access: "read_write" },
    ],
    body: () => {
      const rows = ints(tm);
      const groups4 = ints(tn / 4);
      // The A row r of the tile: loaded by this invocation, or by quad lane r % 4 and broadcast.
      const aLoads = quad
        ? ints(tm / 4).map((i) => `let al${i} = A[ar${i} + k4];`)
        : rows.map((r) => `let a${r} = A[ar${r} + k4];`);
      const aRow = (r: number) => (quad ? `quadBroadcast(al${Math.floor(r / 4)}, ${r % 4}u)` : `a${r}`);
      const aRowStarts = quad
        ? ints(tm / 4).map((i) => `let ar${i} = aBase + min(m0 + lane + ${4 * i}u, P.M - 1u) * lda4;`)
        : rows.map((r) => `let ar${r} = aBase + min(m0 + ${r}u, P.M - 1u) * lda4;`);
      // acc{r}_{j}: outputs (m0 + r, n0 + 4j .. n0 + 4j + 3).
      const accs = rows.map((r) => groups4.map((j) => `var acc${r}_${j} = vec4<f32>();`).join(" "));
      const inner =
        form === "nt"
          ? // B [N, K]: b{c} = B[n0 + c, 4 k4 .. 4 k4 + 3]; each output is a dot product over the 4 k.
            `${ints(tn).map((c) => `let b${c} = B[bc${c} + k4];`).join(" ")}
    ${rows
      .map(
        (r) => `{ let a = ${aRow(r)};
      ${groups4.map((j) => `acc${r}_${j} += vec4<f32>(${ints(4).map((e) => `dot(a, b${4 * j + e})`).join(", ")});`).join(" ")} }`,
      )
      .join("\n    ")}`
          : // B [K, N]: for each of the 4 k, b{j} = B[k, n0 + 4j .. n0 + 4j + 3]; acc += a[k] * b.
            `${rows.map((r) => `let a${r}v = ${aRow(r)};`).join(" ")}
    ${VEC4_LANES.map(
      (l, kk) => `{ let brow = bBase + (4u * k4 + ${kk}u) * ldb4;
      ${groups4.map((j) => `let b${j} = B[brow + bc${j}];`).join(" ")}
      ${rows.map((r) => groups4.map((j) => `acc${r}_${j} += a${r}v.${l} * b${j};`).join(" ")).join("\n      ")} }`,
    ).join("\n    ")}`;
      const bColStarts =
        form === "nt"
          ? ints(tn).map((c) => `let bc${c} = bBase + min(n0 + ${c}u, P.N - 1u) * ldb4;`)
          : groups4.map((j) => `let bc${j} = min((n0 + ${4 * j}u) / 4u, P.N / 4u - 1u);`);
      return `
@compute @workgroup_size(${quad ? "4, 1" : "8, 8"}, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, ${quad ? "@builtin(subgroup_invocation_id) sg: u32" : "@builtin(local_invocation_id) lid: vec3<u32>"}) {
  ${quad ? "let lane = sg % 4u;\n  let x = wid.x * 4u + lane;\n  let y = wid.y;" : "let x = wid.x * 8u + lid.x;\n  let y = wid.y * 8u + lid.y;"}
  let m0 = y * ${tm}u;
  let n0 = x * ${tn}u;
  ${quad ? "// No early exit: quadBroadcast needs all four lanes." : "if (m0 >= P.M || n0 >= P.N) { return; }"}
  let bt = wid.z + P.batch0;
  // vec4 indices: every offset and row length is a multiple of 4 (checked on the host).
  let lda4 = P.sAm / 4u;
  let ldb4 = ${form === "nt" ? "P.sBn" : "P.sBk"} / 4u;
  let aBase = (P.aOff + bt * P.sAb) / 4u;
  let bBase = (P.bOff + bt * P.sBb) / 4u;
  ${aRowStarts.join("\n  ")}
  ${bColStarts.join("\n  ")}
  ${accs.join("\n  ")}
  for (var k4 = 0u; k4 < P.K / 4u; k4++) {
    ${aLoads.join(" ")}
    ${inner}
  }
  let cBase = P.cOff + bt * P.sCb;
  ${rows
    .map(
      (r) => `if (m0 + ${r}u < P.M) {
    let row = cBase + (m0 + ${r}u) * P.ldc;
    ${groups4
      .map((j) => ints(4).map((e) => `if (n0 + ${4 * j + e}u < P.N) { ${storeC(`row + n0 + ${4 * j + e}u`, `acc${r}_${j}.${VEC4_LANES[e]}`)} }`).join(" "))
      .join("\n    ")}
  }`,
    )
    .join("\n  ")}
}`;
    },
  }));
}

/**
 * Row tile of the quad variant for M rows: the largest of 64, 32, 16 that pads M by at most a
 * quarter (clamped rows are computed and thrown away), else 4 (decode: M = 1).
 */
function quadRows(M: number): number {
  for (const tm of [64, 32, 16]) if (Math.ceil(M / tm) * tm <= 1.25 * M) return tm;
  return 4;
}

/** Tile per variant; TN 16 for the quad variant (a quad then covers 64 columns). */
function vec4Tile(variant: "vec4" | "quad", form: "nt" | "nn", M: number): Vec4Tile {
  return variant === "quad" ? { form, quad: true, tm: quadRows(M), tn: 16 } : { form, quad: false, tm: 4, tn: 4 };
}

/** Whether a dispatch's operands suit the vec4 template: A along K, everything a multiple of 4. */
function vec4Form(p: ParamValues, transA: boolean, transB: boolean): "nt" | "nn" | null {
  if (transA) return null;
  const form = transB ? "nt" : "nn";
  const must4 = ["K", "aOff", "bOff", "sAm", "sAb", "sBb", transB ? "sBn" : "sBk", ...(transB ? [] : ["N"])];
  return must4.every((name) => (p[name] as number) % 4 === 0) ? form : null;
}

/**
 * The kernel and grid of one dispatch: the matrix-vector kernel for one row of x @ W^T with
 * vec4 variants; else the host's variant where the layout allows; else "tiled".
 */
function plan(host: KernelHost, p: ParamValues, g: MatmulGeometry): { k: Kernel; perX: number; perY: number; wgX: number; wgY: number } {
  const v = host.matmulVariant;
  const form = v === "vec4" || v === "quad" ? vec4Form(p, g.transA, g.transB) : null;
  if (form === "nt" && p["M"] === 1) {
    const sh = gemvShape(host.rowWorkgroup);
    if (groups(p["N"] as number, sh.tn * sh.blocksPerWorkgroup) <= host.maxGridDim) {
      return { k: gemvKernel(sh), perX: sh.tn, perY: 1, wgX: sh.blocksPerWorkgroup, wgY: 1 };
    }
  }
  if ((v === "vec4" || v === "quad") && form) {
    const t = vec4Tile(v, form, p["M"] as number);
    return { k: vec4Kernel(t), perX: t.tn, perY: t.tm, wgX: t.quad ? 4 : 8, wgY: t.quad ? 1 : 8 };
  }
  const tile = v === "naive" ? 1 : 4;
  return { k: stridedKernel(tile, tile), perX: tile, perY: tile, wgX: 8, wgY: 8 };
}

/** Rows of a (possibly chunked) matrix: runs of whole rows inside one chunk, or one row that straddles chunks. */
type RowPiece = { kind: "run"; r0: number; r1: number; chunk: Chunk } | { kind: "straddle"; r: number };

/** Cuts rows [0, rows) of length `rowLen` of `d` into pieces (one run when `d` has one chunk). */
function rowPieces(d: GpuData, rows: number, rowLen: number): RowPiece[] {
  if (d.chunks.length === 1 || rowLen === 0) return [{ kind: "run", r0: 0, r1: rows, chunk: d.chunks[0]! }];
  const pieces: RowPiece[] = [];
  let r = 0;
  while (r < rows) {
    const start = r * rowLen;
    const chunk = d.chunks.find((ch) => start >= ch.base && start < ch.base + ch.len)!;
    const r1 = Math.min(rows, Math.floor((chunk.base + chunk.len) / rowLen));
    if (r1 > r) {
      pieces.push({ kind: "run", r0: r, r1, chunk });
      r = r1;
    } else {
      pieces.push({ kind: "straddle", r });
      r++;
    }
  }
  return pieces;
}

/** Copies elements [start, start + n) of a chunked storage into the scratch buffer `dst`. */
function copyAcrossChunks(host: KernelHost, d: GpuData, start: number, n: number, dst: PooledBuffer): void {
  for (const ch of d.chunks) {
    const lo = Math.max(start, ch.base);
    const hi = Math.min(start + n, ch.base + ch.len);
    if (hi > lo) host.copy(ch.buf, (lo - ch.base) * 4, dst, (lo - start) * 4, (hi - lo) * 4);
  }
}

/**
 * Records out = opA(A) @ opB(B) for every batch, with the host's matmul variant where the layout
 * allows it (else "tiled").
 * @param a f32, one chunk, [batch, M, K] ([K, M] per batch when transA) at batchStrideA
 * @param b f32, [N, K] per batch when transB else [K, N]; may be chunked when batchStrideB is 0
 *   or batch is 1 (the backend checks)
 * @param out f32 [batch, M, N], one chunk
 */
export function encodeMatmul(host: KernelHost, a: GpuData, b: GpuData, out: GpuData, g: MatmulGeometry): void {
  const { batch, M, N, K } = g;
  if (batch === 0 || M === 0 || N === 0) return;
  const base = wholeParams(g);
  const run = (p: ParamValues, bBuf: PooledBuffer) => {
    const { k, perX, perY, wgX, wgY } = plan(host, p, g);
    const gridX = groups(groups(p["N"] as number, perX), wgX);
    const gridY = groups(groups(p["M"] as number, perY), wgY);
    for (let b0 = 0; b0 < batch; b0 += host.maxGridDim) {
      const z = Math.min(host.maxGridDim, batch - b0);
      host.dispatch(k, { ...p, batch0: b0 }, [single(a), bBuf, single(out)], [gridX, gridY, z]);
    }
  };
  // B's rows are output columns n when transB, and steps k of the sum otherwise.
  const rows = g.transB ? N : K;
  const rowLen = g.transB ? K : N;
  let first = true;
  for (const piece of rowPieces(b, rows, rowLen)) {
    const [r0, r1] = piece.kind === "run" ? [piece.r0, piece.r1] : [piece.r, piece.r + 1];
    const bBuf = piece.kind === "run" ? piece.chunk.buf : host.temp(rowLen * 4);
    const bOff = piece.kind === "run" ? r0 * rowLen - piece.chunk.base : 0;
    if (piece.kind === "straddle") copyAcrossChunks(host, b, r0 * rowLen, rowLen, bBuf);
    const p = g.transB
      ? { ...base, N: r1 - r0, bOff, cOff: r0 }
      : { ...base, K: r1 - r0, aOff: r0 * (base["sAk"] as number), bOff, accumulate: first ? 0 : 1 };
    run(p, bBuf);
    if (piece.kind === "straddle") host.releaseTemp(bBuf);
    first = false;
  }
}

/** The uniforms of the whole product (one piece: B in one chunk, no offsets). */
function wholeParams(g: MatmulGeometry): ParamValues {
  const { M, N, K } = g;
  return {
    M,
    N,
    K,
    aOff: 0,
    bOff: 0,
    cOff: 0,
    sAm: g.transA ? 1 : K,
    sAk: g.transA ? M : 1,
    sBk: g.transB ? 1 : N,
    sBn: g.transB ? K : 1,
    sAb: g.batchStrideA,
    sBb: g.batchStrideB,
    sCb: M * N,
    ldc: N,
    accumulate: 0,
  };
}

/**
 * The cache key of the kernel that runs `g` when B fits one binding (e.g. "matmul.gemv.1x8x64",
 * "matmul.nt.quad.64x16"), so the benchmark can say which kernel it timed.
 */
export function matmulKernelKey(host: KernelHost, g: MatmulGeometry): string {
  return plan(host, wholeParams(g), g).k.key;
}

/** The variants, for the benchmark's lab and the tests. */
export const MATMUL_VARIANTS: readonly MatmulVariant[] = ["naive", "tiled", "vec4", "quad"];

// The webgpu kernel: f32; B may be chunked (the lm_head weight) when batchStrideB is 0 or batch
// is 1; DeviceLimitError for a chunked A, a chunked batched B, or an output above one binding.
registerKernel(matmulOp, "webgpu", (gpu, a, b, g) => {
  const as = gpu.space.wholeFloat("matmul", "a", a);
  const bs = gpu.space.float("matmul", "b", b);
  const n = checkMatmul(as, bs, g);
  if (bs.chunks.length > 1 && g.batch > 1 && g.batchStrideB !== 0) {
    throw new DeviceLimitError("matmul", `batched b of ${bytesOf(bs.numel)} bytes exceeds the per-binding limit of ${gpu.maxBindingBytes} bytes`);
  }
  const out = gpu.space.output("matmul", "f32", n);
  encodeMatmul(gpu, as, bs, out, g);
  return out;
});
