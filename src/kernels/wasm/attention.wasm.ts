import type { Code, Local } from "./module.ts";
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
 */
export function attentionModule(shared: boolean): Uint8Array {
  const fn = new FunctionBuilder("attn", new Array(18).fill(T.i32));
  const [q, k, v, mask, out, ml, B, H, Hkv, Tq, Tk, Dh, scaleBits, causal, window, scratch, tid, threads] = fn.params as Local[] as Local[] & { length: 18 };
  const I = () => fn.local(T.i32);
  const [rows, r, b, h, i, pos, lo, hi, j, d, qp, kb, vb, kp, vp, acc, rowBytes] = Array.from({ length: 17 }, I) as Local[];
  const [m, l, s, p, corr, scale] = Array.from({ length: 6 }, () => fn.local(T.f32));
  const [dotv, t, n, rr] = Array.from({ length: 4 }, () => fn.local(T.v128));
  const c = i32.const;
  const at = (base: Local) => i32.add(get(base), get(d!));
  const expScalar = (x: Code) => f32x4.extract_lane(expF32x4(f32x4.splat(x), t, n, rr), 0);
  /** for d in [0, rowBytes) step 16: body (d is a byte offset into a row). */
  const overRow = (body: Code) => forRange(d!, c(0), get(rowBytes!), c(16), body);

  const visible = seq(
    // s = scale * q . k_j
    set(dotv, v128.zero()),
    overRow(set(dotv, f32x4.add(get(dotv), f32x4.mul(v128.load(at(qp!)), v128.load(at(kp!)))))),
    set(s, f32.mul(get(scale), f32.add(f32.add(f32x4.extract_lane(get(dotv), 0), f32x4.extract_lane(get(dotv), 1)), f32.add(f32x4.extract_lane(get(dotv), 2), f32x4.extract_lane(get(dotv), 3))))),
    // A new maximum rescales what was summed so far (the first key rescales zeros).
    ifElse(
      f32.gt(get(s), get(m)),
      seq(
        set(corr, expScalar(f32.sub(get(m), get(s)))),
        set(l, f32.mul(get(l), get(corr))),
        overRow(v128.store(at(acc!), f32x4.mul(v128.load(at(acc!)), f32x4.splat(get(corr))))),
        set(m, get(s)),
      ),
    ),
    set(p, expScalar(f32.sub(get(s), get(m)))),
    set(l, f32.add(get(l), get(p))),
    overRow(v128.store(at(acc!), f32x4.add(v128.load(at(acc!)), f32x4.mul(f32x4.splat(get(p)), v128.load(at(vp!)))))),
  );
  const keyLoop = forRange(
    j!,
    get(lo!),
    i32.add(get(hi!), c(1)),
    c(1),
    seq(
      set(kp!, i32.add(get(kb!), i32.mul(get(j!), get(rowBytes!)))),
      set(vp!, i32.add(get(vb!), i32.mul(get(j!), get(rowBytes!)))),
      ifElse(
        i32.eqz(get(mask!)),
        visible,
        ifElse(i32.ne(i32.load(i32.add(get(mask!), i32.shl(i32.add(i32.mul(get(b!), get(Tk!)), get(j!)), c(2)))), c(0)), visible),
      ),
    ),
  );
  const rowBody = seq(
    set(i!, i32.rem_s(get(r!), get(Tq!))),
    set(h!, i32.rem_s(i32.div_s(get(r!), get(Tq!)), get(H!))),
    set(b!, i32.div_s(get(r!), i32.mul(get(H!), get(Tq!)))),
    set(qp!, i32.add(get(q!), i32.mul(get(r!), get(rowBytes!)))),
    // kv head of query head h: h / (H / Hkv)
    set(kb!, i32.mul(i32.add(i32.mul(get(b!), get(Hkv!)), i32.div_s(get(h!), i32.div_s(get(H!), get(Hkv!)))), i32.mul(get(Tk!), get(rowBytes!)))),
    set(vb!, i32.add(get(v!), get(kb!))),
    set(kb!, i32.add(get(k!), get(kb!))),
    // Visible keys: [lo, hi] = [pos - window + 1 (window > 0), pos (causal)] within [0, Tk).
    set(pos!, i32.add(i32.sub(get(Tk!), get(Tq!)), get(i!))),
    set(hi!, i32.sub(get(Tk!), c(1))),
    ifElse(i32.and(get(causal!), i32.lt_s(get(pos!), get(hi!))), set(hi!, get(pos!))),
    set(lo!, c(0)),
    ifElse(i32.gt_s(get(window!), c(0)), set(lo!, select(i32.add(i32.sub(get(pos!), get(window!)), c(1)), c(0), i32.gt_s(i32.add(i32.sub(get(pos!), get(window!)), c(1)), c(0))))),
    set(m, f32.const(-Infinity)),
    set(l, f32.const(0)),
    overRow(v128.store(at(acc!), v128.zero())),
    keyLoop,
    // out = acc / l, or 0 for a row that saw no key.
    set(p, select(f32.div(f32.const(1), get(l)), f32.const(0), f32.gt(get(l), f32.const(0)))),
    set(kp!, i32.add(get(out!), i32.mul(get(r!), get(rowBytes!)))),
    overRow(v128.store(at(kp!), f32x4.mul(v128.load(at(acc!)), f32x4.splat(get(p))))),
    f32.store(i32.add(get(ml!), i32.shl(get(r!), c(3))), get(m)),
    f32.store(i32.add(get(ml!), i32.shl(get(r!), c(3))), get(l), 4),
  );
  const body = seq(
    set(scale, f32.reinterpret_i32(get(scaleBits!))),
    set(rowBytes!, i32.shl(get(Dh!), c(2))),
    set(acc!, i32.add(get(scratch!), i32.mul(get(tid!), get(rowBytes!)))),
    set(rows!, i32.mul(i32.mul(get(B!), get(H!)), get(Tq!))),
    forRange(r!, get(tid!), get(rows!), get(threads!), rowBody),
  );
  return buildModule(shared, [{ fn, body }]);
}
