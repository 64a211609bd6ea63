import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { CpuBackend } from "../src/kernels/cpu.ts";
import type { Backend } from "../src/tensor/backend.ts";
import { assertSameDevice } from "../src/tensor/device.ts";
import { hostArray } from "../src/tensor/dtype.ts";
import { DeviceError } from "../src/tensor/errors.ts";
import { MAX_ELEMENTS } from "../src/tensor/shape.ts";
import { testWebGpu } from "./helpers/devices.ts";

/**
 * What a caller gets for a wrong argument at the public API: a typed error that names the op,
 * the value and what is accepted, thrown before anything is allocated or computed, instead of a
 * raw engine error or a silently different result.
 */
const cpu = qa.cpuDevice();

describe("dtypes from the caller", () => {
  test("an unknown dtype throws DTypeError naming it and the supported ones, on every creation path", () => {
    const calls: [string, () => unknown][] = [
      ["tensor", () => qa.tensor([1.7, 2], { dtype: "int32" as qa.DType })],
      ["tensor", () => qa.tensor(new Float32Array([1.7, 2]), { dtype: "f16" as qa.DType })],
      ["zeros", () => qa.zeros([2], { dtype: "f16" as qa.DType })],
      ["ones", () => qa.ones([2], { dtype: "float" as qa.DType })],
      ["full", () => qa.full([2], 3, { dtype: "bf16" as qa.DType })],
      ["arange", () => qa.arange(0, 3, 1, { dtype: "u8" as qa.DType })],
      ["randn", () => qa.randn([2], { dtype: "f16" as qa.DType })],
      ["rand", () => qa.rand([2], { dtype: "" as qa.DType })],
      ["cast", () => qa.tensor([1.5]).cast("f16" as qa.DType)],
    ];
    for (const [op, call] of calls) {
      expect(call, op).toThrow(qa.DTypeError);
      expect(call, op).toThrow(new RegExp(`^${op}: unknown dtype ".*"(.*)?; supported dtypes are f32, f64, i32$`));
    }
    expect(() => qa.tensor([1.7, 2], { dtype: "int32" as qa.DType })).toThrow('tensor: unknown dtype "int32" (did you mean "i32"?)');
    expect(() => qa.zeros([2], { dtype: "f16" as qa.DType })).toThrow("half precision is a checkpoint format, read as f32 on load");
  });

  test("known dtypes still convert as documented (f32 -> i32 truncates only when asked)", async () => {
    const t = qa.tensor([1.7, -2.5], { dtype: "i32" });
    expect(t.dtype).toBe("i32");
    expect(Array.from(await t.data())).toEqual([1, -2]);
    expect(Array.from(await qa.tensor([1.7, 2]).data())).toEqual([Math.fround(1.7), 2]);
  });

  test("a typed array that no dtype holds is rejected, not read as i32", () => {
    expect(() => qa.tensor(new Uint8Array([1, 2]) as unknown as qa.HostArray)).toThrow(qa.DTypeError);
    expect(() => qa.tensor(new Uint8Array([1, 2]) as unknown as qa.HostArray)).toThrow(/^tensor: Uint8Array holds no dtype/);
  });
});

describe("shapes from the caller", () => {
  test("a negative or fractional size is a ShapeError naming the op, the shape, the size and its axis", () => {
    expect(() => qa.randn([-1, 2])).toThrow(qa.ShapeError);
    expect(() => qa.randn([-1, 2])).toThrow("randn: invalid shape [-1,2]: size -1 at axis 0 is not a non-negative integer");
    expect(() => qa.rand([2, 1.5])).toThrow("rand: invalid shape [2,1.5]: size 1.5 at axis 1 is not a non-negative integer");
    expect(() => qa.zeros([3, -4])).toThrow("zeros: invalid shape [3,-4]: size -4 at axis 1");
    expect(() => qa.ones([NaN])).toThrow("ones: invalid shape [NaN]");
    expect(() => qa.full([2, Infinity], 1)).toThrow("full: invalid shape [2,Infinity]");
    expect(() => qa.tensor([1, 2], { shape: [-2] })).toThrow("tensor: invalid shape [-2]");
    expect(() => qa.zeros(3 as unknown as number[])).toThrow("zeros: shape must be an array of sizes, got 3");
    expect(() => qa.tensor([1, 2]).reshape([-2, -1])).toThrow(qa.ShapeError);
  });

  test("more elements than a typed array holds is a DeviceLimitError naming the shape and the limit", () => {
    expect(MAX_ELEMENTS).toBeGreaterThanOrEqual(2 ** 32);
    expect(MAX_ELEMENTS).toBeLessThanOrEqual(Number.MAX_SAFE_INTEGER);
    const huge = [1e9, 1e9, 1e9]; // 1e27 elements: above the limit on every engine
    for (const [op, call] of [
      ["zeros", () => qa.zeros(huge)],
      ["randn", () => qa.randn(huge)],
      ["rand", () => qa.rand(huge)],
    ] as const) {
      expect(call, op).toThrow(qa.DeviceLimitError);
      expect(call, op).toThrow(`${op}: shape [1000000000,1000000000,1000000000] has 1e+27 elements, more than the ${MAX_ELEMENTS} a tensor (one typed array) can hold`);
    }
    expect(() => qa.arange(0, 1e30)).toThrow(qa.DeviceLimitError);
    expect(() => qa.arange(0, Infinity)).toThrow("arange: start, end and step must be finite, got 0, Infinity, 1");
  });

  test("hostArray turns the engine's RangeError into a DeviceLimitError and rejects unknown dtypes", () => {
    const n = MAX_ELEMENTS + 1; // one past the longest typed array
    expect(() => hostArray("f32", n)).toThrow(qa.DeviceLimitError);
    expect(() => hostArray("f32", n)).toThrow(`hostArray: cannot allocate ${n} f32 elements (${4 * n} bytes) on the host: `);
    expect(() => hostArray("f16" as qa.DType, 2)).toThrow('hostArray: unknown dtype "f16"');
    expect(Array.from(hostArray("i32", 3))).toEqual([0, 0, 0]);
  });

  test("empty and scalar shapes stay valid", async () => {
    expect(qa.zeros([0, 5]).size).toBe(0);
    expect(await qa.full([], 7).item()).toBe(7);
    expect(qa.randn([2, 0, 3]).shape).toEqual([2, 0, 3]);
  });
});

describe("device names", () => {
  test("init and getDevice reject an unknown kind, naming the accepted ones, and keep the default", async () => {
    const before = qa.defaultDevice();
    await expect(qa.init("tpu" as qa.DeviceKind)).rejects.toThrow(DeviceError);
    await expect(qa.init("tpu" as qa.DeviceKind)).rejects.toThrow('init: unknown device "tpu"; expected one of "cpu", "wasm", "webgpu", "auto"');
    await expect(qa.getDevice("GPU" as qa.DeviceKind)).rejects.toThrow('getDevice: unknown device "GPU"; expected one of "cpu", "wasm", "webgpu", "auto"');
    expect(qa.defaultDevice()).toBe(before);
    expect(await qa.getDevice("cpu")).toBe(cpu);
  });
});

describe("operands on different devices", () => {
  test("a DeviceError names the op and both devices and says how to move one", () => {
    const fakeGpu = { name: "webgpu" } as Backend;
    expect(() => assertSameDevice("add", { backend: cpu }, null, { backend: fakeGpu })).toThrow(
      "add: operands are on different devices (cpu and webgpu); move one with `await t.to(device)`",
    );
    expect(() => assertSameDevice("add", { backend: cpu }, undefined, { backend: cpu })).not.toThrow();
  });

  test("two cpu device instances are different devices too, checked before any kernel", () => {
    const other = new CpuBackend();
    const a = qa.tensor([[1, 2], [3, 4]]);
    const b = qa.tensor([[1, 0], [0, 1]], { device: other });
    const msg = "operands are on different devices (two different cpu devices)";
    expect(() => a.add(b)).toThrow(DeviceError);
    expect(() => a.add(b)).toThrow(`add: ${msg}`);
    expect(() => a.matmul(b)).toThrow(`matmul: ${msg}`);
    expect(() => qa.concat([a, b], 0)).toThrow(`concat: ${msg}`);
    expect(other.liveBytes()).toBe(16); // nothing was allocated by the failed ops
    const loss = a.requireGrad().mul(2).sum();
    expect(() => loss.backward(qa.tensor(1, { device: other }))).toThrow(`backward: ${msg}`);
  });

  test("Tensor.to copies values between devices (a leaf), and is a view on the same device", async () => {
    const other = new CpuBackend();
    const x = qa.tensor([[1, 2, 3], [4, 5, 6]]).requireGrad();
    const moved = await x.transpose().to(other);
    expect(moved.device).toBe("cpu");
    expect(moved.backend).toBe(other);
    expect(moved.shape).toEqual([3, 2]);
    expect(moved.requiresGrad).toBe(false);
    expect(await moved.toArray()).toEqual([[1, 4], [2, 5], [3, 6]]);
    const same = await x.to(cpu);
    expect(same.storage).toBe(x.storage);
    expect(same).not.toBe(x);
  });

  testWebGpu("every op with several operands throws the same DeviceError for cpu x webgpu", async (gpu) => {
    const a = qa.tensor([[1, 2], [3, 4]]);
    const g = qa.tensor([[1, 2], [3, 4]], { device: gpu });
    const ids = qa.tensor(new Int32Array([0, 1]));
    const msg = (op: string, first = "cpu", second = "webgpu") =>
      `${op}: operands are on different devices (${first} and ${second}); move one with \`await t.to(device)\``;
    expect(() => a.add(g)).toThrow(DeviceError);
    expect(() => a.add(g)).toThrow(msg("add"));
    expect(() => a.matmul(g)).toThrow(msg("matmul"));
    expect(() => qa.linear(a, g)).toThrow(msg("linear"));
    expect(() => qa.where(a, g, 0)).toThrow(msg("where"));
    expect(() => qa.embedding(g, ids)).toThrow(msg("embedding", "webgpu", "cpu"));
    expect(() => qa.rmsNorm(g, qa.ones([2]), 1e-5)).toThrow(msg("rmsNorm", "webgpu", "cpu"));
    expect(() => qa.crossEntropy(g, ids)).toThrow(msg("crossEntropy", "webgpu", "cpu"));
    expect(() => qa.concat([a, g], 0)).toThrow(msg("concat"));
    // The fix the message names: move one operand, then the op runs.
    const back = await g.to(cpu);
    expect(Array.from(await a.add(back).data())).toEqual([2, 4, 6, 8]);
    const up = await a.to(gpu);
    expect(up.device).toBe("webgpu");
    expect(Array.from(await up.matmul(g).data())).toEqual([7, 10, 15, 22]);
    await expect(qa.tensor([1], { dtype: "f64" }).to(gpu)).rejects.toThrow(qa.DTypeError);
    for (const t of [a, g, ids, back, up]) t.dispose();
  });
});
