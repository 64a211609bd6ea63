import type { HostArray } from "../../tensor/dtype.ts";
import type { MatmulGeometry } from "../../tensor/ops/matmul.ts";
import { matmulOp } from "../../tensor/ops/matmul.ts";
import { matmulOnHost, matmulRef } from "../matmul.ts";
import { registerKernel } from "../registry.ts";
import type { WasmBackend } from "./backend.ts";
import type { Code, Local } from "./module.ts";
import {
  FunctionBuilder,
  T,
  buildModule,
  call,
  f32,
  f32x4,
  forRange,
  get,
  i8x16,
  i32,
  ifElse,
  inc,
  memoryFill,
  select,
  seq,
  set,
  sumLanes,
  v128,
  whileLoop,
} from "./module.ts";

/**
 * The matmul kernels of the `wasm` device, generated as one WebAssembly module with 128-bit SIMD:
 *
 * - `gemm`: the blocked product of Goto & van de Geijn, "Anatomy of High-Performance Matrix
 *   Multiplication" (ACM TOMS 2008), as BLIS writes it: the output is cut into MC x NC blocks
 *   (one unit of work each), K into KC slices; per slice the block's rows of opA are packed into
 *   MR-row panels and its columns of opB into NR-column panels (k-major, zero-padded), so the
 *   micro-kernel streams both with unit stride whatever the operands' layout (transposes and
 *   batch strides are only strides of the packing loops). The micro-kernel keeps an MR x NR tile
 *   of the output in MR * NR / 4 vector registers and, per k, splats one A value per row
 *   (v128.load32_splat) against NR / 4 vectors of B.
 * - `gemv_dot` / `gemv_axpy`: one-row (or one-column) products, memory-bound (decoding): each
 *   output is a dot product of a contiguous row with the vector (4 vector accumulators), or the
 *   vector's elements scale contiguous rows that accumulate into an output strip.
 *
 * Work is split by units: thread `tid` of `threads` takes units tid, tid + threads, ...; each
 * output element is computed by one thread in one fixed order over k, so results do not depend on
 * the thread count. Every pointer is a byte address in the shared memory; strides are elements.
 */

/** Micro-tile rows and columns (12 accumulators + 2 B vectors + 1 splat: 15 of x86-64's 16 xmm registers). */
export const MR = 6;
export const NR = 8;
/**
 * Block sizes: a KC x NR panel of B (8 KiB) stays in L1, the MC x KC block of A (144 KiB) and
 * the KC x NC block of B (512 KiB) in L2.
 */
export const MC = 144;
export const KC = 256;
export const NC = 512;
/** k is unrolled by 4 (the packed k is padded to a multiple of it). */
const KU = 4;
/** Rows per unit of the dot-form gemv, and output strip length of the axpy form. */
const DOT_ROWS = 16;
const AXPY_ROWS = 512;

/** Bytes of scratch one thread needs for gemm: packed A, packed B and one output tile. */
export const GEMM_SCRATCH_BYTES = 4 * (MC * KC + KC * NC + MR * NR);

/** The exports of the matmul module (argument lists as documented on each generator). */
export interface MatmulExports {
  gemm(...args: number[]): void;
  gemv_dot(...args: number[]): void;
  gemv_axpy(...args: number[]): void;
}

// Function indices inside the module (the order of the list given to buildModule).
const FN = { gemm: 0, micro: 1, packA: 2, packB: 3, gemvDot: 4, gemvAxpy: 5 } as const;

const c = i32.const;
const add = i32.add;
const mul = i32.mul;
const min = (a: Local, b: Code, tmp: Local) => seq(set(tmp, b), select(get(a), get(tmp), i32.lt_s(get(a), get(tmp))));

/** c + a * b, fused when relaxed SIMD is available (one rounding instead of two). */
const madd = (relaxed: boolean) => (a: Code, b: Code, acc: Code) => (relaxed ? f32x4.relaxed_madd(a, b, acc) : f32x4.add(acc, f32x4.mul(a, b)));

/** 32-bit lanes of two vectors (a: 0-3, b: 4-7) as the byte lanes i8x16.shuffle takes. */
const lanes32 = (...ls: number[]) => ls.flatMap((l) => [4 * l, 4 * l + 1, 4 * l + 2, 4 * l + 3]);

/**
 * pack(src, dst, rows, kLen, kPad, sRowBytes, sKBytes): copies rows x kLen elements (row r,
 * column k at src + r sRow + k sK) into W-row panels, element (r, k) at panel floor(r / W),
 * offset k W + r mod W; the rest of the last panel and k in [kLen, kPad) are zero.
 * For W = NR (B's panels, which every output row block re-packs) two layouts go by vectors:
 * k contiguous (sK = 4, a Linear weight read transposed) as 4 x 4 transposes of 4 rows by 4 k,
 * and rows contiguous (sRow = 4, a weight read as stored) as whole panel rows; the edges and
 * other layouts (and A's panels) go one element at a time.
 */
function pack(W: number): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder(`pack${W}`, [T.i32, T.i32, T.i32, T.i32, T.i32, T.i32, T.i32]);
  const [src, dst, rows, kLen, kPad, sRow, sK] = fn.params as [Local, Local, Local, Local, Local, Local, Local];
  const r = fn.local(T.i32);
  const k = fn.local(T.i32);
  const s = fn.local(T.i32);
  const d = fn.local(T.i32);
  const [rEnd, kEnd] = [fn.local(T.i32), fn.local(T.i32)];
  const panels = i32.div_s(add(get(rows), c(W - 1)), c(W));
  /** Byte address in dst of element (r, k0) of the panels. */
  const panelAt = (k0: Code) => add(get(dst), i32.shl(add(mul(add(mul(i32.div_s(get(r), c(W)), get(kPad)), k0), c(W)), i32.rem_s(get(r), c(W))), c(2)));
  /** Rows [from, to), k in [kFrom, kLen), one element at a time. */
  const scalar = (from: Code, to: Code, kFrom: Code) =>
    forRange(
      r,
      from,
      to,
      c(1),
      seq(
        set(s, add(add(get(src), mul(get(r), get(sRow))), mul(kFrom, get(sK)))),
        set(d, panelAt(kFrom)),
        forRange(k, kFrom, get(kLen), c(1), seq(f32.store(get(d), f32.load(get(s))), inc(d, c(W * 4)), inc(s, get(sK)))),
      ),
    );
  const zero = memoryFill(get(dst), c(0), mul(mul(panels, c(W * 4)), get(kPad)));
  if (W !== NR) return { fn, body: seq(zero, scalar(c(0), get(rows), c(0))) };
  const v = [0, 1, 2, 3].map(() => fn.local(T.v128));
  const t = [0, 1, 2, 3].map(() => fn.local(T.v128));
  const g = (l: Local) => get(l);
  // v_i = row r + i at k..k+3; t = pairs of rows interleaved; w_j = (rows r..r+3 at k + j)
  const transpose4 = seq(
    ...v.map((l, i) => set(l, v128.load(add(get(s), mul(c(i), get(sRow)))))),
    set(t[0]!, i8x16.shuffle(g(v[0]!), g(v[1]!), lanes32(0, 4, 1, 5))),
    set(t[1]!, i8x16.shuffle(g(v[0]!), g(v[1]!), lanes32(2, 6, 3, 7))),
    set(t[2]!, i8x16.shuffle(g(v[2]!), g(v[3]!), lanes32(0, 4, 1, 5))),
    set(t[3]!, i8x16.shuffle(g(v[2]!), g(v[3]!), lanes32(2, 6, 3, 7))),
    v128.store(get(d), i8x16.shuffle(g(t[0]!), g(t[2]!), lanes32(0, 1, 4, 5))),
    v128.store(get(d), i8x16.shuffle(g(t[0]!), g(t[2]!), lanes32(2, 3, 6, 7)), W * 4),
    v128.store(get(d), i8x16.shuffle(g(t[1]!), g(t[3]!), lanes32(0, 1, 4, 5)), 2 * W * 4),
    v128.store(get(d), i8x16.shuffle(g(t[1]!), g(t[3]!), lanes32(2, 3, 6, 7)), 3 * W * 4),
    inc(s, c(16)),
    inc(d, c(4 * W * 4)),
  );
  const kContiguous = seq(
    set(rEnd, i32.and(get(rows), c(-4))),
    set(kEnd, i32.and(get(kLen), c(-4))),
    forRange(r, c(0), get(rEnd), c(4), seq(set(s, add(get(src), mul(get(r), get(sRow)))), set(d, panelAt(c(0))), forRange(k, c(0), get(kEnd), c(4), transpose4))),
    scalar(c(0), get(rEnd), get(kEnd)),
    scalar(get(rEnd), get(rows), c(0)),
  );
  // rows contiguous: each k of a full panel is W = 8 consecutive elements, two vectors
  const rowsContiguous = seq(
    set(rEnd, mul(i32.div_s(get(rows), c(W)), c(W))),
    forRange(
      r,
      c(0),
      get(rEnd),
      c(W),
      seq(
        set(s, add(get(src), i32.shl(get(r), c(2)))),
        set(d, panelAt(c(0))),
        forRange(k, c(0), get(kLen), c(1), seq(v128.store(get(d), v128.load(get(s))), v128.store(get(d), v128.load(get(s), 16), 16), inc(d, c(W * 4)), inc(s, get(sK)))),
      ),
    ),
    scalar(get(rEnd), get(rows), c(0)),
  );
  const body = seq(zero, ifElse(i32.eq(get(sK), c(4)), kContiguous, ifElse(i32.eq(get(sRow), c(4)), rowsContiguous, scalar(c(0), get(rows), c(0)))));
  return { fn, body };
}

/**
 * micro(ap, bp, kPad, cp, ldcBytes, accumulate, mValid, nValid, tile): the MR x NR tile at cp
 * (row stride ldcBytes) becomes (accumulate ? itself : 0) + sum over k < kPad of
 * A[k, i] B[k, j], A panel at ap (k-major, MR per k), B panel at bp (NR per k). Only the first
 * mValid rows and nValid columns are written (edge tiles go through `tile`, MR x NR floats).
 */
function micro(relaxed: boolean): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("micro", [T.i32, T.i32, T.i32, T.i32, T.i32, T.i32, T.i32, T.i32, T.i32]);
  const [ap, bp, kPad, cp, ldc, accumulate, mValid, nValid, tile] = fn.params as Local[] as [Local, Local, Local, Local, Local, Local, Local, Local, Local];
  const NV = NR / 4;
  const acc = Array.from({ length: MR }, () => Array.from({ length: NV }, () => fn.local(T.v128)));
  const bv = Array.from({ length: NV }, () => fn.local(T.v128));
  const av = fn.local(T.v128);
  const k = fn.local(T.i32);
  const i = fn.local(T.i32);
  const j = fn.local(T.i32);
  const row = fn.local(T.i32);
  const fma = madd(relaxed);

  const step: number[] = [];
  for (let u = 0; u < KU; u++) {
    for (let q = 0; q < NV; q++) step.push(...set(bv[q]!, v128.load(get(bp), (u * NR + 4 * q) * 4)));
    for (let r = 0; r < MR; r++) {
      step.push(...set(av, v128.load32_splat(get(ap), (u * MR + r) * 4)));
      for (let q = 0; q < NV; q++) step.push(...set(acc[r]![q]!, fma(get(av), get(bv[q]!), get(acc[r]![q]!))));
    }
  }
  const zero = acc.flat().flatMap((l) => set(l, v128.zero()));
  const loop = forRange(k, c(0), get(kPad), c(KU), seq(step, inc(ap, c(KU * MR * 4)), inc(bp, c(KU * NR * 4))));

  // Full tile: straight vector stores (adding the old values when accumulating).
  const full = (withOld: boolean) =>
    seq(
      set(row, get(cp)),
      ...acc.map((rowAcc) =>
        seq(
          ...rowAcc.map((l, q) => v128.store(get(row), withOld ? f32x4.add(v128.load(get(row), 16 * q), get(l)) : get(l), 16 * q)),
          inc(row, get(ldc)),
        ),
      ),
    );
  // Edge tile: spill to `tile`, then copy the valid part element by element.
  const edge = seq(
    ...acc.flatMap((rowAcc, r) => rowAcc.map((l, q) => v128.store(get(tile), get(l), (r * NR + 4 * q) * 4))),
    forRange(
      i,
      c(0),
      get(mValid),
      c(1),
      seq(
        set(row, add(get(cp), mul(get(i), get(ldc)))),
        forRange(
          j,
          c(0),
          get(nValid),
          c(1),
          f32.store(
            add(get(row), i32.shl(get(j), c(2))),
            f32.add(
              select(f32.load(add(get(row), i32.shl(get(j), c(2)))), f32.const(0), get(accumulate)),
              f32.load(add(get(tile), i32.shl(add(mul(get(i), c(NR)), get(j)), c(2)))),
            ),
          ),
        ),
      ),
    ),
  );
  const isFull = i32.and(i32.eq(get(mValid), c(MR)), i32.eq(get(nValid), c(NR)));
  const body = seq(zero, loop, ifElse(isFull, ifElse(get(accumulate), full(true), full(false)), edge));
  return { fn, body };
}

/**
 * gemm(a, b, c, M, N, K, sAm, sAk, sBk, sBn, batch, sAb, sBb, nc, scratch, tid, threads):
 * C[b] = opA(A[b]) opB(B[b]) for b < batch, opA(A)[m, k] at a + (b sAb + m sAm + k sAk) * 4,
 * opB(B)[k, n] at b + (b sBb + k sBk + n sBn) * 4, C contiguous [batch, M, N] at c. Units are
 * MC x nc blocks (nc a multiple of NR, at most NC: narrower when there are few blocks to share
 * between threads). Thread tid uses GEMM_SCRATCH_BYTES at scratch + tid * GEMM_SCRATCH_BYTES.
 * Requires K >= 1.
 */
function gemm(): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("gemm", new Array(17).fill(T.i32));
  const [a, b, cc, M, N, K, sAm, sAk, sBk, sBn, batch, sAb, sBb, nc, scratch, tid, threads] = fn.params as Local[] as Local[] & { length: 17 };
  const L = () => fn.local(T.i32);
  const [nMb, nNb, units, u, t, bi, ic, jc, mLen, nLen, aB, bB, cB, pc, kLen, kPad, jp, ip, Ap, Bp, tile, tmp, tmp2] = Array.from({ length: 23 }, L) as Local[];
  // Packs this k-slice of one operand: `rows` rows (row stride sRow) of kLen elements (stride sK).
  const packSlice = (fnIndex: number, base: Local, sK: Local, dst: Local, rows: Local, sRow: Local) =>
    call(
      fnIndex,
      add(get(base), i32.shl(mul(get(pc!), get(sK)), c(2))),
      get(dst),
      get(rows),
      get(kLen!),
      get(kPad!),
      i32.shl(get(sRow), c(2)),
      i32.shl(get(sK), c(2)),
    );
  const body = seq(
    set(nMb!, i32.div_s(add(get(M!), c(MC - 1)), c(MC))),
    set(nNb!, i32.div_s(add(get(N!), i32.sub(get(nc!), c(1))), get(nc!))),
    set(units!, mul(mul(get(batch!), get(nMb!)), get(nNb!))),
    set(Ap!, add(get(scratch!), mul(get(tid!), c(GEMM_SCRATCH_BYTES)))),
    set(Bp!, add(get(Ap!), c(MC * KC * 4))),
    set(tile!, add(get(Bp!), c(KC * NC * 4))),
    forRange(
      u!,
      get(tid!),
      get(units!),
      get(threads!),
      seq(
        set(jc!, mul(i32.rem_s(get(u!), get(nNb!)), get(nc!))),
        set(t!, i32.div_s(get(u!), get(nNb!))),
        set(ic!, mul(i32.rem_s(get(t!), get(nMb!)), c(MC))),
        set(bi!, i32.div_s(get(t!), get(nMb!))),
        set(mLen!, c(MC)),
        set(mLen!, min(mLen!, i32.sub(get(M!), get(ic!)), tmp!)),
        set(nLen!, get(nc!)),
        set(nLen!, min(nLen!, i32.sub(get(N!), get(jc!)), tmp!)),
        set(aB!, add(get(a!), i32.shl(add(mul(get(bi!), get(sAb!)), mul(get(ic!), get(sAm!))), c(2)))),
        set(bB!, add(get(b!), i32.shl(add(mul(get(bi!), get(sBb!)), mul(get(jc!), get(sBn!))), c(2)))),
        set(cB!, add(get(cc!), i32.shl(add(mul(add(mul(get(bi!), get(M!)), get(ic!)), get(N!)), get(jc!)), c(2)))),
        forRange(
          pc!,
          c(0),
          get(K!),
          c(KC),
          seq(
            set(kLen!, c(KC)),
            set(kLen!, min(kLen!, i32.sub(get(K!), get(pc!)), tmp!)),
            set(kPad!, i32.and(add(get(kLen!), c(KU - 1)), c(-KU))),
            packSlice(FN.packA, aB!, sAk!, Ap!, mLen!, sAm!),
            packSlice(FN.packB, bB!, sBk!, Bp!, nLen!, sBn!),
            forRange(
              jp!,
              c(0),
              get(nLen!),
              c(NR),
              forRange(
                ip!,
                c(0),
                get(mLen!),
                c(MR),
                seq(
                  set(t!, c(MR)),
                  set(tmp!, c(NR)),
                  call(
                    FN.micro,
                    add(get(Ap!), i32.shl(mul(get(ip!), get(kPad!)), c(2))),
                    add(get(Bp!), i32.shl(mul(get(jp!), get(kPad!)), c(2))),
                    get(kPad!),
                    add(get(cB!), i32.shl(add(mul(get(ip!), get(N!)), get(jp!)), c(2))),
                    i32.shl(get(N!), c(2)),
                    i32.gt_s(get(pc!), c(0)),
                    min(t!, i32.sub(get(mLen!), get(ip!)), tmp2!),
                    min(tmp!, i32.sub(get(nLen!), get(jp!)), tmp2!),
                    get(tile!),
                  ),
                ),
              ),
            ),
          ),
        ),
      ),
    ),
  );
  return { fn, body };
}

/** The shared prologue of the gemv forms: unit u -> batch bi and rows [r0, r1). */
function gemvUnits(
  fn: FunctionBuilder,
  rowsPerUnit: number,
  p: { rows: Local; batch: Local; tid: Local; threads: Local },
  perUnit: (bi: Local, r0: Local, r1: Local) => Code,
): Code {
  const [nb, units, u, bi, r0, r1, tmp] = Array.from({ length: 7 }, () => fn.local(T.i32));
  return seq(
    set(nb!, i32.div_s(add(get(p.rows), c(rowsPerUnit - 1)), c(rowsPerUnit))),
    set(units!, mul(get(p.batch), get(nb!))),
    forRange(
      u!,
      get(p.tid),
      get(units!),
      get(p.threads),
      seq(
        set(bi!, i32.div_s(get(u!), get(nb!))),
        set(r0!, mul(i32.rem_s(get(u!), get(nb!)), c(rowsPerUnit))),
        set(r1!, add(get(r0!), c(rowsPerUnit))),
        set(r1!, min(r1!, get(p.rows), tmp!)),
        perUnit(bi!, r0!, r1!),
      ),
    ),
  );
}

/**
 * gemv_dot(x, y, out, rows, K, ldx, batch, sXb, sYb, tid, threads):
 * out[b, r] = sum over k < K of X[b][r ldx + k] y[b][k], X[b] at x + b sXb * 4, y[b] at
 * y + b sYb * 4 (contiguous), out contiguous [batch, rows].
 */
function gemvDot(relaxed: boolean): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("gemv_dot", new Array(11).fill(T.i32));
  const [x, y, out, rows, K, ldx, batch, sXb, sYb, tid, threads] = fn.params as Local[] as Local[] & { length: 11 };
  const acc = [0, 1, 2, 3].map(() => fn.local(T.v128));
  const [r, k, xr, yb, ob] = Array.from({ length: 5 }, () => fn.local(T.i32));
  const s = fn.local(T.f32);
  const fma = madd(relaxed);
  const xAt = (off: number) => v128.load(add(get(xr!), i32.shl(get(k!), c(2))), off);
  const yAt = (off: number) => v128.load(add(get(yb!), i32.shl(get(k!), c(2))), off);
  const body = gemvUnits(fn, DOT_ROWS, { rows: rows!, batch: batch!, tid: tid!, threads: threads! }, (bi, r0, r1) =>
    seq(
      set(yb!, add(get(y!), i32.shl(mul(get(bi), get(sYb!)), c(2)))),
      set(ob!, add(get(out!), i32.shl(mul(get(bi), get(rows!)), c(2)))),
      forRange(
        r!,
        get(r0),
        get(r1),
        c(1),
        seq(
          set(xr!, add(get(x!), i32.shl(add(mul(get(bi), get(sXb!)), mul(get(r!), get(ldx!))), c(2)))),
          ...acc.map((l) => set(l, v128.zero())),
          set(k!, c(0)),
          whileLoop(
            i32.le_s(add(get(k!), c(16)), get(K!)),
            seq(...acc.map((l, q) => set(l, fma(xAt(16 * q), yAt(16 * q), get(l)))), inc(k!, c(16))),
          ),
          whileLoop(i32.le_s(add(get(k!), c(4)), get(K!)), seq(set(acc[0]!, fma(xAt(0), yAt(0), get(acc[0]!))), inc(k!, c(4)))),
          // The four accumulators into one, then its lanes (sumLanes repeats its argument per lane).
          set(acc[0]!, f32x4.add(f32x4.add(get(acc[0]!), get(acc[1]!)), f32x4.add(get(acc[2]!), get(acc[3]!)))),
          set(s, sumLanes(get(acc[0]!))),
          whileLoop(
            i32.lt_s(get(k!), get(K!)),
            seq(
              set(s, f32.add(get(s), f32.mul(f32.load(add(get(xr!), i32.shl(get(k!), c(2)))), f32.load(add(get(yb!), i32.shl(get(k!), c(2))))))),
              inc(k!, c(1)),
            ),
          ),
          f32.store(add(get(ob!), i32.shl(get(r!), c(2))), get(s)),
        ),
      ),
    ),
  );
  return { fn, body };
}

/**
 * gemv_axpy(x, y, out, rows, K, ldk, batch, sXb, sYb, tid, threads):
 * out[b, r] = sum over k < K of X[b][k ldk + r] y[b][k] (X's rows are contiguous in r), summed
 * in order of k into an output strip of AXPY_ROWS elements that stays in L1.
 */
function gemvAxpy(relaxed: boolean): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("gemv_axpy", new Array(11).fill(T.i32));
  const [x, y, out, rows, K, ldk, batch, sXb, sYb, tid, threads] = fn.params as Local[] as Local[] & { length: 11 };
  const [r, k, xk, yb, ob, o] = Array.from({ length: 6 }, () => fn.local(T.i32));
  const yk = fn.local(T.v128);
  const fma = madd(relaxed);
  const body = gemvUnits(fn, AXPY_ROWS, { rows: rows!, batch: batch!, tid: tid!, threads: threads! }, (bi, r0, r1) =>
    seq(
      set(yb!, add(get(y!), i32.shl(mul(get(bi), get(sYb!)), c(2)))),
      set(ob!, add(get(out!), i32.shl(add(mul(get(bi), get(rows!)), get(r0)), c(2)))),
      memoryFill(get(ob!), c(0), i32.shl(i32.sub(get(r1), get(r0)), c(2))),
      forRange(
        k!,
        c(0),
        get(K!),
        c(1),
        seq(
          set(yk, v128.load32_splat(add(get(yb!), i32.shl(get(k!), c(2))))),
          set(xk!, add(get(x!), i32.shl(add(mul(get(bi), get(sXb!)), add(mul(get(k!), get(ldk!)), get(r0))), c(2)))),
          set(o!, get(ob!)),
          set(r!, get(r0)),
          whileLoop(
            i32.le_s(add(get(r!), c(4)), get(r1)),
            seq(v128.store(get(o!), fma(v128.load(get(xk!)), get(yk), v128.load(get(o!)))), inc(xk!, c(16)), inc(o!, c(16)), inc(r!, c(4))),
          ),
          whileLoop(
            i32.lt_s(get(r!), get(r1)),
            seq(
              f32.store(get(o!), f32.add(f32.load(get(o!)), f32.mul(f32.load(get(xk!)), f32x4.extract_lane(get(yk), 0)))),
              inc(xk!, c(4)),
              inc(o!, c(4)),
              inc(r!, c(1)),
            ),
          ),
        ),
      ),
    ),
  );
  return { fn, body };
}

/** The matmul module's bytes, for a shared or private memory, with or without relaxed SIMD. */
export function matmulModule(shared: boolean, relaxed: boolean): Uint8Array {
  // Order must match FN.
  return buildModule(shared, [gemm(), micro(relaxed), pack(MR), pack(NR), gemvDot(relaxed), gemvAxpy(relaxed)]);
}

/** Units per thread the gemm split aims for, so that uneven units still balance. */
const UNITS_PER_THREAD = 4;
/** The narrowest unit (columns): below it, packing A again per unit costs more than it shares. */
const MIN_UNIT_COLUMNS = 8 * NR;

/**
 * Columns of one gemm unit: NC, halved (staying a multiple of NR) until the batch x M-blocks x
 * N-blocks units number UNITS_PER_THREAD per thread or the unit is MIN_UNIT_COLUMNS wide.
 */
function unitColumns(batch: number, M: number, N: number, threads: number): number {
  const mBlocks = batch * Math.ceil(M / MC);
  let nc = NC;
  while (nc > MIN_UNIT_COLUMNS && mBlocks * Math.ceil(N / nc) < UNITS_PER_THREAD * threads) nc = Math.max(MIN_UNIT_COLUMNS, Math.ceil(nc / 2 / NR) * NR);
  return nc;
}

/**
 * f32 products on the SIMD kernels; M = 1 or N = 1 take the matrix-vector forms (a dot
 * product per output where the matrix's rows are contiguous along k, else scaled rows summed
 * into an output strip). f64 runs the reference.
 */
export function matmulKernel(wasm: WasmBackend, a: HostArray, b: HostArray, out: HostArray, g: MatmulGeometry): void {
  if (!(a instanceof Float32Array && b instanceof Float32Array && out instanceof Float32Array)) {
    matmulRef(a, b, out, g);
    return;
  }
  for (const x of [a, b]) if (!wasm.owns(x)) throw new TypeError("matmul: storage does not belong to this wasm backend");
  const { batch, M, N, K: Kd } = g;
  if (batch * M * N === 0 || Kd === 0) return; // the output is already zero
  const [sAm, sAk] = g.transA ? [1, M] : [Kd, 1];
  const [sBk, sBn] = g.transB ? [1, Kd] : [N, 1];
  const sAb = g.batchStrideA;
  const sBb = g.batchStrideB;
  const [pa, pb, pc] = [a.byteOffset, b.byteOffset, out.byteOffset];
  const threads = wasm.macThreads(batch * M * N * Kd);
  if (M === 1) {
    // out[j] = sum_k B(j, k) a[k]; a's k-stride is 1 whether or not A is transposed.
    if (sBk === 1) wasm.call("gemv_dot", [pb, pa, pc, N, Kd, sBn, batch, sBb, sAb], threads);
    else wasm.call("gemv_axpy", [pb, pa, pc, N, Kd, sBk, batch, sBb, sAb], threads);
  } else if (N === 1) {
    // out[i] = sum_k A(i, k) b[k]; b's k-stride is 1 whether or not B is transposed.
    if (sAk === 1) wasm.call("gemv_dot", [pa, pb, pc, M, Kd, sAm, batch, sAb, sBb], threads);
    else wasm.call("gemv_axpy", [pa, pb, pc, M, Kd, sAk, batch, sAb, sBb], threads);
  } else {
    wasm.call("gemm", [pa, pb, pc, M, N, Kd, sAm, sAk, sBk, sBn, batch, sAb, sBb, unitColumns(batch, M, N, threads), wasm.scratch], threads);
  }
}

registerKernel(matmulOp, "wasm", matmulOnHost(matmulKernel));
