import { afterAll, describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { DEVICE_KINDS, getDevice } from "../src/kernels/devices.ts";
import { matmulRef } from "../src/kernels/matmul.ts";
import { createWasmBackend, type WasmBackend } from "../src/kernels/wasm/backend.ts";
import { WasmHeap } from "../src/kernels/wasm/heap.ts";
import { KC, MC, MR, NC, NR } from "../src/kernels/wasm/matmul.wasm.ts";
import { FunctionBuilder, T, buildModule, get, i32, sleb, uleb, type Local } from "../src/kernels/wasm/module.ts";
import type { MatmulGeometry } from "../src/tensor/backend.ts";
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
    const out = w.matmul(sa, sb, g);
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

  test("K = 0 gives zeros; f64 runs the reference", async () => {
    const w = await backends[1]!;
    const z = w.matmul(w.zeros("f32", 0), w.zeros("f32", 0), geometry(1, 2, 3, 0, false, false, false));
    expect(Array.from(await w.read(z))).toEqual([0, 0, 0, 0, 0, 0]);
    const a = w.upload(Float64Array.from([1, 2, 3, 4]));
    const p = w.matmul(a, a, geometry(1, 2, 2, 2, false, false, false));
    expect(Array.from(await w.read(p))).toEqual([7, 10, 15, 22]);
  });

  test("a storage of another device is refused", async () => {
    const w = await backends[1]!;
    const foreign = qa.cpuDevice().upload(new Float32Array(4));
    expect(() => w.matmul(foreign, foreign, geometry(1, 2, 2, 2, false, false, false))).toThrow("does not belong to this wasm backend");
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
