import { setFlagsFromString } from "node:v8";
import { afterAll, describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { DEVICE_KINDS, getDevice } from "../src/kernels/devices.ts";
import { attentionBackwardRef, attentionRef } from "../src/kernels/attention.ts";
import { crossEntropyBackwardRef, crossEntropyRef } from "../src/kernels/cross_entropy.ts";
import { rmsNormRef } from "../src/kernels/rmsnorm.ts";
import { adamwRef } from "../src/kernels/adamw.ts";
import { reduceRowsRef } from "../src/kernels/reduce.ts";
import { ropeRef } from "../src/kernels/rope.ts";
import { gatherWeightRef, matmulWeightRef } from "../src/kernels/weights.ts";
import { gatherRef, scatterAddRef } from "../src/kernels/embedding.ts";
import { toInt32 } from "../src/kernels/elementwise.ts";
import { gatherOp, scatterAddOp } from "../src/tensor/ops/embedding.ts";
import { f16ToF32, f32ToBf16, f32ToF16 } from "../src/tensor/half.ts";
import { quantizeNf4 } from "../src/tensor/nf4.ts";
import type { HostWeight } from "../src/tensor/weight.ts";
import { reduceRowsOp } from "../src/tensor/ops/reduce.ts";
import { adamwOp } from "../src/tensor/optim.ts";
import { softmaxRef } from "../src/kernels/softmax.ts";
import { matmulRef } from "../src/kernels/matmul.ts";
import { createWasmBackend, type WasmBackend } from "../src/kernels/wasm/backend.ts";
import { WASM_BINARY, WASM_UNARY } from "../src/kernels/wasm/elementwise.wasm.ts";
import { WasmHeap } from "../src/kernels/wasm/heap.ts";
import { KC, MC, MR, NC, NR } from "../src/kernels/wasm/matmul.wasm.ts";
import { FunctionBuilder, T, buildModule, drop, get, hasRelaxedSimd, i32, ifElse, sleb, uleb, type Local } from "../src/kernels/wasm/module.ts";
import { WasmPool } from "../src/kernels/wasm/pool.ts";
import { registerKernel } from "../src/kernels/registry.ts";
import type { BinaryOp, Storage, UnaryOp, View } from "../src/tensor/backend.ts";
import { deviceOp } from "../src/tensor/backend.ts";
import type { MatmulGeometry } from "../src/tensor/ops/matmul.ts";
import { matmulOp } from "../src/tensor/ops/matmul.ts";
import type { AttentionGeometry } from "../src/tensor/ops/attention.ts";
import { attentionBackwardOp, attentionOp } from "../src/tensor/ops/attention.ts";
import { crossEntropyBackwardOp, crossEntropyOp } from "../src/tensor/ops/cross_entropy.ts";
import { rmsNormOp } from "../src/tensor/ops/rmsnorm.ts";
import { softmaxOp } from "../src/tensor/ops/softmax.ts";
import { ropeOp } from "../src/tensor/ops/rope.ts";
import { gatherWeightOp, matmulWeightOp } from "../src/tensor/ops/weights.ts";
import { DeviceLimitError } from "../src/tensor/errors.ts";
import { TEST_WASM_THREADS } from "./helpers/devices.ts";
import { expectClose } from "./helpers/close.ts";
import { randomData } from "./helpers/gradcheck.ts";

/**
 * The wasm device's own parts: the module writer's encodings (against the specification's
 * examples), the heap, and the matmul kernels at sizes the conformance suite (ops_devices, which
 * runs every op on wasm against cpu) does not reach: across the MC x KC x NC blocks, with edge
 * tiles, every layout and batch broadcast, on several thread counts. Reference: the float64
 * triple loop (matmulRef) on the same f32 inputs. Tolerance 1e-4 (1 + |ref|), as the suite's
 * matmul: f32 sums over K <= 600 terms of size ~1 err by ~sqrt(K) * 6e-8 ~ 1.5e-6 typically.
 */

describe("module writer", () => {
  test("LEB128 encodings are the specification's", () => {
    // The examples of the DWARF / WebAssembly LEB128 definitions.
    expect(uleb(0)).toEqual([0x00]);
    expect(uleb(127)).toEqual([0x7f]);
    expect(uleb(128)).toEqual([0x80, 0x01]);
    expect(uleb(624485)).toEqual([0xe5, 0x8e, 0x26]);
    expect(sleb(-1)).toEqual([0x7f]);
    expect(sleb(63)).toEqual([0x3f]);
    expect(sleb(64)).toEqual([0xc0, 0x00]);
    expect(sleb(-123456)).toEqual([0xc0, 0xbb, 0x78]);
    expect(() => uleb(-1)).toThrow(RangeError);
  });

  test("a built module validates, links to a memory and computes", () => {
    const fn = new FunctionBuilder("add3", [T.i32, T.i32], [T.i32]);
    const [a, b] = fn.params as [Local, Local];
    const bytes = buildModule(false, [{ fn, body: i32.add(i32.add(get(a), get(b)), i32.const(3)) }]);
    expect(WebAssembly.validate(bytes)).toBe(true);
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 1 });
    const inst = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } });
    expect((inst.exports["add3"] as (x: number, y: number) => number)(40, -1)).toBe(42);
  });
});

describe("heap", () => {
  test("reuses freed blocks, merges neighbours, zero-fills and stops at its limit", () => {
    const heap = new WasmHeap(false, 1 << 20);
    const a = heap.alloc(100);
    const b = heap.alloc(100);
    const c = heap.alloc(100);
    expect(b - a).toBe(128); // 64-byte granules
    new Uint8Array(heap.memory.buffer, b, 100).fill(7);
    heap.release(a);
    heap.release(b);
    // a and b merged: a 200-byte request fits where they were, and reads zeros.
    const d = heap.alloc(200);
    expect(d).toBe(a);
    expect(new Uint8Array(heap.memory.buffer, d, 200).every((x) => x === 0)).toBe(true);
    heap.release(c);
    heap.release(d);
    expect(heap.alloc(64)).toBe(a); // everything went back to the bump region
    expect(() => heap.alloc(2 << 20)).toThrow(DeviceLimitError);
    expect(() => heap.release(12345)).toThrow("not an allocated block");
  });
});

describe("worker pool: traps and dead workers fail the dispatch, never hang it", () => {
  // poke(base, bad, tid, threads): thread tid stores tid + 1 at base + 4 tid, except thread `bad`,
  // which loads from past the memory's end (a trap: memory access out of bounds).
  const fn = new FunctionBuilder("poke", [T.i32, T.i32, T.i32, T.i32]);
  const [base, bad, tid] = fn.params as [Local, Local, Local, Local];
  const body = ifElse(
    i32.eq(get(tid), get(bad)),
    drop(i32.load(i32.const(0x7ffffff0))),
    i32.store(i32.add(get(base), i32.shl(get(tid), i32.const(2))), i32.add(get(tid), i32.const(1))),
  );
  const bytes = buildModule(true, [{ fn, body }]);
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 16, shared: true });
  const cells = new Int32Array(memory.buffer, 64, 3);
  const pool = WasmPool.create([new WebAssembly.Module(bytes)], memory, [{ module: 0, name: "poke" }], 3);
  afterAll(async () => (await pool).destroy());
  const poke = async (badTid: number) => {
    cells.fill(0);
    (await pool).run(0, [64, badTid]);
    return Array.from(cells);
  };

  test("a trap on the calling thread or on a worker throws naming the kernel and the thread; the pool stays usable", async () => {
    expect(await poke(-1)).toEqual([1, 2, 3]);
    await expect(poke(0)).rejects.toThrow(/kernel poke trapped on the calling thread \(RuntimeError: memory access out of bounds\).*stays usable/);
    await expect(poke(2)).rejects.toThrow(/kernel poke trapped on worker thread 2/);
    expect(await poke(-1)).toEqual([1, 2, 3]);
  });

  test("a worker terminated by the host fails the next dispatch that needs it; later ones run on the threads left", async () => {
    const p = await pool;
    p.terminateWorker(2);
    await expect(poke(-1)).rejects.toThrow(/kernel poke failed: worker thread 2 .*ended before finishing its share of the dispatch, so that share of the output is missing; the device continues on 2 threads/);
    expect(p.liveThreads).toBe(2);
    expect(await poke(-1)).toEqual([1, 2, 0]);
  });
});

describe("matmul kernels against the float64 reference", () => {
  const backends: Promise<WasmBackend>[] = [1, TEST_WASM_THREADS, 3].map((threads) => createWasmBackend({ threads }));
  afterAll(async () => {
    for (const b of backends) (await b).destroy();
  });

  /** Runs one product on backend `w` and checks it against matmulRef; returns the output. */
  async function check(w: WasmBackend, g: MatmulGeometry, seed: number): Promise<Float32Array> {
    const nA = (g.batch - 1) * g.batchStrideA + g.M * g.K;
    const nB = (g.batch - 1) * g.batchStrideB + g.K * g.N;
    const a = Float32Array.from(randomData(nA, seed));
    const b = Float32Array.from(randomData(nB, seed + 1));
    const ref = new Float64Array(g.batch * g.M * g.N);
    matmulRef(a, b, ref, g);
    const [sa, sb] = [w.upload(a), w.upload(b)];
    const out = w.run(matmulOp, sa, sb, g);
    const got = (await w.read(out)) as Float32Array;
    for (const s of [sa, sb, out]) w.free(s);
    expectClose(got, ref, 1e-4, JSON.stringify(g));
    return got;
  }

  const geometry = (batch: number, M: number, N: number, K: number, transA: boolean, transB: boolean, broadcastB: boolean): MatmulGeometry => ({
    batch,
    M,
    N,
    K,
    transA,
    transB,
    batchStrideA: M * K,
    batchStrideB: broadcastB ? 0 : K * N,
  });

  // Across every block boundary: M > MC, N > NC, K > KC, none a multiple of the micro-tile.
  const big: [number, number, number] = [MC + MR + 1, NC + NR + 3, KC + 45];
  for (const transA of [false, true]) {
    for (const transB of [false, true]) {
      test(`gemm ${big.join(" x ")}, transA ${transA}, transB ${transB}, the same on 1, 2 and 3 threads`, async () => {
        const g = geometry(1, ...big, transA, transB, false);
        const outs = [];
        for (const w of backends) outs.push(await check(await w, g, 11));
        // Each output element is summed by one thread in one order: bitwise equal.
        expect(outs[1]).toEqual(outs[0]);
        expect(outs[2]).toEqual(outs[0]);
      });
    }
  }

  test("batched gemm with a broadcast B, small and edge tiles", async () => {
    const w = await backends[1]!;
    for (const [M, N, K] of [
      [2, 2, 1],
      [MR, NR, 4],
      [MR + 1, NR - 1, 5],
      [23, 41, 67],
    ] as const) {
      await check(w, geometry(3, M, N, K, false, true, true), M + N + K);
      await check(w, geometry(2, M, N, K, true, false, false), M * N * K);
    }
  });

  test("matrix-vector forms: one row or one column, every layout, batched", async () => {
    const w = await backends[1]!;
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const [M, N, K] of [
          [1, 1037, 301], // decoding: one token against a weight
          [517, 1, 131], // a column: the transposed product of backward
          [1, 1, 19],
          [1, 3, 2],
        ] as const) {
          await check(w, geometry(2, M, N, K, transA, transB, false), M + 2 * N + 3 * K);
        }
      }
    }
  });

  test("relaxed SIMD's multiply-add (Node 20 has it behind a V8 flag, set here): gemm and gemv equal the reference", async () => {
    if (!hasRelaxedSimd()) setFlagsFromString("--experimental-wasm-relaxed-simd");
    expect(hasRelaxedSimd()).toBe(true);
    const w = await createWasmBackend({ threads: TEST_WASM_THREADS, relaxedSimd: true });
    try {
      expect(w.relaxedSimd).toBe(true);
      await check(w, geometry(1, ...big, false, true, false), 31);
      await check(w, geometry(2, 1, 1037, 301, false, true, false), 32);
      await check(w, geometry(2, 1, 1037, 301, false, false, false), 33);
    } finally {
      w.destroy();
    }
  });

  test("K = 0 gives zeros; f64 runs the reference", async () => {
    const w = await backends[1]!;
    const z = w.run(matmulOp, w.zeros("f32", 0), w.zeros("f32", 0), geometry(1, 2, 3, 0, false, false, false));
    expect(Array.from(await w.read(z))).toEqual([0, 0, 0, 0, 0, 0]);
    const a = w.upload(Float64Array.from([1, 2, 3, 4]));
    const p = w.run(matmulOp, a, a, geometry(1, 2, 2, 2, false, false, false));
    expect(Array.from(await w.read(p))).toEqual([7, 10, 15, 22]);
  });

  test("a storage of another device is refused", async () => {
    const w = await backends[1]!;
    const foreign = qa.cpuDevice().upload(new Float32Array(4));
    expect(() => w.run(matmulOp, foreign, foreign, geometry(1, 2, 2, 2, false, false, false))).toThrow("does not belong to this wasm backend");
  });
});

describe("attention kernel against the float64 reference", () => {
  const backends: Promise<WasmBackend>[] = [1, 3].map((threads) => createWasmBackend({ threads }));
  afterAll(async () => {
    for (const b of backends) (await b).destroy();
  });

  // Long enough rows to go parallel. The mask pads keys 0..32 of batch row 1, and query i sits at
  // position Tk - Tq + i = 30 + i, so that row's queries 0..2 see no key at all: out 0 and lse 0
  // by the reference's convention.
  const g: AttentionGeometry = { B: 2, H: 4, Hkv: 2, Tq: 40, Tk: 70, Dh: 32, scale: 1 / Math.sqrt(32), causal: true, window: 0 };
  const mask = Int32Array.from({ length: g.B * g.Tk }, (_, i) => (i >= g.Tk && i < g.Tk + 33 ? 0 : 1));
  for (const window of [0, 5]) {
    test(`window ${window}: out and lse equal the reference on 1 and 3 threads, bitwise alike`, async () => {
      const geo = { ...g, window };
      const [nq, nkv] = [g.B * g.H * g.Tq * g.Dh, g.B * g.Hkv * g.Tk * g.Dh];
      const host = { q: Float32Array.from(randomData(nq, 1)), k: Float32Array.from(randomData(nkv, 2)), v: Float32Array.from(randomData(nkv, 3)) };
      const ref = { out: new Float64Array(nq), lse: new Float64Array(g.B * g.H * g.Tq) };
      attentionRef({ ...host, keyMask: mask }, ref, geo);
      const outs = [];
      for (const wp of backends) {
        const w = await wp;
        const ins = { q: w.upload(host.q), k: w.upload(host.k), v: w.upload(host.v), keyMask: w.upload(mask) };
        const r = w.run(attentionOp, ins, geo);
        outs.push({ out: await w.read(r.out), lse: await w.read(r.lse) });
        for (const s of [...Object.values(ins), r.out, r.lse]) w.free(s);
      }
      // f32 exp (Cephes, ~1 ulp) and f32 sums over <= 70 keys: within 1e-5 of the float64 answer.
      expectClose(outs[0]!.out, ref.out, 1e-5, "out");
      expectClose(outs[0]!.lse, ref.lse, 1e-5, "lse");
      expect(ref.lse.filter((x) => x === 0).length).toBe(g.H * 3); // the empty rows exist
      expect(outs[1]).toEqual(outs[0]);
    });

    test(`window ${window}: backward dq, dk, dv equal the reference on 1 and 3 threads, bitwise alike`, async () => {
      const geo = { ...g, window };
      const [nq, nkv] = [g.B * g.H * g.Tq * g.Dh, g.B * g.Hkv * g.Tk * g.Dh];
      const host = { q: Float32Array.from(randomData(nq, 4)), k: Float32Array.from(randomData(nkv, 5)), v: Float32Array.from(randomData(nkv, 6)), dOut: Float32Array.from(randomData(nq, 7)) };
      // The reference forward gives out and lse, rounded to f32 as a device would store them.
      const fwd = { out: new Float64Array(nq), lse: new Float64Array(g.B * g.H * g.Tq) };
      attentionRef({ ...host, keyMask: mask }, fwd, geo);
      const [out, lse] = [Float32Array.from(fwd.out), Float32Array.from(fwd.lse)];
      const ref = { dq: new Float64Array(nq), dk: new Float64Array(nkv), dv: new Float64Array(nkv) };
      attentionBackwardRef({ ...host, keyMask: mask, out, lse }, ref, geo);
      const grads = [];
      for (const wp of backends) {
        const w = await wp;
        const ins = { q: w.upload(host.q), k: w.upload(host.k), v: w.upload(host.v), keyMask: w.upload(mask), out: w.upload(out), dOut: w.upload(host.dOut), lse: w.upload(lse) };
        const r = w.run(attentionBackwardOp, ins, geo);
        grads.push({ dq: await w.read(r.dq), dk: await w.read(r.dk), dv: await w.read(r.dv) });
        for (const s of [...Object.values(ins), r.dq, r.dk, r.dv]) w.free(s);
      }
      // f32 sums over <= 70 keys (dq) or 2 heads x 40 queries (dk, dv): 1e-5 of the float64 answer.
      for (const name of ["dq", "dk", "dv"] as const) expectClose(grads[0]![name], ref[name], 1e-5, name);
      expect(grads[1]).toEqual(grads[0]);
    });
  }
});

describe("elementwise kernels against the cpu device", () => {
  const backend = createWasmBackend({ threads: 3 });
  afterAll(async () => (await backend).destroy());
  const cpu = qa.cpuDevice();
  // [5, 3, 4099]: above the parallel threshold, inner rows across the 4096-element chunks and
  // not a multiple of 4 (vector body and scalar tail).
  const shape = [5, 3, 4099];
  const n = shape.reduce((p, x) => p * x, 1);
  const view = (storage: View["storage"], strides: number[], offset = 0): View => ({ storage, shape, strides, offset });
  const contiguous = [3 * 4099, 4099, 1];
  /**
   * Exact ops are single IEEE f32 operations on both devices (the reference rounds a double
   * result once, which for +, -, *, /, sqrt is the correctly rounded f32); exp-based ops and
   * rsqrt (f32 sqrt, then f32 divide) differ by a few ulp: 1e-6 relative.
   */
  const exact = new Set(["copy", "neg", "abs", "sqrt", "square", "reciprocal", "relu", "add", "sub", "mul", "div", "maximum", "minimum"]);
  const domain = (op: string, x: number) => (["sqrt", "rsqrt", "reciprocal"].includes(op) ? Math.abs(x) + 0.1 : 4 * x);

  for (const op of Object.keys(WASM_UNARY) as UnaryOp[]) {
    test(`unary ${op}: contiguous and transposed views`, async () => {
      const w = await backend;
      const data = Float32Array.from(randomData(n, 5, (x) => domain(op, x)));
      const [sw, sc] = [w.upload(data), cpu.upload(data)];
      // contiguous, then the last two axes read transposed in place ([5, 4099, 3] viewed as [5, 3, 4099])
      for (const strides of [contiguous, [3 * 4099, 1, 3]]) {
        const got = await w.read(w.unary(op, view(sw, strides)));
        const want = await cpu.read(cpu.unary(op, view(sc, strides)));
        if (exact.has(op)) expect(got).toEqual(want);
        else expectClose(got, want, 1e-6, op);
      }
    });
  }
  for (const op of Object.keys(WASM_BINARY) as BinaryOp[]) {
    test(`binary ${op}: same shape, a broadcast row, a broadcast scalar`, async () => {
      const w = await backend;
      const a = Float32Array.from(randomData(n, 6, (x) => domain(op, x)));
      const b = Float32Array.from(randomData(n, 7, (x) => domain(op, x) + (op === "div" ? 5 : 0)));
      const [aw, bw, ac, bc] = [w.upload(a), w.upload(b), cpu.upload(a), cpu.upload(b)];
      // b whole, one broadcast row, one broadcast scalar, a column broadcast along the rows (the
      // broadcast ones start at element 11 of b)
      for (const bStrides of [contiguous, [0, 0, 1], [0, 0, 0], [0, 1, 0]]) {
        const at = bStrides === contiguous ? 0 : 11;
        const got = await w.read(w.binary(op, view(aw, contiguous), view(bw, bStrides, at)));
        const want = await cpu.read(cpu.binary(op, view(ac, contiguous), view(bc, bStrides, at)));
        expect(got).toEqual(want);
      }
    });
  }
  test("where: a broadcast condition row with NaN and -0, a broadcast scalar b, a transposed a", async () => {
    const w = await backend;
    const condRow = Float32Array.from({ length: 4099 }, (_, i) => [0, 1, -0, NaN, -2][i % 5]!);
    const a = Float32Array.from(randomData(n, 9));
    const b = Float32Array.from([7.5]);
    const run = async (be: qa.Backend) => {
      const [sc, sa, sb] = [be.upload(condRow), be.upload(a), be.upload(b)];
      return be.read(be.where(view(sc, [0, 0, 1]), view(sa, [3 * 4099, 1, 3]), view(sb, [0, 0, 0])));
    };
    // a selection copies values: exactly the cpu device's
    expect(await run(w)).toEqual(await run(cpu));
  });
  test("assign into a strided view of another storage", async () => {
    const w = await backend;
    const src = Float32Array.from(randomData(n, 8));
    const [dw, sw, dc, sc] = [w.zeros("f32", n + 7), w.upload(src), cpu.zeros("f32", n + 7), cpu.upload(src)];
    w.assign(view(dw, [1, 5 * 4099, 5], 7), view(sw, contiguous));
    cpu.assign(view(dc, [1, 5 * 4099, 5], 7), view(sc, contiguous));
    expect(await w.read(dw)).toEqual(await cpu.read(dc));
  });
});

describe("row kernels against the float64 references", () => {
  const backend = createWasmBackend({ threads: 3 });
  afterAll(async () => (await backend).destroy());
  // Rows long enough to go parallel and not multiples of 16 (vector blocks, then a scalar tail).
  // f32 sums in 16 partial sums over <= 30011 terms and Cephes' expf: within 1e-5 (1 + |ref|).

  test("softmax and log-softmax [5, 4099], logits up to +-30", async () => {
    const w = await backend;
    const [rows, cols] = [5, 4099];
    const x = Float32Array.from(randomData(rows * cols, 21, (v) => 30 * v));
    const sx = w.upload(x);
    for (const log of [false, true]) {
      const ref = new Float64Array(rows * cols);
      softmaxRef(x, ref, rows, cols, log);
      expectClose(await w.read(w.run(softmaxOp, sx, rows, cols, log)), ref, 1e-5, log ? "log-softmax" : "softmax");
    }
  });

  test("cross-entropy forward and backward [6, 30011] with ignored rows; a bad target throws the reference's error", async () => {
    const w = await backend;
    const [rows, cols] = [6, 30011];
    const g = { rows, cols, ignoreIndex: -100 };
    const logits = Float32Array.from(randomData(rows * cols, 22, (v) => 8 * v));
    const targets = Int32Array.from([5, -100, 30010, 0, -100, 17]);
    const gradLoss = Float32Array.from([0.5, 1, -2, 1.5, 3, 0.25]);
    const [refLoss, refGrad] = [new Float64Array(rows), new Float64Array(rows * cols)];
    crossEntropyRef(logits, targets, refLoss, g);
    crossEntropyBackwardRef(logits, targets, gradLoss, refGrad, g);
    const [sl, st, sg] = [w.upload(logits), w.upload(targets), w.upload(gradLoss)];
    expectClose(await w.read(w.run(crossEntropyOp, sl, st, g)), refLoss, 1e-5, "loss");
    expectClose(await w.read(w.run(crossEntropyBackwardOp, sl, st, sg, g)), refGrad, 1e-5, "dlogits");
    const bad = w.upload(Int32Array.from([5, 30011, 0, 0, 0, 0]));
    expect(() => w.run(crossEntropyOp, sl, bad, g)).toThrow("crossEntropy: target 30011 at row 1 is outside [0, 30011)");
  });

  test("rmsNorm [7, 1027]", async () => {
    const w = await backend;
    const g = { rows: 7, D: 1027, eps: 1e-6 };
    const x = Float32Array.from(randomData(g.rows * g.D, 23, (v) => 3 * v));
    const weight = Float32Array.from(randomData(g.D, 24));
    const ref = new Float64Array(g.rows * g.D);
    rmsNormRef(x, weight, ref, g);
    expectClose(await w.read(w.run(rmsNormOp, w.upload(x), w.upload(weight), g)), ref, 1e-5, "rmsNorm");
  });
});

describe("kernels by device name", () => {
  test("a fused op with only a cpu kernel runs on wasm, on wasm's memory; a wasm kernel wins where there is one", async () => {
    const w = await createWasmBackend({ threads: 1 });
    try {
      // The kernel says which registration ran; its values are -x (closed form).
      const negate = (tag: string) => (device: { allocate: WasmBackend["allocate"]; wrap: WasmBackend["wrap"]; peek: WasmBackend["peek"] }, x: Storage) => {
        const data = device.peek(x);
        const out = device.allocate(x.dtype, x.numel);
        for (let i = 0; i < out.length; i++) out[i] = -data[i]!;
        return { values: device.wrap(out), ran: tag };
      };
      const cpuOnly = deviceOp<[x: Storage], { values: Storage; ran: string }>("negateOnCpu");
      registerKernel(cpuOnly, "cpu", negate("cpu"));
      const both = deviceOp<[x: Storage], { values: Storage; ran: string }>("negateOnBoth");
      registerKernel(both, "cpu", negate("cpu"));
      registerKernel(both, "wasm", negate("wasm"));
      const x = w.upload(Float32Array.from([1.5, -2]));
      const r = w.run(cpuOnly, x);
      expect(r.ran).toBe("cpu");
      expect(Array.from(await w.read(r.values))).toEqual([-1.5, 2]);
      expect(w.owns(w.peek(r.values))).toBe(true);
      expect(w.run(both, x).ran).toBe("wasm");
    } finally {
      w.destroy();
    }
  });
});

describe("packed-weight, RoPE, AdamW and reduction kernels against the float64 references", () => {
  const backends: Promise<WasmBackend>[] = [1, 3].map((threads) => createWasmBackend({ threads }));
  afterAll(async () => {
    for (const b of backends) (await b).destroy();
  });

  /** A random [rows, cols] packed weight of `dtype`, values ~ N(0, 0.25). */
  const packed = (dtype: HostWeight["dtype"], rows: number, cols: number, seed: number): HostWeight => {
    const a = Float32Array.from(randomData(rows * cols, seed, (x) => 0.5 * x));
    if (dtype === "nf4") return { dtype, ...quantizeNf4(a) };
    return { dtype, bits: dtype === "bf16" ? f32ToBf16(a) : f32ToF16(a) };
  };

  // W [263, 4096] is 1.08M weights, above the kernels' 2^20-element decoding slice: two slices
  // (256 rows, then 7). The products are f32 sums over K = 4096 (nt) or N = 263 (nn) terms of
  // size ~0.5: errors ~ sqrt(K) 6e-8 ~ 4e-6 typically; 1e-4 (1 + |ref|) as the suite's matmul.
  // M = 1 takes the matrix-vector kernel, which decodes in registers.
  for (const dtype of ["bf16", "f16", "nf4"] as const) {
    test(`${dtype} matmulWeight nt (M = 1 and 5) and nn across decoding slices, gatherWeight exact, on 1 and 3 threads alike`, async () => {
      const [N, K] = [263, 4096];
      const host = packed(dtype, N, K, 40);
      const outs: Float32Array[][] = [];
      for (const wp of backends) {
        const w = await wp;
        const pw = w.uploadWeight(host, N, K);
        const got: Float32Array[] = [];
        for (const [M, form] of [[1, "nt"], [5, "nt"], [5, "nn"]] as const) {
          const xs = Float32Array.from(randomData(M * (form === "nt" ? K : N), 41 + M));
          const ref = new Float64Array(M * (form === "nt" ? N : K));
          matmulWeightRef(xs, host, N, K, M, form, ref as unknown as Float32Array);
          const out = w.run(matmulWeightOp, w.upload(xs), pw, M, form);
          got.push((await w.read(out)) as Float32Array);
          expectClose(got[got.length - 1]!, ref, 1e-4, `${dtype} ${form} M=${M}`);
        }
        const ids = Int32Array.from([0, 262, 131, 0, 9]);
        const want = new Float32Array(ids.length * K);
        gatherWeightRef(host, N, K, ids, want);
        const gathered = (await w.read(w.run(gatherWeightOp, pw, w.upload(ids)))) as Float32Array;
        expect(gathered).toEqual(want);
        expect(() => w.run(gatherWeightOp, pw, w.upload(Int32Array.from([3, 263])))).toThrow("gather: id 263 at index 1 is outside [0, 263)");
        const before = w.liveBytes();
        w.freeWeight(pw);
        expect(before - w.liveBytes()).toBe(pw.bytes);
        outs.push(got);
      }
      expect(outs[1]).toEqual(outs[0]);
    });
  }

  test("f16 decoding of every bit pattern (subnormals, infinities, NaNs) is exact", async () => {
    const w = await backends[1]!;
    const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const pw = w.uploadWeight({ dtype: "f16", bits }, 8192, 8);
    const ids = Int32Array.from({ length: 8192 }, (_, i) => i);
    expect(await w.read(w.run(gatherWeightOp, pw, w.upload(ids)))).toEqual(f16ToF32(bits));
  });

  test("rope [2, 3, 37, Dh] for Dh = 72 and 10 (vector and scalar pairs), shared and per-row angles, both directions", async () => {
    for (const Dh of [72, 10]) {
      for (const Bc of [1, 2]) {
        for (const inverse of [false, true]) {
          const g = { B: 2, H: 3, T: 37, Dh, Bc, inverse };
          const x = Float32Array.from(randomData(g.B * g.H * g.T * Dh, 50 + Dh));
          const ang = randomData(Bc * g.T * (Dh / 2), 51, (v) => 10 * v);
          const [cos, sin] = [Float32Array.from(ang, Math.cos), Float32Array.from(ang, Math.sin)];
          const ref = new Float64Array(x.length);
          ropeRef(x, cos, sin, ref, g);
          const outs = [];
          for (const wp of backends) {
            const w = await wp;
            outs.push(await w.read(w.run(ropeOp, w.upload(x), w.upload(cos), w.upload(sin), g)));
          }
          // two f32 products and a sum of values ~1: within 1e-6 (1 + |ref|)
          expectClose(outs[0]!, ref, 1e-6, JSON.stringify(g));
          expect(outs[1]).toEqual(outs[0]);
        }
      }
    }
  });

  test("adamw, 3 steps over 10007 elements (chunks and a tail), with weight decay", async () => {
    const n = 10007;
    const init = { p: randomData(n, 60), m: new Float64Array(n), v: new Float64Array(n) };
    const grads = [61, 62, 63].map((seed) => randomData(n, seed, (x) => 0.1 * x));
    const h = (step: number) => ({ lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step });
    // The reference in doubles on the f32 inputs, each step's state rounded to f32 as a device stores it.
    const ref = { p: Float32Array.from(init.p), m: new Float32Array(n), v: new Float32Array(n) };
    const outs = [];
    for (const wp of backends) {
      const w = await wp;
      const [p, m, v] = [w.upload(Float32Array.from(init.p)), w.zeros("f32", n), w.zeros("f32", n)];
      for (const [i, g] of grads.entries()) w.run(adamwOp, p, w.upload(Float32Array.from(g)), m, v, h(i + 1));
      outs.push({ p: await w.read(p), m: await w.read(m), v: await w.read(v) });
    }
    for (const [i, g] of grads.entries()) adamwRef(ref.p, Float32Array.from(g), ref.m, ref.v, h(i + 1));
    // f32 arithmetic about 10 operations deep on values ~1 (p), ~0.1 (m), ~0.01 (v): 1e-6 (1 + |ref|)
    expectClose(outs[0]!.p, ref.p, 1e-6, "param");
    expectClose(outs[0]!.m, ref.m, 1e-6, "m");
    expectClose(outs[0]!.v, ref.v, 1e-6, "v");
    expect(outs[1]).toEqual(outs[0]);
  });

  test("reduceRows sum and max [7, 4099] and [3, 5]; max keeps NaN and +0 over -0", async () => {
    for (const [rows, cols] of [[7, 4099], [3, 5]] as const) {
      const x = Float32Array.from(randomData(rows * cols, 70 + cols, (v) => 3 * v));
      for (const op of ["sum", "max"] as const) {
        const ref = new Float64Array(rows);
        reduceRowsRef(op, x, ref, rows, cols);
        const outs = [];
        for (const wp of backends) {
          const w = await wp;
          outs.push(await w.read(w.run(reduceRowsOp, op, w.upload(x), rows, cols)));
        }
        // 16 partial f32 sums of <= 4099 terms ~3: 1e-5 (1 + |ref|); max exact
        if (op === "sum") expectClose(outs[0]!, ref, 1e-5, `sum ${rows}x${cols}`);
        else expect(outs[0]).toEqual(Float32Array.from(ref));
        expect(outs[1]).toEqual(outs[0]);
      }
    }
    const w = await backends[1]!;
    const special = Float32Array.from([-0, -0, -0, -0, -0, 0, -1, -0, 1, NaN, 2, 3, -5, -4, -3, -2, -1, -2, -3]);
    const got = await w.read(w.run(reduceRowsOp, "max", w.upload(special), 1, special.length));
    expect(Number.isNaN(got[0])).toBe(true);
    const zeros = await w.read(w.run(reduceRowsOp, "max", w.upload(special.subarray(0, 8)), 1, 8));
    expect(Object.is(zeros[0], 0)).toBe(true);
  });
});

describe("embedding and cast kernels against the float64 references", () => {
  const backends: Promise<WasmBackend>[] = [1, 3].map((threads) => createWasmBackend({ threads }));
  const cpu = qa.cpuDevice();
  afterAll(async () => {
    for (const b of backends) (await b).destroy();
  });
  // D = 1027: not a multiple of 4 (vectors, then a scalar tail) nor of the 16-column blocks that
  // 3 threads split the scatter-add into (352, 352, 323 columns); N D > 2^15, so 3 threads run.
  const D = 1027;

  test("gather [300, 1027] with repeated ids, the first and the last row: exact, on 1 and 3 threads", async () => {
    const V = 300;
    const table = Float32Array.from(randomData(V * D, 80));
    const ids = Int32Array.from({ length: 40 }, (_, n) => [0, V - 1, 17, 17][n % 4]! + (n % 4 === 2 ? n : 0));
    const want = new Float64Array(ids.length * D);
    gatherRef(table, ids, want, { V, D });
    for (const wp of backends) {
      const w = await wp;
      const got = await w.read(w.run(gatherOp, w.upload(table), w.upload(ids), { V, D }));
      expect(got).toEqual(Float32Array.from(want));
    }
  });

  test("scatterAdd [50, 1027] from 300 ids (one id 60 times, rows never hit stay 0): within the f32 summation bound, bitwise alike on 1 and 3 threads", async () => {
    const V = 50;
    const ids = Int32Array.from({ length: 300 }, (_, n) => (n % 5 === 0 ? 7 : (n * 37) % 45));
    const grad = Float32Array.from(randomData(ids.length * D, 81, (x) => 2 * x));
    const want = new Float64Array(V * D);
    scatterAddRef(grad, ids, want, { V, D });
    // The bound of the kernel's comment: recursive f32 summation of k_v terms errs by at most
    // gamma_(k_v - 1) sum |g| (Higham 2002, section 4.2), u = 2^-24; the reference is exact in doubles.
    const u = 2 ** -24;
    const count = new Array<number>(V).fill(0);
    for (const id of ids) count[id]!++;
    const absSum = new Float64Array(V * D);
    ids.forEach((id, n) => {
      for (let d = 0; d < D; d++) absSum[id * D + d]! += Math.abs(grad[n * D + d]!);
    });
    const outs: Float32Array[] = [];
    for (const wp of backends) {
      const w = await wp;
      outs.push((await w.read(w.run(scatterAddOp, w.upload(grad), w.upload(ids), { V, D }))) as Float32Array);
    }
    const got = outs[0]!;
    let worst = 0;
    for (let i = 0; i < V * D; i++) {
      const m = count[Math.floor(i / D)]! - 1;
      const bound = ((m * u) / (1 - m * u)) * absSum[i]! + u * Math.abs(want[i]!);
      if (!(Math.abs(got[i]! - want[i]!) <= bound)) throw new Error(`scatterAdd element ${i}: ${got[i]} vs ${want[i]}, bound ${bound}`);
      worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
    }
    expect(worst).toBeGreaterThan(0); // the sums of 60 terms did round: the bound was exercised
    for (const v of [45, 46, 49]) expect(got.subarray(v * D, (v + 1) * D).every((x) => Object.is(x, 0))).toBe(true);
    expect(outs[1]).toEqual(outs[0]);
  });

  test("empty ids: gather gives [0, D], scatterAdd a zero [V, D]", async () => {
    for (const wp of backends) {
      const w = await wp;
      const none = w.upload(new Int32Array(0));
      expect((await w.read(w.run(gatherOp, w.upload(new Float32Array(4 * D)), none, { V: 4, D }))).length).toBe(0);
      expect(await w.read(w.run(scatterAddOp, w.upload(new Float32Array(0)), none, { V: 4, D }))).toEqual(new Float32Array(4 * D));
    }
  });

  test("ids outside [0, V) throw the cpu device's RangeError naming the id, its index and V; none is ignored (-100 included)", async () => {
    const V = 6;
    for (const bad of [[2, 6, 1], [0, 0, -1], [-100, 3, 3]]) {
      const ids = Int32Array.from(bad);
      const [table, grad] = [Float32Array.from(randomData(V * D, 82)), Float32Array.from(randomData(3 * D, 83))];
      const message = (device: qa.Backend, op: typeof gatherOp, x: Float32Array) => {
        try {
          device.run(op, device.upload(x), device.upload(ids), { V, D });
        } catch (e) {
          expect(e).toBeInstanceOf(RangeError);
          return (e as Error).message;
        }
        throw new Error(`${op.name} accepted ids ${bad}`);
      };
      const n = bad.findIndex((id) => id < 0 || id >= V);
      for (const [op, x] of [[gatherOp, table], [scatterAddOp, grad]] as const) {
        const want = message(cpu, op, x);
        expect(want).toBe(`${op.name}: id ${bad[n]} at index ${n} is outside [0, ${V})`);
        for (const wp of backends) expect(message(await wp, op, x)).toBe(want);
      }
    }
  });

  test("cast f32 -> i32 truncates toward zero and saturates (NaN to 0), i32 -> f32 rounds to nearest even, on contiguous and transposed views", async () => {
    const special = [NaN, Infinity, -Infinity, 2 ** 31, -(2 ** 31), 2147483520, -2.7, 2.7, -0.5, 0.5, -0, 1e10, -1e10, 16777217, 3.999999];
    const ints = [2 ** 31 - 1, -(2 ** 31), 16777217, 16777219, -16777219, 0, -1, 123456789];
    const shape = [5, 3, 4099];
    const n = 5 * 3 * 4099;
    const floats = Float32Array.from(randomData(n, 84, (x) => 1e3 * x));
    floats.set(special);
    const intsIn = Int32Array.from(randomData(n, 85, (x) => Math.trunc(2 ** 30 * x)));
    intsIn.set(ints);
    const views = (storage: Storage) => [
      { storage, shape, strides: [3 * 4099, 4099, 1], offset: 0 },
      { storage, shape, strides: [3 * 4099, 1, 3], offset: 0 },
    ];
    // The references in doubles: Math.trunc with saturation, Math.fround.
    const index = (v: View, i: number) => {
      const [a, b, c] = [Math.floor(i / (3 * 4099)), Math.floor(i / 4099) % 3, i % 4099];
      return a * v.strides[0]! + b * v.strides[1]! + c * v.strides[2]!;
    };
    const truncate = (x: number) => (Number.isNaN(x) ? 0 : Math.min(2 ** 31 - 1, Math.max(-(2 ** 31), Math.trunc(x))));
    expect(special.map(toInt32)).toEqual(special.map(truncate));
    for (const wp of backends) {
      const w = await wp;
      for (const v of views(w.upload(floats))) {
        const got = await w.read(w.cast(v, "i32"));
        expect(got).toBeInstanceOf(Int32Array);
        expect(got).toEqual(Int32Array.from({ length: n }, (_, i) => truncate(floats[index(v, i)]!)));
      }
      for (const v of views(w.upload(intsIn))) {
        const got = await w.read(w.cast(v, "f32"));
        expect(got).toEqual(Float32Array.from({ length: n }, (_, i) => Math.fround(intsIn[index(v, i)]!)));
      }
    }
  });
});

describe("device selection", () => {
  test("wasm is a device kind, selectable by name, with a thread count", async () => {
    expect(DEVICE_KINDS).toContain("wasm");
    const d = (await getDevice("wasm", { threads: TEST_WASM_THREADS })) as WasmBackend;
    expect(d.name).toBe("wasm");
    expect(d.threads).toBe(TEST_WASM_THREADS);
    await expect(getDevice("wasm", { threads: 0 })).rejects.toThrow("threads must be a positive integer");
  });
});
