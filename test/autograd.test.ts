import fc from "fast-check";
import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { expectClose } from "./helpers/close.ts";
import { gradcheck, randomData } from "./helpers/gradcheck.ts";

/**
 * Every differentiable op's backward rule against central finite differences in float64 on
 * the cpu device (tolerance and its justification: helpers/gradcheck.ts). Shapes are drawn by
 * fast-check (seeded), including size-1 axes and broadcasting.
 */
const cpu = qa.cpuDevice();
const runs = { numRuns: 8, seed: 42 };
const dim = fc.integer({ min: 1, max: 4 });
const shape = fc.array(dim, { minLength: 1, maxLength: 3 });

/** Drops trailing/leading axes of `s` at random and sets some to 1: a shape that broadcasts to s. */
const broadcastable = (s: number[]) =>
  fc.tuple(fc.integer({ min: 0, max: s.length - 1 }), fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length })).map(([drop, ones]) =>
    s.slice(drop).map((d, i) => (ones[i + drop] ? 1 : d)),
  );

const size = (s: number[]) => s.reduce((a, b) => a * b, 1);

describe("unary ops: backward matches finite differences (f64)", () => {
  // Every differentiable row of the pointwise table, on its smooth domain (away from kinks and
  // singularities).
  for (const op of qa.UNARY_OPS.filter((o) => qa.unaryDef(o).grad !== null)) {
    test(op, async () => {
      const { smooth } = qa.unaryDef(op).test;
      await fc.assert(
        fc.asyncProperty(shape, fc.integer(), async (s, seed) => {
          await gradcheck((x) => qa.unary(op, x), [randomData(size(s), seed, smooth)], [s]);
        }),
        runs,
      );
    });
  }
});

describe("binary ops with broadcasting: backward matches finite differences (f64)", () => {
  for (const op of qa.BINARY_OPS.filter((o) => qa.binaryDef(o).grad !== null)) {
    test(op, async () => {
      const [da, db] = qa.binaryDef(op).test.smooth;
      await fc.assert(
        fc.asyncProperty(
          shape.chain((s) => fc.tuple(fc.constant(s), broadcastable(s), fc.boolean())),
          fc.integer(),
          async ([sa, sb, swap], seed) => {
            const [s1, s2] = swap ? [sb, sa] : [sa, sb];
            await gradcheck((a, b) => qa.binary(op, a, b), [randomData(size(s1), seed, da), randomData(size(s2), seed + 1, db)], [s1, s2]);
          },
        ),
        runs,
      );
    });
  }
  test("where routes gradients by the condition", async () => {
    const cond = qa.tensor([1, 0, 1, 0, 0, 1], { device: cpu, dtype: "f64", shape: [2, 3] });
    await gradcheck((a, b) => qa.where(cond, a, b), [randomData(6, 1), randomData(3, 2)], [[2, 3], [3]]);
  });
});

describe("reductions: backward matches finite differences (f64)", () => {
  const axesFor = (s: number[]) => fc.subarray(Array.from({ length: s.length }, (_, i) => i), { minLength: 1 });
  for (const op of ["sum", "mean", "max"] as const) {
    test(`${op} over random axes, keepdim both ways`, async () => {
      await fc.assert(
        fc.asyncProperty(
          shape.chain((s) => fc.tuple(fc.constant(s), axesFor(s), fc.boolean())),
          fc.integer(),
          async ([s, axes, keepdim], seed) => {
            // max: distinct values, so the maximum is unique and differentiable.
            const data = op === "max" ? Float64Array.from(qa.Rng.prototype.shuffle.call(new qa.Rng(seed), Array.from({ length: size(s) }, (_, i) => i * 0.37))) : randomData(size(s), seed);
            await gradcheck((x) => x[op](axes, keepdim), [data], [s]);
          },
        ),
        runs,
      );
    });
  }
  test("max splits the gradient equally among ties (closed form)", async () => {
    const x = qa.tensor([1, 3, 3, 2], { device: cpu, dtype: "f64", requiresGrad: true });
    x.max().backward();
    expectClose(await x.grad!.data(), [0, 0.5, 0.5, 0], 0);
  });
});

describe("views and copies: backward matches finite differences (f64)", () => {
  test("permute, reshape, slice, expand, unsqueeze, squeeze, concat", async () => {
    await gradcheck(
      (x, y) => {
        const p = x.permute([2, 0, 1]).reshape([4, 6]).slice(1, 1, 5); // [4, 4]
        const e = y.unsqueeze(0).expand([4, 4]); // broadcast of [4]
        return qa.concat([p.mul(e), y.reshape([1, 4]).squeeze(0).unsqueeze(0)], 0);
      },
      [randomData(24, 3), randomData(4, 4)],
      [[2, 3, 4], [4]],
    );
  });
});

describe("matmul: backward matches finite differences (f64)", () => {
  test("batched, broadcast batch, transposed operands", async () => {
    await fc.assert(
      fc.asyncProperty(dim, dim, dim, fc.integer({ min: 1, max: 3 }), fc.boolean(), fc.boolean(), fc.integer(), async (M, K, N, B, ta, tb, seed) => {
        await gradcheck(
          (a, b) => (ta ? a.transpose() : a).matmul(tb ? b.transpose() : b),
          [randomData(B * M * K, seed), randomData(K * N, seed + 1)],
          [ta ? [B, K, M] : [B, M, K], tb ? [1, N, K] : [1, K, N]],
        );
        await gradcheck((a, b) => a.matmul(b), [randomData(M * K * B, seed), randomData(K * N, seed + 1)], [[B, M, K], [K, N]]);
      }),
      runs,
    );
  });
});

describe("nn ops: backward matches finite differences (f64)", () => {
  test("softmax and logSoftmax", async () => {
    await gradcheck((x) => x.softmax(), [randomData(12, 5)], [[3, 4]]);
    await gradcheck((x) => x.logSoftmax(), [randomData(12, 6)], [[3, 4]]);
  });
  test("crossEntropy with ignore index, mask and every reduction", async () => {
    const targets = qa.tensor(new Int32Array([2, -100, 0, 4]), { device: cpu, shape: [2, 2] });
    const mask = qa.tensor([1, 1, 0.5, 1], { device: cpu, dtype: "f64", shape: [2, 2] });
    for (const reduction of ["mean", "sum", "none"] as const) {
      await gradcheck((x) => qa.crossEntropy(x, targets, { reduction }), [randomData(20, 7)], [[2, 2, 5]]);
      await gradcheck((x) => qa.crossEntropy(x, targets, { reduction, mask }), [randomData(20, 8)], [[2, 2, 5]]);
    }
  });
  test("embedding (scatter-add backward, repeated ids)", async () => {
    const ids = qa.tensor(new Int32Array([3, 0, 3, 1]), { device: cpu, shape: [2, 2] });
    await gradcheck((t) => qa.embedding(t, ids), [randomData(15, 9)], [[5, 3]]);
  });
  test("rmsNorm w.r.t. x and weight", async () => {
    await gradcheck((x, w) => qa.rmsNorm(x, w, 1e-5), [randomData(24, 10), randomData(6, 11)], [[2, 2, 6], [6]]);
  });
  test("rope", async () => {
    const T = 3;
    // Per-row angles [B, T, Dh/2], as a left-padded batch has.
    const ang = randomData(2 * T * 2, 13);
    const c = qa.tensor(ang.map(Math.cos), { device: cpu, shape: [2, T, 2] });
    const s = qa.tensor(ang.map(Math.sin), { device: cpu, shape: [2, T, 2] });
    await gradcheck((x) => qa.rope(x, c, s), [randomData(2 * 2 * T * 4, 14)], [[2, 2, T, 4]]);
  });
  test("attention: causal, grouped-query, padding mask, sliding window, KV-cache offset", async () => {
    const B = 2, H = 4, Hkv = 2, Tq = 3, Tk = 5, Dh = 3;
    const keyMask = qa.tensor([0, 1, 1, 1, 1, 1, 1, 1, 1, 1], { device: cpu, dtype: "f64", shape: [B, Tk] });
    for (const window of [0, 2]) {
      await gradcheck(
        (q, k, v) => qa.attention(q, k, v, { keyMask, window }),
        [randomData(B * H * Tq * Dh, 15), randomData(B * Hkv * Tk * Dh, 16), randomData(B * Hkv * Tk * Dh, 17)],
        [[B, H, Tq, Dh], [B, Hkv, Tk, Dh], [B, Hkv, Tk, Dh]],
      );
    }
  });
  test("linear with bias", async () => {
    await gradcheck((x, w, b) => qa.linear(x, w, b), [randomData(12, 18), randomData(8, 19), randomData(2, 20)], [[3, 4], [2, 4], [2]]);
  });
});

describe("autograd mechanics", () => {
  test("gradients accumulate across backward calls and zeroGrad clears them", async () => {
    const x = qa.tensor([1, 2, 3], { device: cpu, requiresGrad: true });
    x.mul(x).sum().backward();
    x.mul(3).sum().backward();
    expectClose(await x.grad!.data(), [2 + 3, 4 + 3, 6 + 3], 0);
    qa.zeroGrad([x]);
    expect(x.grad).toBeNull();
  });
  test("backward through a non-scalar without a gradient throws, naming the shape", () => {
    const x = qa.tensor([1, 2], { device: cpu, requiresGrad: true });
    expect(() => x.mul(2).backward()).toThrow(/non-scalar tensor of shape \[2\]/);
  });
  test("backward through a disposed intermediate throws instead of losing the gradient", () => {
    const w = qa.tensor([1, 2], { device: cpu, requiresGrad: true });
    const loss = qa.tidy(() => w.mul(w).exp().sum()); // intermediates freed by tidy
    expect(() => loss.backward()).toThrow(/graph through a \[2\] tensor was released: it was disposed/);
    expect(w.grad).toBeNull();
  });
  test("noGrad records nothing; detach cuts the graph", () => {
    const x = qa.tensor([1, 2], { device: cpu, requiresGrad: true });
    expect(qa.noGrad(() => x.mul(2)).requiresGrad).toBe(false);
    expect(x.detach().mul(2).requiresGrad).toBe(false);
  });
  test("use of a disposed tensor throws DisposedError naming the op", () => {
    const x = qa.tensor([1, 2], { device: cpu });
    x.dispose();
    expect(() => x.exp()).toThrow(qa.DisposedError);
    expect(() => x.exp()).toThrow(/exp: tensor was disposed/);
  });
  test("slice out of range throws instead of clamping", () => {
    expect(() => qa.zeros([2, 3], { device: cpu }).slice(1, 2, 5)).toThrow(/slice: range \[2, 5\) out of bounds for axis 1 of \[2,3\]/);
  });
  test("shape and dtype errors name the op and both shapes", () => {
    const a = qa.zeros([2, 3], { device: cpu });
    const b = qa.zeros([4, 5], { device: cpu });
    expect(() => a.matmul(b)).toThrow(/matmul: \[2,3\] x \[4,5\]: inner sizes 3 != 4/);
    expect(() => a.add(qa.zeros([3, 2], { device: cpu }))).toThrow(/add: cannot broadcast \[2,3\] with \[3,2\]/);
    expect(() => a.add(qa.zeros([2, 3], { device: cpu, dtype: "i32" }))).toThrow(/add: dtypes differ: f32 vs i32/);
  });
  test("tidy frees intermediates and keeps results; leaf grads survive", () => {
    const dev = qa.cpuDevice();
    const w = qa.tensor([1, 2, 3], { device: dev, requiresGrad: true });
    const before = dev.liveBytes();
    const out = qa.tidy(() => {
      const loss = w.mul(w).exp().sum();
      loss.backward();
      return loss;
    });
    // Survivors: the loss (1 element) and w.grad (3 elements), f32.
    expect(dev.liveBytes() - before).toBe(4 * (1 + 3));
    out.dispose();
    w.dispose();
  });
});
