import { cpSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, test } from "vitest";
import * as qa from "../src/index.ts";
import { CpuBackend } from "../src/kernels/cpu.ts";
import { loadModel } from "../src/model/load.ts";
import { DeviceError } from "../src/tensor/errors.ts";
import { openSafetensors, writeSafetensors, type TensorToWrite } from "../src/model/safetensors.ts";
import { runCli } from "./helpers/cli.ts";
import { fixtureDir, loadExpected, maxAbs, maxDiffAtTokens } from "./helpers/fixtures.ts";

/**
 * The strict loader: a checkpoint that disagrees with its config.json fails before any compute
 * with an error naming the file and the tensor; and the `qalign logits` command prints the
 * golden logits of a committed fixture.
 */
const cpu = qa.cpuDevice();

/** A writable copy of a fixture checkpoint. */
function copyFixture(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), "qalign-load-"));
  cpSync(fixtureDir(name), dir, { recursive: true });
  return dir;
}

/** Rewrites model.safetensors of `dir` through `edit` (a map of name -> tensor). */
async function editWeights(dir: string, edit: (t: Map<string, TensorToWrite>) => void): Promise<void> {
  const file = join(dir, "model.safetensors");
  const f = await openSafetensors(file);
  const tensors = new Map<string, TensorToWrite>();
  for (const name of f.names()) tensors.set(name, { dtype: "F32", shape: f.info(name).shape, data: await f.readF32(name) });
  await f.close();
  edit(tensors);
  await writeSafetensors(file, Object.fromEntries(tensors));
}

describe("loadModel rejects checkpoints that disagree with config.json", () => {
  test("a tensor whose shape disagrees with the config names the file, the tensor and both shapes", async () => {
    const dir = copyFixture("llama-untied");
    const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    config.intermediate_size += 1;
    writeFileSync(join(dir, "config.json"), JSON.stringify(config));
    await expect(loadModel(dir, { device: cpu })).rejects.toThrow(/model\.safetensors.*model\.layers\.0\.mlp\.gate_proj\.weight.*shape \[\d+,\d+\] disagrees with config\.json, which implies \[\d+,\d+\]/);
  });
  test("a missing tensor is named with its expected shape", async () => {
    const dir = copyFixture("llama-untied");
    await editWeights(dir, (t) => t.delete("model.layers.1.post_attention_layernorm.weight"));
    await expect(loadModel(dir, { device: cpu })).rejects.toThrow(/model\.layers\.1\.post_attention_layernorm\.weight.*missing tensor/);
  });
  test("an unexpected tensor is named", async () => {
    const dir = copyFixture("llama-untied");
    await editWeights(dir, (t) => t.set("model.layers.0.mlp.extra.weight", { dtype: "F32", shape: [2], data: new Float32Array(2) }));
    await expect(loadModel(dir, { device: cpu })).rejects.toThrow(/model\.layers\.0\.mlp\.extra\.weight.*unexpected tensor/);
  });
});

describe("qalign logits", () => {
  test("prints the golden logits of a committed fixture, and nothing else on stdout", async () => {
    const exp = await loadExpected("qwen2-tied");
    const row = exp.inputIds[0]!;
    const { status, stdout } = runCli(["logits", "--model", fixtureDir("qwen2-tied"), "--ids", row.join(","), "--device", "cpu"]);
    expect(status).toBe(0);
    const logits = (JSON.parse(stdout) as { logits: number[][] }).logits;
    expect(logits).toHaveLength(row.length);
    const ref = exp.logits.subarray(0, row.length * exp.V);
    expect(maxDiffAtTokens(logits.flat(), ref, [row.map(() => 1)], exp.V)).toBeLessThanOrEqual(1e-4 * maxAbs(ref));
  });
});

describe("token ids outside the checkpoint's vocabulary fail on the host, with the position", () => {
  test("forward checks cpu input_ids against vocab_size, strided views included, before any compute", async () => {
    const model = await loadModel(fixtureDir("llama-untied"), { device: cpu });
    try {
      expect(model.config.vocab_size).toBe(320);
      const ids = (rows: number[][]) => qa.tensor(Int32Array.from(rows.flat()), { shape: [rows.length, rows[0]!.length] });
      expect(() => model.forward(ids([[1, 415]]))).toThrow(RangeError);
      expect(() => model.forward(ids([[1, 415]]))).toThrow(
        "forward: input_ids[0][1] = 415 is outside the vocabulary [0, 320) (config.json vocab_size); was it made by a tokenizer of another checkpoint?",
      );
      expect(() => model.forward(ids([[3, -1]]))).toThrow("input_ids[0][1] = -1 is outside the vocabulary [0, 320)");
      // [[1, 320], [3, 4]] transposed reads [[1, 3], [320, 4]]: the position is the view's.
      expect(() => model.forward(ids([[1, 320], [3, 4]]).transpose())).toThrow("input_ids[1][0] = 320 is outside");
      const ok = qa.noGrad(() => model.forward(ids([[0, 319]]), { logits: "last" }).logits!);
      expect(ok.shape).toEqual([1, 1, 320]);
      ok.dispose();
    } finally {
      model.dispose();
    }
  });

  test("forward rejects input_ids on another device than the model", async () => {
    const model = await loadModel(fixtureDir("llama-untied"), { device: cpu });
    try {
      const other = new CpuBackend();
      const ids = qa.tensor(new Int32Array([1, 2]), { device: other, shape: [1, 2] });
      expect(() => model.forward(ids)).toThrow(DeviceError);
      expect(() => model.forward(ids)).toThrow("forward: input_ids are on another cpu device than the model; create them with { device: model.device }");
    } finally {
      model.dispose();
    }
  });

  test("generate checks the prompt ids on the host (the webgpu embedding would read zeros)", async () => {
    const model = await loadModel(fixtureDir("llama-untied"), { device: cpu });
    try {
      await expect(qa.generate(model, [1, 415, 2])).rejects.toThrow(
        "generate: prompt id 415 at position 1 is outside the vocabulary [0, 320) (config.json vocab_size); was the prompt encoded by a tokenizer of another checkpoint?",
      );
      await expect(qa.generate(model, [1.5])).rejects.toThrow("prompt id 1.5 at position 0");
      expect(await qa.generate(model, [1, 319], { maxNewTokens: 2, eosTokenIds: [] })).toHaveLength(2);
    } finally {
      model.dispose();
    }
  });
});
