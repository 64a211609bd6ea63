import type { DType, HostArray } from "../../tensor/dtype.ts";
import type { AttentionBackwardInputs, AttentionGeometry, AttentionGrads, AttentionInputs } from "../../tensor/ops/attention.ts";
import { attentionBackwardOp, attentionOp } from "../../tensor/ops/attention.ts";
import { attentionBackwardOnHost, attentionBackwardRef, attentionOnHost, attentionRef } from "../attention.ts";
import { registerKernel } from "../registry.ts";
import type { WasmBackend } from "./backend.ts";
import type { Code, Local } from "./module.ts";
import { f32Bits } from "./pool.ts";
import {
  FunctionBuilder,
  T,
  buildModule,
  expF32x4,
  f32,
  f32x4,
  forRange,
  get,
  i32,
  ifElse,
  select,
  seq,
  set,
  sumLanes,
  v128,
} from "./module.ts";

/**
 * The fused attention forward of the `wasm` device (one WebAssembly SIMD module): the online
 * softmax of src/kernels/attention.ts (FlashAttention-2's forward, one query row at a time), in
 * f32. Per query row: keys in order from the first to the last visible one (causal and sliding
 * window bound a contiguous range; the key mask is checked per key), s = scale q.k as a Dh/4
 * vector dot product, and when s raises the running max m the running sum l and the output
 * accumulator (Dh floats of per-thread scratch) are rescaled by exp(m_old - m). exp is Cephes'
 * expf on a splat (expF32x4). The row writes out = acc / l (0 when it sees no key) and (m, l);
 * the caller turns them into lse = m + log l, one log per row.
 *
 * attn(q, k, v, mask, out, ml, B, H, Hkv, Tq, Tk, Dh, scaleBits, causal, window, scratch, tid,
 * threads): q/out [B, H, Tq, Dh], k/v [B, Hkv, Tk, Dh], mask i32 [B, Tk] (0 = padding) or
 * pointer 0 for none, ml f32 [B * H * Tq, 2], scaleBits the f32 bits of the scale. Requires Dh a
 * multiple of 4. Rows are split round-robin between threads; each row is one thread's, in one
 * order, so results do not depend on the thread count. Thread tid uses 4 Dh bytes of scratch at
 * scratch + tid * 4 Dh.
 *
 * attn_bwd(q, k, v, mask, out, dOut, lse, dq, dk, dv, B, H, Hkv, Tq, Tk, Dh, scaleBits, causal,
 * window, tid, threads): FlashAttention-2's backward as attentionBackwardRef writes it (which see
 * for the formulas), accumulated in f32 into dq, dk, dv (zero on entry). A unit is one kv head of
 * one batch row: it owns that head's dk, dv rows and the dq rows of its query heads, so units run
 * on any thread without races and every sum keeps one order.
 */
/** Locals and code builders both passes share: row offsets, dot products, exp, the visible keys. */
function tools(fn: FunctionBuilder, p: { Dh: Local; Tq: Local; Tk: Local; causal: Local; window: Local; mask: Local; scaleBits: Local }) {
  const c = i32.const;
  const I = () => fn.local(T.i32);
  const [rowBytes, d, pos, lo, hi, j, b] = Array.from({ length: 7 }, I) as Local[];
  const [dotv, t, n, rr] = Array.from({ length: 4 }, () => fn.local(T.v128));
  const scale = fn.local(T.f32);
  const at = (base: Local) => i32.add(get(base), get(d!));
  /** for d in [0, rowBytes) step 16: body (d is a byte offset into a row). */
  const overRow = (body: Code) => forRange(d!, c(0), get(rowBytes!), c(16), body);
  return {
    rowBytes: rowBytes!,
    b: b!,
    scale,
    at,
    overRow,
    /** Sets the scale and the row size in bytes. */
    prologue: seq(set(scale, f32.reinterpret_i32(get(p.scaleBits))), set(rowBytes!, i32.shl(get(p.Dh), c(2)))),
    /** Writes `x . y` (rows at byte pointers x and y) into the f32 local `into`. */
    dot: (x: Local, y: Local, into: Local) => seq(set(dotv, v128.zero()), overRow(set(dotv, f32x4.add(get(dotv), f32x4.mul(v128.load(at(x)), v128.load(at(y)))))), set(into, sumLanes(get(dotv)))),
    exp: (x: Code) => f32x4.extract_lane(expF32x4(f32x4.splat(x), t, n, rr), 0),
    /**
     * Runs `body` for every key j that query i of batch row b (the local `b`) sees, in order of
     * j: [lo, hi] = [pos - window + 1 (window > 0), pos (causal)] within [0, Tk), pos = Tk - Tq + i,
     * then the key mask. `at(j)` gives the key's index in the body.
     */
    keys: (i: Local, body: (j: Local) => Code) => {
      const start = i32.add(i32.sub(get(pos!), get(p.window)), c(1));
      const ok = seq(body(j!));
      return seq(
        set(pos!, i32.add(i32.sub(get(p.Tk), get(p.Tq)), get(i))),
        set(hi!, i32.sub(get(p.Tk), c(1))),
        ifElse(i32.and(get(p.causal), i32.lt_s(get(pos!), get(hi!))), set(hi!, get(pos!))),
        set(lo!, c(0)),
        ifElse(i32.gt_s(get(p.window), c(0)), set(lo!, select(start, c(0), i32.gt_s(start, c(0))))),
        forRange(
          j!,
          get(lo!),
          i32.add(get(hi!), c(1)),
          c(1),
          ifElse(i32.eqz(get(p.mask)), ok, ifElse(i32.ne(i32.load(i32.add(get(p.mask), i32.shl(i32.add(i32.mul(get(b!), get(p.Tk)), get(j!)), c(2)))), c(0)), ok)),
        ),
      );
    },
  };
}

function forward(): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("attn", new Array(18).fill(T.i32));
  const [q, k, v, mask, out, ml, B, H, Hkv, Tq, Tk, Dh, scaleBits, causal, window, scratch, tid, threads] = fn.params as Local[] as Local[] & { length: 18 };
  const x = tools(fn, { Dh: Dh!, Tq: Tq!, Tk: Tk!, causal: causal!, window: window!, mask: mask!, scaleBits: scaleBits! });
  const { at, overRow, rowBytes, b } = x;
  const I = () => fn.local(T.i32);
  const [rows, r, h, i, qp, kb, vb, kp, vp, acc] = Array.from({ length: 10 }, I) as Local[];
  const [m, l, s, p, corr] = Array.from({ length: 5 }, () => fn.local(T.f32));
  const c = i32.const;
  const visible = (j: Local) =>
    seq(
      set(kp!, i32.add(get(kb!), i32.mul(get(j), get(rowBytes)))),
      set(vp!, i32.add(get(vb!), i32.mul(get(j), get(rowBytes)))),
      x.dot(qp!, kp!, s),
      set(s, f32.mul(get(x.scale), get(s))),
      // A new maximum rescales what was summed so far (the first key rescales zeros).
      ifElse(
        f32.gt(get(s), get(m)),
        seq(
          set(corr, x.exp(f32.sub(get(m), get(s)))),
          set(l, f32.mul(get(l), get(corr))),
          overRow(v128.store(at(acc!), f32x4.mul(v128.load(at(acc!)), f32x4.splat(get(corr))))),
          set(m, get(s)),
        ),
      ),
      set(p, x.exp(f32.sub(get(s), get(m)))),
      set(l, f32.add(get(l), get(p))),
      overRow(v128.store(at(acc!), f32x4.add(v128.load(at(acc!)), f32x4.mul(f32x4.splat(get(p)), v128.load(at(vp!)))))),
    );
  const rowBody = seq(
    set(i!, i32.rem_s(get(r!), get(Tq!))),
    set(h!, i32.rem_s(i32.div_s(get(r!), get(Tq!)), get(H!))),
    set(b, i32.div_s(get(r!), i32.mul(get(H!), get(Tq!)))),
    set(qp!, i32.add(get(q!), i32.mul(get(r!), get(rowBytes)))),
    // kv head of query head h: h / (H / Hkv)
    set(kb!, i32.mul(i32.add(i32.mul(get(b), get(Hkv!)), i32.div_s(get(h!), i32.div_s(get(H!), get(Hkv!)))), i32.mul(get(Tk!), get(rowBytes)))),
    set(vb!, i32.add(get(v!), get(kb!))),
    set(kb!, i32.add(get(k!), get(kb!))),
    set(m, f32.const(-Infinity)),
    set(l, f32.const(0)),
    overRow(v128.store(at(acc!), v128.zero())),
    x.keys(i!, visible),
    // out = acc / l, or 0 for a row that saw no key.
    set(p, select(f32.div(f32.const(1), get(l)), f32.const(0), f32.gt(get(l), f32.const(0)))),
    set(kp!, i32.add(get(out!), i32.mul(get(r!), get(rowBytes)))),
    overRow(v128.store(at(kp!), f32x4.mul(v128.load(at(acc!)), f32x4.splat(get(p))))),
    f32.store(i32.add(get(ml!), i32.shl(get(r!), c(3))), get(m)),
    f32.store(i32.add(get(ml!), i32.shl(get(r!), c(3))), get(l), 4),
  );
  const body = seq(
    x.prologue,
    set(acc!, i32.add(get(scratch!), i32.mul(get(tid!), get(rowBytes)))),
    set(rows!, i32.mul(i32.mul(get(B!), get(H!)), get(Tq!))),
    forRange(r!, get(tid!), get(rows!), get(threads!), rowBody),
  );
  return { fn, body };
}

function backward(): { fn: FunctionBuilder; body: Code } {
  const fn = new FunctionBuilder("attn_bwd", new Array(21).fill(T.i32));
  const [q, k, v, mask, out, dOut, lse, dq, dk, dv, B, H, Hkv, Tq, Tk, Dh, scaleBits, causal, window, tid, threads] = fn.params as Local[] as Local[] & { length: 21 };
  const x = tools(fn, { Dh: Dh!, Tq: Tq!, Tk: Tk!, causal: causal!, window: window!, mask: mask!, scaleBits: scaleBits! });
  const { at, overRow, rowBytes, b } = x;
  const I = () => fn.local(T.i32);
  const [units, u, kvh, group, hh, i, r, kvRow, qp, dop, op, dqp, kp, vp, dkp, dvp] = Array.from({ length: 16 }, I) as Local[];
  const [lseI, Di, s, p, dp, ds] = Array.from({ length: 6 }, () => fn.local(T.f32));
  const c = i32.const;
  const row = (base: Local, index: Local) => i32.add(get(base), i32.mul(get(index), get(rowBytes)));
  const visible = (j: Local) =>
    seq(
      set(kp!, i32.add(get(k!), i32.mul(i32.add(get(kvRow!), get(j)), get(rowBytes)))),
      set(vp!, i32.add(get(v!), i32.mul(i32.add(get(kvRow!), get(j)), get(rowBytes)))),
      set(dkp!, i32.add(get(dk!), i32.mul(i32.add(get(kvRow!), get(j)), get(rowBytes)))),
      set(dvp!, i32.add(get(dv!), i32.mul(i32.add(get(kvRow!), get(j)), get(rowBytes)))),
      x.dot(qp!, kp!, s),
      set(p, x.exp(f32.sub(f32.mul(get(x.scale), get(s)), get(lseI)))),
      x.dot(dop!, vp!, dp),
      // ds scaled once: dq += (scale ds) k, dk += (scale ds) q
      set(ds, f32.mul(get(x.scale), f32.mul(get(p), f32.sub(get(dp), get(Di))))),
      overRow(
        seq(
          v128.store(at(dvp!), f32x4.add(v128.load(at(dvp!)), f32x4.mul(f32x4.splat(get(p)), v128.load(at(dop!))))),
          v128.store(at(dqp!), f32x4.add(v128.load(at(dqp!)), f32x4.mul(f32x4.splat(get(ds)), v128.load(at(kp!))))),
          v128.store(at(dkp!), f32x4.add(v128.load(at(dkp!)), f32x4.mul(f32x4.splat(get(ds)), v128.load(at(qp!))))),
        ),
      ),
    );
  const queryBody = seq(
    // r: the row of query i of head kvh * group + hh in [B, H, Tq]
    set(r!, i32.add(i32.mul(i32.add(i32.mul(get(b), get(H!)), i32.add(i32.mul(get(kvh!), get(group!)), get(hh!))), get(Tq!)), get(i!))),
    set(qp!, row(q!, r!)),
    set(dop!, row(dOut!, r!)),
    set(op!, row(out!, r!)),
    set(dqp!, row(dq!, r!)),
    set(lseI, f32.load(i32.add(get(lse!), i32.shl(get(r!), c(2))))),
    x.dot(dop!, op!, Di),
    x.keys(i!, visible),
  );
  const body = seq(
    x.prologue,
    set(group!, i32.div_s(get(H!), get(Hkv!))),
    set(units!, i32.mul(get(B!), get(Hkv!))),
    forRange(
      u!,
      get(tid!),
      get(units!),
      get(threads!),
      seq(
        set(b, i32.div_s(get(u!), get(Hkv!))),
        set(kvh!, i32.rem_s(get(u!), get(Hkv!))),
        set(kvRow!, i32.mul(get(u!), get(Tk!))), // first row of this kv head in [B, Hkv, Tk]
        forRange(hh!, c(0), get(group!), c(1), forRange(i!, c(0), get(Tq!), c(1), queryBody)),
      ),
    ),
  );
  return { fn, body };
}

/** The attention module: `attn` (forward) and `attn_bwd`. */
export function attentionModule(shared: boolean): Uint8Array {
  return buildModule(shared, [forward(), backward()]);
}

/** The key mask (any dtype, nonzero = keep) as i32 0/1 in the heap, for the kernels; release it after. */
function maskOf(wasm: WasmBackend, keyMask: HostArray, g: AttentionGeometry): Int32Array {
  const mask = wasm.allocate("i32", g.B * g.Tk) as Int32Array;
  for (let i = 0; i < mask.length; i++) mask[i] = keyMask[i] !== 0 ? 1 : 0;
  return mask;
}

/**
 * The f32 forward on the SIMD kernel (head size a multiple of 4), else the reference. The key
 * mask (any dtype, nonzero = keep) is first written as i32 0/1 into the heap; the kernel
 * leaves (m, l) per row and lse = m + log l is taken here (0 for a row that sees no key).
 */
function attentionKernel(wasm: WasmBackend, ins: AttentionInputs<HostArray>, outs: { out: HostArray; lse: HostArray }, g: AttentionGeometry): void {
  const f32 = [ins.q, ins.k, ins.v, outs.out, outs.lse].every((x) => x instanceof Float32Array);
  if (!f32 || g.Dh % 4 !== 0) {
    attentionRef(ins, outs, g);
    return;
  }
  for (const x of [ins.q, ins.k, ins.v]) if (!wasm.owns(x)) throw new TypeError("attention: storage does not belong to this wasm backend");
  const rows = g.B * g.H * g.Tq;
  const temps: HostArray[] = [];
  const temp = (dtype: DType, n: number) => {
    const a = wasm.allocate(dtype, n);
    temps.push(a);
    return a;
  };
  try {
    const mask = ins.keyMask ? maskOf(wasm, ins.keyMask, g) : null;
    if (mask) temps.push(mask);
    const maskPtr = mask?.byteOffset ?? 0;
    const ml = temp("f32", 2 * rows);
    const scratch = temp("f32", g.Dh * wasm.threads);
    const threads = wasm.macThreads(rows * g.Tk * g.Dh);
    wasm.call(
      "attn",
      [ins.q.byteOffset, ins.k.byteOffset, ins.v.byteOffset, maskPtr, outs.out.byteOffset, ml.byteOffset, g.B, g.H, g.Hkv, g.Tq, g.Tk, g.Dh, f32Bits(g.scale), g.causal ? 1 : 0, g.window, scratch.byteOffset],
      threads,
    );
    for (let r = 0; r < rows; r++) {
      const l = ml[2 * r + 1]!;
      outs.lse[r] = l > 0 ? ml[2 * r]! + Math.log(l) : 0;
    }
  } finally {
    for (const a of temps) wasm.release(a);
  }
}

/** The f32 backward on the SIMD kernel (head size a multiple of 4), else the reference. */
function attentionBackwardKernel(wasm: WasmBackend, ins: AttentionBackwardInputs<HostArray>, grads: AttentionGrads<HostArray>, g: AttentionGeometry): void {
  const arrays = [ins.q, ins.k, ins.v, ins.out, ins.dOut, ins.lse, grads.dq, grads.dk, grads.dv];
  if (!arrays.every((x) => x instanceof Float32Array) || g.Dh % 4 !== 0) {
    attentionBackwardRef(ins, grads, g);
    return;
  }
  for (const x of arrays) if (!wasm.owns(x)) throw new TypeError("attentionBackward: storage does not belong to this wasm backend");
  const mask = ins.keyMask ? maskOf(wasm, ins.keyMask, g) : null;
  try {
    const ptrs = arrays.map((x) => x.byteOffset);
    const threads = wasm.macThreads(g.B * g.H * g.Tq * g.Tk * g.Dh);
    wasm.call(
      "attn_bwd",
      [...ptrs.slice(0, 3), mask?.byteOffset ?? 0, ...ptrs.slice(3), g.B, g.H, g.Hkv, g.Tq, g.Tk, g.Dh, f32Bits(g.scale), g.causal ? 1 : 0, g.window],
      threads,
    );
  } finally {
    if (mask) wasm.release(mask);
  }
}

registerKernel(attentionOp, "wasm", attentionOnHost(attentionKernel));
registerKernel(attentionBackwardOp, "wasm", attentionBackwardOnHost(attentionBackwardKernel));
