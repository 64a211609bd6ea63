import fc from "fast-check";
import { describe, expect } from "vitest";
import * as qa from "../src/index.ts";
import { testDevices } from "./helpers/devices.ts";
import { expectClose } from "./helpers/close.ts";
import { randomData } from "./helpers/gradcheck.ts";

/**
 * The conformance suite: every op of the public API, forward and backward, on `webgpu` and on
 * `wasm` against the `cpu` reference, on the same f32 inputs, with random shapes (fast-check, seeded) that
 * include size-1 axes, sizes that are not multiples of tile sizes, broadcasting and strided views.
 *
 * Tolerance, |device - cpu| <= tol (1 + |cpu|): both devices compute in f32 but in different
 * orders (tiled sums, tree reductions, online softmax) and with different transcendental
 * implementations (WGSL exp/log/tanh are accurate to a few ulp, not correctly rounded), so
 * results differ by a few ulps times the depth of the computation: 1e-5 for pointwise and
 * single reductions, 1e-4 for matmul-based ops (errors grow ~ sqrt(K) eps) and their gradients.
 */
const cpu = qa.cpuDevice();
const runs = { numRuns: 6, seed: 7 };
const dim = fc.integer({ min: 1, max: 9 });
const shape = fc.array(dim, { minLength: 1, maxLength: 3 });
const size = (s: number[]) => s.reduce((a, b) => a * b, 1);

/**
 * Runs f on both devices with the given inputs (f32), backpropagates sum(f * R) for a fixed
 * random R, and compares the outputs and the gradients of every input.
 */
async function same(
  dev: qa.Backend,
  f: (...xs: qa.Tensor[]) => qa.Tensor,
  inputs: Float64Array[],
  shapes: number[][],
  tol: number,
  opts: { grad?: boolean } = {},
): Promise<void> {
  const results = [];
  for (const device of [cpu, dev]) {
    const xs = inputs.map((d, i) => qa.tensor(Float32Array.from(d), { device, shape: shapes[i], requiresGrad: opts.grad ?? true }));
    const y = f(...xs);
    const r = qa.randn(y.shape, { device, seed: 3 });
    if (opts.grad ?? true) y.mul(r).sum().backward();
    results.push({ y: await y.data(), grads: await Promise.all(xs.map(async (x) => (x.grad ? x.grad.data() : null))) });
    for (const t of [...xs, y, r]) t.dispose();
  }
  const [c, g] = results as [(typeof results)[0], (typeof results)[0]];
  expectClose(g.y, c.y, tol, "forward");
  c.grads.forEach((cg, i) => {
    if (cg === null) expect(g.grads[i]).toBeNull();
    else expectClose(g.grads[i]!, cg, tol, `gradient of input ${i}`);
  });
}

describe("pointwise ops: webgpu and wasm equal cpu", () => {
  // Every differentiable row of the pointwise table, on its smooth domain.
  for (const op of qa.UNARY_OPS.filter((o) => qa.unaryDef(o).grad !== null)) {
    const domain = qa.unaryDef(op).test.smooth;
    testDevices(`${op} on a transposed view`, async (dev) => {
      await fc.assert(
        fc.asyncProperty(dim, dim, fc.integer(), async (a, b, seed) => {
          await same(dev, (x) => qa.unary(op, x.transpose()), [randomData(a * b, seed, domain)], [[a, b]], 1e-5);
        }),
        runs,
      );
    });
  }
  for (const op of qa.BINARY_OPS.filter((o) => qa.binaryDef(o).grad !== null)) {
    const [da, db] = qa.binaryDef(op).test.smooth;
    testDevices(`${op} with broadcasting`, async (dev) => {
      await fc.assert(
        fc.asyncProperty(shape, fc.integer(), async (s, seed) => {
          const sb = s.map((d, i) => (i % 2 === 0 ? 1 : d)).slice(1);
          await same(dev, (a, b) => qa.binary(op, a, b), [randomData(size(s), seed, da), randomData(size(sb), seed + 1, db)], [s, sb], 1e-5);
        }),
        runs,
      );
    });
  }
  testDevices("i32 operands: accepted by exactly the rows marked int, with cpu's values", async (dev) => {
    const ints = [-7, -2, -1, 0, 1, 3, 8];
    const run = async (device: qa.Backend, f: (x: qa.Tensor) => qa.Tensor) => {
      const x = qa.tensor(Int32Array.from(ints), { device });
      try {
        const y = f(x);
        const out = await y.data();
        y.dispose();
        return out;
      } finally {
        x.dispose();
      }
    };
    const ops: [string, boolean, (x: qa.Tensor) => qa.Tensor][] = [
      ...qa.UNARY_OPS.map((op): [string, boolean, (x: qa.Tensor) => qa.Tensor] => [op, qa.unaryDef(op).int, (x) => qa.unary(op, x)]),
      ...qa.BINARY_OPS.map((op): [string, boolean, (x: qa.Tensor) => qa.Tensor] => [op, qa.binaryDef(op).int, (x) => qa.binary(op, x, x.neg())]),
    ];
    for (const [op, int, f] of ops) {
      for (const device of [cpu, dev]) {
        if (!int) await expect(run(device, f), `${op} on ${device.name}`).rejects.toThrow(qa.DTypeError);
      }
      if (int) expect(Array.from(await run(dev, f)), op).toEqual(Array.from(await run(cpu, f)));
    }
  });
  testDevices("where, comparisons, cast, large and tiny magnitudes", async (dev) => {
    const big = randomData(24, 5, (x) => x * 1e30);
    const tiny = randomData(24, 6, (x) => x * 1e-30);
    await same(dev, (a, b) => qa.where(a.gt(b), a, b.mul(2)), [big, tiny], [[4, 6], [4, 6]], 1e-6);
    await same(dev, (a) => a.cast("i32").cast("f32").add(a.ge(0.5)), [randomData(12, 7, (x) => 10 * x)], [[12]], 0, { grad: false });
  });
});

describe("reductions and views: webgpu and wasm equal cpu", () => {
  for (const op of ["sum", "mean", "max"] as const) {
    testDevices(`${op} over random axes`, async (dev) => {
      await fc.assert(
        fc.asyncProperty(
          shape.chain((s) => fc.tuple(fc.constant(s), fc.subarray(s.map((_, i) => i), { minLength: 1 }), fc.boolean())),
          fc.integer(),
          async ([s, axes, keep], seed) => {
            await same(dev, (x) => x[op](axes, keep), [randomData(size(s), seed)], [s], 1e-5);
          },
        ),
        runs,
      );
    });
  }
  testDevices("permute, slice, expand, concat, reshape of strided views", async (dev) => {
    await same(
      dev,
      (x, y) => qa.concat([x.permute([2, 0, 1]).slice(0, 1, 4).reshape([3, 6]), y.expand([2, 6])], 0),
      [randomData(2 * 3 * 5, 8), randomData(6, 9)],
      [[2, 3, 5], [1, 6]],
      1e-6,
    );
  });
});

describe("matmul and nn ops: webgpu and wasm equal cpu", () => {
  testDevices("matmul: batched, broadcast, transposed, odd sizes", async (dev) => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 37 }), fc.integer({ min: 1, max: 37 }), fc.integer({ min: 1, max: 37 }), fc.integer({ min: 1, max: 3 }), fc.boolean(), fc.boolean(), fc.integer(), async (M, K, N, B, ta, tb, seed) => {
        await same(
          dev,
          (a, b) => (ta ? a.transpose() : a).matmul(tb ? b.transpose() : b),
          [randomData(B * M * K, seed), randomData(K * N, seed + 1)],
          [ta ? [B, K, M] : [B, M, K], tb ? [N, K] : [K, N]],
          1e-4,
        );
      }),
      runs,
    );
  });
  testDevices("softmax, logSoftmax over wide rows with large logits", async (dev) => {
    await same(dev, (x) => x.softmax(), [randomData(3 * 300, 10, (x) => 30 * x)], [[3, 300]], 1e-5);
    await same(dev, (x) => x.logSoftmax(), [randomData(3 * 300, 11, (x) => 30 * x)], [[3, 300]], 1e-5);
  });
  testDevices("crossEntropy with ignore index and mask", async (dev) => {
    const targetsHost = new Int32Array([5, -100, 0, 299, 17, 3]);
    const f = (x: qa.Tensor) => qa.crossEntropy(x, qa.tensor(targetsHost, { device: x.backend, shape: [2, 3] }));
    await same(dev, f, [randomData(6 * 300, 12, (x) => 5 * x)], [[2, 3, 300]], 1e-5);
  });
  testDevices("embedding with repeated ids", async (dev) => {
    const ids = new Int32Array([4, 0, 4, 9, 1]);
    await same(dev, (t) => qa.embedding(t, qa.tensor(ids, { device: t.backend, shape: [5] })), [randomData(10 * 7, 13)], [[10, 7]], 1e-6);
  });
  testDevices("embedding wide enough to split between threads, each id at most twice; cast of a transposed view", async (dev) => {
    // [70, 520] outputs (above the wasm device's parallel threshold); a gradient row summed twice
    // in f32 errs by <= 2^-24 sum |g|, well inside 1e-6 (1 + |cpu|).
    const ids = Int32Array.from({ length: 70 }, (_, n) => (n * 11) % 40);
    await same(dev, (t) => qa.embedding(t, qa.tensor(ids, { device: t.backend, shape: [7, 10] })), [randomData(40 * 520, 16)], [[40, 520]], 1e-6);
    await same(dev, (a) => a.transpose(0, 1).cast("i32").cast("f32"), [randomData(9 * 7, 17, (x) => 1e3 * x)], [[9, 7]], 0, { grad: false });
  });
  testDevices("rmsNorm", async (dev) => {
    await same(dev, (x, w) => qa.rmsNorm(x, w, 1e-6), [randomData(5 * 67, 14), randomData(67, 15)], [[5, 67], [67]], 1e-5);
  });
  testDevices("rope with per-row angles", async (dev) => {
    const B = 2, H = 3, T = 5, Dh = 8;
    const ang = randomData(B * T * (Dh / 2), 16, (x) => 10 * x);
    await same(
      dev,
      (x) => {
        const cos = qa.tensor(Float32Array.from(ang, Math.cos), { device: x.backend, shape: [B, T, Dh / 2] });
        const sin = qa.tensor(Float32Array.from(ang, Math.sin), { device: x.backend, shape: [B, T, Dh / 2] });
        return qa.rope(x, cos, sin);
      },
      [randomData(B * H * T * Dh, 17)],
      [[B, H, T, Dh]],
      1e-5,
    );
  });
  testDevices("attention: GQA, padding, sliding window, cache offset", async (dev) => {
    const B = 2, H = 4, Hkv = 2, Tq = 5, Tk = 9, Dh = 16;
    const mask = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
    for (const window of [0, 4]) {
      await same(
        dev,
        (q, k, v) => qa.attention(q, k, v, { keyMask: qa.tensor(mask, { device: q.backend, shape: [B, Tk] }), window }),
        [randomData(B * H * Tq * Dh, 18), randomData(B * Hkv * Tk * Dh, 19), randomData(B * Hkv * Tk * Dh, 20)],
        [[B, H, Tq, Dh], [B, Hkv, Tk, Dh], [B, Hkv, Tk, Dh]],
        1e-4,
      );
    }
  });
});
