import type { MatmulGeometry } from "../tensor/backend.ts";
import type { PooledBuffer } from "./webgpu/pool.ts";
import type { Chunk, GpuData, KernelHost, ParamValues } from "./webgpu/program.ts";
import { groups, kernel, single } from "./webgpu/program.ts";

/**
 * WGSL batched matrix product, specified by matmulRef in src/kernels/matmul.ts:
 * out[b] = opA(A[b]) @ opB(B[b]) with transA / transB and batch stride 0 for broadcast.
 *
 * Technique: register tiling. Each invocation computes a TM x TN block of the output, keeping the
 * block in registers; per step of k it loads TM values of A's column k and TN values of B's row
 * k and does TM * TN multiply-adds, so each loaded value is used TN (or TM) times. Operands are
 * read straight from global memory through strides (transposes cost nothing); there is no
 * workgroup-memory staging, which measured faster on SwiftShader (CPU Vulkan), where workgroup
 * barriers are expensive and caches already serve the reuse. Rows and columns past the matrix
 * edge are clamped when loading (every read stays in bounds) and skipped when storing, so M, N,
 * K need not be multiples of the tile.
 *
 * Large B (the lm_head weight [V, D], above one binding): B may be a chunked storage. Its rows
 * (n rows of [N, K] when transB, k rows of [K, N] otherwise) are cut into runs of whole rows that
 * lie in one chunk, each a dispatch on that chunk; a row that straddles two chunks is first copied
 * into a scratch buffer. With transB a run fills its block of output columns; without, runs split
 * the sum over k and accumulate into the output.
 */

const TM = 4;
const TN = 4;
const WG_X = 8;
const WG_Y = 8;

const matmulKernel = () =>
  kernel(`matmul.rt${TM}x${TN}`, () => ({
    params: [
      ...["M", "N", "K", "batch0", "aOff", "bOff", "cOff", "sAm", "sAk", "sBk", "sBn", "sAb", "sBb", "sCb", "ldc"].map((name) => ({
        name,
        type: "u32" as const,
      })),
      // 1: add to the output (a later slice of k); 0: overwrite it.
      { name: "accumulate", type: "u32" as const },
    ],
    buffers: [
      { name: "A", type: "f32", access: "read" },
      { name: "B", type: "f32", access: "read" },
      { name: "C", type: "f32", access: "read_write" },
    ],
    body: () => {
      const rows = Array.from({ length: TM }, (_, r) => r);
      const cols = Array.from({ length: TN }, (_, c) => c);
      const vec = (n: number) => (n === 1 ? "f32" : `vec${n}<f32>`);
      const lane = (n: number, i: number) => (n === 1 ? "" : `.${"xyzw"[i]}`);
      return `
@compute @workgroup_size(${WG_X}, ${WG_Y}, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let m0 = gid.y * ${TM}u;
  let n0 = gid.x * ${TN}u;
  if (m0 >= P.M || n0 >= P.N) { return; }
  let bt = gid.z + P.batch0;
  let aBase = P.aOff + bt * P.sAb;
  let bBase = P.bOff + bt * P.sBb;
  // Element offsets of this block's rows of opA(A) and columns of opB(B), clamped to the edge.
  ${rows.map((r) => `let ar${r} = aBase + min(m0 + ${r}u, P.M - 1u) * P.sAm;`).join("\n  ")}
  ${cols.map((c) => `let bc${c} = bBase + min(n0 + ${c}u, P.N - 1u) * P.sBn;`).join("\n  ")}
  ${rows.map((r) => `var acc${r} = ${vec(TN)}();`).join("\n  ")}
  for (var k = 0u; k < P.K; k++) {
    let ka = k * P.sAk;
    let kb = k * P.sBk;
    let a = ${vec(TM)}(${rows.map((r) => `A[ar${r} + ka]`).join(", ")});
    let b = ${vec(TN)}(${cols.map((c) => `B[bc${c} + kb]`).join(", ")});
    ${rows.map((r) => `acc${r} += a${lane(TM, r)} * b;`).join("\n    ")}
  }
  let cBase = P.cOff + bt * P.sCb + n0;
  ${rows
    .map(
      (r) => `if (m0 + ${r}u < P.M) {
    let row = cBase + (m0 + ${r}u) * P.ldc;
    ${cols.map((c) => `if (n0 + ${c}u < P.N) { C[row + ${c}u] = select(0.0, C[row + ${c}u], P.accumulate == 1u) + acc${r}${lane(TN, c)}; }`).join("\n    ")}
  }`,
    )
    .join("\n  ")}
}`;
    },
  }));

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
 * Records out = opA(A) @ opB(B) for every batch.
 * @param a f32, one chunk, [batch, M, K] ([K, M] per batch when transA) at batchStrideA
 * @param b f32, [N, K] per batch when transB else [K, N]; may be chunked when batchStrideB is 0
 *   or batch is 1 (the backend checks)
 * @param out f32 [batch, M, N], one chunk
 */
export function encodeMatmul(host: KernelHost, a: GpuData, b: GpuData, out: GpuData, g: MatmulGeometry): void {
  const { batch, M, N, K } = g;
  if (batch === 0 || M === 0 || N === 0) return;
  const k = matmulKernel();
  const base: ParamValues = {
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
  const run = (p: ParamValues, bBuf: PooledBuffer) => {
    const Np = p["N"] as number;
    const Mp = p["M"] as number;
    for (let b0 = 0; b0 < batch; b0 += host.maxGridDim) {
      const z = Math.min(host.maxGridDim, batch - b0);
      host.dispatch(k, { ...p, batch0: b0 }, [single(a), bBuf, single(out)], [groups(Np, TN * WG_X), groups(Mp, TM * WG_Y), z]);
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
