import { join } from "node:path";
import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { loadModel } from "../src/model/load.ts";
import { Linear } from "../src/model/llama.ts";
import { openSafetensors } from "../src/model/safetensors.ts";
import { fixtureDir, maxAbs } from "./helpers/fixtures.ts";
import { expectClose } from "./helpers/close.ts";
import { gradcheck, randomData } from "./helpers/gradcheck.ts";

/**
 * LoRA gradients against the float64 PyTorch reference of scripts/make_lora_fixtures.py, and by
 * finite differences in float64.
 *
 * Golden tolerance: the cpu engine computes in f32 (accumulating in doubles) through two layers
 * of width <= 96; its relative error is ~1e-6. Loss: 1e-5 relative. Gradients: max |error| per
 * tensor <= 1e-4 x max |reference gradient| of that tensor; a wrong rule (a missing scaling, a
 * transposed A, the loss shifted by one token, padding counted) errs by O(1).
 */
const cpu = qa.cpuDevice();
const CASES = [
  ["llama-untied", "llama-untied"],
  ["qwen2-tied-rslora", "qwen2-tied"],
] as const;

describe.each(CASES)("%s against PyTorch", (name, modelName) => {
  test("masked loss and the gradients of every lora_A / lora_B", async () => {
    const model = await loadModel(fixtureDir(modelName), { device: cpu });
    const dir = join(import.meta.dirname, "fixtures", "lora", name);
    const adapter = await qa.loadAdapter(model, dir);
    const f = await openSafetensors(join(dir, "expected.safetensors"));
    const ids = await f.readI32("input_ids");
    const [B, T] = f.info("input_ids").shape as [number, number];
    const lengths = await f.readI32("length");
    const promptLens = await f.readI32("prompt_len");
    const examples = Array.from({ length: B }, (_, b) => ({
      ids: Array.from(ids.subarray(b * T, b * T + lengths[b]!)),
      promptLen: promptLens[b]!,
    }));
    const batch = qa.collate(examples, cpu);
    const loss = qa.targetNllSum(model, batch).div(batch.targetCount);
    loss.backward();
    const ref = (await f.readF32("loss"))[0]!;
    expect(Math.abs((await loss.item()) - ref)).toBeLessThanOrEqual(1e-5 * Math.abs(ref));
    const named = adapter.namedParams();
    expect(f.names().filter((n) => n.startsWith("grad.")).length).toBe(named.size);
    for (const [key, p] of named) {
      const want = await f.readF32(`grad.${key}`);
      expect(maxAbs(want), `${key}: reference gradient is nonzero`).toBeGreaterThan(0);
      const got = await p.grad!.data();
      expectClose(got, want, { atol: 1e-4 * maxAbs(want), rtol: 0 }, key);
    }
    await f.close();
  });
});

describe("LoraLinear by finite differences (float64)", () => {
  // A small frozen layer: in 4, out 5, r 3, with bias; x [2, 3, 4].
  const shapes = [[2, 3, 4], [3, 4], [5, 3]];
  const inputs = [randomData(24, 1), randomData(12, 2), randomData(15, 3)];
  const W = qa.tensor(randomData(20, 4), { device: cpu, shape: [5, 4] });
  const bias = qa.tensor(randomData(5, 5), { device: cpu, shape: [5] });

  test.each([0, 0.4])("gradients of x, lora_A and lora_B with dropout %s", async (p) => {
    await gradcheck(
      (x, A, Bm) => {
        const layer = new qa.LoraLinear(new Linear(W, bias), A!, Bm!, 1.75, p);
        // The same mask on every evaluation: a fresh generator with a fixed seed.
        layer.rng = p > 0 ? new qa.Rng(9) : null;
        return layer.forward(x!);
      },
      inputs,
      shapes,
    );
  });

  test("the forward is x W^T + b + scaling dropout(x) A^T B^T, and B = 0 leaves the base output", async () => {
    const [x, A, Bm] = inputs.map((d, i) => qa.tensor(d, { device: cpu, shape: shapes[i] }));
    const layer = new qa.LoraLinear(new Linear(W, bias), A!, Bm!, 2, 0);
    const want = qa.linear(x!, W, bias).add(x!.matmul(A!.transpose()).matmul(Bm!.transpose()).mul(2));
    expectClose(await layer.forward(x!).data(), await want.data(), 1e-12, "forward");
    const zeroB = new qa.LoraLinear(new Linear(W, bias), A!, qa.zeros([5, 3], { device: cpu, dtype: "f64" }), 2, 0);
    expectClose(await zeroB.forward(x!).data(), await qa.linear(x!, W, bias).data(), 0, "B = 0");
  });
});
